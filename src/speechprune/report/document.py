"""What the report says, built once from a discovered run as a list of sections of plain blocks
(headings, sentences, tables, figures). The HTML and the Markdown are two renderings of it, so
they never disagree; every string in a block is plain text and the renderers escape it.

The order is the reader's: the findings first (baseline quality with its interval, the largest
acceptable pruning with the layers it removes, speech-vs-text agreement), then every model beside
its evaluation, then each output in detail; what the run directory holds and what is not in it
come last. Every table and figure states the utterances (and words, where words are scored) that
it rests on, and every "Made by" is the full command that remakes the output from its config.yaml.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from speechprune.claims import metrics_text
from speechprune.config import saved_command
from speechprune.console import counts, plural
from speechprune.evaluate import with_interval
from speechprune.report import figures
from speechprune.report.discover import Found, Run
from speechprune.report.summary import (QUALITY, Finding, entry_counts, findings, interval_text, line_of, model_of,
                                        rows_unit, scan_counts, size_points, swept_model)
from speechprune.scan.result import RegionResult, ScanResult
from speechprune.sweep import verdicts_text


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    note: str = ""  # what the table rests on (utterances, words), shown under it


@dataclass
class Figure:
    html: str  # inline SVG or <img> with a data: URI, built by report.figures (values escaped there)
    says: str  # what the figure shows, and the utterances it rests on
    command: str  # the command that made the data behind it


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (a sentence), Table, Figure, Missing

    def add(self, *blocks) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Missing:
    text: str


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _classes() -> dict[str, tuple[str, type]]:
    """Each output kind -> the command that makes it and that command's config class."""
    from speechprune.options.base_llm import BaseLLMConfig
    from speechprune.options.demo import DemoConfig
    from speechprune.options.evaluate import EvalConfig
    from speechprune.options.heal import HealConfig
    from speechprune.options.prune import PruneConfig
    from speechprune.options.scan import CompareConfig, ScanConfig
    from speechprune.options.study import StudyConfig
    from speechprune.options.sweep import SweepConfig

    return {"scan": ("scan", ScanConfig), "compare": ("compare", CompareConfig), "sweep": ("sweep", SweepConfig),
            "eval": ("eval", EvalConfig), "study": ("study", StudyConfig), "base": ("base-llm", BaseLLMConfig),
            "demo": ("demo", DemoConfig), "prune": ("prune", PruneConfig), "heal": ("heal", HealConfig)}


def made_by(kind: str, folder: Path, run: Run) -> str:
    """The full command that remakes the output in ``folder``, from the config.yaml it keeps."""
    command, cls = _classes()[kind]
    return (saved_command(command, cls, folder)
            or f"speechprune {command} ... --out {shlex.quote(run.relative(folder))} (no config.yaml kept)")


def _profile(result: ScanResult, input_name: str, region: str) -> RegionResult | None:
    entry = result.inputs.get(input_name, {}).get(region)
    return entry if entry and entry.counted else None


# ----------------------------------------------------------------------------- findings first
def findings_section(found: list[Finding]) -> Section:
    section = Section("Findings")
    if not found:
        section.add("Nothing measured here yet to report as a finding.")
        return section
    section.add("What this run found, each with what it rests on. Intervals are 95% bootstrap intervals over "
                "utterances; an acceptable pruning level is decided by a paired bootstrap against the unpruned "
                "model on the same utterances. Layers are 0-based.")
    section.add(Table(["finding", "value", "rests on", "from"],
                      [[f.what, f.value, f.basis, f.source] for f in found]))
    return section


# ----------------------------------------------------------------------------- models and their evaluations
def _quality_shown(results) -> list[tuple]:
    """The QUALITY rows whose task some result (a test set's metrics) holds; WER and BLEU at least."""
    tasks = {task for sets in results for metrics in sets.values() for task in metrics}
    return [q for q in QUALITY if q[0] in tasks or q[1] in ("wer", "bleu")]


