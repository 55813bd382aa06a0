"""What a run comes down to, the findings: baseline quality with its interval, the largest acceptable
pruning with the layers it removes, speech-vs-text agreement (and for a scan alone its most
redundant blocks), each with what it rests on. The report's first section and the terminal table
are both made from :func:`findings`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from rich.text import Text

from speechprune.console import counts, plural, stderr
from speechprune.evaluate import with_interval
from speechprune.report.discover import Found, Run, read_pruned
from speechprune.scan.result import ScanResult
from speechprune.sweep import largest_text, verdicts_text


# every quality metric a result may hold: (task, metric, label, digits, what it counts besides utterances)
QUALITY = (("asr", "wer", "WER", 3, "word"), ("st", "bleu", "BLEU", 1, "word"),
           ("lm", "perplexity", "perplexity", 2, "token"))


UNITS = {metric: unit for _, metric, _, _, unit in QUALITY}


def rows_unit(rows: list[dict]) -> str:
    """What sweep ``rows`` count besides utterances: tokens for a perplexity sweep, else words."""
    shown = row_metric(rows)
    return UNITS[shown[0]] if shown else "word"


def entry_counts(entry: dict, unit: str = "word") -> str:
    """The utterances and words (tokens, for a perplexity) an evaluation entry rests on."""
    return counts(entry.get("utterances"), entry.get("words", entry.get("tokens")), unit)


def row_metric(rows: list[dict]) -> tuple[str, str, int] | None:
    """(metric, label, digits) of the first quality metric that sweep ``rows`` hold."""
    return next(((metric, label, digits) for _, metric, label, digits, _ in QUALITY
                 if any(r.get(metric) is not None for r in rows)), None)


@dataclass
class Finding:
    what: str
    value: str
    basis: str  # the utterances (and words) it rests on, and how it was judged
    source: str  # the output it comes from


def interval_text(value: float | None, low: float | None, high: float | None, digits: int = 3) -> str:
    """``0.046 [0.031, 0.062]`` from a value and its interval's ends (as a sweep row holds them)."""
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def scan_counts(result: ScanResult, region: str) -> str:
    """``200 utterances; 5,120 speech and 3,011 text positions`` (a consensus: the conditions it averages)."""
    if result.is_consensus:
        return f"the scans of {plural(len(result.consensus_of), 'condition')}"
    positions = [f"{entry.count:,} {name}" for name, regions in result.inputs.items()
                 if (entry := regions.get(region)) is not None and entry.count is not None]
    utterances = (result.data or {}).get("utterances")
    return (counts(utterances) + (f"; {' and '.join(positions)} positions ({region})" if positions else ""))


def model_of(evaluation: Found, run: Run) -> tuple[Path | None, dict | None, dict | None]:
    """The model an evaluation scored, with its pruning.json and heal.json where it has them (from
    the run when the model lies inside it, else from the model's folder)."""
    model = evaluation.data.get("model") or evaluation.config.get("model")
    if not model:
        return None, None, None
    folder = Path(model)
    found = next((m for m in run.models if m.path.resolve() == folder.resolve()), None)
    if found is None and (folder / "pruning.json").is_file():
        try:
            found = read_pruned(folder)
        except (OSError, ValueError):
            found = None
    return folder, found and found.data, found and found.extra.get("heal")


def swept_model(sweep: Found, run: Run) -> str:
    """The model a sweep pruned, as the report names it."""
    model = sweep.config.get("model")
    return run.relative(Path(model)) if model else "?"


