"""Every ``speechprune ...`` command that README.md and docs/*.md show parses with the real command
line parser, without running: the command exists, every option is known, every value is valid
(the config dataclass's own checks), and every file or folder it reads is one of:

- made by an earlier command of the same block: an earlier ``--out`` (or a path inside it; a
  ``--out`` that ends in ``.gguf`` is a file), or ``runs/demo`` after ``make demo``;
- shipped in this repository: a path that exists from the repository's root, or a ``--config``
  name of ``src/speechprune/configs`` (``--config train-on-smollm2``, with or without ``.yaml``);
- a GGUF short name (``smollm2-135m``, ...), or a Hugging Face hub id ``org/name`` where the option
  takes a model or a dataset (``--model``, ``--dataset``, ``--base-llm``, ``model.*.pretrained``;
  ``--data``/``--train``/``--test`` without a file extension, a text dataset);
- a placeholder the user supplies, by one of two conventions: a path under ``data/`` (the user's
  own data: ``data/sentences.txt``, ``data/ls/test.jsonl``), or a word in capitals
  (``SCAN_DIR``, ``HF_LLM``, ``FILE.gguf``).

A command is a line of a fenced code block or of an indented (4-space) block, with its ``\\``
continuations joined and its ``# comment`` dropped; it starts with ``speechprune`` (after
``VAR=value`` prefixes, or ``.venv/bin/speechprune``), or runs ``-m speechprune.cli`` under
``accelerate launch``. ``speechprune COMMAND --help`` only needs the command to exist.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from speechprune import cli, config
from speechprune.config import argv_to_dotlist, build_config
from speechprune.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGS = ROOT / "src" / "speechprune" / "configs"

# options that read a file, folder, model or dataset (dotted names as argv_to_dotlist writes them)
INPUT_OPTIONS = {"model", "data", "train", "test", "scan", "init", "encoder_from", "exclude", "reuse", "dataset",
                 "base_llm", "scans", "run", "model.decoder.pretrained", "model.encoder.pretrained",
                 "model.decoder.tokenizer"}
# of those, the ones that may name a hub model or dataset
HUB_OPTIONS = {"model", "dataset", "base_llm", "init", "model.decoder.pretrained", "model.encoder.pretrained",
               "model.decoder.tokenizer"}
TEXT_DATA_OPTIONS = {"data", "train", "test"}  # a hub text dataset, when the value has no file extension
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(\.[a-z0-9]+)?")
MADE_BY_MAKE = {"demo": "runs/demo"}  # `make demo` writes runs/demo (Makefile)
# a line that runs speechprune (or make) and so is read as a shell line; other lines of a block are not
SHELL_LINE = re.compile(r"\s*((?:[A-Za-z_]\w*=\S*\s+)*(?:\S*/)?speechprune(?:\s|$)|make\s|.*-m\s+speechprune\.cli\b)")


def gguf_short_names() -> set[str]:
    from speechprune.options import model

    return set(getattr(model, "GGUF_SHORT_NAMES", None) or ("smollm2-135m", "gemma3-270m"))


@dataclass
class Command:
    doc: str
    line: int
    text: str
    words: list[str]
    block: int  # commands of one block share their outputs
    made: list[str] = field(default_factory=list)  # what earlier commands of the block wrote


def code_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every fenced and every indented code block."""
    blocks: list[tuple[int, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            start, i = i + 1, i + 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                i += 1
            blocks.append((start + 1, lines[start:i]))
            i += 1
            continue
        if line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip()):
            start = i
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                i += 1
            blocks.append((start + 1, [entry[4:] for entry in lines[start:i]]))
            continue
        i += 1
    return blocks


def logical_lines(first: int, lines: list[str]) -> list[tuple[int, str]]:
    """Lines with their ``\\`` continuations joined, each with its first line number."""
    joined: list[tuple[int, str]] = []
    pending, at = "", first
    for number, line in enumerate(lines, first):
        if not pending:
            at = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((at, pending + line))
        pending = ""
    if pending:
        joined.append((at, pending))
    return joined


def speechprune_words(words: list[str]) -> list[str] | None:
    """The arguments after ``speechprune`` in one shell command, or None when it runs no speechprune."""
    i = 0
    while i < len(words) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[i]):
        i += 1
    words = words[i:]
    if words and (words[0] == "speechprune" or words[0].endswith("/bin/speechprune")):
        return words[1:]
    if "speechprune.cli" in words and words[words.index("speechprune.cli") - 1] in ("-m", "--module"):
        return words[words.index("speechprune.cli") + 1:]
    return None


def commands() -> list[Command]:
    found: list[Command] = []
    for doc in DOCS:
        for block, (first, lines) in enumerate(code_blocks(doc.read_text(encoding="utf-8"))):
            made: list[str] = []
            for number, text in logical_lines(first, lines):
                if not SHELL_LINE.match(text):
                    continue
                try:
                    words = shlex.split(text, comments=True)
                except ValueError as error:
                    raise AssertionError(f"{doc.name}:{number}: cannot split {text!r}: {error}") from None
                pieces: list[list[str]] = [[]]
                for word in words:  # one shell line may chain commands
                    if word in ("|", "&&", "||", ";"):
                        pieces.append([])
                    else:
                        pieces[-1].append(word)
                for piece in pieces:
                    if piece[:1] == ["make"] and len(piece) > 1 and piece[1] in MADE_BY_MAKE:
                        made.append(MADE_BY_MAKE[piece[1]])
                    argv = speechprune_words(piece)
                    if argv is None:
                        continue
                    command = Command(doc.name, number, text.strip(), argv, block, list(made))
                    found.append(command)
                    made.extend(outputs(argv))
    return found