def _layers_text(pruning: dict | None) -> tuple[str, str, str]:
    """(decoder layers, removed layers, chosen by) of a model."""
    if pruning is None:
        return "all", "none", "-"
    removed = " ".join(map(str, pruning.get("removed", []))) or "none"
    how = str(pruning.get("strategy", "?"))
    if pruning.get("previous_pruning"):
        how += " (pruned again)"
    return f"{pruning.get('num_layers', '?')} of {pruning.get('original_num_layers', '?')}", removed, how


def _healed_text(heal: dict | None) -> str:
    return f"LoRA on {heal.get('target', '?')}" if heal else "no"


def models_section(run: Run) -> Section | None:
    """Every model of the run beside its evaluation: pruned and healed models joined through their
    pruning.json, so that the removed layers stand beside the WER."""
    evaluated = set()
    rows = []
    shown = _quality_shown(e.data["sets"] for e in run.evals)
    described = [(evaluation, *model_of(evaluation, run)) for evaluation in run.evals]
    for evaluation, folder, pruning, heal in sorted(described, key=lambda d: (d[2] is not None, d[3] is not None)):
        if folder is not None:
            evaluated.add(folder.resolve())
        layers, removed, how = _layers_text(pruning)
        name = run.relative(folder) if folder is not None else "?"
        for set_name, metrics in evaluation.data["sets"].items():
            for task, _, _, _, unit in QUALITY:
                entry = metrics.get(task)
                if isinstance(entry, dict):
                    rows.append([name, layers, removed, how, _healed_text(heal), set_name,
                                 *(with_interval(entry, metric, digits) or "-" for _, metric, _, digits, _ in shown),
                                 entry_counts(entry, unit), run.relative(evaluation.path)])
    for model in run.models:
        if model.path.resolve() not in evaluated:
            layers, removed, how = _layers_text(model.data)
            rows.append([run.relative(model.path), layers, removed, how, _healed_text(model.extra.get("heal")),
                         "-", *(["not evaluated"] + ["-"] * (len(shown) - 1)), "-", "-"])
    if not rows or (len(run.evals) < 2 and not run.models):
        return None
    section = Section("Models and their evaluations")
    section.add("Each model, what was removed from its decoder (from its pruning.json; 0-based layers) and how "
                "it was healed, beside its quality with the 95% bootstrap interval.")
    section.add(Table(["model", "decoder layers", "removed layers (0-based)", "chosen by", "healed", "test set",
                       *(f"{label} [95% CI]" for _, _, label, _, _ in shown), "rests on", "evaluation"], rows,
                      "the unpruned models first; each row rests on the utterances and words it lists"))
    return section


# ----------------------------------------------------------------------------- each output in detail
def _scan_command(scan: Found, run: Run) -> str:
    if scan.data.is_consensus:
        return "speechprune study (the consensus backbone)"
    return made_by("scan", scan.path, run)


