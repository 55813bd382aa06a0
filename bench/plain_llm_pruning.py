"""A plain LLM pruned on text, as PruneMe and ShortGPT users prune one: scan on calibration text,
remove 0-50% of the layers by angular distance, Block Influence and last-layers, and measure the
held-out perplexity without and with a short LoRA heal. Runs on the real decoders that install
from the package registry (SmolLM2-135M, Gemma-3-270M, Qwen2.5-Coder-0.5B and -1.5B), through the
Python API of ``speechprune scan`` and ``speechprune sweep --metric perplexity``.
``bench/scale_text_pruning.py`` runs the same for a list of models and tabulates them by size.

Text: English fortunes from Debian's ``fortunes`` package (quotes, jokes, sayings; ``apt-get install
fortunes``), one per line, split by a seeded shuffle into calibration (200), healing (800) and
held-out (800: the sweeps' last look) sets that share no text. The first 200 held-out texts are
the 200 of the earlier runs (the split takes the sets in that order).

    python bench/plain_llm_pruning.py --out runs/plain-llm [--models smollm2-135m,gemma3-270m]
    speechprune report runs/plain-llm
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
SETS = {"calibration": 200, "healing": 800, "heldout": 800}
LOOKS = [100, 200, 400, 800]  # the sweeps' default looks (speechprune.looks.LOOKS)


def fortunes() -> list[str]:
    """Every fortune of the plain-text files as one line: prose of 6-40 words, attributions cut."""
    if not FORTUNES.is_dir():
        sys.exit(f"{FORTUNES} is missing: apt-get install fortunes")
    texts = set()
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix or not path.is_file():
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [line.strip() for line in entry.splitlines() if line.strip()]
            lines = [line for line in lines if not line.startswith("--")]  # "-- Author, Book"
            text = re.sub(r"\s+", " ", " ".join(lines))
            words = text.split()
            if 6 <= len(words) <= 40 and text.isascii() and not re.search(r"[|_<>{}\\^~]", text):
                texts.add(text)
    return sorted(texts)


def split(texts: list[str], out: Path, seed: int = 0, sets: dict[str, int] | None = None) -> dict[str, Path]:
    """The sets (``SETS``: name -> count), in order, from one seeded shuffle of ``texts``, one text a
    line in ``out/<name>.txt``. A set gets what is left when the texts run out (said on stderr)."""
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    out.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for name, count in (sets or SETS).items():
        chosen = texts[start:start + count]
        if len(chosen) < count:
            print(f"{name}: {len(chosen)} texts, not {count} (the source has {len(texts)})", file=sys.stderr)
        paths[name] = out / f"{name}.txt"
        paths[name].write_text("\n".join(chosen) + "\n", encoding="utf-8")
        start += count
    return paths


@dataclass
class Settings:
    """What every model's runs share (the command's options)."""

    fractions: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    strategies: list[str] = field(default_factory=lambda: ["angular", "bi", "last"])  # compared unhealed
    healed_strategies: list[str] = field(default_factory=lambda: ["angular"])  # also healed
    heal_steps: int = 20
    healed_stop_line: str = "never"  # any-set: a healed line stops at its first fraction not acceptable
    looks: list[int] = field(default_factory=lambda: list(LOOKS))
    batch_size: int = 16
    dtype: str = "float32"


def add_options(parser: argparse.ArgumentParser, models: str, healed_stop_line: str = "never") -> None:
    parser.add_argument("--models", default=models, help="comma-separated: GGUF short names, .gguf files, folders")
    parser.add_argument("--fractions", default="0,0.1,0.2,0.3,0.4,0.5")
    parser.add_argument("--strategies", default="angular,bi,last", help="compared without healing")
    parser.add_argument("--healed-strategies", default="angular", help="also healed (LoRA on the receiving MLP)")
    parser.add_argument("--heal-steps", type=int, default=20)
    parser.add_argument("--healed-stop-line", default=healed_stop_line, choices=["never", "any-set"],
                        help="any-set: a healed line stops at its first fraction not acceptable (the largest "
                             "acceptable fraction and the largest not ruled out end below it)")


def settings_from(args: argparse.Namespace, **more) -> Settings:
    names = lambda text: [s for s in text.split(",") if s]  # noqa: E731
    return Settings(fractions=[float(f) for f in args.fractions.split(",")], strategies=names(args.strategies),
                    healed_strategies=names(args.healed_strategies), heal_steps=args.heal_steps,
                    healed_stop_line=args.healed_stop_line, **more)


def model_folder(model: str) -> str:
    """The folder a model's runs write: its short name, or its file or folder name (``.gguf`` cut)."""
    return Path(model).name.removesuffix(".gguf")