def _quality(run: Run) -> list[Finding]:
    """Every evaluation's quality, the unpruned models first (the baseline), then pruned, then healed."""
    found = []
    described = [(evaluation, *model_of(evaluation, run)) for evaluation in run.evals]
    for evaluation, folder, pruning, heal in sorted(described, key=lambda d: (d[2] is not None, d[3] is not None)):
        name = run.relative(folder) if folder is not None else "?"
        if pruning is not None:
            name += (f" (pruned: layers {' '.join(map(str, pruning.get('removed', [])))} removed"
                     + ("; healed)" if heal is not None else ")"))
        for set_name, metrics in evaluation.data["sets"].items():
            for task, metric, label, digits, unit in QUALITY:
                entry = metrics.get(task)
                if isinstance(entry, dict) and entry.get(metric) is not None:
                    found.append(Finding(f"{label} of {name} on {set_name}",
                                         with_interval(entry, metric, digits),
                                         entry_counts(entry, unit) + "; 95% bootstrap",
                                         run.relative(evaluation.path)))
    for sweep in run.sweeps:
        for row in sweep.extra["rows"]:
            shown = row_metric([row])
            if row["removed"] == 0 and shown is not None:
                metric, label, digits = shown
                text = interval_text(row[metric], row.get(f"{metric}_low"), row.get(f"{metric}_high"), digits)
                found.append(Finding(f"sweep baseline {label} of {swept_model(sweep, run)} on {row['set']} "
                                     "(nothing removed)", text,
                                     counts(row.get("utterances"), row.get("words"), UNITS[metric]) + "; 95% bootstrap",
                                     run.relative(sweep.path)))
    return found


def line_of(key: str) -> tuple[str, str, str]:
    """(strategy, healing, test set) of a sweep summary's ``largest_acceptable`` key
    ``strategy/heal/set`` (a test set's name may hold a '/')."""
    strategy, heal, set_name = key.split("/", 2)
    return strategy, heal, set_name


def _largest(run: Run) -> list[Finding]:
    found = []
    for sweep in run.sweeps:
        for key, best in sweep.data.get("largest_acceptable", {}).items():
            strategy, heal, set_name = line_of(key)
            removed = " ".join(map(str, best.get("removed", []))) or "none"
            found.append(Finding(f"largest acceptable fraction of {swept_model(sweep, run)} ({strategy}, healing {heal}, "
                                 f"{set_name})",
                                 f"{largest_text(best)}; removes layers {removed}"
                                 + (f"; {verdicts_text(best)}" if best.get("verdicts") else ""),
                                 "at most " + counts(best.get("utterances"), best.get("words"),
                                                     rows_unit(sweep.extra["rows"]))
                                 + "; paired bootstrap against the baseline, in looks", run.relative(sweep.path)))
    return found


def size_points(run: Run) -> list[dict]:
    """The largest acceptable fractions of the run's sweeps set against their decoders' sizes, for
    models of several sizes (a scale study, ShortGPT's table by size): one point per swept model and
    strategy/healing/test-set line, with ``model``, ``parameters`` and ``layers`` of its unpruned
    decoder, ``strategy``, ``heal``, ``set``, the sweep's ``largest`` entry, the ``unit`` its counts
    are in besides utterances, and the ``sweep`` it comes from. A point that two sweeps of one model
    both give (the same line swept from two scans) is ambiguous and left out, and so is a line whose
    points are all of one size: nothing to compare."""
    by_point: dict[tuple, list[dict]] = {}
    for sweep in run.sweeps:
        decoder = sweep.extra.get("decoder") or {}
        if not decoder.get("parameters"):
            continue
        model = swept_model(sweep, run)
        for key, best in sweep.data.get("largest_acceptable", {}).items():
            strategy, heal, set_name = line_of(key)
            by_point.setdefault((model, strategy, heal, set_name), []).append(
                {"model": model, **decoder, "strategy": strategy, "heal": heal, "set": set_name, "largest": best,
                 "fraction": best["fraction"], "fraction_not_ruled_out": best.get("fraction_not_ruled_out",
                                                                                  best["fraction"]),
                 "unit": rows_unit(sweep.extra["rows"]), "sweep": run.relative(sweep.path)})
    points = [found[0] for found in by_point.values() if len(found) == 1]
    sizes: dict[tuple, set[int]] = {}
    for p in points:
        sizes.setdefault((p["strategy"], p["heal"], p["set"]), set()).add(p["parameters"])
    return sorted((p for p in points if len(sizes[p["strategy"], p["heal"], p["set"]]) > 1),
                  key=lambda p: (p["set"], p["strategy"], p["heal"], p["parameters"], p["model"]))