def scan_section(scan: Found, run: Run) -> Section:
    result: ScanResult = scan.data
    where = run.relative(scan.path)
    section = Section(f"Scan: {where}")
    model = result.model or {}
    data = result.data or {}
    consensus = result.is_consensus  # written by the study: a mean matrix, not a measurement
    if consensus:
        section.add(f"The consensus of {len(result.consensus_of)} conditions ({result.num_layers} decoder "
                    "layers): the mean of their angular matrices, which a sweep reads like any scan. Layers are "
                    "0-based; a block [l, l+n) is end-exclusive.")
    else:
        section.add(f"{model.get('kind', 'model')} {model.get('path', '')} ({model.get('family', '?')}, "
                    f"{result.num_layers} decoder layers), {data.get('utterances', '?')} utterances "
                    f"of {data.get('manifest', '?')}. Layers are 0-based; a block [l, l+n) is "
                    "end-exclusive.")
    command = _scan_command(scan, run)
    inputs = list(result.inputs)
    regions = [r for r in ("all", "last") if any(_profile(result, i, r) for i in inputs)]
    for region in regions:
        present = [(i, _profile(result, i, region)) for i in inputs if _profile(result, i, region)]
        vmin, vmax = figures.distance_range([p.angular for _, p in present])
        maps = "".join(figures.heatmap_svg(p.angular, f"{i} input, {region} positions"
                                           + (f" ({p.count} counted)" if p.count is not None else ""), vmin, vmax)
                       for i, p in present)
        section.add(Figure(f'<div class="pair">{maps}</div>{figures.colour_bar_svg(vmin, vmax)}'
                           '<div class="readout" aria-live="polite">hover a cell: l, n, distance</div>',
                           f"Angular distance d(x_l, x_l+n) of every block [l, l+n) with "
                           f"{' and '.join(i for i, _ in present)} input at {region} positions, on one colour scale "
                           f"(low = redundant); the red dot is the best start l*(n). Rests on "
                           f"{scan_counts(result, region)}.", command))
        if {"speech", "text"} <= {i for i, _ in present}:
            section.add(Figure(f'<img alt="speech minus text, {region} positions" '
                               f'src="{figures.difference_png(result, region)}">',
                               f"Speech minus text: d_speech - d_text of every block at {region} positions (red: "
                               "speech finds the block less redundant than text; blue: more). Rests on "
                               f"{scan_counts(result, region)}.", command))
    if not consensus and ("text" not in inputs or "speech" not in inputs):
        section.add(Missing(f"{where}: only {', '.join(inputs)} input was scanned: speech and text side by side "
                            "(and their difference) need `speechprune scan --input both`."))
    influence = [{"label": i, "values": p.block_influence} for i in inputs
                 if (p := _profile(result, i, "all")) is not None and p.block_influence]
    if influence:
        section.add(Figure(f'<img alt="block influence per layer" src="{figures.block_influence_png(influence)}">',
                           "Block Influence BI_l = 1 - mean cos(x_l, x_l+1) over all positions, per decoder layer "
                           "(ShortGPT): the bi strategy removes the layers with the lowest BI first. Rests on "
                           f"{scan_counts(result, 'all')}.", command))
        order = {p["label"]: sorted(range(len(p["values"])), key=lambda l: p["values"][l]) for p in influence}
        section.add(Table(["layer l"] + [f"BI {p['label']}" for p in influence]
                          + [f"rank {p['label']} (1: removed first by bi)" for p in influence],
                          [[str(l)] + [_num(p["values"][l], 4) for p in influence]
                           + [str(order[p["label"]].index(l) + 1) for p in influence]
                           for l in range(len(influence[0]["values"]))],
                          f"rests on {scan_counts(result, 'all')}"))
    profiles = []
    for input_name in inputs:
        entry = _profile(result, input_name, "all")
        if entry and entry.best_blocks:
            profiles.append({"label": input_name, "best_blocks": entry.best_blocks, "stability": entry.stability})
    if profiles:
        section.add(Figure(f'<img alt="l*(n) per input" src="{figures.best_blocks_png(profiles)}">',
                           "Best start l*(n) per input (all positions) and the distance of that block with its 95% "
                           f"bootstrap interval over utterances. Rests on {scan_counts(result, 'all')}.", command))
        headers = ["n"]
        for profile in profiles:
            headers += [f"l*(n) {profile['label']}", f"block {profile['label']}", f"P(change) {profile['label']}"]
        rows = []
        for k in range(len(profiles[0]["best_blocks"])):
            row = [str(k + 1)]
            for profile in profiles:
                best = profile["best_blocks"][k]
                stability = profile["stability"][k] if k < len(profile["stability"] or []) else None
                row += [str(best["start"]), f"[{best['start']},{best['end']})",
                        _num(stability.get("change_rate"), 2) if stability else "-"]
            rows.append(row)
        section.add(Table(headers, rows, f"rests on {scan_counts(result, 'all')}"))
        if not consensus and not any(p["stability"] for p in profiles):
            section.add(Missing(f"{where}: no bootstrap intervals: the scan ran with --bootstrap 0."))
    return section


