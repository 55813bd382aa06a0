"""--dtype and --device on every command that loads a model, --device-map where a model is only
read, a device this machine lacks refused in one line, config.yaml recording what ran (the device
and dtype resolved), bfloat16 end to end on the CPU; and --config NAME for the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from speechprune.cli import COMMANDS, main
from speechprune.config import argv_to_dotlist, build_config, describe_options, shipped_configs
from speechprune.errors import UserError
from speechprune.model.device import resolve_device
from tests.test_perplexity import TEXTS, reference_perplexity, tiny_plain_llm

# the commands that load (or build and train) a model, and those of them that only read one
MODEL_COMMANDS = ("scan", "eval", "prune", "heal", "sweep", "train", "study", "base-llm", "demo")
READ_ONLY = ("scan", "eval", "sweep")


def one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def saved(folder: Path) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text())


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("placement")
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    return {"root": root, "model": tiny_plain_llm(root / "llm"), "texts": root / "texts.txt"}


# ----------------------------------------------------------------------------- the options
def test_every_model_loading_command_takes_dtype_and_device(capsys):
    assert set(MODEL_COMMANDS) <= set(COMMANDS)
    for name, command in COMMANDS.items():
        cls = command.config_class()
        options = {row[0] for row in describe_options(cls)}
        if name not in MODEL_COMMANDS:
            assert not options & {"dtype", "device", "device-map"}, name
            continue
        assert {"dtype", "device"} <= options, name
        assert ("device-map" in options) == (name in READ_ONLY), name
        dotlist, _ = argv_to_dotlist(cls, ["--dtype", "bfloat16", "--device", "cuda:1"])
        assert dotlist == ["dtype='bfloat16'", "device='cuda:1'"], name
        assert main([*name.split(), "--help"]) == 0
        text = capsys.readouterr().out
        assert "--dtype" in text and "float32 | bfloat16 | float16" in text and "auto | cpu | cuda | cuda:N" in text


@pytest.mark.parametrize("argv", [
    ["eval", "--model", "m", "--data", "d", "--out", "o", "--device", "gpu"],
    ["heal", "--model", "m", "--data", "d", "--out", "o", "--device", "cuda:x"],
    ["sweep", "--model", "m", "--scan", "s", "--train", "t", "--test", "x", "--out", "o", "--dtype", "float64"],
    ["train", "--train", "t", "--out", "o", "--dtype", "bfloat16", "--loop.mixed-precision", "fp16"],
    ["train", "--train", "t", "--out", "o", "--device", "cuda", "--loop.cpu"],
    ["sweep", "--model", "m", "--scan", "s", "--train", "t", "--test", "x", "--out", "o", "--device-map", "auto",
     "--heal", "none,receiving-mlp"],
    ["prune", "--model", "m.gguf", "--out", "o.gguf", "--drop", "1:2", "--dtype", "bfloat16"],
])
def test_a_bad_placement_is_one_line_before_anything_runs(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert one_error(capsys).startswith("speechprune: error: --d")
    assert not (tmp_path / "o").exists()


def test_train_dtype_is_its_accelerate_precision():
    from speechprune.options.train import TrainConfig

    def parse(*argv):
        return build_config(TrainConfig, *argv_to_dotlist(TrainConfig, ["--train", "t", "--out", "o", *argv]))

    config = parse("--dtype", "bfloat16", "--device", "cpu")
    assert config.loop.mixed_precision == "bf16" and config.loop.cpu is True
    config = parse("--loop.mixed-precision", "fp16")
    assert config.dtype == "float16"  # either side says what runs
    assert parse().dtype == "float32" and parse("--loop.cpu").device == "cpu"


# ----------------------------------------------------------------------------- a device that is not here
NEED_NOTHING = {  # each command with what it needs to reach its device check
    "eval": ["--model", "m", "--data", "d.jsonl"],
    "scan": ["--model", "m", "--data", "d.jsonl"],
    "prune": ["--model", "m", "--drop", "1:2"],
    "heal": ["--model", "m", "--data", "d.jsonl", "--target", "all-mlp"],
    "sweep": ["--model", "m", "--scan", "s", "--train", "t.jsonl", "--test", "x.jsonl"],
    "train": ["--train", "t.jsonl"],
    "base-llm": [],
    "study": [],
    "demo": [],
}


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_cuda_without_a_gpu_is_one_line_and_exit_2(name, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.chdir(tmp_path)
    assert main([name, *NEED_NOTHING[name], "--out", str(tmp_path / "out"), "--device", "cuda"]) == 2
    line = one_error(capsys)
    assert line.startswith("speechprune: error: --device cuda: ") and "--device cpu" in line, line


def test_a_gpu_index_past_the_count_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UserError, match=r"^--device cuda:2: there are 2 CUDA GPUs here \(cuda:0 to cuda:1\)$"):
        resolve_device("cuda:2")
    assert resolve_device("auto") == torch.device("cuda")


def test_auto_is_the_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


# ----------------------------------------------------------------------------- bfloat16 end to end
def test_eval_records_the_device_it_ran_on(plain, tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(plain["model"]), "--data", str(plain["texts"]), "--out", str(out),
                 "--dtype", "bfloat16", "--device-map", "auto"]) == 0
    assert saved(out)["dtype"] == "bfloat16" and saved(out)["device"] == str(resolve_device("auto"))
    lm = json.loads((out / "metrics.json").read_text())["sets"]["texts"]["lm"]
    expected, _ = reference_perplexity(plain["model"], TEXTS)
    assert lm["perplexity"] == pytest.approx(expected, rel=0.05)  # bfloat16 keeps about 3 significant digits


def test_sweep_runs_in_bfloat16_with_and_without_healing(plain, tmp_path):
    scan = tmp_path / "scan"
    assert main(["scan", "--model", str(plain["model"]), "--data", str(plain["texts"]), "--out", str(scan),
                 "--plots", "false", "--bootstrap", "0"]) == 0
    out = tmp_path / "sweep"
    assert main(["sweep", "--model", str(plain["model"]), "--scan", str(scan), "--train", str(plain["texts"]),
                 "--test", str(plain["texts"]), "--metric", "perplexity", "--fractions", "0,0.25",
                 "--strategies", "last", "--heal", "none,receiving-mlp", "--heal-steps", "2", "--batch-size", "3",
                 "--dtype", "bfloat16", "--device", "cpu", "--out", str(out)]) == 0
    assert saved(out)["dtype"] == "bfloat16" and saved(out)["device"] == "cpu"
    from transformers import AutoModelForCausalLM

    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(plain["model"]).parameters())
    baseline = json.loads((out / "cells" / "baseline.json").read_text())
    assert baseline["model_bytes"] == 2 * parameters  # two bytes a weight: the cells ran in bfloat16
    rows = json.loads((out / "results.json").read_text())
    assert {(r["heal"], r["removed"]) for r in rows} == {("none", 0), ("none", 1), ("receiving-mlp", 1)}
    assert all(r["perplexity"] > 1 and r["perplexity"] == r["perplexity"] for r in rows)  # finite, not NaN
    expected, _ = reference_perplexity(plain["model"], TEXTS)
    assert next(r for r in rows if r["removed"] == 0)["perplexity"] == pytest.approx(expected, rel=0.05)


def test_prune_then_heal_in_bfloat16(plain, tmp_path, tiny_manifest):
    from safetensors import safe_open

    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(plain["model"]), "--out", str(pruned), "--drop", "1:2"]) == 0
    assert saved(pruned)["dtype"] == "float32" and saved(pruned)["device"] == "cpu"  # auto: the checkpoint's own
    healed = tmp_path / "healed"
    assert main(["heal", "--model", str(pruned), "--data", str(tiny_manifest), "--out", str(healed), "--steps", "2",
                 "--batch-size", "3", "--dtype", "bfloat16", "--device", "cpu"]) == 0
    assert saved(healed)["dtype"] == "bfloat16" and saved(healed)["device"] == "cpu"
    with safe_open(str(healed / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.bfloat16}
    adapter = next((healed / "adapters" / "decoder").glob("*.safetensors"))
    with safe_open(str(adapter), "pt") as weights:  # LoRA trains in float32 beside the bfloat16 model
        assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.float32}
    losses = [stage["final_loss"] for stage in json.loads((healed / "heal.json").read_text())["stages"]]
    assert losses and all(loss == loss for loss in losses)
    pruned_bf16 = tmp_path / "pruned-bf16"
    assert main(["prune", "--model", str(plain["model"]), "--out", str(pruned_bf16), "--drop", "1:2",
                 "--dtype", "bfloat16"]) == 0
    assert json.loads((pruned_bf16 / "pruning.json").read_text())["dtype"] == "bfloat16"


# ----------------------------------------------------------------------------- --config NAME
@pytest.mark.parametrize("name", ["train-on-smollm2", "train-on-smollm2.yaml"])
def test_a_shipped_config_is_found_by_its_name(name, tmp_path, monkeypatch):
    from speechprune.options.train import TrainConfig

    monkeypatch.chdir(tmp_path)  # no such file here: the shipped one
    config = build_config(TrainConfig, *argv_to_dotlist(TrainConfig, ["--config", name, "--train", "t", "--out", "o"]))
    assert config.model.decoder.pretrained == "smollm2-135m" and list(config.ordered_stages())[0] == "ctc"
    assert "train-on-smollm2" in shipped_configs() and "study" in shipped_configs()


def test_a_file_that_exists_wins_over_a_shipped_name(tmp_path, monkeypatch):
    from speechprune.options.train import TrainConfig

    monkeypatch.chdir(tmp_path)
    Path("train-on-smollm2.yaml").write_text("loop: {batch_size: 3}\n")
    config = build_config(TrainConfig, ["train=[t]", "out=o"], "train-on-smollm2.yaml")
    assert config.loop.batch_size == 3 and config.model.decoder.pretrained is None


def test_an_unknown_config_name_lists_the_shipped_ones(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "train-on-smolm2", "--train", "t", "--out", "o"]) == 2
    line = one_error(capsys)
    assert "config file not found: train-on-smolm2" in line and "did you mean train-on-smollm2?" in line
    assert all(name in line for name in shipped_configs())
    assert main(["train", "--config", "elsewhere/train-on-smollm2.yaml", "--train", "t", "--out", "o"]) == 2
    assert "elsewhere/train-on-smollm2.yaml" in one_error(capsys)  # a path is a path, never a shipped name
