"""Configuration of training (``speechprune train``, :class:`TrainConfig`): a training stage
(:class:`StageConfig`), the loop (:class:`LoopConfig`, with :class:`LoraConfig`) and the stage
recipes. Why stages, and what each default stage does: :mod:`speechprune.train`."""

from __future__ import annotations

from dataclasses import dataclass, replace

from speechprune.config import option, require
from speechprune.options.model import (MIXED_PRECISION, LoadingPolicy, ModelConfig, check_placement, device_option,
                                        dtype_option)

MODES = ("frozen", "lora", "full")
INPUTS = ("speech", "text", "lm")
COMPONENTS = ("encoder", "projector", "decoder")
TOKEN_CTC_VOCABULARIES = ("full", "corpus")
MIXED_PRECISIONS = ("no", "bf16", "fp16", "auto")  # auto: probed at start (speechprune.model.device.training_precision)
TRAIN_DTYPES = {**MIXED_PRECISION, "auto": "auto"}  # a training command's --dtype -> its --loop.mixed-precision


@dataclass
class StageConfig:
    steps: int = option(0, help="optimiser steps in this stage; 0 skips it")
    input: str = option("speech", help="speech: the full SpeechLLM; text: the source transcript in place of the "
                                       "speech (no audio is read); lm: the decoder alone as a language model "
                                       "on the corpus text")
    lm_weight: float = option(1.0, help="weight of the next-token loss on the target")
    ctc_weight: float = option(0.0, help="weight of the character CTC loss on the encoder")
    token_ctc_weight: float = option(0.0, help="weight of the CTC between projected speech and the transcript's "
                                               "token embeddings (pulls speech towards the text it says); an "
                                               "utterance with fewer speech positions than transcript tokens "
                                               "cannot align and adds nothing (near-character tokens at stack 4)")
    token_ctc_vocabulary: str = option("full", help="full: the token CTC's softmax runs over the decoder's whole "
                                                    "vocabulary; corpus: over the training transcripts' tokens "
                                                    "alone (its cost follows the corpus, not a 49k-262k vocabulary)")
    encoder: str = option("full", help="frozen | lora | full")
    projector: str = option("full", help="frozen | full")
    decoder: str = option("full", help="frozen | lora | full")
    lr: float = option(2e-3, help="peak learning rate")
    warmup: float = option(0.1, help="fraction of the stage's steps spent warming up")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    batch_size: int | None = option(None, help="override the loop's batch size in this stage")
    projector_lr: float | None = option(None, help="the projector's own peak learning rate (default: lr); a frozen "
                                                   "or LoRA decoder needs a projector that moves much faster")

    def __post_init__(self):
        require(self.steps >= 0, "stage steps must be >= 0")
        for component in COMPONENTS:
            require(getattr(self, component) in MODES,
                    f"stage {component} mode must be one of {', '.join(MODES)}, not {getattr(self, component)!r}")
        require(self.projector != "lora", "the projector is small: train it full or keep it frozen")
        require(self.lm_weight > 0 or self.ctc_weight > 0 or self.token_ctc_weight > 0,
                "a stage needs a loss: lm_weight, ctc_weight or token_ctc_weight > 0")
        require(self.input in INPUTS, f"stage input must be one of {', '.join(INPUTS)}, not {self.input!r}")
        require(self.input == "speech" or self.ctc_weight == self.token_ctc_weight == 0,
                f"a stage with input {self.input} has no audio for CTC")
        require(0 <= self.warmup < 1, "stage warmup must be in [0, 1)")
        require(self.token_ctc_vocabulary in TOKEN_CTC_VOCABULARIES,
                f"stage token_ctc_vocabulary must be one of {', '.join(TOKEN_CTC_VOCABULARIES)}, "
                f"not {self.token_ctc_vocabulary!r}")


