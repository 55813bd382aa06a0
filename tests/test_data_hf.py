"""Hugging Face datasets export, on tiny datasets this test builds locally (no network)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.cli import main
from speechprune.data.hf import HFDataConfig, export_hf_dataset
from speechprune.data.manifest import load_manifest
from speechprune.errors import UserError

datasets = pytest.importorskip("datasets")


def _encoded(rate: int, seconds: float, fmt: str = "WAV", channels: int = 1, hz: float = 440.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * hz * t)
    if channels == 2:
        wave = np.stack([wave, wave], axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def covost_like(tmp_path_factory) -> Path:
    """A DatasetDict saved with save_to_disk: an Audio column holding WAV/FLAC bytes (various rates)."""
    from datasets import Audio, Dataset, DatasetDict

    rows = {
        "audio": [{"bytes": _encoded(22050, 1.0), "path": "a.wav"},
                  {"bytes": _encoded(8000, 0.5, "FLAC", channels=2), "path": "b.flac"},
                  {"bytes": _encoded(48000, 3.0), "path": "c.wav"},
                  {"bytes": _encoded(16000, 0.4), "path": "d.wav"}],
        "sentence": ["Hello there.", "Good day.", "A long one.", "Empty translation."],
        "translation": ["Hallo.", "Guten Tag.", "Ein langer.", ""],
        "id": ["clip/1", "clip/1", "clip 3", "clip4"],
    }
    split = Dataset.from_dict(rows).cast_column("audio", Audio())
    folder = tmp_path_factory.mktemp("hf") / "covost_like"
    DatasetDict({"test": split, "train": split.select([0])}).save_to_disk(str(folder))
    return folder


def test_save_to_disk_dataset_with_covost2_preset(covost_like: Path, tmp_path: Path) -> None:
    out = export_hf_dataset(HFDataConfig(dataset=str(covost_like), preset="covost2", name="en_de",
                                         split="test", out=str(tmp_path / "cv" / "en-de.test.jsonl")))
    utterances = load_manifest(out)
    # the empty translation is skipped; ids are made file-safe and unique
    assert [u.id for u in utterances] == ["clip_1", "clip_1-1", "clip_3"]
    assert [(u.task, u.src_lang, u.tgt_lang) for u in utterances] == [("st", "en", "de")] * 3
    assert [u.text for u in utterances] == ["Hello there.", "Good day.", "A long one."]
    assert [u.target for u in utterances] == ["Hallo.", "Guten Tag.", "Ein langer."]
    assert [u.duration for u in utterances] == pytest.approx([1.0, 0.5, 3.0])
    for u in utterances:
        info = sf.info(u.audio)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert Path(u.audio).parent == tmp_path / "cv" / "audio" / "en-de.test"
    wave, _ = sf.read(utterances[1].audio)  # stereo FLAC at 8 kHz -> mono 16 kHz, frequency kept
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.fft.rfftfreq(len(wave), 1 / 16000)[np.argmax(spectrum)] - 440) < 3
    assert json.loads(out.read_text().splitlines()[0])["audio"] == "audio/en-de.test/clip_1.wav"


def test_limits_asr_preset_and_overrides(covost_like: Path, tmp_path: Path) -> None:
    out = export_hf_dataset(HFDataConfig(dataset=str(covost_like), preset="librispeech", text_column="sentence",
                                         split="test", max_seconds=2.0, max_items=2,
                                         out=str(tmp_path / "ls.jsonl")))
    utterances = load_manifest(out)
    assert [u.id for u in utterances] == ["clip_1", "clip_1-1"]
    assert all(u.task == "asr" and u.target == u.text and u.src_lang == "en" for u in utterances)
    long_skipped = export_hf_dataset(HFDataConfig(dataset=str(covost_like), preset="librispeech",
                                                  text_column="sentence", split="test", max_seconds=2.0,
                                                  out=str(tmp_path / "ls2.jsonl")))
    assert [u.id for u in load_manifest(long_skipped)] == ["clip_1", "clip_1-1", "clip4"]


def test_audiofolder_with_metadata_csv(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    (folder / "clips").mkdir(parents=True)
    for i in range(3):
        sf.write(folder / "clips" / f"utt{i}.flac", 0.2 * np.sin(np.arange(44100) * 0.05), 44100)
    (folder / "metadata.csv").write_text(
        "file_name,transcription,speaker\nclips/utt0.flac,le chat dort,s1\nclips/utt1.flac,\"un, deux\",s2\n"
        "clips/utt2.flac,,s3\n", encoding="utf-8")
    out = export_hf_dataset(HFDataConfig(dataset=str(folder), preset="audiofolder", src_lang="fr",
                                         split="train", out=str(tmp_path / "af.jsonl")))
    utterances = load_manifest(out)
    assert [(u.id, u.text, u.src_lang) for u in utterances] == [("utt0", "le chat dort", "fr"),
                                                                ("utt1", "un, deux", "fr")]
    assert all(sf.info(u.audio).samplerate == 16000 for u in utterances)


def test_audiofolder_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "metadata.csv").write_text("file_name,text\nmissing.wav,hello\n")
    with pytest.raises(UserError, match=r"metadata\.csv:2: audio file not found"):
        export_hf_dataset(HFDataConfig(dataset=str(folder), preset="audiofolder", src_lang="en",
                                       out=str(tmp_path / "x.jsonl")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no metadata.csv"):
        export_hf_dataset(HFDataConfig(dataset=str(empty), preset="audiofolder", src_lang="en",
                                       out=str(tmp_path / "y.jsonl")))
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "audio" / "x").exists()


def test_local_parquet_folder(covost_like: Path, tmp_path: Path) -> None:
    split = datasets.load_from_disk(str(covost_like))["test"]
    (tmp_path / "pq" / "data").mkdir(parents=True)
    split.to_parquet(str(tmp_path / "pq" / "data" / "test-00000-of-00001.parquet"))
    out = export_hf_dataset(HFDataConfig(dataset=str(tmp_path / "pq"), preset="covost2", name="fr_en",
                                         cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "pq.jsonl")))
    utterances = load_manifest(out)
    assert len(utterances) == 3 and utterances[0].src_lang == "fr" and utterances[0].tgt_lang == "en"


def test_user_errors(covost_like: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no column 'words'"):
        export_hf_dataset(HFDataConfig(dataset=str(covost_like), preset="librispeech", text_column="words",
                                       out=str(tmp_path / "a.jsonl")))
    with pytest.raises(UserError, match="cannot tell the text column"):
        export_hf_dataset(HFDataConfig(dataset=str(covost_like), task="asr", src_lang="en",
                                       out=str(tmp_path / "a.jsonl")))
    with pytest.raises(UserError, match="no split 'validation'"):
        export_hf_dataset(HFDataConfig(dataset=str(covost_like), preset="covost2", name="en_de",
                                       split="validation", out=str(tmp_path / "a.jsonl")))
    with pytest.raises(UserError, match="--src-lang or --name"):
        export_hf_dataset(HFDataConfig(dataset=str(covost_like), preset="covost2", out=str(tmp_path / "a.jsonl")))
    with pytest.raises(UserError, match="--tgt-lang is required"):
        export_hf_dataset(HFDataConfig(dataset=str(covost_like), preset="covost2", src_lang="en",
                                       out=str(tmp_path / "a.jsonl")))
    with pytest.raises(UserError, match="--preset must be one of .*, not 'commonvoice'"):
        HFDataConfig(dataset="x", preset="commonvoice", out="a.jsonl")
    existing = tmp_path / "exists.jsonl"
    existing.write_text("keep")
    with pytest.raises(UserError, match="already exists"):
        export_hf_dataset(HFDataConfig(dataset=str(covost_like), preset="covost2", name="en_de",
                                       out=str(existing)))
    assert existing.read_text() == "keep"


def test_cli(covost_like: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.jsonl"
    assert main(["data", "hf", "--dataset", str(covost_like), "--preset", "covost2", "--name", "en_de",
                 "--split", "train", "--out", str(out)]) == 0
    assert len(load_manifest(out)) == 1
    assert main(["data", "hf", "--dataset", str(tmp_path / "nowhere"), "--preset", "librispeech",
                 "--out", str(tmp_path / "b.jsonl")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "b.jsonl").exists()


def test_a_prompt_goes_into_every_line_and_replaces_the_models(covost_like: Path, tmp_path: Path) -> None:
    from speechprune.model.speechllm import DEFAULT_PROMPTS, prompt_text

    out = export_hf_dataset(HFDataConfig(dataset=str(covost_like), preset="covost2", name="en_de", split="test",
                                         prompt="Translate the {source_language} speech into {target_language}.",
                                         out=str(tmp_path / "en-de.jsonl")))
    utterances = load_manifest(out)
    assert {json.loads(line)["prompt"] for line in out.read_text().splitlines()} == {
        "Translate the {source_language} speech into {target_language}."}
    assert {prompt_text(DEFAULT_PROMPTS, u) for u in utterances} == {"Translate the English speech into German."}
    plain = load_manifest(export_hf_dataset(HFDataConfig(dataset=str(covost_like), preset="covost2", name="en_de",
                                                         split="test", out=str(tmp_path / "plain.jsonl"))))
    assert {prompt_text(DEFAULT_PROMPTS, u) for u in plain} == {"Translate the speech into German."}
    with pytest.raises(UserError, match=r"--prompt .*unknown field \{lang\}"):
        HFDataConfig(dataset="d", preset="covost2", prompt="Translate into {lang}.", out=str(tmp_path / "x.jsonl"))
