"""The CLI layer: options and dotted overrides into typed configs, one-line errors with exit 2."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from speechprune.cli import main
from speechprune.config import argv_to_dotlist, build_config, option, require
from speechprune.errors import UserError


@dataclass
class Inner:
    lr: float = option(1e-3)
    name: str | None = option(None)


@dataclass
class Outer:
    data: list[str] = option(help="manifests")
    drop: str | None = option(None)
    steps: int = option(10)
    flag: bool = option(False)
    inner: Inner = option(Inner())

    def __post_init__(self):
        require(self.steps > 0, "--steps must be > 0")


def parse(argv):
    return build_config(Outer, *argv_to_dotlist(Outer, argv))


def test_flags_dotted_overrides_and_lists():
    config = parse(["--data", "a.jsonl,b.jsonl", "--steps", "5", "inner.lr=0.5", "--flag", "--inner.name", "x:y"])
    assert config.data == ["a.jsonl", "b.jsonl"] and config.steps == 5 and config.flag is True
    assert config.inner.lr == 0.5 and config.inner.name == "x:y"


def test_string_values_are_not_reinterpreted_by_yaml():
    assert parse(["--data", "a", "--drop", "10:14"]).drop == "10:14"  # YAML 1.1 would say 614
    assert parse(["--data", "a", "--drop", "it's"]).drop == "it's"


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: [x.jsonl]\nsteps: 7\ninner:\n  lr: 0.25\n")
    config = build_config(Outer, *argv_to_dotlist(Outer, ["--config", str(path), "steps=9"]))
    assert config.data == ["x.jsonl"] and config.steps == 9 and config.inner.lr == 0.25


@pytest.mark.parametrize("argv, message", [
    (["--steps", "3"], "missing required option: --data"),
    (["--data", "a", "--nope", "1"], "unknown option --nope"),
    (["--data", "a", "--steps", "0"], "--steps must be > 0"),
    (["--data", "a", "--steps", "many"], "--steps: 'many' is not a whole number"),
    (["--data", "a", "stray"], "unexpected argument"),
])
def test_bad_input_is_one_user_error(argv, message):
    with pytest.raises(UserError, match=message):
        parse(argv)


def test_cli_exit_codes(capsys, tmp_path):
    assert main(["--help"]) == 0
    assert "scan" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    assert "--stages" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--data", str(tmp_path / "none.jsonl"),
                 "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("speechprune: error:") and "none.jsonl" in error[0]
    assert not (tmp_path / "out").exists()


def test_shipped_training_configs_load():
    from pathlib import Path

    from speechprune.train import TrainConfig

    for path in sorted((Path(__file__).parent.parent / "configs").glob("train-*.yaml")):
        config = build_config(TrainConfig, ["train=[x.jsonl]", "out=o"], str(path))
        assert list(config.ordered_stages())[0] == "text-lm", path
