"""``speechprune data hf``: a Hugging Face ``datasets`` corpus (hub id, a ``save_to_disk`` folder,
or a local audio folder with ``metadata.csv``) written as a manifest with 16 kHz mono WAV files.
Also the reader of Hugging Face text datasets (:func:`load_text_dataset`), which need no export.

Audio is never decoded by ``datasets`` (its decoder needs torchcodec, which is absent here): the
audio column is cast to ``Audio(decode=False)`` and the bytes or path are decoded with soundfile.
Presets name the usual columns of LibriSpeech, CoVoST2, FLEURS and audio folders; every column can
be overridden. The WAV files go to ``audio/{manifest stem}/`` beside the manifest.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from speechprune.data.audio import SAMPLE_RATE, decode_audio_bytes, load_audio, save_audio
from speechprune.data.manifest import Utterance, text_utterance, write_manifest
from speechprune.errors import UserError
from speechprune.files import claims_output, staged_dir
from speechprune.options.data import PRESETS, HFDataConfig  # noqa: F401  (re-exported)


def _resolve_settings(config: HFDataConfig) -> dict[str, Any]:
    preset = PRESETS[config.preset]
    task = config.task or preset.get("task")
    if task is None:
        raise UserError(f"--task is required with preset {config.preset!r} (asr or st)")
    src, tgt = config.src_lang, config.tgt_lang
    if preset.get("langs_from_name") and config.name:
        parts = re.split(r"[_-]", config.name)
        src = src or parts[0]
        if task == "st" and len(parts) >= 2:
            tgt = tgt or parts[1]
    src = src or preset.get("src_lang")
    if src is None:
        hint = " or --name (e.g. en_de)" if preset.get("langs_from_name") else ""
        raise UserError(f"--src-lang{hint} is required: the preset does not give the source language")
    if task == "asr":
        if tgt not in (None, src):
            raise UserError(f"task asr needs --tgt-lang equal to --src-lang ({src}), got {tgt}")
        tgt = src
    elif tgt is None:
        raise UserError("--tgt-lang is required for task st")
    elif tgt == src:
        raise UserError(f"task st with --src-lang == --tgt-lang == {src!r} (use task asr)")
    return {"task": task, "src_lang": src, "tgt_lang": tgt}


_METADATA = ("metadata.csv", "metadata.jsonl")


def _read_audiofolder(folder: Path, split: str) -> list[dict[str, Any]]:
    """Rows of an audio folder: ``metadata.csv`` / ``metadata.jsonl`` with a ``file_name`` column
    (audio path relative to the metadata file) and any other columns; in ``folder/SPLIT/`` or in
    ``folder/`` itself. Read here rather than by the ``audiofolder`` builder, which encodes audio
    through torchcodec.
    """
    import csv
    import json

    for directory in (folder / split, folder):
        found = [directory / name for name in _METADATA if (directory / name).is_file()]
        if found:
            metadata = found[0]
            break
    else:
        raise UserError(f"{folder}: no metadata.csv or metadata.jsonl (in it or in {split}/); an audio folder "
                        f"needs one with a file_name column and a transcript column")
    rows: list[dict[str, Any]] = []
    with open(metadata, encoding="utf-8", newline="") as handle:
        if metadata.suffix == ".csv":
            records = list(csv.DictReader(handle))
        else:
            records = []
            for line_number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise UserError(f"{metadata}:{line_number}: malformed JSON ({error.msg})") from None
    for line_number, record in enumerate(records, start=2 if metadata.suffix == ".csv" else 1):
        name = record.pop("file_name", None)
        if not name:
            raise UserError(f"{metadata}:{line_number}: missing file_name")
        path = metadata.parent / name
        if not path.is_file():
            raise UserError(f"{metadata}:{line_number}: audio file not found: {path}")
        rows.append({"audio": str(path), **record})
    if not rows:
        raise UserError(f"{metadata}: no rows")
    return rows


def _load(config: HFDataConfig):
    """The chosen split: a ``datasets`` Dataset / IterableDataset, or a list of row dicts."""
    return open_split(config.dataset, config.split, name=config.name, streaming=config.streaming,
                      cache_dir=config.cache_dir, audiofolder=config.preset == "audiofolder")


def open_split(dataset: str, split: str | None, name: str | None = None, streaming: bool = False,
               cache_dir: str | None = None, audiofolder: bool = False):
    """One split of a dataset: a ``save_to_disk`` folder, a local folder (an audio folder with
    metadata is read as a list of row dicts), or a hub id. ``split`` None: the only split there is."""
    import datasets

    source = Path(dataset)
    try:
        if source.is_dir() and ((source / "state.json").is_file() or (source / "dataset_dict.json").is_file()):
            loaded = datasets.load_from_disk(str(source))
            if isinstance(loaded, datasets.DatasetDict):
                return _choose_split(loaded, split, dataset)
            return loaded
        if source.is_dir():
            has_metadata = any((d / m).is_file() for d in (source, source / (split or "")) for m in _METADATA)
            if audiofolder or has_metadata:
                return _read_audiofolder(source, split or "train")
            try:
                loaded = datasets.load_dataset(str(source), name, split=None, streaming=streaming,
                                               cache_dir=cache_dir)
            except ValueError as error:
                # A plain local folder has no subsets; --name then only names the languages.
                if name is None or "BuilderConfig" not in str(error):
                    raise
                loaded = datasets.load_dataset(str(source), None, split=None, streaming=streaming,
                                               cache_dir=cache_dir)
        else:
            if source.exists() or dataset.startswith((".", "/")):
                raise UserError(f"--dataset {dataset}: not a dataset folder")
            loaded = datasets.load_dataset(dataset, name, split=None, streaming=streaming, cache_dir=cache_dir)
    except UserError:
        raise
    except Exception as error:  # datasets raises many types (network, missing config, bad files)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot load dataset {dataset!r}: {first}") from None
    return _choose_split(loaded, split, dataset)


def _choose_split(loaded, split: str | None, dataset: str):
    if split is None:
        if len(loaded) != 1:
            raise UserError(f"{dataset}: choose a split with --split (it has {', '.join(loaded)})")
        split = next(iter(loaded))
    if split not in loaded:
        raise UserError(f"{dataset}: no split {split!r} (has {', '.join(loaded)})")
    return loaded[split]


TEXT_COLUMNS = ["text", "sentence", "content", "transcription"]


def load_text_dataset(dataset: str, text_column: str | None = None, split: str | None = None) -> list[Utterance]:
    """A Hugging Face text dataset as text-only utterances (see :func:`speechprune.data.sources.load_data`):
    the texts of ``text_column`` (default: the first of text, sentence, content, transcription
    the dataset has), empty ones skipped; ids from an ``id`` column (made unique), else ``row-N``. Audio columns
    are never read."""
    data = open_split(dataset, split)
    if isinstance(data, list):
        raise UserError(f"{dataset} is an audio folder; export it with 'speechprune data hf' for speech, "
                        f"or give its transcripts as a .txt file")
    columns = list(data.column_names or (data.features or {}).keys())
    column = _pick("text", text_column, TEXT_COLUMNS, columns, dataset, True)
    kept = [column] + (["id"] if "id" in columns and column != "id" else [])
    utterances: list[Utterance] = []
    seen: dict[str, int] = {}
    for row_index, row in enumerate(data.select_columns(kept)):
        text = row[column]
        if text is not None and not isinstance(text, str):
            raise UserError(f"{dataset}: column {column!r} holds {type(text).__name__}, not text "
                            f"(row {row_index}); choose the text column with --text-column")
        if not (text or "").strip():
            continue
        utterance_id = str(row["id"]) if row.get("id") is not None else f"row-{row_index}"
        utterances.append(text_utterance(_unique_id(utterance_id, seen), text.strip()))
    if not utterances:
        raise UserError(f"{dataset}: no text in column {column!r}")
    return utterances


def _pick(role: str, override: Optional[str], candidates: list[str], columns: list[str], dataset: str,
          required: bool) -> Optional[str]:
    if override:
        if override not in columns:
            raise UserError(f"{dataset}: no column {override!r} for --{role}-column (columns: {', '.join(columns)})")
        return override
    for candidate in candidates:
        if candidate in columns:
            return candidate
    if required:
        raise UserError(f"{dataset}: cannot tell the {role} column; pass --{role}-column (columns: {', '.join(columns)})")
    return None


def _decode(value: Any, base: Path, name: str) -> np.ndarray:
    """One audio cell: {bytes, path} (Audio(decode=False)), a path string, or {array, sampling_rate}."""
    from speechprune.data.audio import resample

    if isinstance(value, dict) and value.get("bytes"):
        return decode_audio_bytes(value["bytes"], SAMPLE_RATE, None, name=value.get("path") or name)
    if isinstance(value, dict) and value.get("array") is not None:
        wave = np.asarray(value["array"], dtype=np.float32)
        if wave.ndim == 2:
            wave = wave.mean(axis=0 if wave.shape[0] < wave.shape[1] else 1)
        return resample(wave, int(value["sampling_rate"]), SAMPLE_RATE)
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        raise UserError(f"{name}: empty audio cell")
    path = Path(path)
    if not path.is_absolute() and (base / path).is_file():
        path = base / path
    return load_audio(path, SAMPLE_RATE)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _utterance_id(row: dict[str, Any], id_col: Optional[str], audio_col: str, row_index: int) -> str:
    """The id column, else the audio file's stem, else the row number; made safe for a file name."""
    raw = None
    if id_col and row.get(id_col) is not None:
        raw = str(row[id_col])
        if id_col == "file_name":
            raw = Path(raw).stem
    else:
        cell = row.get(audio_col)
        path = cell.get("path") if isinstance(cell, dict) else cell if isinstance(cell, str) else None
        if path:
            raw = Path(path).stem
    return _UNSAFE.sub("_", raw or "").strip("_.") or f"{row_index:07d}"


