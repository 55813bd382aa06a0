"""Real interruptions: the real command in a subprocess, killed with SIGKILL early, mid-run and
while a checkpoint or the result itself is being written (a test-only hook in speechprune.files
pauses just before a matching file or folder is renamed into place), then rerun. The rerun must
say it resumes, not restart, and end with the result of an uninterrupted run. Tiny models, few
steps: each test is a few subprocess starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from speechprune import files
from speechprune.cli import main
from speechprune.config import to_yaml
from speechprune.data.manifest import load_manifest
from speechprune.model.speechllm import DEFAULT_PROMPTS, SpeechLLM, decoder_texts
from speechprune.model.tokenizer import train_bpe_tokenizer
from tests.helpers import (build_tiny_speechllm, fake_scan, save_speech_family, tiny_base_llm_config, tiny_causal_lm,
                           tiny_study_config, tiny_train_config)

SRC = Path(__file__).resolve().parents[1] / "src"
HANG_GUARD = 300  # seconds: only so that a run that never reaches its pause cannot hang the suite
pytestmark = pytest.mark.slow  # every test here starts the real command in subprocesses, several times


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), **extra}


def killed_while_writing(argv: list[str], pattern: str, tmp_path: Path, skip: int = 0,
                         while_paused: Callable[[], None] | None = None) -> str:
    """Start ``speechprune ARGV``; SIGKILL it while it is about to commit the ``skip+1``-th file or
    folder whose path matches ``pattern`` (after calling ``while_paused``). Returns its output."""
    signal_file = tmp_path / f"paused-{time.monotonic_ns()}"
    log_path = signal_file.with_suffix(".log")
    env = _env(**{files.PAUSE_ENV: pattern, files.PAUSE_SIGNAL_ENV: str(signal_file), files.PAUSE_SKIP_ENV: str(skip)})
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "speechprune.cli", *argv], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        deadline = time.monotonic() + HANG_GUARD
        while not signal_file.exists():
            if process.poll() is not None:
                pytest.fail(f"exited {process.returncode} before writing {pattern!r}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"never reached a write of {pattern!r}")
            time.sleep(0.05)
        if while_paused is not None:
            while_paused()
        process.send_signal(signal.SIGKILL)
        process.wait()
    return log_path.read_text()


def completes(argv: list[str]) -> str:
    done = subprocess.run([sys.executable, "-m", "speechprune.cli", *argv], env=_env(), capture_output=True,
                          text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def assert_same_weights(a: Path, b: Path, load: Callable[[Path], torch.nn.Module] = SpeechLLM.load) -> None:
    # same machine, same threads, same batches: a resumed run repeats the uninterrupted one's
    # arithmetic; 1e-6 leaves room only for summation order inside a fused kernel
    first, second = load(a).state_dict(), load(b).state_dict()
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_train_killed_early_mid_checkpoint_and_mid_export_resumes_to_the_same_model(tiny_manifest, tmp_path):
    config_file = tmp_path / "train.yaml"
    config = tiny_train_config(tiny_manifest, tmp_path / "unused", checkpoint_every=2)
    config.stages["text-lm"].steps = config.stages["ctc"].steps = 0  # joint only, 4 steps: checkpoints at 2 and 4
    config_file.write_text(to_yaml(config))
    argv = lambda out: ["train", "--config", str(config_file), "--out", str(out)]  # noqa: E731
    assert main(argv(tmp_path / "straight")) == 0
    run = tmp_path / "run"
    killed_while_writing(argv(run), r"speechprune-run\.json$", tmp_path)  # early: nothing done yet
    # while the joint stage's end checkpoint is written: its mid-stage one (step 2) must be used
    killed_while_writing(argv(run), r"checkpoints/stage1-step0$", tmp_path)
    assert not (run / "speechllm.json").exists()
    log = killed_while_writing(argv(run), rf"/{run.name}$", tmp_path)  # while the model itself is written
    assert "resuming the unfinished run" in log and "resumed from" in log and "(stage 0, step 2)" in log
    assert not (run / "speechllm.json").exists(), "a kill mid-export must not leave a result"
    log = completes(argv(run))
    assert "resumed from" in log and "(stage 1, step 0)" in log
    assert_same_weights(tmp_path / "straight", run)
    assert not list(tmp_path.glob(".run.*")) and not (run / files.RUN_MARKER).exists()
    assert "already exists" in subprocess.run([sys.executable, "-m", "speechprune.cli", *argv(run)], env=_env(),
                                              capture_output=True, text=True).stderr


@pytest.fixture
def saved_model(tiny_manifest, tmp_path) -> Path:
    torch.manual_seed(0)
    return build_tiny_speechllm(load_manifest(tiny_manifest), layers=4).save(tmp_path / "model")


def test_scan_killed_mid_checkpoint_and_mid_output_resumes_to_the_same_numbers(saved_model, tiny_manifest, tmp_path):
    argv = lambda out: ["scan", "--model", str(saved_model), "--data", str(tiny_manifest), "--out", str(out),  # noqa: E731
                        "--batch-size", "2", "--checkpoint-every", "1", "--bootstrap", "20", "--plots", "false"]
    assert main(argv(tmp_path / "straight")) == 0
    run = tmp_path / "run"
    second = []  # a run started on the same --out while the first is paused mid-write

    def start_a_second_run():
        second.append(subprocess.run([sys.executable, "-m", "speechprune.cli", *argv(run)], env=_env(),
                                     capture_output=True, text=True, timeout=HANG_GUARD))

    # killed while its third checkpoint (3 of 6 batches) is written: the second one (2 of 6) is used
    killed_while_writing(argv(run), r"\.checkpoint/rank0-of-1\.pt$", tmp_path, skip=2, while_paused=start_a_second_run)
    assert second[0].returncode == 2 and "being written by another speechprune run" in second[0].stderr
    assert "Traceback" not in second[0].stderr
    log = killed_while_writing(argv(run), rf"/{run.name}$", tmp_path)  # while scan.json is moved into place
    assert "resuming from" in log and "2 of 6 batches done" in log
    assert not (run / "scan.json").exists()
    log = completes(argv(run))
    assert "6 of 6 batches done" in log
    straight, resumed = (json.loads((d / "scan.json").read_text()) for d in (tmp_path / "straight", run))
    for key in ("inputs", "num_layers", "data"):
        assert resumed[key] == straight[key], key  # exactly: float64 sums of the same numbers in the same order


def test_heal_killed_mid_checkpoint_and_mid_export_ends_with_the_same_model(saved_model, tiny_manifest, tmp_path):
    assert main(["prune", "--model", str(saved_model), "--drop", "1:2", "--out", str(tmp_path / "pruned")]) == 0
    argv = lambda out: ["heal", "--model", str(tmp_path / "pruned"), "--data", str(tiny_manifest), "--out", str(out),  # noqa: E731
                        "--steps", "3", "--batch-size", "4", "--lr", "0.01"]
    assert main(argv(tmp_path / "straight")) == 0
    run = tmp_path / "run"
    killed_while_writing(argv(run), r"speechprune-run\.json$", tmp_path)  # early
    # while its only checkpoint (the end of healing) is written: nothing to resume, healing restarts
    log = killed_while_writing(argv(run), r"checkpoints/stage1-step0$", tmp_path)
    assert "resumed from" not in log
    log = killed_while_writing(argv(run), rf"/{run.name}$", tmp_path)  # while the healed model is written
    assert "resuming the unfinished run" in log and "resumed from" not in log
    log = completes(argv(run))
    assert "resumed from" in log and "(stage 1, step 0)" in log
    assert_same_weights(tmp_path / "straight", run)
    assert json.loads((run / "heal.json").read_text())["receiving_layers"] == [1]


def saved_plain_lm(folder: Path, manifest: Path) -> Path:
    """A tiny random Llama with a BPE tokenizer of the manifest's texts, as save_pretrained writes them."""
    texts = decoder_texts(DEFAULT_PROMPTS, load_manifest(manifest))
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    tiny_causal_lm("llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                   max_position_embeddings=256).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# kind -> (a tiny saved model of that kind, the class its healed checkpoint reloads in)
OTHER_KINDS = {
    "causal-lm": (saved_plain_lm, AutoModelForCausalLM.from_pretrained),
    "hf-speech-llm": (lambda folder, manifest: save_speech_family(folder, "qwen2_audio", manifest),
                      transformers.Qwen2AudioForConditionalGeneration.from_pretrained),
}


@pytest.mark.parametrize("kind", list(OTHER_KINDS))
def test_heal_of_other_kinds_killed_mid_run_and_mid_export_ends_with_the_same_model(kind, tiny_manifest, tmp_path):
    save, reload = OTHER_KINDS[kind]
    source = save(tmp_path / "source", tiny_manifest)
    assert main(["prune", "--model", str(source), "--drop", "1:2", "--out", str(tmp_path / "pruned")]) == 0
    argv = lambda out: ["heal", "--model", str(tmp_path / "pruned"), "--data", str(tiny_manifest), "--out", str(out),  # noqa: E731
                        "--steps", "4", "--batch-size", "4", "--lr", "0.01", "--checkpoint-every", "2"]
    assert main(argv(tmp_path / "straight")) == 0
    run = tmp_path / "run"
    # while the end-of-healing checkpoint is written: the mid-run one (step 2) must be used
    killed_while_writing(argv(run), r"checkpoints/stage1-step0$", tmp_path)
    assert (run / "checkpoints" / "stage0-step2").is_dir() and not (run / "heal.json").exists()
    log = killed_while_writing(argv(run), rf"/{run.name}$", tmp_path)  # while the healed model is written
    assert "resuming the unfinished run" in log and "resumed from" in log and "(stage 0, step 2)" in log
    assert not (run / "heal.json").exists(), "a kill mid-export must not leave a result"
    log = completes(argv(run))
    assert "resumed from" in log and "(stage 1, step 0)" in log
    assert_same_weights(tmp_path / "straight", run, reload)
    straight, resumed = (json.loads((d / "heal.json").read_text()) for d in (tmp_path / "straight", run))
    assert resumed["receiving_layers"] == straight["receiving_layers"] == [1]
    assert resumed["stages"][0]["final_loss"] == pytest.approx(straight["stages"][0]["final_loss"], rel=1e-5)
    assert (run / "adapters" / "decoder" / "adapter_config.json").is_file()
    assert not (run / "checkpoints").exists() and not (run / files.RUN_MARKER).exists()


def test_sweep_killed_mid_cell_and_mid_summary_keeps_finished_cells_and_the_same_table(saved_model, tiny_manifest,
                                                                                       tmp_path):
    scan = fake_scan(tmp_path, 4)
    argv = lambda out: ["sweep", "--model", str(saved_model), "--scan", str(scan), "--train", str(tiny_manifest),  # noqa: E731
                        "--test", str(tiny_manifest), "--out", str(out), "--fractions", "0,0.25",
                        "--strategies", "angular,last", "--heal", "none", "--batch-size", "6",
                        "--max-test-utterances", "4"]
    assert main(argv(tmp_path / "straight")) == 0
    run = tmp_path / "run"
    killed_while_writing(argv(run), r"cells/last-remove1-none\.json$", tmp_path)  # mid-run, writing a cell
    cells = lambda: [p for p in (run / "cells").glob("*.json") if not p.name.startswith(".")]  # noqa: E731  (not temp files)
    finished = {p.name: p.stat().st_mtime_ns for p in cells()}
    assert set(finished) == {"baseline.json", "angular-remove1-none.json"}
    log = killed_while_writing(argv(run), r"summary\.json$", tmp_path)  # while the summary is written
    assert "resuming the unfinished run" in log
    assert {p.name: p.stat().st_mtime_ns for p in cells() if p.name in finished} == finished
    completes(argv(run))
    timing = ("decode_speedup",)  # wall-clock ratios: the one column two runs cannot share
    straight, resumed = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "straight", run))
    assert [{k: v for k, v in row.items() if k not in timing} for row in resumed] == \
        [{k: v for k, v in row.items() if k not in timing} for row in straight]
    summaries = [json.loads((d / "summary.json").read_text()) for d in (run, tmp_path / "straight")]
    for summary in summaries:  # decoding seconds: wall clock, the one thing two runs cannot share
        for cost in summary["scoring_cost"].values():
            for entry in (cost, cost["fixed_first_look"], cost["fixed_last_look"]):
                entry.pop("decode_seconds")
    assert summaries[0] == summaries[1]
    assert not (run / files.RUN_MARKER).exists()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_data_synth_killed_mid_corpus_resumes_to_identical_bytes(tmp_path):
    argv = lambda out: ["data", "synth", "--out", str(out), "--languages", "en,fr", "--st-pairs", "en-fr",  # noqa: E731
                        "--train-sentences", "6", "--dev-sentences", "2", "--test-sentences", "2",
                        "--test-ood-sentences", "1", "--seed", "5", "--workers", "1"]
    assert main(argv(tmp_path / "straight")) == 0
    run = tmp_path / "run"
    killed_while_writing(argv(run), r"audio/fr/train/fr-train-00002\.wav$", tmp_path)  # mid-run, writing a WAV
    assert not run.exists(), "a corpus appears only when complete"
    log = completes(argv(run))
    assert "resumed:" in log and "utterances already spoken" in log
    spoken = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))  # noqa: E731
                           if p.suffix in (".wav", ".jsonl")}
    assert spoken(run) == spoken(tmp_path / "straight")
    assert not list(tmp_path.glob(".run*")) and not (run / ".done").exists()


