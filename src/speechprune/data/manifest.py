"""The manifest: the one data format every stage reads. JSONL, one utterance a line:

    {"id": "en-test-00012", "audio": "audio/en/test/en-test-00012.wav", "text": "The dog sees two cats.",
     "task": "asr", "src_lang": "en", "tgt_lang": "en", "target": "The dog sees two cats.",
     "duration": 2.41, ...any other keys (speaker, voice, split, ...)}

``audio`` may be relative to the manifest's folder, ``..`` included (a manifest often sits beside
a shared audio folder, and an absolute path may point anywhere anyway: a manifest is trusted to
name audio, never to be executed). ``text`` is the transcript in the source
language; ``target`` is what the model must output: the transcript for ASR (``task`` "asr",
``src_lang == tgt_lang``), the translation for speech translation (``task`` "st").
Validated on load: every problem is a one-line :class:`UserError` naming ``file:line``.

Text-only data (:func:`speechprune.data.sources.load_data`: a ``.txt`` file of one text per line,
or a Hugging Face text dataset) becomes utterances without audio (``audio`` is None, made by
:func:`text_utterance`): each is an ASR utterance whose transcript and target are the text, in
language ``und``. Text input reads them as it reads a manifest's transcripts; speech input refuses
them (:func:`speechprune.data.sources.require_audio`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from speechprune.errors import UserError

TASKS = ("asr", "st")
TEXT_LANGUAGE = "und"  # ISO 639 "undetermined": text-only data says nothing about its language
REQUIRED_FIELDS = ("id", "audio", "text", "task", "src_lang", "tgt_lang", "target")
CORE_FIELDS = REQUIRED_FIELDS + ("duration",)


@dataclass
class Utterance:
    """One manifest line. ``audio`` is an absolute path once loaded (None for text-only data);
    ``extra`` holds other keys."""

    id: str
    audio: str | None
    text: str
    task: str
    src_lang: str
    tgt_lang: str
    target: str
    duration: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_record(self, base_dir: str | Path | None = None) -> dict[str, Any]:
        """The JSON object for a manifest in ``base_dir`` (audio made relative when inside it)."""
        if self.audio is None:
            raise ValueError(f"utterance {self.id}: text-only data has no audio and cannot be written as a manifest")
        record: dict[str, Any] = {
            "id": self.id,
            "audio": _relative_audio(self.audio, base_dir),
            "text": self.text,
            "task": self.task,
            "src_lang": self.src_lang,
            "tgt_lang": self.tgt_lang,
            "target": self.target,
        }
        if self.duration is not None:
            record["duration"] = self.duration
        for key, value in self.extra.items():
            if key in record or key == "duration":
                raise ValueError(f"utterance {self.id}: extra key {key!r} clashes with a manifest field")
            record[key] = value
        return record


def _relative_audio(audio: str, base_dir: str | Path | None) -> str:
    if base_dir is None:
        return str(audio)
    audio_path = Path(os.path.abspath(audio))
    base = Path(os.path.abspath(base_dir))
    try:
        return audio_path.relative_to(base).as_posix()
    except ValueError:
        return str(audio_path)


def _line_error(path: Path, line: int, message: str) -> UserError:
    return UserError(f"{path}:{line}: {message}")


def _parse_line(raw: str, path: Path, line: int) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as error:
        raise _line_error(path, line, f"malformed JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise _line_error(path, line, f"expected a JSON object, got {type(record).__name__}")
    return record


def _validate(record: dict[str, Any], path: Path, line: int, check_audio: bool) -> Utterance:
    def fail(message: str) -> UserError:
        return _line_error(path, line, message)

    if isinstance(record.get("id"), int) and not isinstance(record.get("id"), bool):
        record["id"] = str(record["id"])
    for name in REQUIRED_FIELDS:
        if name not in record or record[name] is None:
            raise fail(f"missing required field {name!r}")
        if not isinstance(record[name], str):
            raise fail(f"field {name!r} must be a string, got {type(record[name]).__name__}")
        if not record[name].strip():
            raise fail(f"empty {name!r}" + (" (the output text)" if name == "target" else ""))
    task = record["task"]
    if task not in TASKS:
        raise fail(f"unknown task {task!r} (expected one of: {', '.join(TASKS)})")
    if task == "asr" and record["src_lang"] != record["tgt_lang"]:
        raise fail(f"task 'asr' needs src_lang == tgt_lang, got {record['src_lang']!r} and {record['tgt_lang']!r}")
    if task == "st" and record["src_lang"] == record["tgt_lang"]:
        raise fail(f"task 'st' with src_lang == tgt_lang == {record['src_lang']!r} (use task 'asr')")
    duration = record.get("duration")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) \
                or duration < 0:
            raise fail(f"'duration' must be a non-negative number of seconds, got {duration!r}")
        duration = float(duration)

    audio = Path(record["audio"])
    if not audio.is_absolute():
        audio = path.parent / audio
    audio = Path(os.path.abspath(audio))
    if check_audio:
        if not audio.is_file():
            raise fail(f"audio file not found: {audio}")
        import soundfile as sf

        try:
            info = sf.info(str(audio))
        except (sf.LibsndfileError, RuntimeError, OSError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise fail(f"unreadable audio file {audio}: {reason}") from None
        from speechprune.data.audio import check_duration

        try:
            check_duration(info.frames, info.samplerate, str(audio))
        except UserError as error:
            raise fail(str(error)) from None
        if duration is None:
            duration = round(info.frames / info.samplerate, 4)

    extra = {key: value for key, value in record.items() if key not in CORE_FIELDS}
    return Utterance(
        id=record["id"], audio=str(audio), text=record["text"], task=task,
        src_lang=record["src_lang"], tgt_lang=record["tgt_lang"], target=record["target"],
        duration=duration, extra=extra,
    )


def load_manifest(path: str | Path, check_audio: bool = True, skip_bad: bool = False) -> list[Utterance]:
    """Read and validate a JSONL manifest; blank lines are skipped.

    Raises :class:`UserError` ``"FILE:LINE: what is wrong"`` for malformed JSON, a line that is
    not UTF-8, a missing or empty required field, an unknown task, ASR with different languages, a
    missing, unreadable, empty or too long audio file (header checked with soundfile when
    ``check_audio``), or a duplicate id; and ``"manifest not found: FILE"`` / ``"FILE: no
    utterances"`` for the file as a whole. ``skip_bad`` skips such lines instead, decodes every
    audio file to skip NaN/Inf and all-zero audio as well, and prints how many and which.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    utterances: list[Utterance] = []
    first_line: dict[str, int] = {}
    skipped: list[str] = []
    with open(path, "rb") as handle:
        for line_number, raw_bytes in enumerate(handle, start=1):
            try:
                utterance = _read_line(raw_bytes, path, line_number, check_audio, skip_bad, first_line)
            except UserError as error:
                if not skip_bad:
                    raise
                skipped.append(str(error))
                continue
            if utterance is not None:
                first_line[utterance.id] = line_number
                utterances.append(utterance)
    if skipped:
        print(f"speechprune: skipped {len(skipped)} bad utterance(s) of {path} (--skip-bad):", file=sys.stderr)
        for reason in skipped:
            print(f"  {reason}", file=sys.stderr)
    if not utterances:
        raise UserError(f"{path}: no utterances in manifest" + (" (all were bad)" if skipped else ""))
    return utterances


