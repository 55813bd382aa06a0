"""The study's claims: each of the paper's findings beside what the study measured and the outputs
it came from, as study.json records them, as claims.md (a Markdown table) and as a terminal table.
Every quality number carries its 95% bootstrap interval and the utterances and words it rests on;
every largest acceptable fraction carries the largest fraction not ruled out at this test size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from speechprune.console import counts

PAPER = {
    "inherited": "redundancy is largely inherited from the pretrained LLM (base-on-text and SpeechLLM heatmaps alike)",
    "text_speech": "text and speech input give nearly identical distance heatmaps and the same redundant blocks",
    "size": "7-8B decoders keep ASR with 60% of their layers (40% removed); 1-3B decoders tolerate less",
    "axes": "the same blocks are redundant across speech encoders, tasks (ASR, ST) and languages",
    "backbone": "one pruned multi-task backbone can be deployed (about 32% of layers removable for translation)",
}


def _counts(entry: dict) -> str:
    return counts(entry.get("utterances"), entry.get("words"))


def _baseline(metrics: dict) -> str:
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
    removed = " ".join(map(str, entry.get("removed", []))) or "none"
    return (f"{entry['fraction']:.2f} (not ruled out: {entry.get('fraction_not_ruled_out', entry['fraction']):.2f}; "
            f"layers {removed}; {_counts(entry)})")


def smallest_largest(summary: dict, strategy: str, heal: str) -> dict:
    """Of every test set of a sweep, the largest acceptable entry of ``strategy``/``heal`` with the
    smallest fraction: what holds for every task and language at once."""
    entries = [v for k, v in summary["largest_acceptable"].items() if k.startswith(f"{strategy}/{heal}/")]
    return min(entries, key=lambda v: (v["fraction"], v.get("fraction_not_ruled_out", v["fraction"])))


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


def study_claims(records: dict[str, dict], axes: dict, backbone: dict | None, rel: Callable[[Path], str]) -> list[dict]:
    """One claim per finding: ``claim``, ``measured``, ``paper`` and ``evidence`` (the study's folders).

    ``records``: per condition, ``inherited`` and ``text_speech`` (compare pairs), ``num_layers``,
    ``condition`` (with its ``decoder``) and, where it was swept, ``sweep`` (the sweep summary) and
    ``sweep_dir``; ``axes``: per axis, the agreement of its conditions (``pair_metrics``) and its
    ``compare`` folder; ``backbone``: the multi-task backbone's sweeps, or None when not run;
    ``rel``: a path as the study names it."""
    claims = []
    inherited = [r["inherited"] for r in records.values()]
    claims.append({
        "claim": "(1) decoder redundancy is inherited from the base LLM",
        "measured": f"Spearman base-on-text vs SpeechLLM-on-speech {_fmt([p['spearman'] for p in inherited])}; "
                    f"same l*(n) share {_fmt([p['same_best_start'] for p in inherited])}; {_scanned(records)}",
        "paper": PAPER["inherited"],
        "evidence": ", ".join(f"conditions/{n}/compare-base" for n in records)})
    pairs = [r["text_speech"] for r in records.values()]
    claims.append({
        "claim": "(2) text and speech input find the same redundant blocks",
        "measured": f"Spearman SpeechLLM text vs speech {_fmt([p['spearman'] for p in pairs])}; "
                    f"same l*(n) share {_fmt([p['same_best_start'] for p in pairs])}; {_scanned(records)}",
        "paper": PAPER["text_speech"],
        "evidence": ", ".join(f"conditions/{n}/compare-base" for n in records)})
    sizes = []
    for r in records.values():
        if "sweep" in r:
            unhealed, healed = (smallest_largest(r["sweep"], "angular", heal) for heal in ("none", "receiving-mlp"))
            sizes.append(f"{r['condition'].decoder} ({r['num_layers']} layers): baseline {_baseline(r['metrics'])}; "
                         f"largest acceptable {_largest(unhealed).replace(' (', ' unhealed (', 1)}, "
                         f"{_largest(healed).replace(' (', ' healed (', 1)}")
    claims.append({
        "claim": "(3) larger decoders tolerate more pruning (largest acceptable removed fraction)",
        "measured": "; ".join(sizes) or "not measured",
        "paper": PAPER["size"],
        "evidence": ", ".join(rel(r["sweep_dir"]) for r in records.values() if "sweep_dir" in r)})
    claims.append({
        "claim": "(4) the same blocks are redundant across encoders, tasks and languages",
        "measured": "; ".join(f"{axis}: Spearman {_fmt(a['spearman'])}, same l*(n) {_fmt(a['same_best_share'])}"
                              for axis, a in axes.items()) or "not measured",
        "paper": PAPER["axes"],
        "evidence": ", ".join(a["compare"] for a in axes.values())})
    if backbone:
        largest = backbone.get("largest") or {}
        detail = lambda key: _largest(largest[key]) if key in largest else f"{backbone[key]:.2f}"  # noqa: E731
        measured = (f"consensus block, healed once: {detail('consensus_healed')} of the layers removable "
                    f"with every task and language acceptable (unhealed {detail('consensus_unhealed')}; "
                    f"the model's own blocks unhealed {detail('own_unhealed')})")
    else:
        measured = "not measured (multitask: false)"
    claims.append({"claim": "(5) one pruned multi-task backbone", "measured": measured, "paper": PAPER["backbone"],
                   "evidence": ", ".join(backbone["sweeps"]) if backbone else ""})
    return claims


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