def _unique_id(utterance_id: str, seen: dict[str, int]) -> str:
    """A repeated id (e.g. FLEURS: one sentence id, several speakers) gets a suffix ``-N``."""
    if utterance_id in seen:
        seen[utterance_id] += 1
        utterance_id = f"{utterance_id}-{seen[utterance_id]}"
    seen.setdefault(utterance_id, 0)
    return utterance_id


@claims_output("data hf", directory=False)
def export_hf_dataset(config: HFDataConfig) -> Path:
    """Write one split of a Hugging Face dataset as a manifest with 16 kHz mono WAV files.

    Rows with an empty transcript (or translation), and rows longer than ``max_seconds``, are
    skipped and counted. Audio goes to ``audio/STEM/`` beside the manifest, built under a temporary
    name; the manifest is written last, atomically.
    """
    from datasets import Audio

    settings = _resolve_settings(config)
    out = Path(config.out)
    data = _load(config)
    if isinstance(data, list):
        columns, features = list(data[0].keys()), {}
    else:
        features = data.features or {}
        columns = list(data.column_names or features.keys())
    preset = PRESETS[config.preset]
    audio_col = _pick("audio", config.audio_column, preset["audio"], columns, config.dataset, True)
    text_col = _pick("text", config.text_column, preset["text"], columns, config.dataset, True)
    target_col = _pick("target", config.target_column, preset["target"], columns, config.dataset,
                       settings["task"] == "st") if settings["task"] == "st" else None
    id_col = _pick("id", config.id_column, preset["id"], columns, config.dataset, False)
    if isinstance(features.get(audio_col), Audio):
        data = data.cast_column(audio_col, Audio(decode=False))
    base = Path(config.dataset) if Path(config.dataset).is_dir() else Path.cwd()

    audio_dir = out.parent / "audio" / out.stem
    utterances: list[Utterance] = []
    seen: dict[str, int] = {}
    skipped = {"empty": 0, "too_long": 0}
    with staged_dir(audio_dir, overwrite=True) as stage:
        for row_index, row in enumerate(data):
            if config.max_items is not None and len(utterances) >= config.max_items:
                break
            text = str(row[text_col] or "").strip()
            target = str(row[target_col] or "").strip() if target_col else text
            if not text or not target:
                skipped["empty"] += 1
                continue
            utt_id = _unique_id(_utterance_id(row, id_col, audio_col, row_index), seen)
            wave = _decode(row[audio_col], base, f"{config.dataset} row {row_index}")
            duration = len(wave) / SAMPLE_RATE
            if config.max_seconds is not None and duration > config.max_seconds:
                skipped["too_long"] += 1
                continue
            save_audio(stage / f"{utt_id}.wav", wave, atomic=False)  # the folder is staged
            utterances.append(Utterance(
                id=utt_id, audio=str(audio_dir / f"{utt_id}.wav"), text=text, task=settings["task"],
                src_lang=settings["src_lang"], tgt_lang=settings["tgt_lang"], target=target,
                duration=round(duration, 4), extra={"source": config.dataset, "split": config.split,
                                                    **({"prompt": config.prompt} if config.prompt else {})},
            ))
        if not utterances:
            raise UserError(f"{config.dataset} ({config.split}): no utterances to export "
                            f"({skipped['empty']} empty, {skipped['too_long']} longer than --max-seconds)")
    write_manifest(out, utterances)
    print(f"wrote {len(utterances)} utterances to {out} (skipped {skipped['empty']} empty, "
          f"{skipped['too_long']} too long)", file=sys.stderr)
    return out
