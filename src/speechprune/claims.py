"""The study's claims: each of the paper's findings beside what the study measured and the outputs
it came from, as study.json records them, as claims.md (a Markdown table) and as a terminal table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

PAPER = {
    "inherited": "redundancy is largely inherited from the pretrained LLM (base-on-text and SpeechLLM heatmaps alike)",
    "text_speech": "text and speech input give nearly identical distance heatmaps and the same redundant blocks",
    "size": "7-8B decoders keep ASR with 60% of their layers (40% removed); 1-3B decoders tolerate less",
    "axes": "the same blocks are redundant across speech encoders, tasks (ASR, ST) and languages",
    "backbone": "one pruned multi-task backbone can be deployed (about 32% of layers removable for translation)",
}


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
                    f"same l*(n) share {_fmt([p['same_best_start'] for p in inherited])}",
        "paper": PAPER["inherited"],
        "evidence": ", ".join(f"conditions/{n}/compare-base" for n in records)})
    pairs = [r["text_speech"] for r in records.values()]
    claims.append({
        "claim": "(2) text and speech input find the same redundant blocks",
        "measured": f"Spearman SpeechLLM text vs speech {_fmt([p['spearman'] for p in pairs])}; "
                    f"same l*(n) share {_fmt([p['same_best_start'] for p in pairs])}",
        "paper": PAPER["text_speech"],
        "evidence": ", ".join(f"conditions/{n}/compare-base" for n in records)})
    sizes = []
    for r in records.values():
        if "sweep" in r:
            asr = [s for s in r["sweep"]["largest_acceptable"] if s.startswith("angular/")]
            pick = lambda heal: min(r["sweep"]["largest_acceptable"][k]["fraction"] for k in asr if f"/{heal}/" in k)  # noqa: E731
            sizes.append(f"{r['condition'].decoder} ({r['num_layers']} layers): {pick('none'):.2f} unhealed, "
                         f"{pick('receiving-mlp'):.2f} healed")
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
        measured = (f"consensus block, healed once: {backbone['consensus_healed']:.2f} of the layers removable "
                    f"with every task and language acceptable (unhealed {backbone['consensus_unhealed']:.2f}; "
                    f"the model's own blocks unhealed {backbone['own_unhealed']:.2f})")
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