def _estimate_from_first_cell(model: str, folder: Path, scan_dir: Path, texts: dict[str, Path], settings: Settings,
                              started: float, done: threading.Event) -> None:
    """Wait for the sweep's first cell (the unpruned baseline at its first look) and print how long
    the model's sweeps will take, from that cell's loading and per-text seconds."""
    from speechprune.prune.strategies import layers_for_fraction
    from speechprune.scan.result import ScanResult

    path = folder / "sweep" / "cells" / "baseline.json"
    while not path.is_file() and not done.wait(0.25):
        pass
    try:
        seconds = path.stat().st_mtime - started  # when the cell was written (wall clock)
        cell = json.loads(path.read_text())
    except (OSError, ValueError):  # not written (the sweep stopped first): no estimate
        return
    measured = next(iter(cell["sets"].values()))
    scored = len(next(iter(cell["rows"].values())))
    per_text = measured["decode_seconds"] / max(scored, 1)
    loading = max(seconds - measured["decode_seconds"], 0.0)
    num_layers = ScanResult.load(scan_dir).num_layers
    levels = len({n for f in settings.fractions if (n := layers_for_fraction(f, num_layers))})
    unhealed, healed = levels * len(settings.strategies), levels * len(settings.healed_strategies)
    held_out = sum(1 for line in texts["heldout"].read_text(encoding="utf-8").splitlines() if line.strip())
    first, last = min(settings.looks[0], held_out), min(settings.looks[-1], held_out)
    heal = healed * settings.heal_steps * 3 * settings.batch_size * per_text  # a step: a forward and its backward
    low = (unhealed + healed) * (loading + first * per_text) + heal
    high = (unhealed + healed) * (loading + last * per_text) + heal + (last - first) * per_text
    unit, name = (1, "s") if high < 120 else (60, "min")
    print(f"{model}: first cell (unpruned, {scored} texts) {seconds:.0f} s: {loading:.0f} s loading, {per_text:.2f} s "
          f"a text; estimate for its other {unhealed} unhealed and {healed} healed cells: {low / unit:.0f}-"
          f"{high / unit:.0f} {name} (every cell decided at {first} texts ... every cell reading {last}; healing "
          f"{heal / unit:.0f} {name} of it, a step of {settings.batch_size} texts taken as 3 passes)", flush=True)


def prune_on_text(model: str, texts: dict[str, Path], folder: Path, settings: Settings,
                  log: Callable[[str], None] = print) -> dict[str, float]:
    """Scan ``model`` on the calibration texts, then sweep it over ``settings.fractions`` on the
    held-out texts by perplexity: every strategy unhealed, the healed strategies healed too (that
    sweep takes the unhealed one's baseline). A rerun continues where it stopped. Returns the
    seconds of each step; prints the time estimate of the sweeps once their first cell is done."""
    from speechprune.scan.run import ScanConfig, scan
    from speechprune.sweep import SweepConfig, sweep

    seconds = {}
    scan_dir = folder / "scan"
    if not (scan_dir / "scan.json").is_file():  # a rerun continues where it stopped
        log(f"+ speechprune scan --model {model} --data {texts['calibration']} --out {scan_dir}")
        started = time.perf_counter()
        scan(ScanConfig(model=model, data=str(texts["calibration"]), out=str(scan_dir), dtype=settings.dtype))
        seconds[f"{model} scan"] = time.perf_counter() - started
    common = dict(model=model, scan=str(scan_dir), train=[str(texts["healing"])], test=[str(texts["heldout"])],
                  metric="perplexity", fractions=list(settings.fractions), looks=list(settings.looks),
                  batch_size=settings.batch_size, dtype=settings.dtype)
    # healing backpropagates through every layer above the healed one: the costly half, so it runs
    # for the strategies named, the plain comparison for all
    runs = [("sweep", dict(strategies=list(settings.strategies), heal=["none"]))]
    if settings.healed_strategies:
        runs.append(("sweep-healed", dict(strategies=list(settings.healed_strategies), heal=["receiving-mlp"],
                                          heal_steps=settings.heal_steps, stop_line=settings.healed_stop_line,
                                          reuse=[str(folder / "sweep")])))
    for name, specific in runs:
        if (folder / name / "summary.json").is_file():
            continue
        log(f"+ speechprune sweep --model {model} ... --out {folder / name} ({', '.join(specific['strategies'])}, "
            f"heal {specific['heal'][0]})")
        started, done = time.time(), threading.Event()
        watcher = None
        if name == "sweep" and not (folder / name / "cells" / "baseline.json").is_file():
            watcher = threading.Thread(target=_estimate_from_first_cell, daemon=True,
                                       args=(model, folder, scan_dir, texts, settings, started, done))
            watcher.start()
        try:
            sweep(SweepConfig(**common, **specific, out=str(folder / name)))
        finally:
            done.set()
            if watcher is not None:
                watcher.join()
        seconds[f"{model} {name}"] = time.time() - started
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/plain-llm")
    add_options(parser, "smollm2-135m,gemma3-270m")
    args = parser.parse_args()
    out = Path(args.out)
    texts = split(fortunes(), out / "texts")
    settings = settings_from(args)
    seconds = {}
    for model in args.models.split(","):
        seconds |= prune_on_text(model, texts, out / model_folder(model), settings)
    for name, value in seconds.items():
        print(f"{name}: {value:.0f} s")


if __name__ == "__main__":
    main()
