"""Robustness through the CLI: no command replaces an existing output unasked, one run per output
at a time, and every bad input (audio, manifest, model, output) ends in one line naming the
culprit, exit 2, no traceback and nothing half-written. The table in docs/robustness.md lists
these cases; the real-kill tests are in test_kills.py."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechprune import files
from speechprune.cli import main
from speechprune.config import to_yaml
from speechprune.data.audio import MAX_AUDIO_SECONDS, load_audio
from speechprune.data.manifest import load_manifest
from speechprune.errors import UserError
from speechprune.model.speechllm import SpeechLLM
from tests.helpers import SENTENCES, build_tiny_speechllm, tiny_base_llm_config, write_tiny_manifest


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tiny manifest, a tiny SpeechLLM saved as train saves one, and a scan-shaped JSON of it."""
    root = tmp_path_factory.mktemp("world")
    manifest = write_tiny_manifest(root / "data")
    torch.manual_seed(0)
    model_dir = build_tiny_speechllm(load_manifest(manifest), layers=4).save(root / "model")
    return {"root": root, "manifest": manifest, "model": model_dir}


def fails_with(capsys, argv: list[str], *fragments: str) -> str:
    """Run the CLI; it must exit 2 with one error line holding every fragment, no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("speechprune: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary names (staging folders, temp files) or locks left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if files.LEFTOVER.match(p.name) or p.name.endswith(".lock"))


# ----------------------------------------------------------------------------- never overwrite
def command_lines(world: dict, out: Path) -> dict[str, list[str]]:
    m, d = str(world["model"]), str(world["manifest"])
    return {
        "data synth": ["data", "synth", "--out", str(out)],
        "data hf": ["data", "hf", "--dataset", str(world["root"]), "--out", str(out)],
        "train": ["train", "--train", d, "--out", str(out)],
        "base-llm": ["base-llm", "--out", str(out)],
        "eval": ["eval", "--model", m, "--data", d, "--out", str(out)],
        "scan": ["scan", "--model", m, "--data", d, "--out", str(out)],
        "compare": ["compare", str(world["root"] / "scan"), "--out", str(out)],
        "prune": ["prune", "--model", m, "--drop", "1:2", "--out", str(out)],
        "heal": ["heal", "--model", m, "--data", d, "--out", str(out), "--target", "all-mlp"],
        "sweep": ["sweep", "--model", m, "--scan", str(world["root"] / "scan"), "--train", d, "--test", d,
                  "--out", str(out)],
        "demo": ["demo", "--out", str(out)],
        "study": ["study", "--out", str(out)],
    }


COMMANDS = ["data synth", "data hf", "train", "base-llm", "eval", "scan", "compare", "prune", "heal", "sweep", "demo",
            "study"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_existing_output_is_refused_without_overwrite(command, world, tmp_path, capsys):
    out = tmp_path / ("made-by-user.jsonl" if command == "data hf" else "made-by-user")
    if command == "data hf":
        out.write_text("{}\n")
    else:
        out.mkdir()
        (out / "precious.txt").write_text("mine")
    fails_with(capsys, command_lines(world, out)[command], str(out), "already exists; pass --overwrite")
    assert (out.read_text() == "{}\n") if command == "data hf" else ((out / "precious.txt").read_text() == "mine")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "data hf"])
def test_an_output_directory_that_is_a_file_is_refused(command, world, tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("not a directory")
    fails_with(capsys, command_lines(world, out)[command], str(out), "is a file, not a directory")
    assert out.read_text() == "not a directory"


@pytest.mark.parametrize("command", ["prune", "base-llm"])  # one that stages its result aside, one that works in OUT
def test_overwrite_replaces_the_output(command, world, tmp_path, monkeypatch):
    # temporary files and folders are created 0600 and 0700: results must get the user's usual modes
    monkeypatch.setattr(files, "_UMASK", 0o022)  # as read at import on a machine with the usual umask
    _overwrite_and_check(command, world, tmp_path)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in (tmp_path / "made-by-user").rglob("*")}
    assert modes and all(mode == (0o755 if (tmp_path / path).is_dir() else 0o644) for path, mode in modes.items()), modes


def _overwrite_and_check(command, world, tmp_path):
    out = tmp_path / "made-by-user"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    if command == "base-llm":  # a tiny one, so that it runs to the end
        (tmp_path / "base-llm.yaml").write_text(to_yaml(tiny_base_llm_config(out)))
        argv = ["base-llm", "--config", str(tmp_path / "base-llm.yaml"), "--out", str(out)]
    else:
        argv = command_lines(world, out)[command]
    assert main(argv + ["--overwrite"]) == 0
    assert not (out / "precious.txt").exists() and leftovers(tmp_path) == []
    if command == "base-llm":
        assert json.loads((out / "curve.json").read_text())["steps"] == 4 and not (out / files.RUN_MARKER).exists()
    else:
        assert json.loads((out / "pruning.json").read_text())["removed"] == [1]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "data hf"])
def test_an_output_of_another_command_is_refused_even_with_overwrite(command, world, tmp_path, capsys):
    # following an "--overwrite" hint must not delete another command's work (scan --out runs/demo)
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    maker = "scan" if command == "demo" else "demo"
    files.write_json(out / files.MADE_BY, {"command": maker})
    fails_with(capsys, command_lines(world, out)[command] + ["--overwrite"], str(out),
               f"holds the output of 'speechprune {maker}'", "choose another --out")
    assert (out / "model.safetensors").read_bytes() == b"weights" and leftovers(tmp_path) == []


def test_a_finished_output_names_its_command_and_overwrite_replaces_only_its_own(world, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(command_lines(world, out)["prune"]) == 0
    assert files.made_by(out) == "prune"
    fails_with(capsys, command_lines(world, out)["scan"] + ["--overwrite"], "holds the output of 'speechprune prune'")
    assert main(command_lines(world, out)["prune"] + ["--overwrite"]) == 0 and files.made_by(out) == "prune"


def test_an_unfinished_run_of_other_settings_is_refused(world, tmp_path, capsys):
    # an unfinished scan of other settings (its marker names another signature) is not resumed
    scan_out = tmp_path / "scan"
    scan_out.mkdir()
    files.write_json(scan_out / files.RUN_MARKER, {"signature": "another run"})
    fails_with(capsys, command_lines(world, scan_out)["scan"], "holds an unfinished run with other settings")


def test_a_resumed_pipeline_keeps_the_resumable_staging_of_a_nested_step(tmp_path):
    """A pipeline (study, demo) resumes inside its OUT and removes what killed writes left there,
    but not a nested step's own resumable staging (the corpus ``data synth`` speaks into
    ``.corpus.partial``): that step resumes it, or wipes it if its settings changed."""
    out = tmp_path / "study"
    files.write_json(out / files.RUN_MARKER, {"signature": "the study"})
    corpus = out / ".corpus.partial"
    files.write_json(corpus / files.RUN_MARKER, {"signature": "its corpus"})
    (corpus / "spoken.wav").write_bytes(b"RIFF")
    killed_writes = [out / "base" / ".curve.json.x1y2z3.tmp.json", corpus / ".next.wav.a1b2c3.tmp.wav",
                     out / "base" / ".model.a1b2c3d4.partial"]
    for path in killed_writes:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    with files.claim_output(out, overwrite=False, signature="the study", resumable=True) as claim:
        assert claim.resumed
        assert (corpus / "spoken.wav").read_bytes() == b"RIFF" and not any(p.exists() for p in killed_writes)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_second_run_on_a_locked_output_is_refused(command, world, tmp_path, capsys):
    out = tmp_path / ("out.jsonl" if command == "data hf" else "out")
    with files.claim_output(out, overwrite=False, signature="first", directory=command != "data hf"):
        fails_with(capsys, command_lines(world, out)[command], str(out), "being written by another speechprune run",
                   f"pid {os.getpid()}")
    assert not out.exists()
    assert leftovers(tmp_path) == []  # the lock goes with the run that held it


def test_an_unwritable_output_folder_is_one_line(world, tmp_path, capsys, monkeypatch):
    # Tests run as root, for whom permission bits do not bind: the kernel's EACCES is simulated
    # where the toolkit first writes beside --out (its lock file), exactly as a read-only folder answers.
    locked = tmp_path / "read-only"
    locked.mkdir()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(locked)) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", refusing_open)
    fails_with(capsys, command_lines(world, locked / "eval")["eval"], str(locked / "eval"), "permission denied")
    assert list(locked.iterdir()) == []


def test_a_disk_that_fills_up_mid_write_is_one_line_and_leaves_nothing(world, tmp_path, capsys, monkeypatch):
    # ENOSPC is simulated on the write of the last file of the result (pruning.json), after the
    # weights were written: the staged result must vanish whole, temporary files included.
    real_write_text = pathlib.Path.write_text

    def disk_full(self, *args, **kwargs):
        if self.name.startswith(".pruning.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", disk_full)
    out = tmp_path / "pruned"
    fails_with(capsys, command_lines(world, out)["prune"], str(out), "the disk is full")
    assert not out.exists() and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- bad audio
def manifest_with(folder: Path, audio_name: str, **fields) -> Path:
    line = {"id": "bad-1", "audio": audio_name, "text": "the red cat.", "task": "asr", "src_lang": "en",
            "tgt_lang": "en", "target": "the red cat.", **fields}
    path = folder / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    return path


def scan_argv(world: dict, manifest: Path, out: Path) -> list[str]:
    return ["scan", "--model", str(world["model"]), "--data", str(manifest), "--out", str(out),
            "--bootstrap", "0", "--plots", "false"]


@pytest.mark.parametrize("kind,expected", [
    ("nan", "has NaN or infinite samples"), ("inf", "has NaN or infinite samples"),
    ("zeros", "is all zeros"), ("empty", "unreadable audio file"), ("two-hours", "over the 600 s limit"),
    ("text-as-wav", "unreadable audio file"),
])
def test_bad_audio_is_one_line_naming_the_file(kind, expected, world, tmp_path, capsys):
    audio = tmp_path / "clip.wav"
    wave = 0.1 * np.sin(np.arange(16000) / 10).astype(np.float32)
    if kind in ("nan", "inf"):
        wave[500] = np.nan if kind == "nan" else np.inf
        sf.write(audio, wave, 16000, subtype="FLOAT")
    elif kind == "zeros":
        sf.write(audio, np.zeros(16000, dtype=np.float32), 16000)
    elif kind == "empty":
        audio.write_bytes(b"")
    elif kind == "two-hours":
        # a valid header that says 2 h (7200 frames at 1 Hz): resampled to 16 kHz float32 it would
        # take 460 MB, so it must be refused from the header, before any decoding
        sf.write(audio, np.full(7200, 0.1, dtype=np.float32), 1, subtype="FLOAT")
    else:
        audio.write_text("this is not audio at all\n" * 50)
    out = tmp_path / "scan"
    fails_with(capsys, scan_argv(world, manifest_with(tmp_path, audio.name), out), str(audio), expected)
    assert not out.exists() and leftovers(tmp_path) == []


def test_an_extension_that_lies_is_ignored_content_decides(tmp_path):
    wave = 0.1 * np.sin(np.arange(8000) / 7).astype(np.float32)
    sf.write(tmp_path / "real.flac", wave, 16000, format="FLAC")
    shutil.copy(tmp_path / "real.flac", tmp_path / "lying.wav")
    assert np.array_equal(load_audio(tmp_path / "lying.wav"), load_audio(tmp_path / "real.flac"))
    assert MAX_AUDIO_SECONDS == 600  # documented in docs/robustness.md


# ----------------------------------------------------------------------------- bad manifests
def test_bad_manifest_lines_name_file_and_line(world, tmp_path, capsys):
    good = json.loads(world["manifest"].read_text().splitlines()[0])
    good["audio"] = str(world["manifest"].parent / good["audio"])
    cases = {
        "not-json": (json.dumps(good) + "\n{not json\n").encode(),
        "duplicate": (json.dumps(good) + "\n" + json.dumps(good) + "\n").encode(),
        "latin1": json.dumps(good).encode() + b"\n" + json.dumps({**good, "id": "x"}).encode().replace(b"red", b"r\xe9d")
        + b"\n",
        "st-no-target": (json.dumps(good) + "\n" + json.dumps({**good, "id": "st", "task": "st", "tgt_lang": "fr",
                                                                "target": ""}) + "\n").encode(),
    }
    expected = {"not-json": ":2: malformed JSON", "duplicate": ":2: duplicate id 'asr-0'",
                "latin1": ":2: not UTF-8 text", "st-no-target": ":2: empty 'target' (the output text)"}
    for name, content in cases.items():
        manifest = tmp_path / f"{name}.jsonl"
        manifest.write_bytes(content)
        fails_with(capsys, scan_argv(world, manifest, tmp_path / f"out-{name}"), f"{manifest}{expected[name]}")
        assert not (tmp_path / f"out-{name}").exists()


def test_audio_paths_may_climb_out_of_the_manifest_folder(world, tmp_path):
    """Decided: ``..`` is allowed (a manifest beside a shared audio folder); it resolves normally."""
    nested = tmp_path / "manifests" / "en"
    nested.mkdir(parents=True)
    sf.write(tmp_path / "clip.wav", np.full(8000, 0.1, dtype=np.float32), 16000)
    utterance = load_manifest(manifest_with(nested, "../../clip.wav"))[0]
    assert utterance.audio == str(tmp_path / "clip.wav")


def test_skip_bad_skips_and_lists_the_bad_utterances(world, tmp_path, capsys):
    lines = world["manifest"].read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        record["audio"] = str(world["manifest"].parent / record["audio"])
    nan_wave = np.full(8000, 0.1, dtype=np.float32)
    nan_wave[10] = np.nan
    sf.write(tmp_path / "nan.wav", nan_wave, 16000, subtype="FLOAT")
    bad = [json.dumps({**records[0], "id": "nan-audio", "audio": str(tmp_path / "nan.wav")}), "{broken",
           json.dumps(records[1])]  # the last one repeats an id
    manifest = tmp_path / "some-bad.jsonl"
    manifest.write_text("\n".join([json.dumps(r) for r in records] + bad) + "\n")
    fails_with(capsys, scan_argv(world, manifest, tmp_path / "strict"), "some-bad.jsonl:14: malformed JSON")
    out = tmp_path / "lenient"
    assert main(scan_argv(world, manifest, out) + ["--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 bad utterance(s)" in err
    for line_number in (13, 14, 15):
        assert f"some-bad.jsonl:{line_number}:" in err
    scan = json.loads((out / "scan.json").read_text())
    assert scan["data"]["utterances"] == len(SENTENCES) * 2


# ----------------------------------------------------------------------------- bad models
def copy_model(world: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(world["model"], tmp_path / "model"))


def eval_argv(world: dict, model: Path, out: Path) -> list[str]:
    return ["eval", "--model", str(model), "--data", str(world["manifest"]), "--out", str(out)]


def test_a_model_missing_its_weights(world, tmp_path, capsys):
    model = copy_model(world, tmp_path)
    (model / "decoder" / "model.safetensors").unlink()
    fails_with(capsys, eval_argv(world, model, tmp_path / "out"), str(model / "decoder"), "no weights")
    (model / "decoder" / "model.safetensors").write_bytes(b"")  # restored name, but the projector goes
    shutil.copy(world["model"] / "decoder" / "model.safetensors", model / "decoder" / "model.safetensors")
    (model / "projector.safetensors").unlink()
    fails_with(capsys, eval_argv(world, model, tmp_path / "out"), "projector.safetensors is missing")
    assert not (tmp_path / "out").exists()


def test_an_architecture_transformers_does_not_know(world, tmp_path, capsys):
    model = copy_model(world, tmp_path)
    config = json.loads((model / "decoder" / "config.json").read_text())
    (model / "decoder" / "config.json").write_text(json.dumps({**config, "model_type": "nosucharch-9000"}))
    fails_with(capsys, eval_argv(world, model, tmp_path / "out"), "cannot load decoder", "nosucharch-9000")


def test_a_decoder_swapped_for_another_hidden_size(world, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, LlamaConfig

    model = copy_model(world, tmp_path)
    config = json.loads((model / "decoder" / "config.json").read_text())
    other = LlamaConfig(**{**{k: v for k, v in config.items() if k in ("vocab_size", "num_hidden_layers",
                                                                         "num_attention_heads", "num_key_value_heads",
                                                                         "intermediate_size", "max_position_embeddings")},
                           "hidden_size": 48, "head_dim": 12})
    shutil.rmtree(model / "decoder")
    AutoModelForCausalLM.from_config(other).save_pretrained(model / "decoder")
    fails_with(capsys, eval_argv(world, model, tmp_path / "out"), str(model), "projector.safetensors does not fit",
               "size mismatch")


def test_a_scan_of_another_model_is_refused_by_prune(world, tmp_path, capsys):
    num_layers = 4
    size = num_layers + 1
    angular = np.abs(np.subtract.outer(np.arange(size), np.arange(size))) * 0.1
    scan = {"num_layers": num_layers, "model": {"family": "qwen2", "hidden_size": 64, "num_layers": num_layers},
            "inputs": {"speech": {"regions": {"all": {"angular": angular.tolist(),
                                                      "cosine": np.cos(angular * np.pi).tolist(), "count": 10}}}}}
    files.write_json(tmp_path / "scan" / "scan.json", scan)
    out = tmp_path / "pruned"
    fails_with(capsys, ["prune", "--model", str(world["model"]), "--scan", str(tmp_path / "scan"), "--remove", "1",
                        "--out", str(out)], "was made on another model", "hidden_size 64 vs 32", "family qwen2 vs llama")
    assert not out.exists()


def test_pickled_weights_need_allow_pickle_and_remote_code_needs_its_flag(world, tmp_path, capsys):
    model = copy_model(world, tmp_path)
    decoder = SpeechLLM.load(world["model"]).decoder
    (model / "decoder" / "model.safetensors").unlink()
    torch.save(decoder.state_dict(), model / "decoder" / "pytorch_model.bin")
    assert (model / "decoder" / "pytorch_model.bin").is_file()
    fails_with(capsys, eval_argv(world, model, tmp_path / "out"), "pytorch_model.bin", "--allow-pickle")
    # with the flag the model loads and is evaluated; the policy is the command's, not the process's
    assert main(eval_argv(world, model, tmp_path / "allowed") + ["--allow-pickle"]) == 0
    assert yaml_field(tmp_path / "allowed" / "config.yaml", "loading") == {"trust_remote_code": False,
                                                                            "allow_pickle": True}
    fails_with(capsys, eval_argv(world, model, tmp_path / "out"), "pytorch_model.bin", "--allow-pickle")
    from speechprune.model.interface import load_model
    from speechprune.model.safety import LoadingPolicy

    assert load_model(str(model), loading=LoadingPolicy(allow_pickle=True)).describe()["num_layers"] == 4
    with pytest.raises(UserError, match="--allow-pickle"):
        load_model(str(model))
    fails_with(capsys, ["compare", str(world["root"] / "scan"), "--out", str(tmp_path / "c"), "--allow-pickle"],
               "--allow-pickle: speechprune compare loads no model")
    (model / "decoder" / "pytorch_model.bin").unlink()
    shutil.copy(world["model"] / "decoder" / "model.safetensors", model / "decoder")
    config = json.loads((model / "decoder" / "config.json").read_text())
    (model / "decoder" / "config.json").write_text(json.dumps({
        **config, "model_type": "customlm", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                                                         "AutoModelForCausalLM": "modeling_custom.CustomLM"}}))
    (model / "decoder" / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    fails_with(capsys, eval_argv(world, model, tmp_path / "out"), "--trust-remote-code")


def yaml_field(path: Path, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))[key]


class _RunsCode:
    """A pickle that, when loaded unsafely, creates a file: proof that loading ran code."""

    def __init__(self, proof: Path):
        self.proof = proof

    def __reduce__(self):
        return (Path.touch, (self.proof,))


def test_checkpoints_are_loaded_without_running_code(world, tmp_path, capsys):
    out = tmp_path / "scan"
    proof = tmp_path / "code-ran"
    argv = scan_argv(world, world["manifest"], out)
    # a scan interrupted before: its marker is this run's, its checkpoint a hostile pickle
    from speechprune.cli import _split_command  # noqa: F401  (the CLI builds the same config below)
    from speechprune.config import argv_to_dotlist, build_config
    from speechprune.scan.run import CHECKPOINT_DIR, ScanConfig

    config = build_config(ScanConfig, argv_to_dotlist(ScanConfig, argv[1:])[0])
    files.write_json(out / files.RUN_MARKER, {"signature": files.run_signature("scan", config)})
    (out / CHECKPOINT_DIR).mkdir()
    with open(out / CHECKPOINT_DIR / "rank0-of-1.pt", "wb") as handle:
        pickle.dump({"stats": _RunsCode(proof)}, handle)
    fails_with(capsys, argv, "rank0-of-1.pt", "can read safely", "UnpicklingError")
    assert not proof.exists()


def test_a_missing_local_model_path_says_it_does_not_exist(world, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    fails_with(capsys, ["eval", "--model", str(missing), "--data", str(world["manifest"]), "--out",
                        str(tmp_path / "out")], str(missing), "no such file or directory")
    fails_with(capsys, ["scan", "--model", "./not/here", "--data", str(world["manifest"]), "--out",
                        str(tmp_path / "scan")], "./not/here: no such file or directory")
    assert not (tmp_path / "out").exists() and not (tmp_path / "scan").exists()