def _read_line(raw_bytes: bytes, path: Path, line_number: int, check_audio: bool, check_samples: bool,
               first_line: dict[str, int]) -> Utterance | None:
    try:
        raw = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _line_error(path, line_number, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not raw.strip():
        return None
    utterance = _validate(_parse_line(raw, path, line_number), path, line_number, check_audio)
    if utterance.id in first_line:
        raise _line_error(path, line_number, f"duplicate id {utterance.id!r} (first on line {first_line[utterance.id]})")
    if check_samples and check_audio:
        from speechprune.data.audio import load_audio

        try:
            load_audio(utterance.audio)
        except UserError as error:
            raise _line_error(path, line_number, str(error)) from None
    return utterance


def load_manifests(paths: str | Path | Iterable[str | Path], check_audio: bool = True,
                   skip_bad: bool = False) -> list[Utterance]:
    """Several manifests concatenated in order. A string may hold a comma-separated list.

    Ids must be unique within each manifest; across manifests they may repeat (an ASR and an ST
    manifest exported from one corpus share ids), so key on (manifest, id) where that matters.
    """
    if isinstance(paths, (str, Path)):
        paths = [p for p in str(paths).split(",") if p.strip()]
    paths = [str(p).strip() for p in paths]
    if not paths:
        raise UserError("no manifest given")
    utterances: list[Utterance] = []
    for path in paths:
        utterances.extend(load_manifest(path, check_audio=check_audio, skip_bad=skip_bad))
    return utterances


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> Path:
    """Write a manifest atomically; audio paths inside the manifest's folder become relative."""
    from speechprune.files import write_text

    path = Path(path)
    base = path.parent
    lines = [json.dumps(u.to_record(base), ensure_ascii=False) for u in utterances]
    write_text(path, "".join(line + "\n" for line in lines))
    return path


# text-only data ---------------------------------------------------------------------------------
def text_utterance(utterance_id: str, text: str, **extra: Any) -> Utterance:
    """An utterance of text-only data: no audio; transcript and target are ``text``."""
    return Utterance(id=utterance_id, audio=None, text=text, task="asr", src_lang=TEXT_LANGUAGE,
                     tgt_lang=TEXT_LANGUAGE, target=text, extra=extra)