def outputs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--out"] + \
           [word.split("=", 1)[1] for word in argv if word.startswith("--out=")]


def shipped_config(value: str) -> Path | None:
    for path in (ROOT / value, CONFIGS / value, CONFIGS / f"{value}.yaml"):
        if path.is_file():
            return path
    return None


def check_input(option: str, value: str, made: list[str]) -> str | None:
    """Why ``value`` of ``option`` is not a file the reader has (None when it is one of the kinds above)."""
    value = value.strip().strip("'\"")
    if not value or value in ("[]",):
        return None
    path = value.rstrip("/")
    if any(path == out.rstrip("/") or path.startswith(out.rstrip("/") + "/") for out in made):
        return None
    if (ROOT / path).exists():
        return None
    if path.startswith("data/") or PLACEHOLDER.fullmatch(path.split("/")[0]):
        return None
    if value in gguf_short_names():
        return None
    if HUB_ID.fullmatch(path) and (option in HUB_OPTIONS or option in TEXT_DATA_OPTIONS
                                   and not re.search(r"\.\w+$", path)):
        return None
    return (f"--{option.replace('_', '-')} {value}: neither made by an earlier command of the block, shipped, a "
            "hub id, nor a placeholder (data/..., CAPITALS)")


def input_values(config_cls: type, dotlist: list[str], positional: list[str]) -> list[tuple[str, str]]:
    """(option, value) of every input path the parsed command names."""
    values: list[tuple[str, str]] = []
    field_name = getattr(config_cls, "positional", None)
    for value in positional:
        values.append((field_name or "run", value))
    for entry in dotlist:
        key, _, value = entry.partition("=")
        if key not in INPUT_OPTIONS:
            continue
        for part in value.strip("[]").split(","):
            values.append((key, part))
    return values


def parse(command: Command) -> None:
    """What ``cli.run`` does up to the call of the command's function (see cli.run)."""
    argv = command.words
    if not argv or argv[0] in ("-h", "--help", "help"):
        return
    if argv[0] in cli._groups() and (len(argv) == 1 or argv[1] in ("-h", "--help", "help")):
        return
    name, rest = cli._split_command(argv)
    config_cls = cli.COMMANDS[name].config_class()
    rest = cli._take_loading_flags(rest, config_cls, name)
    if any(token in ("-h", "--help") for token in rest):
        return
    positional: list[str] = []
    if getattr(config_cls, "positional", None):
        rest, positional = cli._take_positional(rest)
    dotlist, config_file = argv_to_dotlist(config_cls, rest)
    if config_file is not None and not hasattr(config, "config_path"):  # before --config took shipped names
        shipped = shipped_config(config_file)
        if shipped is None:
            raise UserError(f"--config {config_file}: no such file in the repository nor a config of "
                            f"src/speechprune/configs")
        config_file = str(shipped)
    if positional:
        dotlist.append(f"{config_cls.positional}=[{','.join(repr(p) for p in positional)}]")
    build_config(config_cls, dotlist, config_file)
    problems = [problem for option, value in input_values(config_cls, dotlist[:len(dotlist) - bool(positional)],
                                                          positional)
                if (problem := check_input(option, value, command.made))]
    if problems:
        raise UserError(problems[0])


ALL = commands()


def test_the_docs_show_commands():
    names = {command.doc for command in ALL}
    assert {"README.md", "models.md", "gguf.md", "results.md", "real-decoders.md", "study.md"} <= names, names
    assert len(ALL) >= 30


@pytest.mark.parametrize("command", ALL, ids=[f"{c.doc}:{c.line}" for c in ALL])
def test_a_documented_command_parses(command, monkeypatch):
    monkeypatch.chdir(ROOT)
    try:
        parse(command)
    except UserError as error:
        pytest.fail(f"{command.doc}:{command.line}: {command.text}\n  -> {error}", pytrace=False)


def test_the_checks_catch_what_they_are_for():
    """A misspelt option, a bad value, a config that is not shipped and a file nobody made fail."""
    def failure(text: str, made: tuple[str, ...] = ()) -> str:
        words = shlex.split(text)
        try:
            parse(Command("x.md", 1, text, speechprune_words(words), 0, list(made)))
        except UserError as error:
            return str(error)
        return ""

    assert "did you mean --fraction" in failure("speechprune prune --model m --scan s --fracton 0.2 --out p", ("m", "s"))
    assert "--fraction" in failure("speechprune prune --model m --scan s --fraction 2 --out p", ("m", "s"))
    assert "train-on-nothing" in failure("speechprune train --config train-on-nothing --train data/t.jsonl --out m")
    assert "--scan scan" in failure("speechprune prune --model smollm2-135m --scan scan --fraction 0.2 --out p.gguf")
    assert not failure("speechprune prune --model smollm2-135m --scan scan --fraction 0.2 --out p.gguf", ("scan",))
    assert not failure("speechprune train --config train-on-smollm2 --train data/t.jsonl --out m")
    joined = logical_lines(1, ["OMP_NUM_THREADS=1 speechprune scan --model m \\", "    --data d --out s  # note"])
    assert joined == [(1, "OMP_NUM_THREADS=1 speechprune scan --model m      --data d --out s  # note")]
    assert speechprune_words(shlex.split(joined[0][1], comments=True))[:3] == ["scan", "--model", "m"]
    assert speechprune_words(["accelerate", "launch", "-m", "speechprune.cli", "train"]) == ["train"]