CLOCK = {"seconds", "decode_seconds", "utterances_per_second", "real_time_factor"}  # wall-clock: differ run to run


def without_clock(payload):
    if isinstance(payload, dict):
        return {key: without_clock(value) for key, value in payload.items() if key not in CLOCK}
    return [without_clock(value) for value in payload] if isinstance(payload, list) else payload


def a_users_folder(path: Path) -> Path:
    path.mkdir()
    (path / "precious.txt").write_text("mine")
    return path


def test_base_llm_killed_mid_checkpoint_and_mid_export_resumes_to_the_same_model_and_curve(tmp_path, capsys):
    config_file = tmp_path / "base-llm.yaml"
    config_file.write_text(to_yaml(tiny_base_llm_config(tmp_path / "unused", checkpoint_every=2)))  # 4 steps
    argv = lambda out: ["base-llm", "--config", str(config_file), "--out", str(out)]  # noqa: E731
    assert main(argv(tmp_path / "straight")) == 0
    run = a_users_folder(tmp_path / "run")
    # with --overwrite (the user's folder is cleared first), killed while the end-of-stage checkpoint
    # is written: the mid-stage one (step 2) must be used
    killed_while_writing(argv(run) + ["--overwrite"], r"checkpoints/stage1-step0$", tmp_path)
    assert not (run / "precious.txt").exists()
    log = killed_while_writing(argv(run), rf"/{run.name}$", tmp_path)  # while the base LLM itself is written
    assert "resuming the unfinished run" in log and "resumed from step 2 of stage text-lm" in log
    assert not (run / "curve.json").exists(), "a kill mid-export must not leave a result"
    log = completes(argv(run))
    assert "resumed from" in log and "every stage (text-lm) was already done" in log
    assert_same_weights(tmp_path / "straight", run, AutoModelForCausalLM.from_pretrained)
    straight, resumed = (json.loads((d / "curve.json").read_text()) for d in (tmp_path / "straight", run))
    assert [c["step"] for c in resumed["curve"]] == [c["step"] for c in straight["curve"]] == [0, 2, 4]
    assert [c["step"] for c in resumed["train_loss"]] == [c["step"] for c in straight["train_loss"]]
    # float32 perplexities and losses of the same weights on the same batches: as close as the weights
    for key, field in (("curve", "dev_ppl"), ("train_loss", "loss")):
        assert [c[field] for c in resumed[key]] == pytest.approx([c[field] for c in straight[key]], rel=1e-5)
    assert not (run / "checkpoints").exists() and not (run / files.RUN_MARKER).exists()
    assert not list(tmp_path.glob(".run.*"))
    capsys.readouterr()
    assert main(argv(run)) == 2 and "already exists; pass --overwrite" in capsys.readouterr().err


