"""The report's "Made by" commands remake their outputs: an evaluation and a sweep are rerun from
the command the report prints (through the CLI, after moving the first output aside) and give the
same numbers; and the command line itself carries every setting that differs from its default."""

from __future__ import annotations

import html
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from speechprune.cli import main
from speechprune.config import argv_to_dotlist, build_config, command_line
from speechprune.data.manifest import load_manifest
from speechprune.evaluate import EvalConfig, evaluate
from speechprune.report import ReportConfig, report
from speechprune.scan.run import ScanConfig, scan
from speechprune.sweep import SweepConfig, sweep
from speechprune.train import TrainConfig
from tests.helpers import build_tiny_speechllm, write_tiny_manifest

WALL_CLOCK = {"decode_seconds", "utterances_per_second", "real_time_factor", "heal_seconds", "model", "seconds"}


def _numbers(payload, where: str = "") -> dict[str, object]:
    """Every leaf of a JSON payload by its path, less the wall-clock ones (and the model's own path,
    which is the same folder written again)."""
    if isinstance(payload, dict):
        found = {}
        for key, value in payload.items():
            if key not in WALL_CLOCK:
                found.update(_numbers(value, f"{where}.{key}"))
        return found
    if isinstance(payload, list):
        found = {}
        for index, value in enumerate(payload):
            found.update(_numbers(value, f"{where}[{index}]"))
        return found
    return {where: payload}


def _same(first: Path, second: Path) -> None:
    a, b = (_numbers(json.loads(path.read_text())) for path in (first, second))
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
        else:
            assert b[key] == a[key], key


def _made_by(markdown: str, command: str) -> str:
    found = re.findall(rf"Made by: (speechprune {command} .*?)(?:$|\n)", markdown)
    assert found, f"no 'Made by: speechprune {command}' in the report"
    return html.unescape(found[0])


def test_the_reports_commands_remake_an_evaluation_and_a_sweep(tmp_path, monkeypatch):
    manifest = write_tiny_manifest(tmp_path / "data", with_st=False)
    torch.manual_seed(0)
    model = build_tiny_speechllm(load_manifest(manifest), layers=4).save(tmp_path / "run" / "model")
    run = tmp_path / "run"
    scan(ScanConfig(model=str(model), data=str(manifest), input="speech", bootstrap=0, out=str(run / "scan")))
    evaluate(EvalConfig(model=str(model), data=[str(manifest)], out=str(run / "eval"), max_utterances=4,
                        max_new_tokens=4, batch_size=3))
    sweep(SweepConfig(model=str(model), scan=str(run / "scan"), train=[str(manifest)], test=[str(manifest)],
                      out=str(run / "sweep"), fractions=[0.0, 0.25], strategies=["angular"], heal=["none"],
                      max_test_utterances=4, batch_size=3, wer_floor=0.05))
    markdown = report(ReportConfig(run=[str(run)])).with_name("report.md").read_text()

    eval_command, sweep_command = _made_by(markdown, "eval"), _made_by(markdown, "sweep")
    assert "--max-utterances 4" in eval_command and "--max-new-tokens 4" in eval_command
    assert "--batch-size 3" in eval_command and "--dtype" not in eval_command  # defaults are left out
    assert "--max-test-utterances 4" in sweep_command and "--wer-floor 0.05" in sweep_command
    assert "--heal none" in sweep_command and "--fractions 0.0,0.25" in sweep_command

    monkeypatch.chdir(tmp_path)  # the commands hold the paths as they were given
    for folder, command, files in ((run / "eval", eval_command, ["metrics.json", "tiny.hypotheses.jsonl"]),
                                   (run / "sweep", sweep_command, ["results.json", "summary.json"])):
        first = folder.with_name(folder.name + "-first")
        folder.rename(first)
        words = shlex.split(command)
        assert words[0] == "speechprune"
        assert main(words[1:]) == 0
        for name in files:
            if name.endswith(".jsonl"):
                assert (folder / name).read_text() == (first / name).read_text()
            else:
                _same(first / name, folder / name)


def test_command_lines_round_trip_through_the_parser():
    config = TrainConfig(train=["a b.jsonl", "c.jsonl"], out="--odd out")
    config.stages["joint"].steps = 300
    config.loop.lora.rank = 16
    config.loop.lr = 1e-05
    line = command_line("train", TrainConfig, config)
    assert "stages.joint.steps=300" in line and "loop.lora.rank=16" in line
    words = shlex.split(line)
    assert words[:2] == ["speechprune", "train"]
    assert build_config(TrainConfig, *argv_to_dotlist(TrainConfig, words[2:])) == config
    with_overwrite = EvalConfig(model="m", data=["d"], out="o", overwrite=True, max_utterances=200)
    assert command_line("eval", EvalConfig, with_overwrite) == "speechprune eval --model m --data d --out o --max-utterances 200"
