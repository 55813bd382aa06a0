"""Prune a GGUF file into a GGUF file: what llama.cpp users run, still in its own quantization.

The kept blocks' tensors are copied as they are stored (``raw_dtype``: no re-quantization, no float
round trip) and renumbered ``blk.0 ..`` contiguously; tensors outside the blocks (token embedding,
output norm, output head) are copied untouched. Metadata is copied field by field with its own
value types; ``<arch>.block_count`` and every per-layer array (:data:`ARCHITECTURES`) are sliced to
the kept layers, and ``speechprune.pruning.*`` keys record what was removed, how it was chosen and
from which file. Only the ``gguf`` package's reader and writer touch the format.

An architecture that :data:`ARCHITECTURES` does not describe is refused before anything is written:
its per-layer metadata might then be left describing layers that are gone. Gemma 3 has one more
rule: llama.cpp and transformers give a layer its attention kind (sliding-window or global) by its
position, every sixth global, not from the metadata, so a pruned file is only faithful when every
kept layer keeps its kind at its new position.

Checked as every export is: the written file is loaded by transformers' GGUF loader and its logits
must equal the input model's with the same layers skipped (the same quantized bytes, dequantised by
the same code), every other metadata field must read back as the input's, and the file must
shrink by the removed blocks' bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speechprune.errors import UserError
from speechprune.files import atomic_path
from speechprune.model.gguf import SHORT_NAMES, GGUFHeader, gguf_path, is_gguf, read_header

BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")
RECORD_PREFIX = "speechprune.pruning."


def _gemma3_attention(index: int) -> str:
    """llama.cpp's ``set_swa_pattern(6)`` and transformers' ``sliding_window_pattern=6``."""
    return "global" if index % 6 == 5 else "sliding-window"


@dataclass(frozen=True)
class BlockLayout:
    """How a GGUF architecture describes its layers in metadata."""

    #: keys after ``<arch>.`` that hold one value per layer when they are arrays (scalars apply to all)
    per_layer_keys: tuple[str, ...]
    #: a layer's attention kind as readers derive it from its position alone, where they do
    positional_attention: Callable[[int], str] | None = None


_HEADS_AND_WIDTHS = ("attention.head_count", "attention.head_count_kv", "feed_forward_length")
ARCHITECTURES: dict[str, BlockLayout] = {
    "llama": BlockLayout(per_layer_keys=_HEADS_AND_WIDTHS),
    "gemma3": BlockLayout(per_layer_keys=_HEADS_AND_WIDTHS + ("attention.sliding_window_pattern",),
                          positional_attention=_gemma3_attention),
    # Qwen2 (Qwen2.5): Llama's per-layer keys; its attention biases (blk.N.attn_{q,k,v}.bias) are
    # block tensors, copied with their block; no sliding window in llama.cpp or transformers' GGUF config
    "qwen2": BlockLayout(per_layer_keys=_HEADS_AND_WIDTHS),
}


@dataclass
class GGUFPlan:
    """An input GGUF file read and checked for pruning; nothing written yet."""

    reader: Any
    header: GGUFHeader
    layout: BlockLayout
    per_layer: list[str] = field(default_factory=list)  # full keys of the per-layer arrays present


def plan(model: str) -> GGUFPlan:
    """Read the GGUF file that ``--model`` names and refuse, in one line, what this export cannot
    rewrite faithfully: before the model is loaded (or dequantised) and before anything is written."""
    from gguf import GGUFValueType

    if not is_gguf(model):
        raise UserError(f"--model {model}: GGUF output (--format gguf, or an --out ending in .gguf) needs a GGUF "
                        f"--model: a .gguf file or a short name ({', '.join(SHORT_NAMES)})")
    reader, header = read_header(gguf_path(model))
    arch = header.architecture
    if arch not in ARCHITECTURES:
        raise UserError(f"{header.path}: pruning a GGUF file of architecture {arch!r} into GGUF is not supported "
                        f"(its per-layer metadata is unknown; known: {', '.join(sorted(ARCHITECTURES))}); "
                        "write a Hugging Face checkpoint instead (--format hf)")
    layout = ARCHITECTURES[arch]
    known = {f"{arch}.{key}" for key in layout.per_layer_keys}
    per_layer = []
    for key, entry in reader.fields.items():
        if not entry.types or entry.types[0] != GGUFValueType.ARRAY:
            continue
        if len(entry.types) > 2 and entry.types[1] == GGUFValueType.ARRAY:
            raise UserError(f"{header.path}: metadata key {key} is an array of arrays, which this export cannot copy")
        if len(entry.data) == 0:
            raise UserError(f"{header.path}: metadata key {key} is an empty array, which the gguf writer refuses")
        if key in known:
            if len(entry.data) != header.block_count:
                raise UserError(f"{header.path}: {key} has {len(entry.data)} values for {header.block_count} blocks")
            per_layer.append(key)
        elif key.startswith(f"{arch}.") and len(entry.data) == header.block_count:
            raise UserError(f"{header.path}: {key} looks per-layer ({len(entry.data)} values, one per block) but this "
                            f"export does not know it for {arch}; refusing rather than leave it describing removed "
                            "layers")
    for tensor in reader.tensors:
        match = BLOCK_TENSOR.match(tensor.name)
        if match and int(match[1]) >= header.block_count:
            raise UserError(f"{header.path}: tensor {tensor.name} lies beyond {arch}.block_count {header.block_count}")
    return GGUFPlan(reader=reader, header=header, layout=layout, per_layer=per_layer)


def _moved_layer(kind_of: Callable[[int], str], layers: int, removed: list[int]) -> tuple[int, int] | None:
    """``(old, new)`` position of the first kept layer whose position-given kind would change."""
    kept = [i for i in range(layers) if i not in set(removed)]
    return next(((old, new) for new, old in enumerate(kept) if kind_of(new) != kind_of(old)), None)


def check_positions(gguf_plan: GGUFPlan, removed: list[int]) -> None:
    """Refuse a removal after which a kept layer would change its position-given attention kind,
    naming the single blocks of the same size that would be written."""
    kind_of = gguf_plan.layout.positional_attention
    layers = gguf_plan.header.block_count
    moved = _moved_layer(kind_of, layers, removed) if kind_of is not None else None
    if moved is None:
        return
    old, new = moved
    n = len(removed)
    fitting = [f"[{start}, {start + n})" for start in range(layers - n + 1)
               if _moved_layer(kind_of, layers, list(range(start, start + n))) is None]
    raise UserError(
        f"{gguf_plan.header.path}: removing layers {_blocks(removed)} would move layer {old} ({kind_of(old)} "
        f"attention) to position {new}, which llama.cpp and transformers run as {kind_of(new)} attention for "
        f"{gguf_plan.header.architecture}; single blocks of {n} that keep every layer's kind: "
        f"{', '.join(fitting) or 'none'} (--drop); or write a Hugging Face checkpoint (--format hf), whose config "
        "lists each layer's attention")


def _blocks(removed: list[int]) -> str:
    from speechprune.prune.surgery import kept_ranges

    return ", ".join(f"[{start}, {end})" for start, end in kept_ranges(removed)) or "none"


def _field_value(entry: Any) -> tuple[Any, Any, Any]:
    """``(value, type, sub_type)`` of a metadata field, strings as their stored bytes."""
    from gguf import GGUFValueType

    main = entry.types[0]
    if main == GGUFValueType.ARRAY:
        sub = entry.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(entry.parts[i]) for i in entry.data], main, sub
        return list(entry.contents()), main, sub
    if main == GGUFValueType.STRING:
        return bytes(entry.parts[entry.data[0]]), main, None
    return entry.contents(), main, None


def _record_fields(pruning: dict[str, Any], source: Path) -> dict[str, tuple[Any, Any, Any]]:
    from gguf import GGUFValueType as T

    chosen = {key: pruning[key] for key in ("strategy", "n", "fraction", "drop", "scan", "input", "region",
                                            "layout", "data", "score", "block_distance") if pruning.get(key) is not None}
    fields: dict[str, tuple[Any, Any, Any]] = {
        "source": (source.name, T.STRING, None),
        "original_block_count": (int(pruning["original_num_layers"]), T.UINT32, None),
        "removed_blocks": (_blocks(pruning["removed"]) + " (0-based, end-exclusive)", T.STRING, None),
        "chosen_by": (json.dumps(chosen, sort_keys=True), T.STRING, None),
        "tool": ("speechprune", T.STRING, None),
    }
    if pruning["removed"]:
        fields["removed_layers"] = ([int(i) for i in pruning["removed"]], T.ARRAY, T.UINT32)
    kept = [i for i in range(int(pruning["original_num_layers"])) if i not in set(pruning["removed"])]
    fields["kept_layers"] = (kept, T.ARRAY, T.UINT32)  # original indices, in order (never empty)
    return {RECORD_PREFIX + key: value for key, value in fields.items()}


def read_pruning_record(path: Path) -> dict[str, Any] | None:
    """The pruning a GGUF file written by this export records (its ``speechprune.pruning.*`` keys),
    in ``pruning.json``'s terms: ``removed``, ``kept`` (original indices), ``original_num_layers``,
    ``num_layers``, ``strategy``, ``chosen_by``, ``source``. None when the file has no record (it
    was not pruned by speechprune); a record that contradicts the file's block count is one line.
    Files written before ``kept_layers`` was recorded get it from the original count less the removed."""
    reader, header = read_header(path)
    fields = {key[len(RECORD_PREFIX):]: entry for key, entry in reader.fields.items() if key.startswith(RECORD_PREFIX)}
    if "original_block_count" not in fields:
        return None
    original = int(fields["original_block_count"].contents())
    removed = [int(i) for i in fields["removed_layers"].contents()] if "removed_layers" in fields else []
    kept = ([int(i) for i in fields["kept_layers"].contents()] if "kept_layers" in fields
            else [i for i in range(original) if i not in set(removed)])
    if len(kept) != header.block_count or sorted(set(kept) | set(removed)) != list(range(original)):
        raise UserError(f"{path}: its speechprune.pruning record (kept {len(kept)} of {original} layers, removed "
                        f"{len(removed)}) does not fit its {header.architecture}.block_count {header.block_count}")
    chosen_by = json.loads(str(fields["chosen_by"].contents())) if "chosen_by" in fields else {}
    return {"removed": removed, "kept": kept, "original_num_layers": original, "num_layers": len(kept),
            "strategy": chosen_by.get("strategy"), "chosen_by": chosen_by,
            "source": str(fields["source"].contents()) if "source" in fields else None,
            "record": "GGUF metadata speechprune.pruning.*"}


def write_pruned(gguf_plan: GGUFPlan, removed: list[int], pruning: dict[str, Any], target: Path) -> dict[str, Any]:
    """Write the pruned GGUF to ``target`` (a path that does not need to be atomic itself)."""
    from gguf import GGUFWriter

    reader, header = gguf_plan.reader, gguf_plan.header
    arch = header.architecture
    gone = set(removed)
    kept = [i for i in range(header.block_count) if i not in gone]
    renumber = {old: new for new, old in enumerate(kept)}
    writer = GGUFWriter(target, arch)  # it writes general.architecture and the GGUF.* counts itself
    writer.data_alignment = reader.alignment
    for key, entry in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key.startswith(RECORD_PREFIX):
            continue  # a pruned input's own record is replaced by this one, which names that file as source
        value, kind, sub = _field_value(entry)
        if key == f"{arch}.block_count":
            value = len(kept)
        elif key in gguf_plan.per_layer:
            value = [value[i] for i in kept]
        writer.add_key_value(key, value, kind, sub_type=sub)
    for key, (value, kind, sub) in _record_fields(pruning, header.path).items():
        writer.add_key_value(key, value, kind, sub_type=sub)
    removed_bytes = 0
    for tensor in reader.tensors:
        match = BLOCK_TENSOR.match(tensor.name)
        if match and int(match[1]) in gone:
            removed_bytes += int(tensor.n_bytes)
            continue
        name = f"blk.{renumber[int(match[1])]}.{match[2]}" if match else tensor.name
        writer.add_tensor(name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file_bytes_before": header.size, "file_bytes_after": target.stat().st_size,
            "removed_tensor_bytes": removed_bytes, "tensor_bytes_before": header.tensor_bytes,
            "tensor_bytes_after": header.tensor_bytes - removed_bytes}


def load_gguf_causal_lm(path: Path) -> tuple[Any, dict]:
    """A GGUF file through transformers' GGUF loader, as ``verify_export`` reloads an export."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                       output_loading_info=True)
    return model.eval(), info


