"""Configuration of ``speechprune heal`` (:class:`HealConfig`) and the places LoRA can heal
(:data:`TARGETS`, explained in :mod:`speechprune.heal`)."""

from __future__ import annotations

from dataclasses import dataclass

from speechprune.config import option, require, require_choice
from speechprune.options.model import LoadingPolicy, check_placement, device_option, dtype_option
from speechprune.options.train import MIXED_PRECISIONS

TARGETS = ("receiving-mlp", "all-mlp", "all-linear")
GGUF_TYPES = ("q8_0", "f16")  # what a GGUF --out stores the healed tensors as (heal_gguf.py)
HEAL_PRECISION_HELP = ("autocast of healing, as training's --loop.mixed-precision: no (the model's --dtype) | bf16 | "
                       "fp16 (where the device has it) | auto (bf16 where it is faster: a GPU with bf16, or a CPU "
                       "whose bf16 matmul a probe at start finds faster; one line says which). The weights stay in "
                       "--dtype and the adapters in float32")


@dataclass
class HealConfig:
    model: str = option(help="pruned model written by prune: a directory (its pruning.json names the receiving layers) "
                             "or a .gguf file (its speechprune.pruning metadata does)")
    data: list[str] = option(help="training data, comma-separated: manifest(s), or for a plain LLM text files (.txt, "
                                  "one text per line) or Hugging Face text datasets")
    out: str = option(help="output directory, of the same kind as --model; or, for a GGUF --model, a .gguf file")
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
    text_column: str | None = option(None, help="text column of a Hugging Face dataset --data (default: text, "
                                                "sentence, content or transcription, the first it has)")
    split: str | None = option(None, help="split of a Hugging Face dataset --data (default: its only split)")
    format: str = option("auto", help="hf (a Hugging Face checkpoint directory) | gguf (a pruned GGUF --model healed "
                                      "into a GGUF file: untouched tensors copied as stored, healed ones written as "
                                      "--gguf-type) | auto (gguf when --out ends in .gguf)")
    gguf_type: str = option("q8_0", help="q8_0 | f16: the type of the tensors healing changed, in a GGUF --out")
    dtype: str = dtype_option(help="the dtype the pruned model is loaded, healed and saved in (the LoRA "
                                   "adapters train in float32 and are merged into it)")
    mixed_precision: str = option("no", help=HEAL_PRECISION_HELP)
    device: str = device_option(help="where healing runs (auto: the GPU when there is one)")

    def __post_init__(self):
        require_choice(self.target, TARGETS, "--target")
        require(self.steps >= 1, "--steps must be >= 1")
        require(self.batch_size >= 1 and self.grad_accum >= 1, "--batch-size and --grad-accum must be >= 1")
        require(self.checkpoint_every >= 1, "--checkpoint-every must be >= 1")
        require(len(self.data) > 0, "--data needs at least one manifest, text file or text dataset")
        require(self.format in ("auto", "hf", "gguf"), f"--format must be hf, gguf or auto, not {self.format!r}")
        require(self.format != "hf" or not self.out.lower().endswith(".gguf"),
                f"--format hf writes a directory; --out {self.out} ends in .gguf")
        require(self.format != "gguf" or self.out.lower().endswith(".gguf"),
                f"--format gguf writes a file: give an --out ending in .gguf, not {self.out}")
        require_choice(self.mixed_precision, MIXED_PRECISIONS, "--mixed-precision")
        require(self.gguf_type in GGUF_TYPES, f"--gguf-type must be {' or '.join(GGUF_TYPES)}, not {self.gguf_type!r}")
        check_placement(self)

    @property
    def writes_gguf(self) -> bool:
        return self.format == "gguf" or (self.format == "auto" and self.out.lower().endswith(".gguf"))