def _compare_basis(data: dict) -> str:
    """The utterances each compared scan read, from the scans themselves."""
    seen = {}
    for profile in data.get("profiles", []):
        try:
            result = ScanResult.load(profile["scan"])
        except Exception:  # noqa: BLE001 - a moved or unreadable scan leaves only its name
            seen.setdefault(profile["scan"], "? utterances")
            continue
        seen.setdefault(profile["scan"], counts((result.data or {}).get("utterances")))
    return "; ".join(f"{Path(scan).name}: {text}" for scan, text in seen.items()) or "?"


def compare_section(compare: Found, run: Run) -> Section:
    data = compare.data
    section = Section(f"Agreement: {run.relative(compare.path)}")
    command = made_by("compare", compare.path, run)
    basis = _compare_basis(data)
    section.add("How much the profiles agree on the redundant blocks: Spearman of the block distances, the share of "
                "block sizes n with the same l*(n), the mean |Δl*(n)|, and the Jaccard index of the layers each "
                f"would remove. Made by: {command}")
    fractions = [str(f) for f in data.get("fractions", [])]
    rows = []
    for pair in data["pairs"]:
        rows.append([pair["region"], pair["a"], pair["b"], _num(pair["spearman"]), _num(pair["same_best_start"], 2),
                     _num(pair["mean_abs_delta_start"], 2)]
                    + [_num(pair["jaccard"].get(f, {}).get("jaccard"), 2) for f in fractions])
    section.add(Table(["region", "a", "b", "Spearman", "same l*(n)", "mean |Δl*|"]
                      + [f"Jaccard @ {f}" for f in fractions], rows, f"rests on the utterances of the scans: {basis}"))
    for name in data.get("figures") or []:
        path = compare.path / name
        if path.is_file():
            section.add(Figure(f'<img alt="{name}" src="{figures.file_uri(path)}">',
                               f"The compared heatmaps side by side on one colour scale ({name}). Rests on {basis}.",
                               command))
    return section


def _change(row: dict) -> str:
    """``+10.0% [+4.1%, +16.2%]``: a cell's relative change of its rule metric against the baseline."""
    value, low, high = (row.get(k) for k in ("relative_change", "relative_change_low", "relative_change_high"))
    if value is None:
        return "-"
    return f"{value:+.1%}" + (f" [{low:+.1%}, {high:+.1%}]" if low is not None and high is not None else "")


def _sweep_row_key(row: dict) -> tuple:
    return (row["set"], row["removed"] > 0, row["strategy"], row["heal"], row["removed"])


def _verdict_at(row: dict) -> str:
    """``acceptable at 200``: a sweep row's verdict and the test utterances that decided it."""
    if not row["removed"]:
        return "-"
    found = row.get("verdict", "-")
    return f"{found} {'after' if found == 'undecided' else 'at'} {row['utterances']}" if "looks" in row else found