def _check_metadata(path: Path, gguf_plan: GGUFPlan, kept: list[int]) -> None:
    """Read the written file back: every metadata field equals the input's (tokenizer, chat template,
    rope settings, general.*) but the block count and the per-layer arrays, which hold the kept
    layers' values. (Loading the tokenizer instead would cost minutes for Gemma's 262k pieces.)"""
    reader, header = read_header(path)
    arch = header.architecture
    for key, entry in gguf_plan.reader.fields.items():
        if key.startswith("GGUF.") or key.startswith(RECORD_PREFIX):
            continue
        expected, kind, sub = _field_value(entry)
        if key == f"{arch}.block_count":
            expected = len(kept)
        elif key in gguf_plan.per_layer:
            expected = [expected[i] for i in kept]
        written = reader.fields.get(key)
        if written is None or _field_value(written) != (expected, kind, sub):
            raise UserError(f"export check: metadata key {key} of {path} does not hold what it should; refusing to "
                            "write it")


def export(gguf_plan: GGUFPlan, model: Any, removed: list[int], pruning: dict[str, Any], out: Path,
           reference: torch.Tensor | None, probe: torch.Tensor) -> dict[str, Any]:
    """Write ``out`` atomically and check it (unless ``reference`` is None). Returns what the
    pruning record adds: sizes and the verification."""
    from speechprune.prune.verify import verify_export

    check_positions(gguf_plan, removed)
    model.release()  # the float copy is not needed while the written file is loaded
    with atomic_path(out) as staged:
        sizes = write_pruned(gguf_plan, removed, pruning, staged)
        result: dict[str, Any] = {"format": "gguf", "sizes": sizes}
        if reference is not None:
            result["verification"] = verify_export(load_gguf_causal_lm, staged, pruning["num_layers"], reference, probe)
        _check_metadata(staged, gguf_plan, [i for i in range(gguf_plan.header.block_count) if i not in set(removed)])
    return result


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    sizes = result["sizes"]
    return [("GGUF file", f"{_size(sizes['file_bytes_before'])} -> {_size(sizes['file_bytes_after'])} "
                          f"({sizes['file_bytes_after'] / sizes['file_bytes_before']:.1%}); the removed blocks held "
                          f"{_size(sizes['removed_tensor_bytes'])}; kept tensors copied as stored")]
