"""Healing a pruned SpeechLLM: a short LoRA fine-tune through the same training loop.

Targets (where the LoRA goes in the decoder):
- ``receiving-mlp`` (default, as in the seed paper): the MLP of each layer that now receives a
  removed block's input, i.e. the first kept layer after each removed block. A block that ended
  the decoder has no receiving layer; its healing goes to the last kept layer's MLP.
- ``all-mlp``: the MLP of every layer.
- ``all-linear``: every linear layer of the decoder (peft's ``all-linear``).
The projector can be unfrozen as well (``--projector``); the paper found decoder + projector heal
best. The export merges the LoRA into a standard checkpoint and keeps the adapter beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accelerate import PartialState
from torch import nn

from speechprune.config import option, require, save_config
from speechprune.data.manifest import load_manifests
from speechprune.errors import UserError
from speechprune.files import read_json, write_json
from speechprune.model.decoder import decoder_layers
from speechprune.model.speechllm import SpeechLLM
from speechprune.prune.surgery import receiving_layers
from speechprune.console import show
from speechprune.train import LoopConfig, StageConfig, make_accelerator, run_stages
from speechprune.train import summary as train_summary

TARGETS = ("receiving-mlp", "all-mlp", "all-linear")


@dataclass
class HealConfig:
    model: str = option(help="pruned SpeechLLM directory (its pruning.json names the receiving layers)")
    data: list[str] = option(help="training manifest(s), comma-separated")
    out: str = option(help="output SpeechLLM directory")
    target: str = option("receiving-mlp", help="receiving-mlp | all-mlp | all-linear")
    projector: bool = option(False, help="also train the projector (fully)")
    steps: int = option(200, help="optimiser steps of LoRA training")
    lr: float = option(1e-3, help="peak learning rate (warm-up, then cosine decay)")
    rank: int = option(8, help="LoRA rank r")
    alpha: int = option(16, help="LoRA alpha (the update is scaled by alpha / rank)")
    batch_size: int = option(16, help="utterances per optimiser step")
    seed: int = option(0, help="seed of LoRA initialisation and data order")
    resume: bool = option(True, help="continue from OUT/checkpoints when present")

    def __post_init__(self):
        require(self.target in TARGETS, f"--target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        require(self.steps >= 1, "--steps must be >= 1")
        require(len(self.data) > 0, "--data needs at least one manifest")


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


def heal_in_place(model: SpeechLLM, utterances: list, targets: list[str], out: Path, steps: int, lr: float,
                  rank: int = 8, alpha: int = 16, projector: bool = False, batch_size: int = 16, seed: int = 0,
                  resume: bool = True) -> list:
    """Train LoRA on ``targets`` (and the projector if asked) for ``steps``; checkpoints under
    ``out/checkpoints``. The model stays LoRA-wrapped until it is saved (which merges)."""
    loop = LoopConfig(batch_size=batch_size, seed=seed)
    loop.lora.rank, loop.lora.alpha, loop.lora.decoder_targets = rank, alpha, targets
    stage = StageConfig(steps=steps, encoder="frozen", decoder="lora", projector="full" if projector else "frozen",
                        lr=lr)
    out.mkdir(parents=True, exist_ok=True)
    model.train()
    results = run_stages(model, utterances, {"heal": stage}, loop, out, make_accelerator(loop, out), resume)
    model.eval()
    return results


def heal(config: HealConfig) -> Path:
    """LoRA-heal a pruned SpeechLLM on --data and export it (LoRA merged, adapter kept)."""
    out = Path(config.out)
    model = SpeechLLM.load(config.model)
    receiving = receiving_layers_of(config.model) if config.target == "receiving-mlp" else None
    targets = lora_targets(model.decoder, config.target, receiving)
    results = heal_in_place(model, load_manifests(config.data), targets, out, config.steps, config.lr, config.rank,
                            config.alpha, config.projector, config.batch_size, config.seed, config.resume)
    if not PartialState().is_main_process:
        return out
    model.save(out)
    pruning = Path(config.model) / "pruning.json"
    if pruning.is_file():
        write_json(out / "pruning.json", read_json(pruning))
    write_json(out / "heal.json", {"target": config.target, "lora_modules": targets, "receiving_layers": receiving,
                                   "projector_trained": config.projector, "stages": [r.__dict__ for r in results]})
    save_config(config, out / "config.yaml")
    show(train_summary(f"heal: LoRA r={config.rank} on {config.target}"
                       f"{' and the projector' if config.projector else ''} -> {out}", results))
    return out