def sweep_section(sweep: Found, run: Run) -> Section:
    summary, rows = sweep.data, sweep.extra["rows"]
    section = Section(f"Sweep: {run.relative(sweep.path)} (model: {swept_model(sweep, run)})")
    rules = summary.get("rules", {})
    section.add(f"Prune, heal and evaluate at each removed fraction. Acceptable: WER at most "
                f"+{rules.get('wer_rise', 0) * 100:.0f}% relative (and at least +{rules.get('wer_floor', 0)} "
                f"absolute is allowed), BLEU at most -{rules.get('bleu_drop', 0) * 100:.0f}% relative, perplexity at "
                f"most +{rules.get('perplexity_rise', 0) * 100:.0f}% relative; each level is "
                "judged by a paired bootstrap against the baseline on the same utterances, in looks (the first "
                f"{', '.join(map(str, rules.get('looks', [])))} test utterances, stopping at the first look that "
                "decides): acceptable, not acceptable, or undecided after the last look.")
    command = made_by("sweep", sweep.path, run)
    heals = sorted({r["heal"] for r in rows if r["removed"] > 0})
    unit = rows_unit(rows)
    for set_name in sorted({r["set"] for r in rows}):
        baseline = next((r for r in rows if r["set"] == set_name and r["removed"] == 0), {})
        basis = counts(baseline.get("utterances"), baseline.get("words"), unit)
        image, hidden = figures.sweep_png(rows, summary, set_name)
        says = (f"Quality on {set_name} against the fraction of decoder layers removed, "
                f"{'with and without healing' if len(heals) > 1 else 'healing: ' + ', '.join(heals)}; "
                "bars are 95% bootstrap intervals, the dotted line is the acceptability limit, a star the largest "
                f"acceptable fraction. Rests on {basis} per point.")
        if hidden:
            says += (f" {plural(hidden, 'interval')} {'is' if hidden == 1 else 'are'} narrower than the marker "
                     "and hidden behind it.")
        section.add(Figure(f'<img alt="sweep curve {set_name}" src="{image}">', says, command))
    if "none" not in heals or len(heals) < 2:
        section.add(Missing(f"{run.relative(sweep.path)}: the sweep did not run both without and with healing "
                            "(--heal none,receiving-mlp)."))
    if "stopped" in summary:
        section.add(f"Not every cell was run (--stop-line {summary['stopped']['rule']}): "
                    + "; ".join(f"{line} not run from {plural(n, 'layer')} removed on"
                                for line, n in summary["stopped"]["lines"].items())
                    + ". A smaller fraction of the line was not acceptable on a test set, so its larger fractions "
                      "could not change the largest acceptable fraction this sweep decides.")
    largest = []
    for key, value in summary.get("largest_acceptable", {}).items():
        strategy, heal, set_name = line_of(key)
        largest.append([strategy, heal, set_name, _num(value["fraction"]), str(value["removed_count"]),
                        " ".join(map(str, value.get("removed", []))) or "none",
                        _num(value.get("fraction_not_ruled_out")), verdicts_text(value) or "-",
                        counts(value.get("utterances"), value.get("words"), unit)])
    section.add(Table(["strategy", "healing", "test set", "largest acceptable fraction", "layers removed",
                       "removed layers (0-based)", "largest not ruled out", "decided by", "rests on (at most)"], largest,
                      "the largest level that it and every smaller level are decided acceptable at; not ruled out: "
                      "the largest level that is acceptable or undecided"))
    table_rows = []
    shown = [q for q in QUALITY if q[1] in ("wer", "bleu") or any(r.get(q[1]) is not None for r in rows)]
    for r in sorted(rows, key=_sweep_row_key):
        table_rows.append([r["set"], r["strategy"], r["heal"], str(r["removed"]), r.get("removed_layers", "") or "none",
                           *(interval_text(r.get(metric), r.get(f"{metric}_low"), r.get(f"{metric}_high"), digits)
                             for _, metric, _, digits, _ in shown),
                           _change(r) if r["removed"] else "baseline",
                           _verdict_at(r), _num(r.get("decoder_size_ratio"), 2),
                           counts(r.get("utterances"), r.get("words"), unit)])
    section.add(Table(["test set", "strategy", "healing", "removed", "removed layers (0-based)",
                       *(f"{label} [95% CI]" for _, _, label, _, _ in shown), "relative change [95% CI]", "verdict", "decoder size ratio", "rests on"],
                      table_rows, "the baseline (nothing removed) is the first row of each test set"))
    section.add("Decoder size is measured against the unpruned model in the same sweep; decode speed is not: a "
                "sweep decodes too little for a stable ratio, and bench/ measures speed and memory side by side.")
    return section


