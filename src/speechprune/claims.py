"""The study's claims: each of the paper's findings beside what the study measured and the outputs
it came from, as study.json records them, as claims.md (a Markdown table) and as a terminal table.
Every quality number carries its 95% bootstrap interval and the utterances and words it rests on;
every largest acceptable fraction carries the largest fraction not ruled out at this test size.
Every condition has its own row with its test metrics and the listening bar (:class:`ListeningBar`):
a condition whose SpeechLLM misses it is marked "not evidence" and left out of every average.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from speechprune.console import counts

AXES = ("encoder", "task", "language", "mode")  # the axes whose conditions are compared with each other (claim 4)
PAPER = {
    "inherited": "redundancy is largely inherited from the pretrained LLM (base-on-text and SpeechLLM heatmaps alike)",
    "text_speech": "text and speech input give nearly identical distance heatmaps and the same redundant blocks",
    "size": "7-8B decoders keep ASR with 60% of their layers (40% removed); 1-3B decoders tolerate less",
    "axes": "the same blocks are redundant across speech encoders, tasks (ASR, ST) and languages",
    "backbone": "one pruned multi-task backbone can be deployed (about 32% of layers removable for translation)",
}


def _counts(entry: dict) -> str:
    sets = f"{entry['test_sets']} test sets, " if entry.get("test_sets", 1) > 1 else ""
    return sets + counts(entry.get("utterances"), entry.get("words"))


def metrics_text(metrics: dict) -> str:
    """``WER on asr-en.test 0.046 [0.031, 0.062] (200 utterances, 1,234 words)`` per test set and task."""
    from speechprune.evaluate import with_interval

    parts = []
    for set_name, entries in metrics.get("sets", {}).items():
        for task, metric, digits in (("asr", "wer", 3), ("st", "bleu", 1)):
            entry = entries.get(task)
            if isinstance(entry, dict) and entry.get(metric) is not None:
                parts.append(f"{metric.upper()} on {set_name} {with_interval(entry, metric, digits)} "
                             f"({_counts(entry)})")
    return "; ".join(parts)


def _largest(entry: dict) -> str:
    """``0.25 (not ruled out: 0.38; layers 5 6)``: a largest acceptable fraction as the claims state it."""
    from speechprune.sweep import verdicts_text

    layers = lambda key: " ".join(map(str, entry.get(key, []))) or "none"  # noqa: E731
    upper = entry.get("fraction_not_ruled_out", entry["fraction"])
    decided = verdicts_text(entry)
    return (f"{entry['fraction']:.2f} (layers {layers('removed')}; not ruled out: {upper:.2f}"
            + (f", layers {layers('removed_not_ruled_out')}"
               if upper > entry["fraction"] and "removed_not_ruled_out" in entry else "")
            + (f"; decided: {decided}" if decided else "") + f"; {_counts(entry)})")


def smallest_largest(summary: dict, strategy: str, heal: str) -> dict:
    """What holds for every test set of a sweep at once, on the ``strategy``/``heal`` line: the
    entry of the set with the smallest largest acceptable fraction, and as its upper end the smallest
    fraction not ruled out on any set (each set's own may come from another set)."""
    entries = [v for k, v in summary["largest_acceptable"].items() if k.startswith(f"{strategy}/{heal}/")]
    upper = min(entries, key=lambda v: v.get("fraction_not_ruled_out", v["fraction"]))
    found = {**min(entries, key=lambda v: v["fraction"]),
             **{key: upper[key] for key in ("fraction_not_ruled_out", "removed_count_not_ruled_out",
                                            "removed_not_ruled_out") if key in upper}}
    if len(entries) > 1:  # it rests on every set's utterances
        found |= {"test_sets": len(entries), "utterances": sum(v.get("utterances") or 0 for v in entries),
                  "words": sum(v.get("words") or 0 for v in entries)}
    return found


def _scanned(records: dict[str, dict]) -> str:
    """How many utterances the conditions' scans read."""
    from speechprune.scan.result import ScanResult

    counts = set()
    for r in records.values():
        try:
            counts.add((ScanResult.load(r["scan"]).data or {}).get("utterances"))
        except Exception:  # noqa: BLE001 - a scan that cannot be read leaves only "?"
            counts.add(None)
    known = sorted(c for c in counts if c is not None)
    text = ", ".join(map(str, known)) + (" or ?" if None in counts else "") if known else "?"
    return f"scans of {text} utterances each"


def _fmt(values: list[float]) -> str:
    return f"{np.mean(values):.3f} (min {np.min(values):.3f}, n={len(values)})" if values else "not measured"


@dataclass(frozen=True)
class ListeningBar:
    """What a condition's SpeechLLM must reach to count as evidence: WER at most ``wer`` on every
    ASR test set and BLEU at least ``bleu`` on every ST test set (0: BLEU stated only). A model
    that does not transcribe or translate well says little about the paper's, which do."""

    wer: float
    bleu: float

    def misses(self, metrics: dict) -> list[str]:
        """``WER on asr-en.test 0.412 > 0.20``, for every test set of an eval's metrics over its bar."""
        misses = []
        for set_name, entries in metrics.get("sets", {}).items():
            wer = (entries.get("asr") or {}).get("wer")
            if wer is not None and wer > self.wer:
                misses.append(f"WER on {set_name} {wer:.3f} > {self.wer:.2f}")
            bleu = (entries.get("st") or {}).get("bleu")
            if bleu is not None and bleu < self.bleu:
                misses.append(f"BLEU on {set_name} {bleu:.1f} < {self.bleu:.1f}")
        return misses

    def describe(self) -> str:
        bleu = f"BLEU >= {self.bleu:.1f} on every ST test set" if self.bleu > 0 else "BLEU stated only"
        return f"WER <= {self.wer:.2f} on every ASR test set; {bleu}"


def _families(sizes: dict[str, tuple[str, int]], decoders) -> dict[str, set[int]]:
    """family -> the depths of ``decoders`` of that family."""
    families: dict[str, set[int]] = {}
    for decoder in decoders:
        family, layers = sizes[decoder]
        families.setdefault(family, set()).add(layers)
    return families


def _size_caveat(evidence: dict[str, dict], sizes: dict[str, tuple[str, int]]) -> str:
    """Why claim (3) cannot be read off these sweeps, or "" when it can."""
    if not any(len(depths) >= 2 for depths in _families(sizes, sizes).values()):
        here = ", ".join(f"{name} ({family}, {layers} layers)" for name, (family, layers) in sizes.items())
        return (f"not tested by these decoders: the claim needs several sizes of one family, and each family here "
                f"has one ({here}), so these decoders cannot measure it (study-scale.yaml measures it on two sizes "
                f"of one family). Per decoder: ")
    swept = [r["condition"].decoder for r in evidence.values() if "sweep" in r]
    if not any(len(depths) >= 2 for depths in _families(sizes, swept).values()):
        return "not evidence: fewer than two sizes of one family passed the listening bar. Per decoder: "
    return ""


def _size_trend(evidence: dict[str, dict], sizes: dict[str, tuple[str, int]]) -> str:
    """Claim (3) read off the sweeps: per family with two or more swept evidence decoders, each
    depth's largest acceptable fraction (and its largest not ruled out), unhealed and healed, and
    whether the deepest (the largest) keeps more than the shallowest, said only where the verdicts
    separate them (one's decided fraction above the other's largest not ruled out); "" when no
    family has two depths."""
    swept: dict[str, list[tuple[int, dict]]] = {}
    for r in evidence.values():
        if "sweep" in r:
            family, layers = sizes[r["condition"].decoder]
            swept.setdefault(family, []).append((layers, r["sweep"]))
    parts = []
    for family, members in swept.items():
        if len({layers for layers, _ in members}) < 2:
            continue
        members.sort(key=lambda m: m[0])
        for heal, label in (("none", "unhealed"), ("receiving-mlp", "healed")):
            found = [(layers, smallest_largest(summary, "angular", heal)) for layers, summary in members]
            (_, small), (_, large) = found[0], found[-1]
            upper = lambda e: e.get("fraction_not_ruled_out", e["fraction"])  # noqa: E731
            trend = ("the larger keeps more" if large["fraction"] > upper(small)
                     else "the larger keeps less" if small["fraction"] > upper(large)
                     else "no difference shown at this test size")
            parts.append(f"{family}, {label}: " + " -> ".join(
                f"{layers} layers {e['fraction']:.2f} (not ruled out: {upper(e):.2f})" for layers, e in found)
                + f": {trend}")
    return ("by family (largest acceptable fraction by depth): " + "; ".join(parts) + ". Per decoder: ") if parts else ""


def study_claims(records: dict[str, dict], axes: dict, backbone: dict | None, rel: Callable[[Path], str],
                 bar: ListeningBar, sizes: dict[str, tuple[str, int]]) -> list[dict]:
    """One claim per finding: ``claim``, ``measured``, ``paper`` and ``evidence`` (the study's folders),
    then one row per condition: its test metrics and whether it passed the listening bar.

    ``records``: per condition, ``inherited`` and ``text_speech`` (compare pairs), ``num_layers``,
    ``condition`` (with its ``decoder``), ``metrics`` (its eval), ``misses`` (the listening bar's
    :meth:`ListeningBar.misses`; a condition with any is not evidence: shown, marked, and left out of
    every average), ``model`` and, where it was swept, ``sweep`` (the sweep summary) and
    ``sweep_dir``; ``axes``: per axis of :data:`AXES` with two or more evidence conditions, their
    agreement (``pair_metrics``) and its ``compare`` folder; ``backbone``: the multi-task model's
    sweeps, or None when not run; ``rel``: a path as the study names it; ``sizes``: per decoder,
    its family and depth."""
    claims = []
    evidence = {name: r for name, r in records.items() if not r["misses"]}
    left_out = [name for name in records if name not in evidence]
    left_out_note = f"; not evidence (missed the listening bar, left out): {', '.join(left_out)}" if left_out else ""
    inherited = [r["inherited"] for r in evidence.values()]
    claims.append({
        "claim": "(1) decoder redundancy is inherited from the base LLM",
        "measured": f"Spearman base-on-text vs SpeechLLM-on-speech {_fmt([p['spearman'] for p in inherited])}; "
                    f"same l*(n) share {_fmt([p['same_best_start'] for p in inherited])}; {_scanned(evidence)}"
                    f"{left_out_note}",
        "paper": PAPER["inherited"],
        "evidence": ", ".join(f"conditions/{n}/compare-base" for n in evidence)})
    pairs = [r["text_speech"] for r in evidence.values()]
    claims.append({
        "claim": "(2) text and speech input find the same redundant blocks",
        "measured": f"Spearman SpeechLLM text vs speech {_fmt([p['spearman'] for p in pairs])}; "
                    f"same l*(n) share {_fmt([p['same_best_start'] for p in pairs])}; {_scanned(evidence)}"
                    f"{left_out_note}",
        "paper": PAPER["text_speech"],
        "evidence": ", ".join(f"conditions/{n}/compare-base" for n in evidence)})
    lines = []
    for name, r in records.items():
        if "sweep" in r:
            unhealed, healed = (smallest_largest(r["sweep"], "angular", heal) for heal in ("none", "receiving-mlp"))
            flag = "" if name in evidence else f" [not evidence: {'; '.join(r['misses'])}]"
            lines.append(f"{r['condition'].decoder} ({r['num_layers']} layers){flag}: "
                         f"baseline {metrics_text(r['metrics'])}; "
                         f"largest acceptable {_largest(unhealed).replace(' (', ' unhealed (', 1)}, "
                         f"{_largest(healed).replace(' (', ' healed (', 1)}")
    claims.append({
        "claim": "(3) larger decoders tolerate more pruning (largest acceptable removed fraction)",
        "measured": ((_size_caveat(evidence, sizes) or _size_trend(evidence, sizes)) + "; ".join(lines)) if lines
                    else "not measured",
        "paper": PAPER["size"],
        "evidence": ", ".join(rel(r["sweep_dir"]) for r in records.values() if "sweep_dir" in r)})
    per_axis = []
    for axis in AXES:
        members = [name for name, r in records.items() if axis in r["condition"].axes]
        if axis in axes:
            a = axes[axis]
            left = [name for name in members if name not in evidence]
            per_axis.append(f"{axis}: Spearman {_fmt(a['spearman'])}, same l*(n) {_fmt(a['same_best_share'])}"
                            + (f" (not evidence, left out: {', '.join(left)})" if left else ""))
        elif len(members) >= 2:
            passed = [name for name in members if name in evidence]
            per_axis.append(f"{axis}: not measured (of its conditions only {', '.join(passed) or 'none'} passed "
                            f"the listening bar)")
    claims.append({
        "claim": "(4) the same blocks are redundant across encoders, tasks and languages",
        "measured": "; ".join(per_axis) or "not measured",
        "paper": PAPER["axes"],
        "evidence": ", ".join(a["compare"] for a in axes.values())})
    claims.append({"claim": "(5) one pruned multi-task backbone", "measured": _backbone_measured(backbone),
                   "paper": PAPER["backbone"], "evidence": ", ".join(backbone["sweeps"]) if backbone else ""})
    for name, r in records.items():
        verdict = (f"listening bar missed ({'; '.join(r['misses'])}): not evidence" if r["misses"]
                   else "listening bar passed")
        claims.append({"claim": f"condition {name} ({', '.join(r['condition'].axes)})",
                       "measured": f"{metrics_text(r['metrics']) or 'no test metric'}; {verdict}",
                       "paper": f"listening bar (this study's rule, not the paper's): {bar.describe()}",
                       "evidence": rel(Path(r["model"]).parent / "eval")})
    return claims


def _backbone_measured(backbone: dict | None) -> str:
    if not backbone:
        return "not measured (multitask: false)"
    detail = lambda key: _largest(backbone["largest"][key])  # noqa: E731
    parts = []
    if backbone.get("misses"):
        parts.append(f"not evidence: the multi-task model missed the listening bar ({'; '.join(backbone['misses'])})")
    sources = backbone.get("consensus_of") or []
    if "consensus_healed" in backbone["largest"]:
        parts.append(f"consensus block of {len(sources)} single-task conditions, healed once: "
                     f"{detail('consensus_healed')} of the layers removable with every task and language acceptable "
                     f"(unhealed {detail('consensus_unhealed')})")
    else:
        parts.append("consensus block: not measured (no single-task condition of its decoder passed the listening "
                     "bar)")
    parts.append(f"the model's own blocks, unhealed: {detail('own_unhealed')}")
    single = backbone.get("single_task") or {}
    if single:
        parts.append("each single-task condition's own block, unhealed: " + "; ".join(
            f"{name}: {_largest(entry['largest'])}" + ("" if entry["evidence"] else " [its condition is not evidence]")
            for name, entry in single.items()))
    return "; ".join(parts)


def claims_markdown(claims: list[dict]) -> str:
    lines = ["| claim | measured here | paper |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['measured']} | {c['paper']} |" for c in claims]
    return "\n".join(lines) + "\n"


def print_claims(claims: list[dict]) -> None:
    table = Table(title="claims", show_lines=True)
    for column in ("claim", "measured here", "paper"):
        table.add_column(column, overflow="fold")
    for c in claims:
        table.add_row(c["claim"], c["measured"], c["paper"])
    Console().print(table)
