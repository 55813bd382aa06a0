"""Configuration of ``speechprune prune`` (:class:`PruneConfig`), the names of the strategies that
choose layers (prune/strategies.py) and the syntax of ``--drop``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from speechprune.config import option, require, require_choice
from speechprune.errors import UserError
from speechprune.options.model import (LAYOUTS, SHORT_NAMES_HELP, LoadingPolicy, check_placement, device_option,
                                        dtype_option)

DEFAULT_INPUT = "auto"
DEFAULT_REGION = "all"
# Strategies that choose from a scan alone (prune/strategies.py maps each name to its function).
SCAN_STRATEGY_NAMES = ("angular", "bi", "last")
# Strategies that need the model and a measurement callable.
MODEL_STRATEGIES = ("iterative", "greedy-score")
STRATEGIES = (*SCAN_STRATEGY_NAMES, *MODEL_STRATEGIES)


def drop_layers(drop: str) -> list[int]:
    """``"10:14,20:22"`` -> [10, 11, 12, 13, 20, 21]; 0-based, end-exclusive blocks. Checks the
    syntax, START < END and no overlap; the range needs the decoder
    (:func:`~speechprune.prune.apply.parse_drop`)."""
    removed: list[int] = []
    for block in drop.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", block)
        if not match:
            raise UserError(f"--drop {drop!r}: {block.strip()!r} is not a START:END block (0-based, end-exclusive, "
                            "e.g. 10:14 removes layers 10..13)")
        start, end = int(match[1]), int(match[2])
        if start >= end:
            raise UserError(f"--drop {drop!r}: block {start}:{end} is empty (END is exclusive and must exceed START)")
        removed.extend(range(start, end))
    if len(set(removed)) != len(removed):
        raise UserError(f"--drop {drop!r}: blocks overlap")
    return sorted(removed)


@dataclass
class PruneConfig:
    model: str = option(help="SpeechLLM directory (speechllm.json + decoder/), Hugging Face speech-LLM or causal LM "
                             "(directory or hub id), or a GGUF causal LM (a .gguf file, or a short name: "
                             f"{SHORT_NAMES_HELP})")
    out: str = option(help="output directory, of the same kind as --model; or, for a GGUF --model, a .gguf file")
    drop: str = option("", help="layers to remove: 0-based, end-exclusive START:END blocks, e.g. 10:14,20:22")
    remove: int | None = option(None, help="number of layers to remove, chosen by --strategy")
    fraction: float | None = option(None, help="fraction of layers to remove, chosen by --strategy: "
                                               "n = floor(fraction*L + 0.5), at most L-1")
    strategy: str = option("angular", help="angular | bi (from --scan) | last | iterative | greedy-score (on --data)")
    scan: str = option("", help="scan directory (holding scan.json) for --strategy angular or bi")
    input: str = option(DEFAULT_INPUT, help="input to choose by: speech | text | auto (speech when the "
                                                       "scan / model has it, else text)")
    region: str = option(DEFAULT_REGION, help="scan region to choose by: speech | prompt | target | last | all")
    data: str = option("", help="calibration data for --strategy iterative (re-scanned after every removal) and "
                                "greedy-score (loss): a manifest, or for text input a .txt file or text dataset; "
                                "encoded once and cached")
    layout: str = option("auto", help="layout of text calibration input: plain (the text alone) | task (the model's "
                                      "own sequence with the source text) | auto (plain for a plain causal LM, task "
                                      "for a speech model)")
    text_column: str | None = option(None, help="text column of a Hugging Face dataset --data (default: text, "
                                                "sentence, content or transcription, the first it has)")
    split: str | None = option(None, help="split of a Hugging Face dataset --data (default: its only split)")
    max_utterances: int = option(0, help="use only the first N utterances of --data (0 = all)")
    batch_size: int = option(8, help="utterances per forward on --data")
    device: str = device_option(help="where --data is run (the export itself is on CPU)")
    verify: bool = option(True, help="reload the export and check it reproduces the original with the layers "
                                     "skipped (logits, cached decoding)")
    loading: LoadingPolicy = option(LoadingPolicy(), help="what --model may do while it loads")
    overwrite: bool = option(False, help="replace an existing --out")
    format: str = option("auto", help="hf (a Hugging Face checkpoint directory) | gguf (a GGUF --model pruned into a "
                                      "GGUF file: kept blocks copied in their own quantization) | auto (gguf when "
                                      "--out ends in .gguf)")
    dtype: str = dtype_option("auto", help="the dtype the model is loaded, measured and exported in (auto: the "
                                           "checkpoint's own; a .gguf export keeps each block's own quantization)")

    def __post_init__(self) -> None:
        require(bool(self.model), "--model is empty")
        require(bool(self.out), "--out is empty")
        require(self.format in ("auto", "hf", "gguf"), f"--format must be hf, gguf or auto, not {self.format!r}")
        require(self.format != "hf" or not self.out.lower().endswith(".gguf"),
                f"--format hf writes a directory; --out {self.out} ends in .gguf")
        require(self.format != "gguf" or self.out.lower().endswith(".gguf"),
                f"--format gguf writes a file: give an --out ending in .gguf, not {self.out}")
        self.drop = _normalise_drop(self.drop)
        if self.drop:
            require(self.remove is None and self.fraction is None and not self.scan and not self.data,
                    "--remove/--fraction/--scan/--data choose layers by --strategy; not with --drop")
            drop_layers(self.drop)  # syntax now; ranges once the decoder's size is known
        else:
            require((self.remove is None) != (self.fraction is None),
                    "give --drop START:END[,...], or exactly one of --remove N / --fraction F with --strategy")
            require_choice(self.strategy, STRATEGIES, "--strategy")
            require(self.remove is None or self.remove >= 0, f"--remove must be >= 0, not {self.remove}")
            require(self.fraction is None or 0 <= self.fraction < 1, f"--fraction must be in [0, 1), not {self.fraction}")
            require(bool(self.scan) or self.strategy not in ("angular", "bi"),
                    f"--strategy {self.strategy} chooses from a scan: give --scan SCAN_DIR")
        require_choice(self.input, ("speech", "text", "auto"), "--input")
        require_choice(self.layout, LAYOUTS + ("auto",), "--layout")
        require(self.max_utterances >= 0, f"--max-utterances must be 0 or more, not {self.max_utterances}")
        require(self.batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}")
        check_placement(self)
        require(self.dtype == "auto" or not self.writes_gguf,
                f"--dtype {self.dtype}: a .gguf export copies each kept block in its own quantization; leave --dtype auto")

    @property
    def writes_gguf(self) -> bool:
        return self.format == "gguf" or (self.format == "auto" and self.out.lower().endswith(".gguf"))


def _normalise_drop(drop: Any) -> str:
    """The ``--drop`` text. A YAML 1.1 reader (the option parser's) turns a lone ``10:14`` into the
    base-60 integer 614; a bare integer is no valid --drop, so such a value is read back as START:END."""
    text = str(drop).strip() if drop is not None else ""
    if re.fullmatch(r"\d+", text) and int(text) >= 60:
        start, end = divmod(int(text), 60)
        return f"{start}:{end}"
    return text