def size_section(run: Run) -> Section | None:
    """Sweeps of decoders of several sizes: the largest acceptable fraction by decoder size (the
    paper's claim 3 for one family; ShortGPT's table by size on text), as a figure and a table."""
    points = size_points(run)
    if not points:
        return None
    section = Section("Largest acceptable fraction by decoder size")
    section.add("Each sweep's largest acceptable fraction against the parameters of the decoder it pruned, one line "
                "per strategy, healing and test set. A decoder's size is its unpruned parameter count as loaded. The "
                "models' families are not checked here: the paper's claim 3 compares sizes of one family.")
    section.add(Figure(f'<img alt="largest acceptable fraction by decoder size" src="{figures.size_png(points)}">',
                       "Bars reach up to the largest fraction not ruled out (acceptable or undecided) at the test "
                       "utterances each sweep read: a bar means the sweep left a larger fraction undecided.",
                       "the sweeps below"))
    section.add(Table(["model", "decoder parameters", "layers", "strategy", "healing", "test set",
                       "largest acceptable fraction", "layers removed", "largest not ruled out", "decided by",
                       "rests on (at most)", "sweep"],
                      [[p["model"], figures.parameters_text(p["parameters"]), str(p.get("layers") or "?"),
                        p["strategy"], p["heal"], p["set"], _num(p["fraction"]), str(p["largest"]["removed_count"]),
                        _num(p["fraction_not_ruled_out"]), verdicts_text(p["largest"]) or "-",
                        counts(p["largest"].get("utterances"), p["largest"].get("words"), p["unit"]),
                        p["sweep"]] for p in points],
                      "the largest level that it and every smaller level are decided acceptable at; not ruled out: "
                      "the largest level that is acceptable or undecided"))
    return section


def eval_section(found: Found, run: Run) -> Section:
    folder, pruning, heal = model_of(found, run)
    name = run.relative(folder) if folder is not None else "?"
    section = Section(f"Evaluation: {run.relative(found.path)} (model: {name})")
    if pruning is not None:
        layers, removed, how = _layers_text(pruning)
        section.add(f"A pruned model: {layers} decoder layers; removed (0-based): {removed}, chosen by {how}; "
                    f"healed: {_healed_text(heal)}.")
    section.add("Made by: " + made_by("eval", found.path, run))
    rows = []
    shown = [(metric, label, digits) for _, metric, label, digits, _ in _quality_shown([found.data["sets"]])]
    shown.insert(2, ("chrf", "chrF", 1))
    for set_name, metrics in found.data["sets"].items():
        for condition, entry in metrics.items():
            if isinstance(entry, dict) and "utterances" in entry:
                rows.append([set_name, condition, str(entry["utterances"]),
                             _num(entry.get("words", entry.get("tokens"))),
                             *(with_interval(entry, metric, digits) or "-" for metric, _, digits in shown)])
    section.add(Table(["test set", "condition", "utterances",
                       "words or tokens" if any(metric == "perplexity" for metric, _, _ in shown) else "words"]
                      + [f"{label} [95% CI]" for _, label, _ in shown], rows,
                      "intervals: 95% bootstrap over utterances"))
    for set_name, samples in found.extra["samples"].items():
        if samples:
            section.add(Table(["id", "reference", "hypothesis"],
                              [[str(s.get("id", "")), str(s.get("reference", "")), str(s.get("hypothesis", ""))]
                               for s in samples], f"the first {plural(len(samples), 'transcript')} of {set_name}"))
    return section


