"""The few numbers a run comes down to, as a terminal table: baseline quality, speech-vs-text
agreement, the largest acceptable pruning per strategy and healing, and where the report is."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from speechprune.report.discover import Run


def summary_rows(run: Run) -> list[tuple[str, str]]:
    rows = []
    for found in run.evals:
        for set_name, metrics in found.data["sets"].items():
            if "asr" in metrics:
                rows.append((f"WER {set_name}", f"{metrics['asr']['wer']:.3f}"))
            if "st" in metrics:
                rows.append((f"BLEU {set_name}", f"{metrics['st']['bleu']:.1f}"))
    for found in run.compares:
        for pair in found.data["pairs"]:
            rows.append((f"{pair['a']} vs {pair['b']} ({pair['region']})",
                         f"Spearman {pair['spearman']:.3f}, same l*(n) {pair['same_best_start']:.2f}"))
    for found in run.sweeps:
        for key, value in found.data.get("largest_acceptable", {}).items():
            rows.append((f"largest acceptable {key}",
                         f"{value['fraction']:.3f} ({value['removed_count']} layers)"))
    return rows


def print_summary(run: Run, html_path: Path, markdown_path: Path) -> None:
    table = Table(title=f"speechprune report: {run.root}")
    table.add_column("what")
    table.add_column("value")
    for what, value in summary_rows(run):
        table.add_row(Text(what), Text(value))  # text, not rich markup: labels come from data
    console = Console(stderr=True)
    console.print(table)
    found = ", ".join(f"{len(getattr(run, k))} {k}" for k in ("scans", "compares", "sweeps", "evals", "studies")
                      if getattr(run, k))
    print(f"report: {html_path} (and {markdown_path.name} beside it; found {found})")
