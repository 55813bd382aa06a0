"""Manifest schema: validation errors name file:line, relative audio paths, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.manifest import Utterance, load_manifest, load_manifests, write_manifest
from speechprune.errors import UserError


def _wav(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(np.arange(int(seconds * rate)) * 0.1), rate)
    return path


def _record(**overrides) -> dict:
    record = {"id": "u1", "audio": "audio/u1.wav", "text": "the dog runs", "task": "asr",
              "src_lang": "en", "tgt_lang": "en", "target": "the dog runs"}
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not _DROP}


_DROP = object()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _wav(tmp_path / "audio" / "u1.wav")
    _wav(tmp_path / "audio" / "u2.wav", seconds=1.0)
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    return tmp_path


def _write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")
    return path


def test_valid_manifest_resolves_relative_audio_and_fills_duration(folder: Path) -> None:
    good2 = _record(id="u2", audio="audio/u2.wav", task="st", tgt_lang="fr", target="le chien court",
                    speaker="spk7")
    manifest = _write_lines(folder / "m.jsonl", [_record(), "", good2])
    utterances = load_manifest(manifest)
    assert [u.id for u in utterances] == ["u1", "u2"]
    assert Path(utterances[0].audio) == (folder / "audio" / "u1.wav").resolve()
    assert Path(utterances[0].audio).is_absolute()
    assert utterances[0].duration == pytest.approx(0.5)
    assert utterances[1].duration == pytest.approx(1.0)
    assert utterances[1].extra == {"speaker": "spk7"}
    assert utterances[1].target == "le chien court" and utterances[1].text == "the dog runs"


BAD_CASES = [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
    (_record(target=_DROP), "missing required field 'target'"),
    (_record(id=_DROP), "missing required field 'id'"),
    (_record(text=""), "empty 'text'"),
    (_record(target="   "), "empty 'target'"),
    (_record(task="summarise"), "unknown task 'summarise'"),
    (_record(tgt_lang="fr"), "task 'asr' needs src_lang == tgt_lang"),
    (_record(task="st"), "task 'st' with src_lang == tgt_lang"),
    (_record(src_lang=3), "field 'src_lang' must be a string"),
    (_record(duration=-1), "'duration' must be a non-negative number"),
    (_record(audio="audio/nowhere.wav"), "audio file not found"),
    (_record(audio="audio/broken.wav"), "unreadable audio file"),
]


@pytest.mark.parametrize("bad,expected", BAD_CASES, ids=[c[1] for c in BAD_CASES])
def test_bad_line_names_file_and_line(folder: Path, bad, expected: str) -> None:
    manifest = _write_lines(folder / "bad.jsonl", [_record(id="ok", audio="audio/u2.wav"), "", bad])
    with pytest.raises(UserError) as info:
        load_manifest(manifest)
    message = str(info.value)
    assert message.startswith(f"{manifest}:3: "), message
    assert expected in message
    assert "\n" not in message


def test_duplicate_id_names_both_lines(folder: Path) -> None:
    manifest = _write_lines(folder / "dup.jsonl", [_record(), _record(audio="audio/u2.wav")])
    with pytest.raises(UserError, match=r"dup\.jsonl:2: duplicate id 'u1' \(first on line 1\)"):
        load_manifest(manifest)


def test_missing_audio_is_not_checked_when_asked(folder: Path) -> None:
    manifest = _write_lines(folder / "m.jsonl", [_record(audio="audio/nowhere.wav")])
    [utterance] = load_manifest(manifest, check_audio=False)
    assert utterance.duration is None
    assert utterance.audio == str(folder / "audio" / "nowhere.wav")


def test_missing_empty_and_non_utf8_manifests(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="manifest not found: .*absent.jsonl"):
        load_manifest(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="empty.jsonl: no utterances"):
        load_manifest(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"id": "\xe9"}\n')
    with pytest.raises(UserError, match="latin1.jsonl:1: not UTF-8"):
        load_manifest(tmp_path / "latin1.jsonl")


def test_write_load_round_trip(folder: Path, tmp_path: Path) -> None:
    outside = _wav(tmp_path.parent / (tmp_path.name + "-elsewhere") / "x.wav")
    utterances = [
        Utterance("a", str(folder / "audio" / "u1.wav"), "Der Hund läuft.", "asr", "de", "de", "Der Hund läuft.",
                  duration=0.5, extra={"voice": "de+m1", "speed": 160}),
        Utterance("b", str(outside), "The dog runs.", "st", "en", "fr", "Le chien court.", duration=0.5),
    ]
    manifest = write_manifest(folder / "round.jsonl", utterances)
    lines = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["audio"] == "audio/u1.wav"  # inside the manifest's folder: relative
    assert lines[1]["audio"] == str(outside)  # outside: absolute
    assert lines[0]["voice"] == "de+m1"
    assert "Der Hund läuft." in manifest.read_text(encoding="utf-8")  # not \u-escaped
    loaded = load_manifest(manifest)
    assert [(u.id, Path(u.audio).resolve(), u.text, u.task, u.src_lang, u.tgt_lang, u.target, u.duration, u.extra)
            for u in loaded] == [(u.id, Path(u.audio).resolve(), u.text, u.task, u.src_lang, u.tgt_lang, u.target,
                                  u.duration, u.extra) for u in utterances]
    # Moving the folder keeps relative paths valid.
    moved = folder.parent / (folder.name + "-moved")
    folder.rename(moved)
    assert Path(load_manifest(moved / "round.jsonl", check_audio=False)[0].audio) == moved / "audio" / "u1.wav"


def test_extra_key_may_not_shadow_a_field(tmp_path: Path) -> None:
    bad = Utterance("a", "x.wav", "t", "asr", "en", "en", "t", extra={"target": "other"})
    with pytest.raises(ValueError, match="clashes"):
        write_manifest(tmp_path / "m.jsonl", [bad])
    assert not (tmp_path / "m.jsonl").exists()


def test_load_manifests_concatenates_lists_and_comma_strings(folder: Path) -> None:
    a = _write_lines(folder / "a.jsonl", [_record()])
    b = _write_lines(folder / "b.jsonl", [_record(id="u2", audio="audio/u2.wav")])
    assert [u.id for u in load_manifests([str(a), str(b)])] == ["u1", "u2"]
    assert [u.id for u in load_manifests(f"{a},{b}")] == ["u1", "u2"]
    with pytest.raises(UserError, match="manifest not found"):
        load_manifests([str(a), str(folder / "c.jsonl")])
    with pytest.raises(UserError, match="no manifest"):
        load_manifests([])


def test_cli_bad_manifest_is_exit_2_with_file_and_line(folder: Path, capsys) -> None:
    from speechprune.cli import main

    out = folder / "eval-out"
    code = main(["eval", "--model", str(folder / "no-model"), "--data", str(folder / "absent.jsonl"),
                 "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "manifest not found" in err and "absent.jsonl" in err and "Traceback" not in err
    bad = _write_lines(folder / "bad.jsonl", [_record(), _record(id="u2", target="")])
    assert main(["eval", "--model", str(folder / "no-model"), "--data", str(bad), "--out", str(out)]) == 2
    assert f"{bad}:2: empty 'target'" in capsys.readouterr().err
    assert not out.exists()
