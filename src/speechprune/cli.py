"""The ``speechprune`` command: a thin layer that fills a command's config dataclass from the
command line and calls the Python function behind it. Bad input ends in one line and exit 2.

A command's config comes from its torch-free module in :mod:`speechprune.options`; the module of
its function (and torch, transformers, ... with it) is imported only when the command runs, so
``--help`` and a bad option answer at once.

    speechprune COMMAND [--option value ...] [section.key=value ...] [--config FILE.yaml]
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from speechprune.config import argv_to_dotlist, build_config, describe_options, shipped_configs
from speechprune.errors import UserError


@dataclass(frozen=True)
class Command:
    options: str  # the torch-free module that holds the config class
    config: str
    module: str  # the module of the function, imported only when the command runs
    function: str
    summary: str

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.options), self.config)


# Imported lazily, so that `speechprune --help` is fast and a command loads only its own stage.
COMMANDS: dict[str, Command] = {
    "data synth": Command("speechprune.options.data", "SynthConfig", "speechprune.data.synth", "synthesize",
                          "speak a seeded multilingual ASR/ST corpus with espeak-ng"),
    "data hf": Command("speechprune.options.data", "HFDataConfig", "speechprune.data.hf", "export_hf_dataset",
                       "write a Hugging Face dataset (LibriSpeech, CoVoST2, FLEURS, audio folder) as a manifest"),
    "train": Command("speechprune.options.train", "TrainConfig", "speechprune.train", "train",
                     "build or load a SpeechLLM and train it in stages (Accelerate)"),
    "base-llm": Command("speechprune.options.base_llm", "BaseLLMConfig", "speechprune.base_llm", "pretrain_base_llm",
                        "pretrain a decoder on grammar text alone: a Hugging Face base LLM"),
    "eval": Command("speechprune.options.evaluate", "EvalConfig", "speechprune.evaluate", "evaluate",
                    "batched decoding; WER, BLEU and chrF"),
    "scan": Command("speechprune.options.scan", "ScanConfig", "speechprune.scan.run", "scan",
                    "angular distance between every pair of decoder layers, one streaming pass"),
    "compare": Command("speechprune.options.scan", "CompareConfig", "speechprune.scan.compare", "compare",
                       "how much two or more scans agree on the redundant blocks"),
    "prune": Command("speechprune.options.prune", "PruneConfig", "speechprune.prune.run", "prune",
                     "remove decoder layers and export a standard checkpoint"),
    "heal": Command("speechprune.options.heal", "HealConfig", "speechprune.heal", "heal",
                    "LoRA healing of a pruned SpeechLLM"),
    "sweep": Command("speechprune.options.sweep", "SweepConfig", "speechprune.sweep", "sweep",
                     "prune -> heal -> evaluate over fractions, strategies and healing"),
    "report": Command("speechprune.report", "ReportConfig", "speechprune.report", "report",
                      "one self-contained HTML page and a Markdown summary of a run directory"),
    "study": Command("speechprune.options.study", "StudyConfig", "speechprune.study", "study",
                     "the paper's study: base LLMs, SpeechLLMs, scans, agreement and claims in one run"),
    "demo": Command("speechprune.options.demo", "DemoConfig", "speechprune.demo", "demo",
                    "the whole chain on the offline default"),
}


# Short flags for the fields of a command's LoadingPolicy (``loading``): what a model from elsewhere
# may do while it loads. They are fields like any other (``loading.allow-pickle=true`` alike).
LOADING_FLAGS = {"--trust-remote-code": ("trust_remote_code", "run Python code shipped with a model (never by default)"),
                 "--allow-pickle": ("allow_pickle", "load pickled .bin/.pt weights, which can run code (safetensors only by default)")}


def _usage(group: str = "") -> str:
    """The command list; for a group (``data``) only its subcommands."""
    names = [name for name in COMMANDS if not group or name.startswith(group + " ")]
    head = f"speechprune {group} SUBCOMMAND" if group else "speechprune COMMAND"
    lines = [f"usage: {head} [--option value ...] [name=value ...] [--config FILE]", "",
             f"{group} subcommands:" if group else "commands:"]
    lines += [f"  {name:<12} {COMMANDS[name].summary}" for name in names]
    lines += ["", "for every command that loads a model:"] + [f"  {flag:<20} {text}"
                                                            for flag, (_, text) in LOADING_FLAGS.items()]
    lines += ["", f"{head} --help lists its options."]
    return "\n".join(lines)


def _groups() -> set[str]:
    return {name.split()[0] for name in COMMANDS if " " in name}


def _split_command(argv: list[str]) -> tuple[str, list[str]]:
    for words in (2, 1):
        name = " ".join(argv[:words])
        if name in COMMANDS:
            return name, argv[words:]
    from speechprune.config import did_you_mean

    if argv[0] in _groups():
        known = [name.split()[1] for name in COMMANDS if name.startswith(argv[0] + " ")]
        raise UserError(f"unknown {argv[0]} subcommand {argv[1]!r}{did_you_mean(argv[1], known)}; "
                        f"run 'speechprune {argv[0]} --help'")
    known = sorted({name.split()[0] for name in COMMANDS})
    raise UserError(f"unknown command {argv[0]!r}{did_you_mean(argv[0], known)}; run 'speechprune --help'")


def plain_text(docstring: str) -> str:
    """A docstring as a terminal shows it: ``code`` and :func:`name` roles become bare words, and
    the indentation of its continuation lines goes."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", docstring)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    return inspect.cleandoc(text)