def _is_speech_text(a: str, b: str) -> bool:
    ends = {a.rsplit("/", 1)[-1], b.rsplit("/", 1)[-1]}
    return ends == {"speech", "text"} and a.rsplit("/", 1)[0] == b.rsplit("/", 1)[0]


def _agreement(run: Run) -> list[Finding]:
    found = []
    for compare in run.compares:
        for pair in compare.data["pairs"]:
            if pair["region"] == "all" and _is_speech_text(pair["a"], pair["b"]):
                found.append(Finding(f"speech vs text agreement ({pair['a']} vs {pair['b']}, all positions)",
                                     f"Spearman {pair['spearman']:.3f}; same l*(n) for "
                                     f"{pair['same_best_start']:.0%} of block sizes",
                                     "the compared scans (see Agreement)", run.relative(compare.path)))
    if found:
        return found
    from speechprune.scan.compare import agreement

    for scan in run.scans:
        result: ScanResult = scan.data
        speech, text = (result.inputs.get(i, {}).get("all") for i in ("speech", "text"))
        if speech is not None and text is not None and speech.counted and text.counted:
            measured = agreement(speech.angular, text.angular, [])
            found.append(Finding("speech vs text agreement (all positions)",
                                 f"Spearman {measured['spearman']:.3f}; same l*(n) for "
                                 f"{measured['same_best_start']:.0%} of block sizes",
                                 scan_counts(result, "all"), run.relative(scan.path)))
    return found


def _redundant(run: Run) -> list[Finding]:
    """For a run with scans but nothing pruned: the most redundant blocks and the lowest-BI layer."""
    found = []
    for scan in run.scans:
        result: ScanResult = scan.data
        name = result.resolve_input("auto")
        entry = result.inputs.get(name, {}).get("all")
        if entry is None or not entry.counted or not entry.best_blocks:
            continue
        shown = entry.best_blocks[: min(3, len(entry.best_blocks))]
        found.append(Finding(f"most redundant blocks ({name} input, all positions)",
                             "; ".join(f"n={b['n']}: [{b['start']},{b['end']}) d={b['distance']:.3f}" for b in shown),
                             scan_counts(result, "all"), run.relative(scan.path)))
        if entry.block_influence:
            lowest = min(range(len(entry.block_influence)), key=lambda l: entry.block_influence[l])
            found.append(Finding(f"lowest Block Influence ({name} input): the first layer bi removes",
                                 f"layer {lowest} (BI {entry.block_influence[lowest]:.4f})",
                                 scan_counts(result, "all"), run.relative(scan.path)))
    return found


def findings(run: Run) -> list[Finding]:
    return _quality(run) + _largest(run) + _agreement(run) + ([] if run.sweeps else _redundant(run))


def print_summary(run: Run, html_path: Path, markdown_path: Path) -> None:
    table = Table(title=f"speechprune report: {run.root}")
    for column in ("finding", "value", "rests on"):
        table.add_column(column, overflow="fold")
    for finding in findings(run):
        table.add_row(Text(finding.what), Text(finding.value), Text(finding.basis))  # text, not markup
    stderr().print(table)
    found = ", ".join(plural(len(getattr(run, k)), noun) for k, noun in
                      (("scans", "scan"), ("compares", "compare"), ("sweeps", "sweep"), ("evals", "eval"),
                       ("studies", "study"), ("models", "pruned model")) if getattr(run, k))
    print(f"report: {html_path} (and {markdown_path.name} beside it; found {found})")