def study_sections(study: Found, run: Run) -> list[Section]:
    data = study.data
    where = run.relative(study.path)
    command = made_by("study", study.path, run)
    section = Section(f"Study: {where}")
    section.add(f"Made by: {command}")
    claims = data.get("claims")
    if claims:
        section.add("What the paper (Moumen et al., 2026) claims, what this study measured, and the evidence.")
        section.add(Table(["claim", "paper", "measured", "evidence"],
                          [[str(c.get("claim", "")), str(c.get("paper", "")), str(c.get("measured", "")),
                            str(c.get("evidence", ""))] for c in claims],
                          "each measurement names the utterances and words it rests on"))
    else:
        section.add(Missing(f"{where}: study.json has no claims table."))
    conditions = data.get("conditions") or {}
    if conditions:
        section.add("Each condition's SpeechLLM, its test metrics, and its redundancy profile beside its base LLM's "
                    "on text over the same utterances (Spearman of block distances; share of block sizes n with the "
                    "same most redundant start l*(n)).")
        section.add(Table(["condition", "decoder", "test metrics", "evidence", "base LLM on text vs speech input",
                           "text vs speech input"],
                          [[name, f"{c.get('decoder', '?')} ({c.get('num_layers', '?')} layers)",
                            metrics_text({"sets": c.get("metrics") or {}}) or "no test metric",
                            "yes" if c.get("evidence") else "not evidence: " + "; ".join(c.get("bar_misses") or []),
                            _agreement_text(c.get("inherited")), _agreement_text(c.get("text_speech"))]
                           for name, c in conditions.items()],
                          "metrics: 95% bootstrap interval, utterances and words; conditions marked not evidence are "
                          "left out of every claim"))
    agreement = data.get("agreement") or {}
    # one matrix per decoder; a study.json from before that holds a single matrix
    matrices = {"": agreement} if "conditions" in agreement else agreement
    drawn = [(decoder, m["conditions"], m.get("metrics") or {}) for decoder, m in matrices.items()
             if isinstance(m, dict) and m.get("conditions") and any((m.get("metrics") or {}).values())]
    for decoder, conditions, metrics in drawn:
        among = f" of decoder {decoder}" if decoder else ""
        section.add(Figure(f'<img alt="agreement across conditions{among}" '
                           f'src="{figures.agreement_matrix_png(conditions, metrics)}">',
                           f"Agreement of the redundancy profiles between every two conditions{among} of the study "
                           "(Spearman of block distances, share of n with the same l*(n), mean |Δl*(n)|); each "
                           "condition's scan states its utterances below.", command))
    if not drawn:
        section.add(Missing(f"{where}: study.json has no agreement matrix across conditions."))
    consensus = (data.get("consensus") or {}).get("rows")
    if consensus:
        conds = sorted({c for row in consensus for c in (row.get("per_condition") or {})})
        section.add("Consensus backbone: for each block size n, the start every condition would choose and the "
                    "consensus start.")
        section.add(Table(["n", "consensus start"] + conds,
                          [[str(row.get("n")), str(row.get("consensus_start"))]
                           + [str((row.get("per_condition") or {}).get(c, "-")) for c in conds] for row in consensus],
                          "from the conditions' scans (their utterances: below)"))
    else:
        section.add(Missing(f"{where}: study.json has no consensus-backbone table."))
    sweeps = data.get("sweeps") or {}
    if sweeps:
        found_paths = {s.path.resolve() for s in run.sweeps}
        rows = []
        for condition, path in sweeps.items():
            resolved = (study.path / str(path)).resolve()
            rows.append([condition, str(path), "shown below" if resolved in found_paths else "not found"])
        section.add(Table(["condition", "sweep", "in this report"], rows, "each sweep states its utterances below"))
    spent = (data.get("time") or {}).get("seconds_by_kind")
    if spent:
        total = sum(spent.values())
        section.add(Table(["step", "seconds", "share"],
                          [[kind, f"{seconds:,.0f}", f"{seconds / total:.0%}"] for kind, seconds in spent.items()]
                          + [["all", f"{total:,.0f}", "100%"]],
                          "where the study's time went: each step timed in the run that made it"))
    return [section]


def _agreement_text(pair: dict | None) -> str:
    """``Spearman 0.991, same l*(n) 83%``: how alike two redundancy profiles are."""
    if not pair or pair.get("spearman") is None:
        return "not measured"
    same = pair.get("same_best_start")
    return f"Spearman {pair['spearman']:.3f}" + (f", same l*(n) {same:.0%}" if same is not None else "")