def _source_docstring(module: str, function: str) -> str | None:
    """The docstring of ``module.function`` read from the module's source, without importing the
    module (nor its package's ``__init__``): "" for a function without one, None where the source
    or the function is not found."""
    import ast
    from importlib.machinery import PathFinder

    import speechprune

    name, search, spec = "speechprune", list(speechprune.__path__), None
    for part in module.split(".")[1:]:
        name += "." + part
        spec = PathFinder.find_spec(name, search)
        if spec is None or not spec.has_location:
            return None
        search = spec.submodule_search_locations
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            return ast.get_docstring(node, clean=False) or ""
    return None


def _docstring(command: Command) -> str | None:
    """What the command's function says of itself; read from its source so that ``--help`` does
    not import the function's module (and torch with it), imported only where that fails."""
    if command.module.startswith("speechprune."):
        doc = _source_docstring(command.module, command.function)
        if doc is not None:
            return doc
    return getattr(importlib.import_module(command.module), command.function).__doc__


def _help(name: str, config_cls: type) -> str:
    doc = plain_text(_docstring(COMMANDS[name]) or COMMANDS[name].summary)
    positional = getattr(config_cls, "positional", None)
    usage = f"usage: speechprune {name} [options]" + (f" {positional.upper()} ..." if positional else "")
    lines = [usage, "", doc, "",
             "options: --name value, --name=value or name=value (hyphens or underscores alike; "
             "lists comma-separated; --config FILE.yaml first, options after it win)",
             "shipped configs, taken by name (--config NAME): " + ", ".join(shipped_configs())]
    for option_name, default, text in describe_options(config_cls):
        lines.append(f"  --{option_name:<28} {text} [default: {default}]")
    return "\n".join(lines)


def _take_positional(tokens: list[str]) -> tuple[list[str], list[str]]:
    """Split bare values (``compare A B``) from options; a flag's own value is not positional."""
    options, positional = [], []
    expecting_value = False
    for token in tokens:
        if token.startswith("--"):
            options.append(token)
            expecting_value = "=" not in token
        elif expecting_value or "=" in token:
            options.append(token)
            expecting_value = False
        else:
            positional.append(token)
    return options, positional


def _take_loading_flags(tokens: list[str], config_cls: type, name: str) -> list[str]:
    """``--allow-pickle`` -> ``loading.allow_pickle=true`` for a command whose config has ``loading``."""
    given = [token for token in tokens if token in LOADING_FLAGS]
    if given and "loading" not in {field.name for field in dataclasses.fields(config_cls)}:
        raise UserError(f"{given[0]}: speechprune {name} loads no model from elsewhere")
    return ([token for token in tokens if token not in LOADING_FLAGS]
            + [f"loading.{LOADING_FLAGS[token][0]}=true" for token in given])


def run(argv: list[str]) -> object:
    """Parse ``argv`` (without the program name) and run the command; returns its result."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return None
    if argv[0] in _groups() and (len(argv) == 1 or argv[1] in ("-h", "--help", "help")):
        print(_usage(argv[0]))
        return None
    name, rest = _split_command(argv)
    command = COMMANDS[name]
    config_cls = command.config_class()
    rest = _take_loading_flags(rest, config_cls, name)
    if any(token in ("-h", "--help") for token in rest):
        print(_help(name, config_cls))
        return None
    positional_field = getattr(config_cls, "positional", None)
    positional: list[str] = []
    if positional_field:
        rest, positional = _take_positional(rest)
    dotlist, config_file = argv_to_dotlist(config_cls, rest)
    if positional_field and positional:
        dotlist.append(f"{positional_field}=[{','.join(repr(p) for p in positional)}]")
    config = build_config(config_cls, dotlist, config_file)
    return getattr(importlib.import_module(command.module), command.function)(config)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        run(argv)
    except UserError as error:
        print(f"speechprune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechprune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `speechprune ... --help | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