def test_study_killed_mid_checkpoint_and_mid_summary_ends_with_the_same_numbers(tmp_path, capsys):
    config = tiny_study_config(tmp_path)
    config.loop.checkpoint_every = 2  # the base LLMs (3 steps) and SpeechLLMs (3 joint steps) checkpoint at step 2
    config_file = tmp_path / "miniature-study.yaml"
    config_file.write_text(to_yaml(config))
    argv = lambda out: ["study", "--config", str(config_file), "--out", str(out)]  # noqa: E731
    assert main(argv(tmp_path / "straight")) == 0
    run = a_users_folder(tmp_path / "run")
    base = "base/llama-2/model"
    # with --overwrite, killed while the first base LLM writes its end-of-training checkpoint
    killed_while_writing(argv(run) + ["--overwrite"], rf"{base}/checkpoints/stage1-step0$", tmp_path)
    assert not (run / "precious.txt").exists()
    log = killed_while_writing(argv(run), rf"/{run.name}/study\.json$", tmp_path)  # while the summary is written
    assert f"resuming the unfinished run in {run}\n" in log and f"resuming the unfinished run in {run / base}" in log
    assert "resumed from step 2 of stage text-lm" in log
    assert not (run / "study.json").exists() and not (run / "claims.md").exists()
    log = completes(argv(run))
    assert "resuming the unfinished run" in log and "base LLM qwen2-3 (reused" in log and "resumed from" not in log
    straight, resumed = (without_clock(json.loads((d / "study.json").read_text())) for d in (tmp_path / "straight", run))
    # every number but the wall-clock ones, exactly: same machine, threads and batches, and the
    # resumed training restored its weights, optimiser and RNG state bit for bit
    for key in ("claims", "agreement", "consensus", "axes", "conditions", "sweeps"):
        assert resumed[key] == straight[key], key
    assert (run / "claims.md").read_text() == (tmp_path / "straight" / "claims.md").read_text()
    assert not list(tmp_path.glob(".run.*")) and not list(run.rglob("*.lock"))
    # finished, the study is reused by a rerun of the same settings; other settings are refused
    assert json.loads((run / files.RUN_MARKER).read_text())["finished"] is True
    capsys.readouterr()
    assert main(argv(run) + ["--plots", "true"]) == 2
    assert "holds a finished run with other settings; pass --overwrite" in capsys.readouterr().err
