"""Heal a pruned GGUF file into a GGUF file: what ``speechprune heal --format gguf`` writes (or an
``--out`` ending in ``.gguf``).

Where the pruning is recorded. A GGUF file written by ``speechprune prune --format gguf`` carries its
pruning in its own metadata, under ``speechprune.pruning.*`` (removed and kept layers, the original
block count, how the layers were chosen, the source file; read back by
:func:`speechprune.prune.gguf_export.read_pruning_record`). Metadata and not a sidecar
``<file>.pruning.json``: a GGUF file is one file that users copy, upload and rename on its own, and
a sidecar would be lost or left describing another file at the first ``cp``; readers that do not
know the keys (llama.cpp, transformers, ollama) skip them; and the gguf package that writes the
file already writes typed keys, so the record costs no second writer and cannot be half-written
apart from the tensors it describes. ``heal`` reads it where it reads ``pruning.json`` in a folder.

What is written. Healing changes only the weights that LoRA was merged into (by default the MLP of
each layer that receives a removed block's input). Every other tensor is copied as it is stored
(its quantised bytes and type, as the pruning export copies them); the changed ones are written as
Q8_0 (default) or F16, the types the gguf package quantises itself (a row whose length is not a
multiple of Q8_0's 32-value blocks falls back to F16, and the record says so). Metadata is copied
field by field; ``speechprune.healing.*`` keys record the healing (target, layers, LoRA rank,
steps, data, the changed tensors and their types, the source file).

Checked before it is moved into place: transformers' GGUF loader must load the written file with
every weight, and its logits must equal those of the pruned input with the changed weights replaced
by exactly what the file now holds (their quantised values, dequantised by the gguf package as the
loader does), with cached decoding equal to uncached; every copied tensor must read back
byte-identical and every metadata field as the input's. The logits' distance to the healed model
before quantisation is reported (the price of Q8_0 / F16 alone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from speechprune.errors import UserError
from speechprune.files import atomic_path
from speechprune.model.gguf import GGUFHeader, gguf_path, is_gguf, read_header
from speechprune.options.heal import GGUF_TYPES  # noqa: F401  (re-exported)
from speechprune.prune.gguf_export import ARCHITECTURES, RECORD_PREFIX, _field_value, load_gguf_causal_lm

HEALING_PREFIX = "speechprune.healing."
Q8_0_BLOCK = 32  # values per Q8_0 block: a row must be a multiple of it


@dataclass
class HealedGGUFPlan:
    """The pruned GGUF file that ``--model`` names, read and checked; nothing written yet."""

    reader: Any
    header: GGUFHeader


def plan(model: str) -> HealedGGUFPlan:
    """Refuse, in one line and before anything is loaded or trained, a ``--model`` that cannot be
    written back as a GGUF file."""
    if not is_gguf(model):
        raise UserError(f"--model {model}: GGUF output (--format gguf, or an --out ending in .gguf) needs a GGUF "
                        "--model: a .gguf file written by speechprune prune --format gguf")
    reader, header = read_header(gguf_path(model))
    if header.architecture not in ARCHITECTURES:
        raise UserError(f"{header.path}: writing a healed GGUF file of architecture {header.architecture!r} is not "
                        f"supported (known: {', '.join(sorted(ARCHITECTURES))}); write a Hugging Face checkpoint "
                        "instead (--format hf)")
    return HealedGGUFPlan(reader=reader, header=header)


# ----------------------------------------------------------------------------- what healing changed
def lora_base_layers(causal_lm: nn.Module) -> list[nn.Module]:
    """The linear layers that LoRA wraps in ``causal_lm`` (the modules that survive its merge): the
    only weights healing changes. Call before :func:`speechprune.heal.merge_lora`."""
    return [module.get_base_layer() for module in causal_lm.modules()
            if hasattr(module, "lora_A") and hasattr(module, "get_base_layer")]


def changed_weight_names(causal_lm: nn.Module, bases: list[nn.Module]) -> list[str]:
    """Parameter names (``model.layers.N.mlp.gate_proj.weight``) of ``bases`` in the merged model."""
    wanted = {id(module) for module in bases}
    return [f"{name}.weight" for name, module in causal_lm.named_modules() if id(module) in wanted]


def _tensor_names(arch: str, block_count: int, names: list[str], reader: Any) -> dict[str, str]:
    """HF parameter name -> GGUF tensor name, by the gguf package's own name map."""
    import gguf

    arch_id = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    name_map = gguf.get_tensor_name_map(arch_id, block_count)
    present = {tensor.name for tensor in reader.tensors}
    mapped = {}
    for name in names:
        target = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None or target not in present:
            raise UserError(f"healed weight {name} has no tensor in the GGUF file ({target or 'no gguf name'}); "
                            "write a Hugging Face checkpoint instead (--format hf)")
        mapped[name] = target
    return mapped


