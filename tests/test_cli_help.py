"""What a new user meets before anything runs: help that works as printed, spellings, suggestions,
errors that name the option and the value, and the progress helper's plain lines."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

import speechprune.console as console
from speechprune.cli import COMMANDS, main, plain_text
from speechprune.config import argv_to_dotlist, build_config, describe_options
from speechprune.errors import UserError


def config_class(name: str) -> type:
    return COMMANDS[name].config_class()


def one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_has_a_description_and_a_typable_default(name, capsys):
    assert main([*name.split(), "--help"]) == 0
    text = capsys.readouterr().out
    rows = describe_options(config_class(name))
    assert rows
    for option_name, default, description in rows:
        assert description.strip(), f"{name} --{option_name} has no description"
        assert f"--{option_name}" in text
        # no Python repr in what the user reads
        assert not re.search(r"Config\(|^\[|^None$|^'|^True$|^False$", default), (option_name, default)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_defaults_shown_in_help_parse_back_to_the_defaults(name):
    """Typing the default that --help shows gives the default: the help is what a user can type."""
    cls = config_class(name)
    defaults = OmegaConf.structured(cls)
    for option_name, default, _ in describe_options(cls):
        if default in ("(required)", "(none)") or ".NAME." in option_name or default.startswith("{"):
            continue
        dotlist, _ = argv_to_dotlist(cls, [f"--{option_name}", default])
        key = dotlist[0].split("=", 1)[0]
        typed = OmegaConf.merge(defaults, OmegaConf.from_dotlist(dotlist))
        assert OmegaConf.select(typed, key) == OmegaConf.select(defaults, key), (option_name, default)


def test_help_shows_stage_fields_per_stage_not_a_repr(capsys):
    main(["train", "--help"])
    text = capsys.readouterr().out
    assert "StageConfig(" not in text
    assert re.search(r"--stages\s+.*\[default: \{text-lm, ctc, joint\}\]", text)
    assert re.search(r"--stages\.NAME\.steps\s+.*\[default: text-lm: 0, ctc: 150, joint: 1100\]", text)
    assert "--loop.log-every" in text and "name=value" in text


@pytest.mark.parametrize("argv", [
    ["loop.log-every=25"], ["loop.log_every=25"], ["--loop.log-every", "25"], ["--loop.log_every=25"],
])
def test_hyphens_and_underscores_alike_in_every_spelling(argv):
    from speechprune.train import TrainConfig

    config = build_config(TrainConfig, *argv_to_dotlist(TrainConfig, ["--train", "a.jsonl", "--out", "o", *argv]))
    assert config.loop.log_every == 25


def test_stage_names_keep_their_hyphen_and_fields_take_either():
    from speechprune.train import TrainConfig

    argv = ["--train", "a.jsonl", "--out", "o", "stages.text-lm.steps=7", "--stages.joint.ctc-weight", "0.5",
            "stages.ctc.batch_size=2"]
    config = build_config(TrainConfig, *argv_to_dotlist(TrainConfig, argv))
    assert config.stages["text-lm"].steps == 7 and "text_lm" not in config.stages
    assert config.stages["joint"].ctc_weight == 0.5 and config.stages["ctc"].batch_size == 2


def test_max_utterances_as_name_value():
    from speechprune.scan.run import ScanConfig

    for spelling in ("max-utterances=1", "max_utterances=1"):
        config = build_config(ScanConfig, *argv_to_dotlist(ScanConfig, ["--model", "m", "--data", "d", "--out", "o",
                                                                        spelling]))
        assert config.max_utterances == 1


@pytest.mark.parametrize("argv, expected", [
    (["train", "--trian", "x"], "unknown option --trian (did you mean --train?)"),
    (["train", "--train", "x", "--out", "o", "loop.log-evry=3"], "did you mean --loop.log-every?"),
    (["trian"], "unknown command 'trian' (did you mean train?)"),
    (["data", "synt"], "unknown data subcommand 'synt' (did you mean synth?)"),
    (["prune", "--model", "m", "--out", "o", "--fraction", "abc"], "--fraction: 'abc' is not a number"),
    (["prune", "--model", "m", "--out", "o", "--drop", "1:2", "--verify", "maybe"],
     "--verify: 'maybe' is not true or false"),
    (["scan", "--model", "m", "--data", "d", "--out", "o", "--batch-size", "two"],
     "--batch-size: 'two' is not a whole number"),
    (["sweep", "--model", "m", "--scan", "s", "--train", "t", "--test", "t", "--out", "o", "--fractions", "0.25,1.2"],
     "--fractions: 1.2 is not in [0, 1)"),
    (["prune", "--model", "m", "--out", "o", "--fraction", "0.2", "--strategy", "angualr"],
     "--strategy must be one of angular, bi, last, iterative, greedy-score, not 'angualr' (did you mean angular?)"),
    (["scan", "--model", "m", "--data", "d", "--out", "o", "--regions", "speach"], "(did you mean speech?)"),
    (["sweep", "--model", "m", "--scan", "s", "--train", "t", "--test", "t", "--out", "o", "--heal", "recieving-mlp"],
     "(did you mean receiving-mlp?)"),
    (["eval", "--model", "m", "--data", "d", "--out", "o", "--dtype", "bfloat"], "(did you mean bfloat16?)"),
])
def test_errors_name_the_option_the_value_and_a_suggestion(argv, expected, capsys):
    assert main(argv) == 2
    error = one_error(capsys)
    assert expected in error, error


@pytest.mark.parametrize("argv", [["data"], ["data", "--help"], ["data", "-h"]])
def test_a_command_group_lists_its_subcommands(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "data synth" in out and "data hf" in out and "train" not in out.split("subcommands:")[1]


def test_group_subcommand_help_still_works(capsys):
    assert main(["data", "synth", "--help"]) == 0
    assert "--st-pairs" in capsys.readouterr().out


def test_progress_off_a_terminal_is_plain_periodic_lines(capsys, monkeypatch):
    with console.Progress("work", 3, "items") as progress:
        for _ in range(3):
            progress.advance()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "work: 0/3 items (0s)"
    assert re.fullmatch(r"work: 3/3 items done in \d+\.\ds", lines[-1]) and len(lines) == 2
    monkeypatch.setattr(console, "PLAIN_EVERY_SECONDS", 0.0)  # every advance is due a line
    assert list(console.track(range(4), "loop", unit="steps")) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" (")[0] for line in lines[:-1]] == [f"loop: {k}/4 steps" for k in range(4)]
    assert lines[-1].startswith("loop: 4/4 steps done in")


def test_progress_can_be_switched_off(capsys):
    with console.Progress("quiet", 2, enabled=False) as progress:
        progress.advance(2)
    assert capsys.readouterr().err == ""


def test_synth_default_pairs_follow_languages_chosen_pairs_are_checked():
    from speechprune.data.synth import SynthConfig

    only_en = SynthConfig(out="o", languages=["en"])
    assert only_en.st_pairs == [] and only_en.dropped_st_pairs == ["en-fr", "en-de", "fr-en", "de-en"]
    en_fr = SynthConfig(out="o", languages=["en", "fr"])
    assert en_fr.st_pairs == ["en-fr", "fr-en"] and en_fr.dropped_st_pairs == ["en-de", "de-en"]
    assert SynthConfig(out="o").st_pairs == ["en-fr", "en-de", "fr-en", "de-en"]
    with pytest.raises(UserError, match="--st-pairs: 'en-de' uses 'de'"):
        SynthConfig(out="o", languages=["en"], st_pairs=["en-de"])


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_is_plain_text_without_docstring_markup(name, capsys):
    assert main([*name.split(), "--help"]) == 0
    text = capsys.readouterr().out
    assert "``" not in text and not re.search(r":(func|class|mod|meth|data):`", text), text
    description = text.split("\n\noptions:")[0]
    assert not re.search(r"\n {4}\S", description), "continuation lines keep the docstring's indentation"


# what a command's help must not load: its own module does, when the command runs
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "numpy", "scipy", "matplotlib")


def test_help_of_every_command_loads_no_heavy_library():
    """Every command's --help, in a fresh interpreter, imports none of the libraries that make a
    command slow to start (torch alone takes over a second): the configs live in
    speechprune.options and the docstring is read from the command's source."""
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from speechprune.cli import COMMANDS, main
        texts = {{}}
        for name in COMMANDS:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                status = main([*name.split(), "--help"])
            texts[name] = (status, out.getvalue())
        print(json.dumps({{"loaded": [m for m in {HEAVY!r} if m in sys.modules], "texts": texts}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["loaded"] == []
    for name, (status, text) in report["texts"].items():
        assert status == 0 and text.startswith(f"usage: speechprune {name} "), (name, text[:200])
        assert "options:" in text and "--" in text.split("options:", 1)[1], name


def test_help_shows_the_docstring_of_the_function_the_command_runs(capsys):
    """The docstring read from the source is the function's own (what importing it would give)."""

    for name, command in COMMANDS.items():
        assert main([*name.split(), "--help"]) == 0
        description = capsys.readouterr().out.split("\n\noptions:")[0].split("\n\n", 1)[1]
        function = getattr(importlib.import_module(command.module), command.function)
        assert description == plain_text(function.__doc__ or command.summary), name


def test_every_config_is_the_one_its_command_module_exports():
    """One class per config: the command's module re-exports the class from speechprune.options
    (``from speechprune.scan.run import ScanConfig`` keeps working and is the same class)."""
    for command in COMMANDS.values():
        assert getattr(importlib.import_module(command.module), command.config) is command.config_class()
