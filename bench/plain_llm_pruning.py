"""A plain LLM pruned on text, as PruneMe and ShortGPT users prune one: scan on calibration text,
remove 0-50% of the layers by angular distance, Block Influence and last-layers, and measure the
held-out perplexity without and with a short LoRA heal. Runs on the real decoders that install
from the package registry (SmolLM2-135M, Gemma-3-270M), through the CLI alone.

Text: English fortunes from Debian's ``fortunes`` package (quotes, jokes, sayings; ``apt-get install
fortunes``), one per line, split by a seeded shuffle into calibration, healing and held-out sets
that share no text.

    python bench/plain_llm_pruning.py --out runs/plain-llm [--models smollm2-135m,gemma3-270m]
    speechprune report runs/plain-llm
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import time
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
SETS = {"calibration": 200, "healing": 800, "heldout": 200}


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


def split(texts: list[str], out: Path, seed: int = 0) -> dict[str, Path]:
    random.Random(seed).shuffle(texts)
    paths, start = {}, 0
    for name, count in SETS.items():
        paths[name] = out / f"{name}.txt"
        paths[name].write_text("\n".join(texts[start:start + count]) + "\n", encoding="utf-8")
        start += count
    return paths


def run(argv: list[str]) -> float:
    print("+ speechprune " + " ".join(argv), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "speechprune.cli", *argv], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/plain-llm")
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--fractions", default="0,0.1,0.2,0.3,0.4,0.5")
    parser.add_argument("--strategies", default="angular,bi,last", help="compared without healing")
    parser.add_argument("--healed-strategies", default="angular", help="also healed (LoRA on the receiving MLP)")
    parser.add_argument("--heal-steps", default="20")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "texts").mkdir(parents=True, exist_ok=True)
    texts = split(fortunes(), out / "texts")
    seconds = {}
    for model in args.models.split(","):
        folder = out / model
        if not (folder / "scan" / "scan.json").is_file():  # a rerun continues where it stopped
            seconds[f"{model} scan"] = run(["scan", "--model", model, "--data", str(texts["calibration"]),
                                            "--out", str(folder / "scan")])
        common = ["--model", model, "--scan", str(folder / "scan"), "--train", str(texts["healing"]),
                  "--test", str(texts["heldout"]), "--metric", "perplexity", "--fractions", args.fractions,
                  "--batch-size", "16"]
        # healing backpropagates through every layer above the healed one: the costly half, so it runs
        # for the strategies named, the plain comparison for all
        seconds[f"{model} sweep"] = run(["sweep", *common, "--strategies", args.strategies, "--heal", "none",
                                         "--out", str(folder / "sweep")])
        if args.healed_strategies:
            seconds[f"{model} sweep healed"] = run([
                "sweep", *common, "--strategies", args.healed_strategies, "--heal", "receiving-mlp",
                "--heal-steps", args.heal_steps, "--out", str(folder / "sweep-healed")])
    for name, value in seconds.items():
        print(f"{name}: {value:.0f} s")


if __name__ == "__main__":
    main()