# ----------------------------------------------------------------------------- encoding
def _llama_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face -> GGUF row order of a Llama query or key projection (llama.cpp's
    ``convert_hf_to_gguf`` permute; transformers' GGUF loader undoes it)."""
    rows = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, rows, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _llama_unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    rows = weight.shape[0] // heads // 2
    return weight.reshape(heads, rows, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _heads(arch: str, tensor: str, config: Any) -> int | None:
    """Heads of the permutation a GGUF ``tensor`` of ``arch`` is stored in (None: stored as in HF)."""
    if arch != "llama":
        return None
    if ".attn_q." in tensor:
        return int(config.num_attention_heads)
    if ".attn_k." in tensor:
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    return None


def encode(weight: np.ndarray, kind: str) -> tuple[np.ndarray, Any, np.ndarray]:
    """``(stored, type, decoded)``: ``weight`` (float32, GGUF row order) as ``kind`` (q8_0 | f16),
    and exactly what a reader dequantises from it. Q8_0 needs rows of whole 32-value blocks; other
    rows are F16."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    weight = np.ascontiguousarray(weight, dtype=np.float32)
    if kind == "q8_0" and weight.shape[-1] % Q8_0_BLOCK == 0:
        stored = quants.quantize(weight, Q.Q8_0)
        return stored, Q.Q8_0, quants.dequantize(stored, Q.Q8_0).reshape(weight.shape).astype(np.float32)
    stored = weight.astype(np.float16)
    return stored, Q.F16, stored.astype(np.float32)


@dataclass
class Replacement:
    """A changed weight as the healed file stores it."""

    hf_name: str
    stored: np.ndarray
    kind: Any  # GGMLQuantizationType
    decoded_hf: torch.Tensor  # what transformers' GGUF loader will read back, in HF layout


def replacements(gguf_plan: HealedGGUFPlan, causal_lm: nn.Module, names: list[str],
                 kind: str) -> dict[str, Replacement]:
    """GGUF tensor name -> :class:`Replacement` for every changed HF weight of ``causal_lm``."""
    from speechprune.model.decoder import text_config

    arch, config = gguf_plan.header.architecture, text_config(causal_lm)
    tensors = {tensor.name: tensor for tensor in gguf_plan.reader.tensors}
    result = {}
    for hf_name, gguf_name in _tensor_names(arch, gguf_plan.header.block_count, names, gguf_plan.reader).items():
        weight = causal_lm.get_parameter(hf_name).detach().to("cpu", torch.float32).numpy()
        shape = tuple(int(n) for n in reversed(tensors[gguf_name].shape.tolist()))
        if weight.shape != shape:
            raise UserError(f"healed weight {hf_name} has shape {tuple(weight.shape)}, its GGUF tensor {gguf_name} "
                            f"{shape}; refusing to write it")
        heads = _heads(arch, gguf_name, config)
        stored, stored_kind, decoded = encode(_llama_permute(weight, heads) if heads else weight, kind)
        decoded = _llama_unpermute(decoded, heads) if heads else decoded
        result[gguf_name] = Replacement(hf_name, stored, stored_kind, torch.from_numpy(np.ascontiguousarray(decoded)))
    return result


# ----------------------------------------------------------------------------- writing
def healing_fields(record: dict[str, Any], replaced: dict[str, Replacement], source: Path) -> dict[str, tuple]:
    """The ``speechprune.healing.*`` keys: ``record`` (target, rank, alpha, steps, lr, data,
    receiving_layers, stages) and the changed tensors with their types."""
    from gguf import GGUFValueType as T

    fields: dict[str, tuple] = {
        "source": (source.name, T.STRING, None),
        "target": (str(record["target"]), T.STRING, None),
        "lora_rank": (int(record["rank"]), T.UINT32, None),
        "lora_alpha": (int(record["alpha"]), T.UINT32, None),
        "steps": (int(record["steps"]), T.UINT32, None),
        "lr": (float(record["lr"]), T.FLOAT32, None),
        "data": (json.dumps(record["data"]), T.STRING, None),
        "stages": (json.dumps(record["stages"], sort_keys=True, default=str), T.STRING, None),
        "tool": ("speechprune", T.STRING, None),
    }
    if record.get("receiving_layers"):  # the gguf writer refuses empty arrays
        fields["receiving_layers"] = ([int(i) for i in record["receiving_layers"]], T.ARRAY, T.UINT32)
    if replaced:
        fields["changed_tensors"] = ([name.encode() for name in replaced], T.ARRAY, T.STRING)
        fields["changed_tensor_types"] = ([r.kind.name.encode() for r in replaced.values()], T.ARRAY, T.STRING)
    return {HEALING_PREFIX + key: value for key, value in fields.items()}


def write_healed(gguf_plan: HealedGGUFPlan, replaced: dict[str, Replacement], fields: dict[str, tuple],
                 target: Path) -> dict[str, Any]:
    """Write the healed GGUF to ``target``: metadata and unchanged tensors as stored, ``replaced``
    tensors in their new type, in the input's tensor order and alignment."""
    from gguf import GGUFWriter

    reader, header = gguf_plan.reader, gguf_plan.header
    writer = GGUFWriter(target, header.architecture)
    writer.data_alignment = reader.alignment
    for key, entry in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key.startswith(HEALING_PREFIX):
            continue  # a healed input's own healing record is replaced by this one
        value, kind, sub = _field_value(entry)
        writer.add_key_value(key, value, kind, sub_type=sub)
    for key, (value, kind, sub) in fields.items():
        writer.add_key_value(key, value, kind, sub_type=sub)
    for tensor in reader.tensors:
        if tensor.name in replaced:
            writer.add_tensor(tensor.name, replaced[tensor.name].stored, raw_dtype=replaced[tensor.name].kind)
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file_bytes_before": header.size, "file_bytes_after": target.stat().st_size,
            "changed_tensor_bytes_before": sum(int(t.n_bytes) for t in reader.tensors if t.name in replaced),
            "changed_tensor_bytes_after": sum(int(r.stored.nbytes) for r in replaced.values())}


def _check_file(path: Path, gguf_plan: HealedGGUFPlan, replaced: dict[str, Replacement]) -> None:
    """Read the written file back: copied tensors byte-identical with their type, changed ones of
    their new type and values, every input metadata field as it was."""
    reader, _ = read_header(path)
    written = {tensor.name: tensor for tensor in reader.tensors}
    if set(written) != {tensor.name for tensor in gguf_plan.reader.tensors}:
        raise UserError(f"export check: {path} does not hold the input's tensors; refusing to write it")
    for tensor in gguf_plan.reader.tensors:
        new = written[tensor.name]
        if tensor.name in replaced:
            change = replaced[tensor.name]
            same = new.tensor_type == change.kind and np.array_equal(
                np.asarray(new.data).view(np.uint8).ravel(), np.asarray(change.stored).view(np.uint8).ravel())
        else:
            same = new.tensor_type == tensor.tensor_type and np.array_equal(
                np.asarray(new.data).view(np.uint8), np.asarray(tensor.data).view(np.uint8))
        if not same:
            raise UserError(f"export check: tensor {tensor.name} of {path} does not hold what it should; refusing "
                            "to write it")
    for key, entry in gguf_plan.reader.fields.items():
        if key.startswith("GGUF.") or key.startswith(HEALING_PREFIX):
            continue
        if key not in reader.fields or _field_value(reader.fields[key]) != _field_value(entry):
            raise UserError(f"export check: metadata key {key} of {path} does not hold what it should; refusing to "
                            "write it")


@torch.no_grad()
def _reference(checkpoint: Path, replaced: dict[str, Replacement], probe: torch.Tensor) -> torch.Tensor:
    """Logits of the pruned input (its dequantised float32 cache, what transformers reads from the
    stored bytes) with the changed weights set to what the healed file holds."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    for change in replaced.values():
        reference.get_parameter(change.hf_name).copy_(change.decoded_hf)
    logits = reference(probe, use_cache=False).logits.float()
    del reference
    return logits


def export(gguf_plan: HealedGGUFPlan, model: Any, names: list[str], record: dict[str, Any], out: Path,
           kind: str = "q8_0") -> dict[str, Any]:
    """Write the healed (LoRA-merged) ``model`` into ``out`` atomically and check it. ``names``: the
    HF weights healing changed (:func:`changed_weight_names`). Returns sizes, changed tensors and
    the check."""
    from speechprune.prune.verify import probe_ids, verify_export

    model.module.to("cpu")
    model.module.eval()
    replaced = replacements(gguf_plan, model.causal_lm, names, kind)
    probe = probe_ids(model)
    with torch.no_grad():
        healed_logits = model.causal_lm(probe, use_cache=False).logits.float()
    reference = _reference(model.checkpoint, replaced, probe)
    model.release()  # the float model is not needed while the written file is loaded
    fields = healing_fields(record, replaced, gguf_plan.header.path)
    with atomic_path(out) as staged:
        sizes = write_healed(gguf_plan, replaced, fields, staged)
        _check_file(staged, gguf_plan, replaced)
        loader = _loader(healed_logits, probe)
        try:
            verification = verify_export(loader, staged, gguf_plan.header.block_count, reference, probe)
        except UserError as error:  # its words are the pruning's: say what the reference is here
            raise UserError(f"{error} [healed GGUF: the reference is the pruned input with the healed tensors as "
                            f"stored; nothing written to {out}]") from None
        verification.update(loader.seen)
    return {"format": "gguf", "sizes": sizes, "verification": verification,
            "changed_tensors": {name: change.kind.name for name, change in replaced.items()},
            "copied_tensors": len(gguf_plan.reader.tensors) - len(replaced)}


def _loader(healed_logits: torch.Tensor, probe: torch.Tensor):
    """``load_gguf_causal_lm`` that also notes how far the written file's logits are from the healed
    model's before quantisation (read by :func:`export` from the returned info)."""
    seen: dict[str, float] = {}

    def load(path: Path) -> tuple[Any, dict]:
        loaded, info = load_gguf_causal_lm(path)
        with torch.no_grad():
            seen["healed_model_max_abs_logit_difference"] = float(
                (loaded(probe, use_cache=False).logits.float() - healed_logits).abs().max())
        return loaded, info

    load.seen = seen  # type: ignore[attr-defined]
    return load


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    from speechprune.prune.gguf_export import _size

    sizes, check = result["sizes"], result["verification"]
    types = sorted(set(result["changed_tensors"].values()))
    return [
        ("GGUF file", f"{_size(sizes['file_bytes_before'])} -> {_size(sizes['file_bytes_after'])}; "
                      f"{result['copied_tensors']} tensors copied as stored, {len(result['changed_tensors'])} "
                      f"healed tensors written as {', '.join(types) or 'none'}"),
        ("reload check", f"passed: max |logit difference| to the pruned input with the healed tensors as stored "
                         f"{check['logits_max_abs_error']:.2g} (tolerance {check['tolerance']:.2g})"),
        ("quantisation", "max |logit difference| to the healed model before quantisation "
                         f"{check.get('healed_model_max_abs_logit_difference', float('nan')):.3g}"),
    ]


__all__ = ["GGUF_TYPES", "HEALING_PREFIX", "RECORD_PREFIX", "plan", "lora_base_layers", "changed_weight_names",
           "encode", "replacements", "export", "summary_rows"]
