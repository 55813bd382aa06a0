"""ShortGPT's table, by size: every real LLM that installs here (SmolLM2-135M, Gemma-3-270M,
Qwen2.5-Coder-0.5B and -1.5B) scanned on calibration text and swept by held-out perplexity against
the fraction of layers removed (angular distance, Block Influence, last layers; angular also
healed), with the largest fraction within the rule (perplexity at most +25%) and its interval's
upper end, then one table and one figure of the largest acceptable fraction against parameters.

Each model runs through ``bench/plain_llm_pruning.py`` (the same texts, scan and sweeps, through the
Python API of ``speechprune scan`` and ``speechprune sweep --metric perplexity``): 800 held-out
fortunes, judged in the sweeps' looks (100, 200, 400, 800 texts). Every number of the table is read
from the sweeps' summary.json and results.json. A rerun continues where it stopped.

    .venv/bin/python bench/scale_text_pruning.py --out runs/scale-text      # needs the four models installed
    .venv/bin/python bench/scale_text_pruning.py --quick --out /tmp/scale-quick   # tiny GGUF models, seconds

Writes OUT/scale.md (the tables), OUT/scale.json (the rows) and OUT/scale.png (the figure).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from plain_llm_pruning import (Settings, add_options, fortunes, model_folder, prune_on_text,  # noqa: E402
                               settings_from, split)
from speechprune.report.discover import unpruned_decoder  # noqa: E402
from speechprune.report.figures import parameters_text, size_figure  # noqa: E402
from speechprune.report.summary import line_of  # noqa: E402

MODELS = "smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b"
LINES = [("angular", "none"), ("angular", "receiving-mlp"), ("bi", "none"), ("last", "none")]
QUICK_SETS = {"calibration": 16, "healing": 32, "heldout": 40}
QUICK_WORDS = ("the cat dog bird sees runs eats sleeps on a red big small house tree river near under old new "
               "sings flies and with").split()


# ----------------------------------------------------------------------------- quick mode
def quick_models(folder: Path) -> list[str]:
    """Three tiny GGUF decoders written by the test helpers: a 3-layer Llama, Qwen2 of 4 and 8 layers."""
    sys.path.insert(0, str(HERE.parent))
    from tests.helpers import write_tiny_gguf

    made = [write_tiny_gguf(folder / "tiny-llama-3.gguf", "llama", layers=3),
            write_tiny_gguf(folder / "tiny-qwen2-4.gguf", "qwen2", layers=4, seed=1),
            write_tiny_gguf(folder / "tiny-qwen2-8.gguf", "qwen2", layers=8, seed=2)]
    return [str(path) for path in made]


def quick_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(QUICK_WORDS) for _ in range(rng.randint(5, 12))) + "." for _ in range(count)]


# ----------------------------------------------------------------------------- the table
def _read(path: Path) -> dict | list:
    return json.loads(path.read_text(encoding="utf-8"))


def model_rows(model: str, folder: Path, dtype: str) -> list[dict]:
    """One row per strategy/healing line of ``model``'s sweeps, every number read from the sweep's
    summary.json (the line's largest acceptable fraction, its upper end, the verdicts that decide
    them and the baseline perplexity) and its unpruned cell (parameters, layers)."""
    rows = []
    for sweep in ("sweep", "sweep-healed"):
        if not (folder / sweep / "summary.json").is_file():
            continue
        summary = _read(folder / sweep / "summary.json")
        decoder = unpruned_decoder(folder / sweep, {"dtype": dtype})
        for key, entry in summary["largest_acceptable"].items():
            strategy, heal, set_name = line_of(key)
            base = summary["baseline"][set_name]["lm"]
            rows.append({
                "model": model, "parameters": decoder["parameters"], "layers": decoder["layers"],
                "strategy": strategy, "heal": heal, "set": set_name,
                "baseline_perplexity": base["perplexity"], "baseline_interval": base["perplexity_interval"],
                "baseline_texts": base["utterances"], "baseline_tokens": base["tokens"],
                "fraction": entry["fraction"], "removed_count": entry["removed_count"], "removed": entry["removed"],
                "fraction_not_ruled_out": entry["fraction_not_ruled_out"],
                "removed_count_not_ruled_out": entry["removed_count_not_ruled_out"],
                "decided_at": entry["utterances"], "verdicts": entry["verdicts"],
                "summary": str(Path(folder.name) / sweep / "summary.json")})
    return sorted(rows, key=lambda r: LINES.index((r["strategy"], r["heal"])) if (r["strategy"], r["heal"]) in LINES
                  else len(LINES))


def _ppl(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 1e4 else f"{value:.2g}"


def _interval(value: float, low: float | None, high: float | None) -> str:
    return f"{_ppl(value)} [{_ppl(low)}, {_ppl(high)}]" if low is not None else _ppl(value)


def _healing(heal: str) -> str:
    return "none" if heal == "none" else f"LoRA, {heal}"


def _verdicts(row: dict) -> str:
    return "; ".join(f"{v['removed_count']} {v['verdict']} at {v['utterances']}" for v in row["verdicts"]) or "-"


def by_size_table(rows: list[dict]) -> str:
    lines = ["| model | parameters | layers | strategy | healing | baseline perplexity [95% CI] | largest acceptable "
             "fraction | layers removed | largest not ruled out | decided at | verdicts (layers removed: verdict at "
             "texts) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["parameters"]):
        removed = f"{r['removed_count']}" + (f" ({' '.join(map(str, r['removed']))})" if r["removed"] else "")
        lines.append(
            f"| {r['model']} | {parameters_text(r['parameters'])} | {r['layers']} | {r['strategy']} | "
            f"{_healing(r['heal'])} | "
            f"{_interval(r['baseline_perplexity'], *r['baseline_interval'])} ({r['baseline_texts']} texts, "
            f"{r['baseline_tokens']:,} tokens) | {r['fraction']:.3f} | {removed} | "
            f"{r['fraction_not_ruled_out']:.3f} ({r['removed_count_not_ruled_out']} layers) | "
            f"{r['decided_at']} texts | {_verdicts(r)} |")
    return "\n".join(lines) + "\n"


def curve_table(model: str, folder: Path) -> str:
    """Held-out perplexity against the layers removed, one column per strategy/healing line, from the
    sweeps' results.json (``-``: not run, its line stopped below it)."""
    cells: dict[tuple[int, str, str], dict] = {}
    for sweep in ("sweep", "sweep-healed"):
        if (folder / sweep / "results.json").is_file():
            for row in _read(folder / sweep / "results.json"):
                cells.setdefault((row["removed"], row["strategy"], row["heal"]), row)
    lines_here = [line for line in LINES if any((s, h) == line for _, s, h in cells)]
    header = ["layers removed", "fraction"] + [s + ("" if h == "none" else ", healed") for s, h in lines_here]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    baseline = next((r for (n, _, _), r in cells.items() if n == 0), None)
    if baseline:
        lines.append(f"| 0 | 0 | {_interval(baseline['perplexity'], baseline['perplexity_low'], baseline['perplexity_high'])}"
                     + " |" * len(lines_here))
    for n in sorted({n for n, _, _ in cells if n}):
        row = next(r for (m, _, _), r in cells.items() if m == n)
        out = [str(n), f"{row['fraction']:.3f}"]
        for strategy, heal in lines_here:
            r = cells.get((n, strategy, heal))
            out.append("-" if r is None else f"{_interval(r['perplexity'], r['perplexity_low'], r['perplexity_high'])} "
                       f"{r['verdict']}" + (f" at {r['decided_at']}" if r.get("decided_at") else
                                            f" after {r['utterances']}"))
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: Path) -> None:
    """The largest acceptable fraction against parameters: the figure ``speechprune report`` draws of
    sweeps of several sizes, written to ``path``."""
    drawn = size_figure(rows)  # selects matplotlib's Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    drawn.savefig(path, dpi=120)
    plt.close(drawn)


