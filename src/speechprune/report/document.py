"""What the report says, built once from a discovered run as a list of sections of plain blocks
(headings, sentences, tables, figures). The HTML and the Markdown are two renderings of it, so
they never disagree; every string in a block is plain text and the renderers escape it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from speechprune.report import figures
from speechprune.report.discover import Found, Run
from speechprune.scan.result import RegionResult, ScanResult


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    html: str  # inline SVG or <img> with a data: URI, built by report.figures (values escaped there)
    says: str  # one sentence: what the figure shows
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


def _command(*words) -> str:
    return " ".join(shlex.quote(str(w)) for w in words if w not in (None, ""))


def _scan_command(scan: Found, run: Run) -> str:
    result: ScanResult = scan.data
    if result.is_consensus:
        return "speechprune study (the consensus backbone)"
    return _command("speechprune", "scan", "--model", (result.model or {}).get("path", "MODEL"),
                    "--data", (result.data or {}).get("manifest", "DATA"),
                    "--input", "both" if len(result.inputs) > 1 else next(iter(result.inputs), "auto"),
                    "--out", run.relative(scan.path))


def _profile(result: ScanResult, input_name: str, region: str) -> RegionResult | None:
    entry = result.inputs.get(input_name, {}).get(region)
    return entry if entry and entry.counted else None


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
                           f"(low = redundant); the red dot is the best start l*(n).", command))
    if not consensus and ("text" not in inputs or "speech" not in inputs):
        section.add(Missing(f"only {', '.join(inputs)} input was scanned: speech and text side by side need "
                            "`speechprune scan --input both`."))
    profiles = []
    for input_name in inputs:
        entry = _profile(result, input_name, "all")
        if entry and entry.best_blocks:
            profiles.append({"label": input_name, "best_blocks": entry.best_blocks, "stability": entry.stability})
    if profiles:
        section.add(Figure(f'<img alt="l*(n) per input" src="{figures.best_blocks_png(profiles)}">',
                           "Best start l*(n) per input (all positions) and the distance of that block with its 95% "
                           "bootstrap interval over utterances.", command))
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
        section.add(Table(headers, rows))
        if not consensus and not any(p["stability"] for p in profiles):
            section.add(Missing("no bootstrap intervals: the scan ran with --bootstrap 0."))
    return section


def compare_section(compare: Found, run: Run) -> Section:
    data = compare.data
    section = Section(f"Agreement: {run.relative(compare.path)}")
    scans = sorted({p["scan"] for p in data.get("profiles", [])})
    section.add(f"How much the profiles agree on the redundant blocks: Spearman of the block distances, the share of "
                f"block sizes n with the same l*(n), the mean |Δl*(n)|, and the Jaccard index of the layers each "
                f"would remove. Made by: {_command('speechprune', 'compare', *scans, '--out', run.relative(compare.path))}")
    fractions = [str(f) for f in data.get("fractions", [])]
    rows = []
    for pair in data["pairs"]:
        rows.append([pair["region"], pair["a"], pair["b"], _num(pair["spearman"]), _num(pair["same_best_start"], 2),
                     _num(pair["mean_abs_delta_start"], 2)]
                    + [_num(pair["jaccard"].get(f, {}).get("jaccard"), 2) for f in fractions])
    section.add(Table(["region", "a", "b", "Spearman", "same l*(n)", "mean |Δl*|"]
                      + [f"Jaccard @ {f}" for f in fractions], rows))
    return section


def _sweep_command(sweep: Found, run: Run) -> str:
    config = sweep.config
    if not config:
        return f"speechprune sweep ... --out {shlex.quote(run.relative(sweep.path))}"
    words = ["speechprune", "sweep", "--model", config.get("model"), "--scan", config.get("scan"),
             "--out", run.relative(sweep.path)]
    for key in ("fractions", "strategies", "heal"):
        if config.get(key):
            words += [f"--{key}", ",".join(map(str, config[key]))]
    if config.get("heal_steps"):
        words += ["--heal-steps", config["heal_steps"]]
    return _command(*words)


def sweep_section(sweep: Found, run: Run) -> Section:
    summary, rows = sweep.data, sweep.extra["rows"]
    section = Section(f"Sweep: {run.relative(sweep.path)}")
    rules = summary.get("rules", {})
    section.add(f"Prune, heal and evaluate at each removed fraction. Acceptable: WER at most "
                f"+{rules.get('wer_rise', 0) * 100:.0f}% relative (and at least +{rules.get('wer_floor', 0)} "
                f"absolute is allowed), BLEU at most -{rules.get('bleu_drop', 0) * 100:.0f}% relative.")
    command = _sweep_command(sweep, run)
    heals = sorted({r["heal"] for r in rows if r["removed"] > 0})
    for set_name in sorted({r["set"] for r in rows}):
        section.add(Figure(f'<img alt="sweep curve {set_name}" src="{figures.sweep_png(rows, summary, set_name)}">',
                           f"Quality on {set_name} against the fraction of decoder layers removed, "
                           f"{'with and without healing' if len(heals) > 1 else 'healing: ' + ', '.join(heals)}; "
                           "the dotted line is the acceptability limit, a star the largest acceptable fraction.",
                           command))
    if "none" not in heals or len(heals) < 2:
        section.add(Missing("the sweep did not run both without and with healing (--heal none,receiving-mlp)."))
    largest = [[key.split("/")[0], key.split("/")[1], "/".join(key.split("/")[2:]), _num(v["fraction"]),
                str(v["removed_count"])] for key, v in summary.get("largest_acceptable", {}).items()]
    section.add(Table(["strategy", "healing", "test set", "largest acceptable fraction", "layers removed"], largest))
    table_rows = [[r["strategy"], r["heal"], str(r["removed"]), r["set"], _num(r.get("wer")), _num(r.get("bleu"), 1),
                   _num(r.get("decoder_size_ratio"), 2), r.get("removed_layers", "")]
                  for r in sorted(rows, key=lambda r: (r["set"], r["strategy"], r["heal"], r["removed"]))]
    section.add(Table(["strategy", "healing", "removed", "test set", "WER", "BLEU",
                       "decoder size ratio", "removed layers (0-based)"], table_rows))
    section.add("Decoder size is measured against the unpruned model in the same sweep; decode speed is not: a "
                "sweep decodes too little for a stable ratio, and bench/ measures speed and memory side by side.")
    return section


def eval_section(found: Found, run: Run) -> Section:
    section = Section(f"Evaluation: {run.relative(found.path)}")
    config = found.config
    if config:
        section.add("Made by: " + _command("speechprune", "eval", "--model", config.get("model"), "--data",
                                           ",".join(config.get("data") or []), "--out", run.relative(found.path)))
    rows = []
    for set_name, metrics in found.data["sets"].items():
        for condition, entry in metrics.items():
            if isinstance(entry, dict) and "utterances" in entry:
                rows.append([set_name, condition, str(entry["utterances"]), _num(entry.get("wer")),
                             _num(entry.get("bleu"), 1), _num(entry.get("chrf"), 1)])
    section.add(Table(["test set", "condition", "utterances", "WER", "BLEU", "chrF"], rows))
    for set_name, samples in found.extra["samples"].items():
        if samples:
            section.add(f"First {len(samples)} transcripts of {set_name}:")
            section.add(Table(["id", "reference", "hypothesis"],
                              [[str(s.get("id", "")), str(s.get("reference", "")), str(s.get("hypothesis", ""))]
                               for s in samples]))
    return section


def study_sections(study: Found, run: Run) -> list[Section]:
    data = study.data
    where = run.relative(study.path)
    made_by = (f"speechprune study --config {shlex.quote(run.relative(study.path / 'config.yaml'))}"
               if study.config else f"speechprune study --out {shlex.quote(where)}")
    sections = []
    claims = data.get("claims")
    section = Section(f"Study: {where}")
    if claims:
        section.add("What the paper (Moumen et al., 2026) claims, what this study measured, and the evidence.")
        section.add(Table(["claim", "paper", "measured", "evidence"],
                          [[str(c.get("claim", "")), str(c.get("paper", "")), str(c.get("measured", "")),
                            str(c.get("evidence", ""))] for c in claims]))
    else:
        section.add(Missing("study.json has no claims table."))
    agreement = data.get("agreement") or {}
    conditions, metrics = agreement.get("conditions"), agreement.get("metrics") or {}
    if conditions and any(metrics.values()):
        section.add(Figure(f'<img alt="agreement across conditions" '
                           f'src="{figures.agreement_matrix_png(conditions, metrics)}">',
                           "Agreement of the redundancy profiles between every two conditions of the study "
                           "(Spearman of block distances, share of n with the same l*(n), mean |Δl*(n)|).", made_by))
    else:
        section.add(Missing("study.json has no agreement matrix across conditions."))
    consensus = (data.get("consensus") or {}).get("rows")
    if consensus:
        conds = sorted({c for row in consensus for c in (row.get("per_condition") or {})})
        section.add("Consensus backbone: for each block size n, the start every condition would choose and the "
                    "consensus start.")
        section.add(Table(["n", "consensus start"] + conds,
                          [[str(row.get("n")), str(row.get("consensus_start"))]
                           + [str((row.get("per_condition") or {}).get(c, "-")) for c in conds] for row in consensus]))
    else:
        section.add(Missing("study.json has no consensus-backbone table."))
    sweeps = data.get("sweeps") or {}
    if sweeps:
        found_paths = {s.path.resolve() for s in run.sweeps}
        rows = []
        for condition, path in sweeps.items():
            resolved = (study.path / str(path)).resolve()
            rows.append([condition, str(path), "shown below" if resolved in found_paths else "not found"])
        section.add(Table(["condition", "sweep", "in this report"], rows))
    sections.append(section)
    return sections


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
                          else "still falling faster than 1% per measurement at the end."),
                       _command("speechprune", "base-llm", "--out", str(base.path), "--steps", str(data.get("steps", "?")))))
    return section


def demo_section(demo: Found, run: Run) -> Section:
    section = Section(f"Demo: {run.relative(demo.path)}")
    seconds = demo.data.get("seconds", {})
    if seconds:
        section.add("Seconds per step as measured when each step ran (a rerun reuses finished steps and keeps "
                    "their first time). Made by: speechprune demo --out " + shlex.quote(str(demo.path)))
        section.add(Table(["step", "seconds"], [[name, _num(value, 1)] for name, value in seconds.items()]
                          + [["total", _num(sum(seconds.values()), 1)]]))
    if not (demo.path / "base").is_dir():
        section.add(Missing("base LLM: this demo trained its decoder from scratch with the speech task (--base-steps "
                            "0), so nothing can be inherited and the base-LLM scan is absent."))
    return section


SINGULAR = {"studies": "study", "bases": "base LLM"}
WHAT_MAKES = {"scans": "speechprune scan", "compares": "speechprune compare", "sweeps": "speechprune sweep",
              "evals": "speechprune eval", "studies": "speechprune study", "bases": "speechprune base-llm"}


def build(run: Run) -> list[Section]:
    overview = Section("What this run directory holds")
    counts = [[kind, str(len(getattr(run, kind))), ", ".join(run.relative(f.path) for f in getattr(run, kind)) or "-"]
              for kind in ("demos", "studies", "bases", "evals", "scans", "compares", "sweeps")]
    overview.add(f"Looked for every toolkit output below {run.root}.", Table(["kind", "found", "where"], counts))
    for kind, command in WHAT_MAKES.items():
        if not getattr(run, kind):
            overview.add(Missing(f"no {SINGULAR.get(kind, kind[:-1])} here (made by `{command}`)."))
    for problem in run.unreadable:
        overview.add(Missing(f"unreadable: {problem}"))
    sections = [overview]
    sections += [demo_section(d, run) for d in run.demos]
    for study in run.studies:
        sections += study_sections(study, run)
    sections += [base_section(b, run) for b in run.bases]
    sections += [eval_section(e, run) for e in run.evals]
    sections += [scan_section(s, run) for s in run.scans]
    sections += [compare_section(c, run) for c in run.compares]
    sections += [sweep_section(s, run) for s in run.sweeps]
    return sections
