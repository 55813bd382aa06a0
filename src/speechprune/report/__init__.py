"""``speechprune report RUN_DIR``: one self-contained HTML page (figures inline, no network) and a
Markdown summary of whatever a run directory holds: scans, compares, sweeps, evaluations, a study,
a demo. The top stage: it reads every other stage's output files; only the CLI and the demo import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from speechprune.config import option, require
from speechprune.errors import UserError


@dataclass
class ReportConfig:
    positional = "run"

    run: list[str] = option([], help="the run directory (a bare argument): a scan, compare, sweep, study or demo")
    out: str = option("", help="folder for report.html and report.md (default: the run directory)")
    title: str = option("", help="page title (default: speechprune report: RUN_DIR)")

    def __post_init__(self) -> None:
        require(len(self.run) == 1, "report takes one run directory: speechprune report RUN_DIR")


def report(config: ReportConfig) -> Path:
    """Find every toolkit output below RUN_DIR and write report.html (self-contained: open it from
    disk) and report.md beside it; prints a short summary table. Returns the HTML's path."""
    from speechprune.files import write_text
    from speechprune.report import document, render
    from speechprune.report.discover import MARKERS, discover
    from speechprune.report.summary import print_summary

    root = Path(config.run[0])
    if not root.is_dir():
        raise UserError(f"report: {root} is not a directory")
    run = discover(root)
    if run.is_empty():
        raise UserError(f"report: no toolkit outputs under {root} (looked for {', '.join(MARKERS)})")
    title = config.title or f"speechprune report: {root}"
    sections = document.build(run)
    out = Path(config.out) if config.out else root
    html_path, markdown_path = out / "report.html", out / "report.md"
    write_text(html_path, render.html(sections, title))
    write_text(markdown_path, render.markdown(sections, title))
    print_summary(run, html_path, markdown_path)
    return html_path