def write_outputs(out: Path, models: list[str], settings: Settings) -> list[dict]:
    rows = [row for model in models for row in model_rows(model_folder(model), out / model_folder(model),
                                                          settings.dtype)]
    if not rows:
        return rows
    rules = _read(out / model_folder(models[0]) / "sweep" / "summary.json")["rules"]
    md = ["# ShortGPT's table, by size", "",
          f"Held-out perplexity within +{rules['perplexity_rise']:.0%} of the unpruned model's; verdicts by paired "
          f"bootstrap at looks of {', '.join(map(str, rules['looks']))} texts (at most {rules['alpha']:g} chance of "
          f"calling a model at the limit acceptable). Largest acceptable fraction: the largest removed fraction "
          f"that it and every smaller one are decided acceptable at; largest not ruled out: its upper end "
          f"(acceptable or undecided). Every number from the sweeps' summary.json (rows: scale.json).", "",
          by_size_table(rows), "![largest acceptable fraction against parameters](scale.png)", ""]
    for model in models:
        name = model_folder(model)
        row = next(r for r in rows if r["model"] == name)
        md += [f"## {name} ({row['layers']} layers, {parameters_text(row['parameters'])} parameters)", "",
               curve_table(name, out / name)]
    (out / "scale.md").write_text("\n".join(md), encoding="utf-8")
    (out / "scale.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    figure(rows, out / "scale.png")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/scale-text")
    parser.add_argument("--quick", action="store_true", help="three tiny GGUF models and synthetic texts (40 held "
                                                             "out, looks 10/20/40): checks the bench in seconds")
    add_options(parser, MODELS, healed_stop_line="any-set")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        os.environ.setdefault("SPEECHPRUNE_CACHE", str(out / "cache"))  # tiny dequantised models stay here
        models = quick_models(out / "models")
        texts = split(quick_texts(sum(QUICK_SETS.values())), out / "texts", sets=QUICK_SETS)
        if args.fractions == "0,0.1,0.2,0.3,0.4,0.5":
            args.fractions = "0,0.25,0.5"
        settings = settings_from(args, looks=[10, 20, 40], batch_size=8)
        settings.heal_steps = min(settings.heal_steps, 2)
    else:
        models = [m for m in args.models.split(",") if m]
        texts = split(fortunes(), out / "texts")
        settings = settings_from(args)
    held_out = sum(1 for line in texts["heldout"].read_text(encoding="utf-8").splitlines() if line.strip())
    print(f"held-out texts: {held_out} (looks {', '.join(map(str, settings.looks))})", flush=True)
    seconds = {}
    for model in models:
        seconds |= prune_on_text(model, texts, out / model_folder(model), settings)
    rows = write_outputs(out, models, settings)
    for name, value in seconds.items():
        print(f"{name}: {value:.0f} s")
    print(f"wrote {out / 'scale.md'}, {out / 'scale.json'}, {out / 'scale.png'}")
    return rows


if __name__ == "__main__":
    main()
