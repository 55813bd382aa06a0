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
"""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState
from torch import nn

from speechprune.config import save_config
from speechprune.console import show
from speechprune.data.manifest import load_manifests
from speechprune.errors import UserError
from speechprune.files import claims_output, read_json, staged_dir, write_json
from speechprune.model.decoder import decoder_layers
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


def receiving_layers_of(model_dir: str | Path) -> list[int]:
    """:func:`healing_layers` of a directory written by ``speechprune prune``."""
    path = Path(model_dir) / "pruning.json"
    if not path.is_file():
        raise UserError(f"{model_dir}: no pruning.json, so no receiving layers; use --target all-mlp or all-linear")
    pruning = read_json(path)
    return healing_layers(pruning["kept"], pruning["original_num_layers"])


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
               resume: bool = True, grad_accum: int = 1, checkpoint_every: int = 200) -> list[dict]:
    """Heal ``model`` in place with LoRA on ``targets`` (and its projector if asked) for ``steps``,
    through the training loop of every kind (:func:`~speechprune.train.run_stages`: checkpoints
    under ``out/checkpoints``, resume, clipping, accumulation). Speech input when the model has
    it, else the source text. The decoder stays LoRA-wrapped until it is saved or
    :func:`merge_lora` merges it."""
    if projector and getattr(model, "speechllm", None) is None:
        raise UserError(f"--projector: {model.path} is a {model.kind}; only a SpeechLLM directory has a projector "
                        "this toolkit trains")
    loop = LoopConfig(batch_size=batch_size, seed=seed, grad_accum=grad_accum, checkpoint_every=checkpoint_every)
    loop.lora.rank, loop.lora.alpha, loop.lora.decoder_targets = rank, alpha, targets
    stage = StageConfig(steps=steps, input="speech" if "speech" in model.sources else "text", encoder="frozen",
                        decoder="lora", projector="full" if projector else "frozen", lr=lr)
    out.mkdir(parents=True, exist_ok=True)
    model.module.train()
    results = run_stages(model, utterances, {"heal": stage}, loop, out, make_accelerator(loop, out), resume)
    model.module.eval()
    return [result.__dict__ for result in results]


def merge_lora(model: LoadedModel, adapter_dir: Path | None = None) -> None:
    """Merge a LoRA-wrapped decoder into plain weights (saving the adapter first when asked)."""
    if hasattr(model.causal_lm, "merge_and_unload"):
        if adapter_dir is not None:
            model.causal_lm.save_pretrained(adapter_dir)
        model.causal_lm = model.causal_lm.merge_and_unload()


@claims_output("heal", resumable=True)
def heal(config: HealConfig) -> Path:
    """LoRA-heal a pruned model on --data and export it (LoRA merged, adapter kept)."""
    out = Path(config.out)
    model = load_model(config.model, loading=config.loading)
    receiving = receiving_layers_of(config.model) if config.target == "receiving-mlp" else None
    targets = lora_targets(model.causal_lm, config.target, receiving)
    utterances = load_manifests(config.data, skip_bad=config.skip_bad)
    results = heal_model(model, utterances, targets, out, config.steps, config.lr, config.rank,
                         config.alpha, config.projector, config.batch_size, config.seed, config.resume,
                         config.grad_accum, config.checkpoint_every)
    if not PartialState().is_main_process:
        return out
    speechllm = getattr(model, "speechllm", None)
    with staged_dir(out) as staging:  # replaces OUT whole, checkpoints included
        if speechllm is not None:
            speechllm.save(staging)  # merges the LoRA, keeps the adapter under adapters/decoder
        else:
            merge_lora(model, adapter_dir=staging / "adapters" / "decoder")
            model.save_pruned(staging)
        pruning = Path(config.model) / "pruning.json"
        if pruning.is_file():
            write_json(staging / "pruning.json", read_json(pruning))
        write_json(staging / "heal.json", {"target": config.target, "lora_modules": targets,
                                           "receiving_layers": receiving, "projector_trained": config.projector,
                                           "stages": results})
        save_config(config, staging / "config.yaml")
    show(train_summary(f"heal: LoRA r={config.rank} on {config.target}"
                       f"{' and the projector' if config.projector else ''} -> {out}",
                       [StageResult(**stage) for stage in results]))
    return out
