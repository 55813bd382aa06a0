"""Configuration of ``speechprune base-llm`` (:class:`BaseLLMConfig`): a decoder pretrained on
grammar text alone (:mod:`speechprune.base_llm`)."""

from __future__ import annotations

from dataclasses import dataclass

from speechprune.config import option, require
from speechprune.options.data import LANGUAGES
from speechprune.options.model import DEFAULT_PROMPTS, DecoderConfig, device_option, dtype_option
from speechprune.options.train import TRAIN_DEVICE_HELP, TRAIN_DTYPE_HELP, LoopConfig, train_placement


@dataclass
class BaseLLMConfig:
    out: str = option(help="output directory: a Hugging Face causal-LM checkpoint with its tokenizer")
    languages: list[str] = option(["en", "fr", "es"], help="languages of the text (the grammar has en, fr, de, es)")
    sentences: int = option(20000, help="distinct meanings rendered in every language for training")
    sentences_per_document: int = option(4, help="sentences read together as one training sequence")
    repeat_probability: float = option(0.4, help="chance that a sentence of a document repeats an earlier one of "
                                                 "the same document (what teaches the model to read its context)")
    dev_sentences: int = option(300, help="held-out meanings per language for the dev perplexity")
    seed: int = option(1, help="seed of the sentences (the speech corpus uses its own seed)")
    exclude: list[str] = option([], help="manifests whose sentences the base LLM must never read (e.g. the speech "
                                         "corpus's dev and test sets, so in-domain test text stays unseen)")
    decoder: DecoderConfig = option(DecoderConfig(), help="the decoder to build (config, BPE vocabulary)")
    prompts: dict = option(dict(DEFAULT_PROMPTS), help="task prompts the tokenizer should know (weighted like text "
                                                       "a SpeechLLM reads before every target)")
    steps: int = option(3000, help="optimiser steps")
    lr: float = option(2e-3, help="peak learning rate (warm-up, then cosine decay)")
    batch_size: int = option(8, help="documents per optimiser step")
    eval_every: int = option(100, help="steps between dev-perplexity measurements")
    loop: LoopConfig = option(LoopConfig(checkpoint_every=500))
    overwrite: bool = option(False, help="replace an existing --out (else only this run's unfinished work is resumed)")
    dtype: str | None = dtype_option(None, help=TRAIN_DTYPE_HELP)
    device: str = device_option(help=TRAIN_DEVICE_HELP)

    def __post_init__(self):
        require(len(self.languages) > 0, "--languages is empty")
        for lang in self.languages:
            require(lang in LANGUAGES, f"--languages: the grammar has no {lang!r} ({', '.join(LANGUAGES)})")
        require(self.sentences >= 1 and self.dev_sentences >= 1, "--sentences and --dev-sentences must be >= 1")
        require(self.steps >= 1 and self.eval_every >= 1, "--steps and --eval-every must be >= 1")
        require(self.sentences_per_document >= 1, "--sentences-per-document must be >= 1")
        require(0 <= self.repeat_probability < 1, "--repeat-probability must be in [0, 1)")
        require(self.decoder.pretrained is None, "the base LLM is built here: leave decoder.pretrained empty")
        train_placement(self)
