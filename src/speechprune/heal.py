"""Healing a pruned model: a short LoRA fine-tune of the decoder on the target loss.

Every kind heals through the one training loop (``train.run_stages``, with its checkpoints and
resume): a SpeechLLM directory with its own losses (and, if asked, its projector), any other kind
(a plain causal LM, a Hugging Face speech-LLM) on the next-token loss of the decoder inputs its
adapter builds.

Targets (where the LoRA goes in the decoder):
- ``receiving-mlp`` (default, as in Moumen et al., 2026): the MLP of each layer that now receives a
  removed block's input, i.e. the first kept layer after each removed block. A block that ended
  the decoder has no receiving layer; its healing goes to the last kept layer's MLP.
- ``all-mlp``: the MLP of every layer.
- ``all-linear``: every linear layer of the decoder (peft's ``all-linear``).
The projector can be unfrozen as well (``--projector``); the paper found decoder + projector heal
best. The export merges the LoRA into a standard checkpoint and keeps the adapter beside it.

Data: manifests, or for a plain LLM text files (``.txt``) and Hugging Face text datasets, read as
every stage reads them (:func:`speechprune.data.sources.load_data`).

A pruned GGUF file (``speechprune prune --format gguf``) heals like a folder: its
``speechprune.pruning.*`` metadata names the receiving layers, as ``pruning.json`` does in a folder.
``--format gguf`` (or an ``--out`` ending in ``.gguf``) writes the healed model back as a GGUF file:
the tensors healing did not change copied as stored, the changed ones as Q8_0 or F16
(:mod:`speechprune.heal_gguf`, which also says why the record lives in the file's metadata).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from accelerate import PartialState
from torch import nn

from speechprune.config import save_config
from speechprune.console import show, table
from speechprune.data.sources import load_data, require_audio
from speechprune.errors import UserError
from speechprune.files import RUN_MARKER, claims_output, read_json, run_signature, staged_dir, write_json
from speechprune.model.decoder import decoder_layers
from speechprune.model.device import training_precision
from speechprune.model.interface import LoadedModel, load_model
from speechprune.options.heal import TARGETS, HealConfig  # noqa: F401  (re-exported)
from speechprune.prune.surgery import receiving_layers
from speechprune.train import LoopConfig, StageConfig, StageResult, make_accelerator, run_stages
from speechprune.train import summary as train_summary


def healing_layers(kept: list[int], original_num_layers: int) -> list[int]:
    """Layers (pruned-model indices) whose MLP ``receiving-mlp`` heals: the first kept layer after
    each removed block, and the last kept layer for a block that ended the decoder."""
    receiving = set(receiving_layers(kept, original_num_layers))
    if kept[-1] != original_num_layers - 1:
        receiving.add(len(kept) - 1)
    return sorted(receiving)


def pruning_of(model: str | Path) -> dict | None:
    """What ``speechprune prune`` recorded of ``model``: a directory's ``pruning.json``, or a GGUF
    file's ``speechprune.pruning.*`` metadata (in pruning.json's terms); None if nothing."""
    from speechprune.model.gguf import gguf_path, is_gguf

    if is_gguf(str(model)):
        from speechprune.prune.gguf_export import read_pruning_record

        return read_pruning_record(gguf_path(str(model)))
    path = Path(model) / "pruning.json"
    return read_json(path) if path.is_file() else None


def receiving_layers_of(model_dir: str | Path) -> list[int]:
    """:func:`healing_layers` of a directory or GGUF file written by ``speechprune prune``."""
    pruning = pruning_of(model_dir)
    if pruning is None:
        from speechprune.model.gguf import is_gguf

        if is_gguf(str(model_dir)):
            raise UserError(f"{model_dir}: a GGUF file without a pruning record (speechprune.pruning.* metadata, "
                            "written by speechprune prune --format gguf), so no receiving layers; use --target "
                            "all-mlp or all-linear")
        raise UserError(f"{model_dir}: no pruning.json, so no receiving layers; use --target all-mlp or all-linear")
    return healing_layers(pruning["kept"], pruning["original_num_layers"])


def healing_data(config: HealConfig, model: LoadedModel) -> list:
    """The utterances of every ``--data`` (manifests, text files, text datasets), refused in one
    line when they are text only and the model heals on speech."""
    utterances = []
    for source in config.data:
        read = load_data(source, text_column=config.text_column, split=config.split, skip_bad=config.skip_bad)
        if "speech" in model.sources:
            require_audio(read, source, f"healing {model.path} (a model with speech input)")
        utterances.extend(read)
    return utterances


def lora_targets(decoder: nn.Module, target: str, receiving: list[int] | None = None) -> list[str]:
    """Full module names of the linear layers that get LoRA."""
    if target == "all-linear":
        return ["all-linear"]
    layers = decoder_layers(decoder)
    chosen = range(len(layers)) if target == "all-mlp" else receiving or []
    wanted = {id(module) for index in chosen for module in _mlp_linears(layers[index], index)}
    return [name for name, module in decoder.named_modules() if id(module) in wanted]


def _mlp_linears(layer: nn.Module, index: int) -> list[nn.Module]:
    mlp = getattr(layer, "mlp", None)
    if mlp is None:
        raise UserError(f"decoder layer {index} ({type(layer).__name__}) has no .mlp to heal")
    return [module for module in mlp.modules() if isinstance(module, nn.Linear)]


def heal_model(model: LoadedModel, utterances: list, targets: list[str], out: Path, steps: int, lr: float,
               rank: int = 8, alpha: int = 16, projector: bool = False, batch_size: int = 16, seed: int = 0,
               resume: bool = True, grad_accum: int = 1, checkpoint_every: int = 200,
               mixed_precision: str = "no") -> list[dict]:
    """Heal ``model`` in place with LoRA on ``targets`` (and its projector if asked) for ``steps``,
    through the training loop of every kind (:func:`~speechprune.train.run_stages`: checkpoints
    under ``out/checkpoints``, resume, clipping, accumulation), under ``mixed_precision``
    autocast (``no``: the model's own dtype; ``auto``: bf16 where a probe finds it faster here).
    Speech input when the model has it, else the source text. The decoder stays LoRA-wrapped
    until it is saved or :func:`merge_lora` merges it."""
    if projector and getattr(model, "speechllm", None) is None:
        raise UserError(f"--projector: {model.path} is a {model.kind}; only a SpeechLLM directory has a projector "
                        "this toolkit trains")
    device = next(model.module.parameters()).device  # heal where the model was loaded (--device)
    loop = LoopConfig(batch_size=batch_size, seed=seed, grad_accum=grad_accum, checkpoint_every=checkpoint_every,
                      cpu=device.type == "cpu", mixed_precision=mixed_precision)
    loop.lora.rank, loop.lora.alpha, loop.lora.decoder_targets = rank, alpha, targets
    stage = StageConfig(steps=steps, input="speech" if "speech" in model.sources else "text", encoder="frozen",
                        decoder="lora", projector="full" if projector else "frozen", lr=lr)
    out.mkdir(parents=True, exist_ok=True)
    model.module.train()
    results = run_stages(model, utterances, {"heal": stage}, loop, out, make_accelerator(loop, out, device), resume)
    model.module.eval()
    return [result.__dict__ for result in results]


def _precision_ran(config: HealConfig, model: LoadedModel) -> str:
    """The autocast healing ran under: ``auto`` resolved as the training loop resolved it (its probe
    is measured once per process, so this is the same answer)."""
    return training_precision(config.mixed_precision, next(model.module.parameters()).device)[0]


def _autocast_text(precision: str) -> str:
    return "" if precision == "no" else f", under {precision} autocast"


def merge_lora(model: LoadedModel, adapter_dir: Path | None = None) -> None:
    """Merge a LoRA-wrapped decoder into plain weights (saving the adapter first when asked)."""
    if hasattr(model.causal_lm, "merge_and_unload"):
        if adapter_dir is not None:
            model.causal_lm.save_pretrained(adapter_dir)
        model.causal_lm = model.causal_lm.merge_and_unload()


@claims_output("heal", resumable=lambda config: not config.writes_gguf,
               directory=lambda config: not config.writes_gguf)
def heal(config: HealConfig) -> Path:
    """LoRA-heal a pruned model on --data and export it (LoRA merged, adapter kept); a pruned GGUF
    file also into a GGUF file (--format gguf, or an --out ending in .gguf)."""
    out = Path(config.out)
    gguf_plan = None
    if config.writes_gguf:
        from speechprune import heal_gguf

        gguf_plan = heal_gguf.plan(config.model)  # refuses what it cannot write back, before any work
    receiving = receiving_layers_of(config.model) if config.target == "receiving-mlp" else None
    model = load_model(config.model, dtype=config.dtype, device=config.device, loading=config.loading)
    targets = lora_targets(model.causal_lm, config.target, receiving)
    utterances = healing_data(config, model)
    if gguf_plan is not None:
        return _heal_into_gguf(config, gguf_plan, model, utterances, targets, receiving)
    results = heal_model(model, utterances, targets, out, config.steps, config.lr, config.rank,
                         config.alpha, config.projector, config.batch_size, config.seed, config.resume,
                         config.grad_accum, config.checkpoint_every, config.mixed_precision)
    if not PartialState().is_main_process:
        return out
    precision = _precision_ran(config, model)
    speechllm = getattr(model, "speechllm", None)
    with staged_dir(out) as staging:  # replaces OUT whole, checkpoints included
        if speechllm is not None:
            speechllm.save(staging)  # merges the LoRA, keeps the adapter under adapters/decoder
        else:
            merge_lora(model, adapter_dir=staging / "adapters" / "decoder")
            model.save_pruned(staging)
        pruning = pruning_of(config.model)
        if pruning is not None:
            write_json(staging / "pruning.json", pruning)
        write_json(staging / "heal.json", {"target": config.target, "lora_modules": targets,
                                           "receiving_layers": receiving, "projector_trained": config.projector,
                                           "mixed_precision": precision, "stages": results})
        save_config(config, staging / "config.yaml")
    show(train_summary(f"heal: LoRA r={config.rank} on {config.target}"
                       f"{' and the projector' if config.projector else ''}{_autocast_text(precision)} -> {out}",
                       [StageResult(**stage) for stage in results]))
    return out


def _heal_into_gguf(config: HealConfig, gguf_plan, model: LoadedModel, utterances: list, targets: list[str],
                    receiving: list[int] | None) -> Path:
    """Heal a GGUF model and write it back as the GGUF file --out (:mod:`speechprune.heal_gguf`).
    The training's checkpoints live in a hidden folder beside --out, ``.NAME.heal``, which a
    killed run resumes from (same settings) and a finished one removes."""
    from speechprune import heal_gguf

    out = Path(config.out)
    work = out.parent / f".{out.name}.heal"
    state = PartialState()
    if state.is_main_process:
        signature = run_signature("heal", config)
        marker = work / RUN_MARKER
        if not (config.resume and marker.is_file() and read_json(marker).get("signature") == signature):
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            write_json(marker, {"signature": signature})
    state.wait_for_everyone()
    results = heal_model(model, utterances, targets, work, config.steps, config.lr, config.rank, config.alpha,
                         False, config.batch_size, config.seed, config.resume, config.grad_accum,
                         config.checkpoint_every, config.mixed_precision)
    if not state.is_main_process:
        return out
    precision = _precision_ran(config, model)
    bases = heal_gguf.lora_base_layers(model.causal_lm)
    merge_lora(model)
    changed = heal_gguf.changed_weight_names(model.causal_lm, bases)
    record = {"target": config.target, "rank": config.rank, "alpha": config.alpha, "steps": config.steps,
              "lr": config.lr, "data": list(config.data), "receiving_layers": receiving,
              "mixed_precision": precision, "stages": results}
    result = heal_gguf.export(gguf_plan, model, changed, record, out, config.gguf_type)
    shutil.rmtree(work, ignore_errors=True)
    show(train_summary(f"heal: LoRA r={config.rank} on {config.target}{_autocast_text(precision)} -> {out}",
                       [StageResult(**stage) for stage in results]),
         table("healed GGUF file", ("", ""), heal_gguf.summary_rows(result), header=False))
    return out