def base_section(base: Found, run: Run) -> Section:
    data = base.data
    section = Section(f"Base LLM: {run.relative(base.path)}")
    section.add(f"A decoder pretrained as a language model on text alone ({data.get('train_sentences', '?')} "
                f"sentences in {data.get('train_documents', '?')} documents, {', '.join(data.get('languages', []))}), "
                f"saved as a Hugging Face checkpoint that SpeechLLMs start from.")
    level = data.get("levelled_off_at")
    section.add(Figure(f'<img alt="base LLM perplexity" src="{figures.perplexity_png(data["curve"], level)}">',
                       f"Dev perplexity during text pretraining: {_num(data['curve'][0]['dev_ppl'], 2)} at step "
                       f"{data['curve'][0]['step']}, {_num(data['curve'][-1]['dev_ppl'], 2)} at step "
                       f"{data['curve'][-1]['step']}; "
                       + (f"levelled off (three measurements each under 1% better) at step {level}." if level is not None
                          else "still falling faster than 1% per measurement at the end.")
                       + (f" Dev set: {plural(data['dev_sentences'], 'sentence')}." if data.get("dev_sentences") else ""),
                       made_by("base", base.path, run)))
    return section


def demo_section(demo: Found, run: Run) -> Section:
    section = Section(f"Demo: {run.relative(demo.path)}")
    seconds = demo.data.get("seconds", {})
    section.add("Made by: " + made_by("demo", demo.path, run))
    if seconds:
        section.add("Seconds per step as measured when each step ran (a rerun reuses finished steps and keeps "
                    "their first time).")
        section.add(Table(["step", "seconds"], [[name, _num(value, 1)] for name, value in seconds.items()]
                          + [["total", _num(sum(seconds.values()), 1)]]))
    if demo.config.get("tiny"):
        section.add(Missing("base LLM: this demo trained its decoder from scratch with the speech task (--tiny), "
                            "so nothing can be inherited and the base-LLM scan is absent."))
    elif demo.config.get("base_llm"):
        section.add(f"Base LLM: {demo.config['base_llm']}, scanned on the same text beside the SpeechLLM.")
    return section


# ----------------------------------------------------------------------------- what is here, and what is not
SINGULAR = {"studies": "study", "bases": "base LLM", "models": "pruned model"}
WHAT_MAKES = {"scans": "speechprune scan", "compares": "speechprune compare", "sweeps": "speechprune sweep",
              "evals": "speechprune eval", "studies": "speechprune study", "bases": "speechprune base-llm"}
KINDS = ("demos", "studies", "bases", "models", "evals", "scans", "compares", "sweeps")


def inventory_section(run: Run) -> Section:
    section = Section("What this run directory holds")
    rows = [[kind, str(len(getattr(run, kind))), ", ".join(run.relative(f.path) for f in getattr(run, kind)) or "-"]
            for kind in KINDS]
    section.add(f"Looked for every toolkit output below {run.root}. Every Made by line above is the command as it "
                "was given, paths included: run it from the folder it was first run in.",
                Table(["kind", "found", "where"], rows))
    return section


def not_here_section(run: Run, sections: list[Section]) -> Section:
    """Every note of what is not in this run, moved out of the sections that raised it."""
    section = Section("Not in this run")
    for kind, command in WHAT_MAKES.items():
        if not getattr(run, kind):
            section.add(Missing(f"no {SINGULAR.get(kind, kind[:-1])} here (made by `{command}`)."))
    for problem in run.unreadable:
        section.add(Missing(f"unreadable: {problem}"))
    for other in sections:
        notes = [b for b in other.blocks if isinstance(b, Missing)]
        other.blocks = [b for b in other.blocks if not isinstance(b, Missing)]
        section.add(*notes)
    return section


def build(run: Run) -> list[Section]:
    details: list[Section] = [demo_section(d, run) for d in run.demos]
    for study in run.studies:
        details += study_sections(study, run)
    details += [base_section(b, run) for b in run.bases]
    details += [eval_section(e, run) for e in run.evals]
    details += [scan_section(s, run) for s in run.scans]
    details += [compare_section(c, run) for c in run.compares]
    sizes = size_section(run)
    details += ([sizes] if sizes else []) + [sweep_section(s, run) for s in run.sweeps]
    models = models_section(run)
    sections = [findings_section(findings(run))] + ([models] if models else []) + details
    missing = not_here_section(run, sections)
    return sections + ([missing] if missing.blocks else []) + [inventory_section(run)]
