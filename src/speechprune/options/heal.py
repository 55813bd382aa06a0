"""Configuration of ``speechprune heal`` (:class:`HealConfig`) and the places LoRA can heal
(:data:`TARGETS`, explained in :mod:`speechprune.heal`)."""

from __future__ import annotations

from dataclasses import dataclass

from speechprune.config import option, require, require_choice
from speechprune.options.model import LoadingPolicy

TARGETS = ("receiving-mlp", "all-mlp", "all-linear")


@dataclass
class HealConfig:
    model: str = option(help="pruned model directory written by prune (its pruning.json names the receiving layers)")
    data: list[str] = option(help="training manifest(s), comma-separated")
    out: str = option(help="output directory, of the same kind as --model")
    target: str = option("receiving-mlp", help="receiving-mlp | all-mlp | all-linear")
    projector: bool = option(False, help="also train the projector (fully; SpeechLLM directories only)")
    steps: int = option(200, help="optimiser steps of LoRA training")
    lr: float = option(1e-3, help="peak learning rate (warm-up, then cosine decay)")
    rank: int = option(8, help="LoRA rank r")
    alpha: int = option(16, help="LoRA alpha (the update is scaled by alpha / rank)")
    batch_size: int = option(16, help="utterances per optimiser step (per process)")
    grad_accum: int = option(1, help="batches whose gradients add up to one optimiser step")
    checkpoint_every: int = option(200, help="optimiser steps between checkpoints (resume points)")
    seed: int = option(0, help="seed of LoRA initialisation and data order")
    resume: bool = option(True, help="continue from OUT/checkpoints when present")
    loading: LoadingPolicy = option(LoadingPolicy(), help="what --model may do while it loads")
    overwrite: bool = option(False, help="replace an existing --out (else only this run's unfinished work is resumed)")
    skip_bad: bool = option(False, help="skip utterances whose line or audio is bad, and list them, instead of stopping")

    def __post_init__(self):
        require_choice(self.target, TARGETS, "--target")
        require(self.steps >= 1, "--steps must be >= 1")
        require(self.batch_size >= 1 and self.grad_accum >= 1, "--batch-size and --grad-accum must be >= 1")
        require(self.checkpoint_every >= 1, "--checkpoint-every must be >= 1")
        require(len(self.data) > 0, "--data needs at least one manifest")
