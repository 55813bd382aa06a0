"""Every data source a stage reads, behind one function, :func:`load_data`: a JSONL manifest
(:mod:`speechprune.data.manifest`), a text file of one text per line, or a Hugging Face text
dataset (:mod:`speechprune.data.hf`). Text files and text datasets give text-only utterances."""

from __future__ import annotations

import re
from pathlib import Path

from speechprune.data.hf import load_text_dataset
from speechprune.data.manifest import Utterance, load_manifest, text_utterance
from speechprune.errors import UserError


def load_text_lines(path: str | Path) -> list[Utterance]:
    """A text file of one text per line (UTF-8; surrounding whitespace stripped, blank lines
    skipped); each text's id is ``line-N``, N its 1-based line number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"text file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    utterances = [text_utterance(f"line-{number}", line.strip())
                  for number, line in enumerate(lines, start=1) if line.strip()]
    if not utterances:
        raise UserError(f"{path}: no text (every line is blank)")
    return utterances


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def load_data(source: str | Path, text_column: str | None = None, split: str | None = None,
              check_audio: bool = True, skip_bad: bool = False) -> list[Utterance]:
    """Utterances from any data a stage reads: a JSONL manifest (read by :func:`load_manifest`,
    ``check_audio`` and ``skip_bad`` as there), a ``.txt`` file (one text per line), or a Hugging
    Face text dataset (a ``save_to_disk`` folder, a local dataset folder, or a hub id) whose
    ``text_column`` holds the texts. Text files and text datasets give text-only utterances (no audio)."""
    path = Path(source)
    if path.suffix == ".txt":
        _refuse_dataset_options(source, text_column, split)
        return load_text_lines(path)
    if path.is_dir() or (not path.exists() and path.suffix not in (".jsonl", ".json")
                         and _HUB_ID.fullmatch(str(source))):
        return load_text_dataset(str(source), text_column=text_column, split=split)
    if path.is_file() or path.suffix in (".jsonl", ".json"):
        _refuse_dataset_options(source, text_column, split)
        return load_manifest(path, check_audio=check_audio, skip_bad=skip_bad)
    raise UserError(f"data not found: {source} (a manifest .jsonl, a text file .txt, a datasets folder or hub id)")


def _refuse_dataset_options(source: str | Path, text_column: str | None, split: str | None) -> None:
    if text_column or split:
        option = "--text-column" if text_column else "--split"
        raise UserError(f"{option} is for a Hugging Face dataset; {source} is a file")


def require_audio(utterances: list[Utterance], source: str | Path, what: str = "speech input") -> None:
    """Refuse text-only data where speech is needed, in one line."""
    if any(utterance.audio is None for utterance in utterances):
        raise UserError(f"{what} needs audio, but {source} is text only (a .txt file or a text dataset); "
                        f"use text input, or a manifest with audio")