@dataclass
class LoraConfig:
    rank: int = option(8, help="LoRA rank r")
    alpha: int = option(16, help="LoRA alpha (the update is scaled by alpha / rank)")
    dropout: float = option(0.0, help="dropout on the LoRA input")
    decoder_targets: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                        help="module names (or full-name regex) that get LoRA in the decoder")
    encoder_targets: list[str] = option(["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
                                        help="module names (or full-name regex) that get LoRA in the encoder")


@dataclass
class LoopConfig:
    batch_size: int = option(8, help="utterances per optimiser step (per process); why 8: BENCHMARKS.md, "
                                     "measured defaults")
    grad_accum: int = option(1, help="gradient accumulation steps")
    mixed_precision: str = option("no", help="no | bf16 | fp16 (where the device has it) | auto (bf16 autocast where "
                                             "it is faster: a GPU with bf16, or a CPU whose bf16 matmul a probe at "
                                             "start finds faster than float32; else no; one line says which)")
    cpu: bool = option(False, help="force the CPU even when a GPU is present")
    seed: int = option(0, help="seed of initialisation, data order and dropout")
    checkpoint_every: int = option(200, help="optimiser steps between checkpoints (resume points)")
    log_every: int = option(25, help="optimiser steps between loss records (train_log.json; a line each when not on a terminal)")
    log_with: str | None = option(None, help="tensorboard | wandb (through Accelerate's trackers)")
    max_grad_norm: float = option(1.0, help="clip the gradient norm to this (0 = no clipping)")
    max_seconds: float | None = option(20.0, help="cut audio longer than this")
    lora: LoraConfig = option(LoraConfig())

    def __post_init__(self):
        require(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1")
        require(self.mixed_precision in MIXED_PRECISIONS,
                f"mixed_precision must be {', '.join(MIXED_PRECISIONS[:-1])} or {MIXED_PRECISIONS[-1]}, "
                f"not {self.mixed_precision!r}")


# --dtype and --device of a training command (train, base-llm): made one with its --loop by train_placement
TRAIN_DTYPE_HELP = ("training precision, the same as --loop.mixed-precision: float32 = no, bfloat16 = bf16, "
                    "float16 = fp16 (Accelerate autocast; the weights, the optimiser state and the saved model stay "
                    "float32), auto = auto (bf16 autocast where a probe at start finds it faster here, else "
                    "float32); empty: as --loop.mixed-precision")
TRAIN_DEVICE_HELP = ("where training runs: cpu is --loop.cpu; cuda:N trains on that GPU (under accelerate launch "
                     "each process takes its own)")


def train_placement(config) -> None:
    """Check a training config's ``dtype`` and ``device`` and make them one with its ``loop``: the
    dtype is the Accelerate precision (``loop.mixed_precision``), ``--device cpu`` is ``loop.cpu``.
    Both sides given and disagreeing is a one-line error; after this both say what will run."""
    dtype = config.dtype
    if dtype == "auto":  # a training precision, not a dtype a model is loaded in: checked here
        config.dtype = None
    check_placement(config)
    config.dtype = dtype
    loop = config.loop
    given = {value: name for name, value in TRAIN_DTYPES.items()}[loop.mixed_precision]
    if config.dtype is None:
        config.dtype = given
    else:
        require(loop.mixed_precision in ("no", TRAIN_DTYPES[config.dtype]),
                f"--dtype {config.dtype} and --loop.mixed-precision {loop.mixed_precision} disagree: give one "
                f"(--dtype {given} is --loop.mixed-precision {loop.mixed_precision})")
        loop.mixed_precision = TRAIN_DTYPES[config.dtype]
    if loop.cpu:
        require(config.device in ("auto", "cpu"), f"--device {config.device} and --loop.cpu disagree: give one")
        config.device = "cpu"
    elif config.device == "cpu":
        loop.cpu = True


def default_stages() -> dict:
    # measured on the offline default: 60 text-lm steps first left WER at 0.31 instead of 0.045
    # after the same joint stage, so text pretraining is there to switch on, not on by default
    return {
        "text-lm": StageConfig(steps=0, input="lm", encoder="frozen", projector="frozen", lr=2e-3, batch_size=32),
        "ctc": StageConfig(steps=150, lm_weight=0.0, ctc_weight=1.0, projector="frozen", decoder="frozen", lr=2e-3,
                           batch_size=16),
        "joint": StageConfig(steps=1100, ctc_weight=0.3, lr=1e-3),
    }


def base_llm_stages(decoder: str = "lora", ctc_steps: int = 300, copy_steps: int = 200, joint_steps: int = 800,
                    lr: float = 1e-3, projector_lr: float = 3e-3, ctc_weight: float = 0.3,
                    proj_steps: int = 0, token_ctc_vocabulary: str = "full") -> dict:
    """The recipe for a SpeechLLM on a text-pretrained base LLM (``model.decoder.pretrained``),
    with the decoder adapted as ``decoder`` (lora: frozen with LoRA adapters, as in the paper;
    frozen: projector only; full). Up to four stages, in this order:

    - ``ctc``: the encoder warmed up alone (skip it with 0 when ``--encoder-from`` gives a warm one);
    - ``proj``: the projector warmed up alone on the token CTC, encoder and decoder frozen, so the
      decoder never runs and the encoder's states are computed once per utterance: speech leaves
      the projector already looking like the tokens it says (0 steps: skipped);
    - ``copy``: the source transcript in the speech slot, no audio: the decoder learns to read its
      source segment and write it out, cheaply, before any speech arrives;
    - ``joint``: speech, with the encoder's CTC and a token CTC that pulls each projected speech
      position towards the embedding of the token spoken there, so speech enters the decoder
      looking like the text the copy stage taught it to read. The token CTC needs at least as many
      speech positions as tokens: use a projector stack of 2 with the near-character BPE.

    Measured on the English offline corpus (docs/study.md, recipes): the joint stage alone left a LoRA
    decoder at its text-only loss for 800 steps (WER 0.68); on SmolLM2-135M the ``proj`` warm-up
    took WER from 0.399 to 0.171 at fewer joint steps. ``token_ctc_vocabulary`` (``full`` or
    ``corpus``) is the token CTC's softmax in ``proj`` and ``joint`` (StageConfig)."""
    stages = {
        "ctc": StageConfig(steps=ctc_steps, lm_weight=0.0, ctc_weight=1.0, projector="frozen", decoder="frozen",
                           lr=2e-3, batch_size=16),
        "proj": StageConfig(steps=proj_steps, lm_weight=0.0, token_ctc_weight=1.0, encoder="frozen", projector="full",
                            decoder="frozen", lr=3e-3, batch_size=16, token_ctc_vocabulary=token_ctc_vocabulary),
        "copy": StageConfig(steps=copy_steps, input="text", encoder="frozen", projector="frozen", decoder=decoder,
                            lr=2e-3, batch_size=16),
        "joint": StageConfig(steps=joint_steps, ctc_weight=ctc_weight, token_ctc_weight=1.0, lr=lr,
                             projector_lr=projector_lr, decoder=decoder, token_ctc_vocabulary=token_ctc_vocabulary),
    }
    if decoder == "frozen":  # nothing in the decoder to teach: the copy stage would train nothing
        del stages["copy"]
    return {name: stage for name, stage in stages.items() if stage.steps > 0}


def frozen_encoder_stages(stages: dict[str, StageConfig]) -> dict[str, StageConfig]:
    """``stages`` for a pretrained encoder (``model.encoder.pretrained``) kept frozen, as the paper
    keeps its encoders: every stage leaves the encoder frozen, so :func:`speechprune.train.run_stages`
    computes its states once per utterance and caches them, and no stage trains a CTC on it (build
    the model with ``ctc=False``). A stage left with nothing to train (the encoder's CTC warm-up) is
    dropped; the projector's warm-up on the token CTC stays."""
    kept = {}
    for name, stage in stages.items():
        if stage.lm_weight == 0 and stage.token_ctc_weight == 0:  # the encoder's own CTC and nothing else
            continue
        kept[name] = replace(stage, encoder="frozen", ctc_weight=0.0)
    return kept


@dataclass
class TrainConfig:
    train: list[str] = option(help="training manifest(s), comma-separated; ASR and ST sets are mixed")
    out: str = option(help="output directory: becomes the SpeechLLM directory")
    init: str | None = option(None, help="continue from this SpeechLLM directory instead of building one")
    encoder_from: str | None = option(None, help="SpeechLLM directory whose encoder and CTC head (a warmed-up "
                                                 "encoder) replace the newly built ones: one warm-up serves "
                                                 "every decoder")
    model: ModelConfig = option(ModelConfig())
    stages: dict[str, StageConfig] = option(default_stages(), help="training stages by name")
    stage_order: list[str] = option([], help="the order to run stages in (default: as listed; a YAML file that "
                                             "adds a stage appends it after the default ones)")
    loop: LoopConfig = option(LoopConfig())
    resume: bool = option(True, help="continue from OUT/checkpoints when present")
    loading: LoadingPolicy = option(LoadingPolicy(), help="what pretrained parts (--model.decoder.pretrained, --model.encoder.pretrained, --init) may do while they load")
    overwrite: bool = option(False, help="replace an existing --out (else only this run's unfinished work is resumed)")
    skip_bad: bool = option(False, help="skip utterances whose line or audio is bad, and list them, instead of stopping")
    dtype: str | None = dtype_option(None, help=TRAIN_DTYPE_HELP)
    device: str = device_option(help=TRAIN_DEVICE_HELP)

    def __post_init__(self):
        require(len(self.train) > 0, "--train needs at least one manifest")
        train_placement(self)
        require(not (self.init and self.encoder_from), "--init loads a whole SpeechLLM: --encoder-from has no use with it")
        unknown = [name for name in self.stage_order if name not in self.stages]
        require(not unknown, f"stage_order names unknown stage(s) {unknown}; stages are {list(self.stages)}")
        require(any(stage.steps > 0 for stage in self.ordered_stages().values()), "every stage has 0 steps: nothing to train")

    def ordered_stages(self) -> dict[str, StageConfig]:
        names = self.stage_order or list(self.stages)
        return {name: self.stages[name] for name in names}
