"""Training precision ``auto``: a probe at start times a 512 x 512 matmul in float32 and under bf16
autocast and trains in bf16 only where it is faster here, saying which in one line; a tiny model's
first training step has the same loss in both precisions (within bf16's rounding)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from speechprune.config import argv_to_dotlist, build_config
from speechprune.errors import UserError
from speechprune.model import device as device_module
from speechprune.model.device import BF16_MARGIN, bf16_matmul_speedup, training_precision
from speechprune.options.demo import DemoConfig
from speechprune.options.train import LoopConfig, StageConfig, TrainConfig
from speechprune.train import train
from tests.helpers import tiny_train_config

CPU = torch.device("cpu")


def test_the_probe_picks_one_of_the_two_and_says_which_in_one_line():
    precision, line = training_precision("auto", CPU)
    speedup = bf16_matmul_speedup()
    assert bf16_matmul_speedup.cache_info().hits >= 1  # probed once per process
    assert (precision == "bf16") == (speedup >= BF16_MARGIN)
    expected = "precision: bf16 autocast (its matmul " if precision == "bf16" else "precision: float32 ("
    assert precision in ("bf16", "no") and line.startswith(expected) and "\n" not in line
    for given in ("no", "bf16", "fp16"):  # only auto is probed
        assert training_precision(given, CPU) == (given, "")


@pytest.mark.parametrize("speedup, native, precision, line", [
    (2.1, True, "bf16", "precision: bf16 autocast (its matmul 2.1x faster than float32 here)"),
    (0.14, False, "no", "precision: float32 (bf16 autocast's matmul 0.14x float32's speed here: emulated, no "
                        "AVX512-BF16 or AMX)"),
    (0.9, True, "no", "precision: float32 (bf16 autocast's matmul 0.90x float32's speed here)"),
    (1.05, True, "no", "precision: float32 (bf16 autocast's matmul 1.05x float32's speed here, under the 1.1x it "
                       "must gain)"),
])
def test_the_probe_decides_by_the_measured_speed(monkeypatch, speedup, native, precision, line):
    monkeypatch.setattr(device_module, "bf16_matmul_speedup", lambda: speedup)
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: native)
    assert training_precision("auto", CPU) == (precision, line)


def test_the_probe_runs_on_one_thread_and_gives_the_threads_back(monkeypatch):
    threads, seen = torch.get_num_threads(), []
    monkeypatch.setattr(device_module, "_speedup", lambda size, repeats: seen.append(torch.get_num_threads()) or 2.0)
    torch.set_num_threads(2)
    try:
        bf16_matmul_speedup.cache_clear()
        assert bf16_matmul_speedup() == 2.0 and seen == [1] and torch.get_num_threads() == 2
    finally:
        bf16_matmul_speedup.cache_clear()
        torch.set_num_threads(threads)


def test_auto_is_a_training_precision_of_every_recipe():
    def parse(*argv):
        return build_config(TrainConfig, *argv_to_dotlist(TrainConfig, ["--train", "t", "--out", "o", *argv]))

    assert parse("--dtype", "auto").loop.mixed_precision == "auto"
    assert parse("--loop.mixed-precision", "auto").dtype == "auto"
    with pytest.raises(UserError, match="--dtype float32 and --loop.mixed-precision auto disagree"):
        parse("--dtype", "float32", "--loop.mixed-precision", "auto")
    assert LoopConfig(mixed_precision="auto").mixed_precision == "auto"
    with pytest.raises(UserError, match="mixed_precision must be no, bf16, fp16 or auto, not 'bf32'"):
        LoopConfig(mixed_precision="bf32")
    assert DemoConfig(mixed_precision="auto").recipe().mixed_precision == "auto"
    assert DemoConfig().recipe().mixed_precision == "no"  # the demo's default is unchanged


def test_one_step_has_the_same_loss_in_float32_and_bf16_autocast(tiny_manifest, tmp_path, capsys, monkeypatch):
    losses, ran = {}, {}
    monkeypatch.setattr(device_module, "bf16_matmul_speedup", lambda: 3.0)  # auto takes bf16 on any CPU
    for precision in ("no", "auto"):
        config = tiny_train_config(tiny_manifest, tmp_path / precision, mixed_precision=precision)
        config.stages = {"joint": StageConfig(steps=1, ctc_weight=0.3, lr=3e-3)}
        out = Path(train(config))
        log = json.loads((out / "train_log.json").read_text())
        losses[precision], ran[precision] = log["stages"][0]["final_loss"], log["mixed_precision"]
    assert ran == {"no": "no", "auto": "bf16"}  # what ran is recorded
    assert "precision: bf16 autocast (its matmul 3.0x faster than float32 here)" in capsys.readouterr().out
    # the first step's loss is the untrained model's: the same weights, computed in two precisions
    assert losses["auto"] == pytest.approx(losses["no"], rel=5e-2)
    assert losses["auto"] != losses["no"]  # bf16 autocast did run
