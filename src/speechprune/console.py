"""What a command shows in the terminal: the summary it ends with (stdout) and the progress of its
long steps (stderr). Every stage prints through these few functions, nothing else.

Progress is a rich progress bar on a terminal; elsewhere (CI logs, ``| tee``) it becomes plain
lines: one when the step starts, one at most every ``PLAIN_EVERY_SECONDS``, and one when it ends.
A Console is made at each call, so output follows ``sys.stdout``/``sys.stderr`` as they are then
(pytest's capture, a redirect).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

T = TypeVar("T")
PLAIN_EVERY_SECONDS = 10.0
PIPED_WIDTH = 160


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 layer``, ``3 layers``, ``0 scans``."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def counts(utterances: int | None, words: int | None = None, unit: str = "word") -> str:
    """``200 utterances, 1,234 words``: what a number rests on (words where words are scored,
    ``unit="token"`` for a perplexity)."""
    text = plural(int(utterances), "utterance") if utterances is not None else "? utterances"
    return text + (f", {int(words):,} {unit}{'' if words == 1 else 's'}" if words is not None else "")


def stdout() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPED_WIDTH  # a log or a file: tables as wide as their content, not cut at 80
    return console


def stderr() -> Console:
    console = Console(stderr=True, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPED_WIDTH  # a log: lines as long as their content, not folded at 80
    return console


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None,
          header: bool = True) -> Group:
    """A summary table; numbers are formatted by :func:`cell`. Title and caption are lines of their
    own, so that a long one is not folded to the table's width."""
    result = Table(show_header=header)
    for column in columns:
        result.add_column(column)
    for row in rows:
        result.add_row(*(cell(value) for value in row))
    lines = [Text(title, style="bold"), result] + ([Text(caption, style="dim")] if caption else [])
    return Group(*lines)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if value == 0 or 0.001 <= abs(value) < 1000 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, (list, tuple)):
        return " ".join(cell(v) for v in value) or "-"
    return str(value)


def show(*lines: Any) -> None:
    """Print a command's summary (strings and rich tables) on stdout."""
    out = stdout()
    for line in lines:
        out.print(line, markup=False, soft_wrap=True) if isinstance(line, str) else out.print(line)


def step_needed(name: str, done_marker: Path | str) -> bool:
    """For pipelines of steps that are reused on a rerun (demo, study): True when ``name`` must run,
    announcing it; False when its ``done_marker`` file exists, saying it is reused."""
    marker = Path(done_marker)
    if marker.exists():
        stderr().print(f"[green]✓[/] {name} (reused: {marker.parent})")
        return False
    stderr().rule(f"[bold]{name}")
    return True


class StepTimes:
    """Seconds per step of a pipeline of reused steps (demo, study), kept in ``path`` across reruns:
    a step that runs is timed; a reused one keeps the time of the run that made it. ``kind`` groups
    steps for the summary of where the time went (every SpeechLLM's training, every sweep)."""

    def __init__(self, path: Path):
        from speechprune.files import read_json

        self.path = path
        found = read_json(path) if path.exists() else {}
        self.seconds: dict[str, float] = found.get("seconds", {})
        self.kinds: dict[str, str] = found.get("kinds", {})

    def run(self, name: str, marker: Path, work, kind: str = "") -> None:
        """``work()`` unless ``marker`` exists (``step_needed``), timed."""
        if not step_needed(name, marker):
            return
        started = time.perf_counter()
        work()
        self.record(name, time.perf_counter() - started, kind)

    def record(self, name: str, seconds: float, kind: str = "") -> None:
        self.seconds[name] = round(seconds, 1)
        if kind:
            self.kinds[name] = kind
        self.save()

    def save(self) -> None:
        from speechprune.files import write_json

        write_json(self.path, {"seconds": self.seconds, **({"kinds": self.kinds} if self.kinds else {})})

    def by_kind(self) -> dict[str, float]:
        """Seconds summed per kind (a step without one is its own kind), in the order first run."""
        totals: dict[str, float] = {}
        for name, seconds in self.seconds.items():
            kind = self.kinds.get(name, name)
            totals[kind] = round(totals.get(kind, 0.0) + seconds, 1)
        return totals


def note(message: str) -> None:
    """One line on stdout that tells the user about a choice made for them (a resume, a default)."""
    stdout().print(message, markup=False, soft_wrap=True)


class Progress:
    """Progress of one step of ``total`` units: ``with Progress("scan", 40, "batches") as p: p.advance()``."""

    def __init__(self, description: str, total: int, unit: str = "", enabled: bool = True):
        self.description, self.total, self.unit, self.enabled = description, int(total), unit, enabled
        self.completed = 0
        self.status = ""
        self._console = stderr()
        self._bar = None
        self._started = self._last_line = 0.0

    def __enter__(self) -> Progress:
        self._started = self._last_line = time.perf_counter()
        if not self.enabled:
            return self
        if self._console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress
            from rich.progress import TimeRemainingColumn

            self._bar = RichProgress(TextColumn(f"[bold]{self.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn(self.unit), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=self._console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, status="")
        else:
            self._line()
        return self

    def advance(self, units: int = 1, status: str | None = None) -> None:
        self.completed += units
        if status is not None:
            self.status = status
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, status=self.status)
        elif time.perf_counter() - self._last_line >= PLAIN_EVERY_SECONDS and self.completed < self.total:
            self._line()

    def _line(self, done: bool = False) -> None:
        self._last_line = time.perf_counter()
        seconds = self._last_line - self._started
        unit = f" {self.unit}" if self.unit else ""
        status = f" {self.status}" if self.status else ""
        if done:
            text = f"{self.description}: {self.completed}/{self.total}{unit} done in {seconds:.1f}s{status}"
        else:
            text = f"{self.description}: {self.completed}/{self.total}{unit} ({seconds:.0f}s){status}"
        self._console.print(text, markup=False, highlight=False)

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif exc[0] is None:
            self._line(done=True)


def track(items: Sequence[T] | Iterable[T], description: str, total: int | None = None, unit: str = "",
          enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items`` while showing a :class:`Progress` (``total`` defaults to ``len(items)``)."""
    total = len(items) if total is None else total  # type: ignore[arg-type]
    with Progress(description, total, unit, enabled) as progress:
        for item in items:
            yield item
            progress.advance()
