"""Typed configuration: every command takes one dataclass, filled from defaults, an optional YAML
file, ``--flag value`` options and dotted overrides (``train.lr=1e-3``) through OmegaConf.

A dataclass validates itself in ``__post_init__`` and raises :class:`UserError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from speechprune.errors import UserError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with a help text shown by ``speechprune CMD --help``."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        value = default
        kwargs["default_factory"] = lambda: _copy(value)
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(metadata={"help": help}, **kwargs)


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_list_type(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return any(_is_list_type(arg) for arg in typing.get_args(tp) if arg is not type(None))
    return origin in (list, tuple)


def _is_str_type(tp: Any) -> bool:
    if typing.get_origin(tp) is typing.Union or type(tp).__name__ == "UnionType":
        return any(_is_str_type(arg) for arg in typing.get_args(tp) if arg is not type(None))
    return tp is str


def _dotted_type(cls: type, key: str) -> Any:
    """The annotated type of ``a.b.c`` inside nested dataclasses (None when not a dataclass field)."""
    tp: Any = cls
    for part in key.split("."):
        tp = _unwrap_optional(tp)
        if typing.get_origin(tp) is dict and typing.get_args(tp):
            tp = typing.get_args(tp)[1]
        elif dataclasses.is_dataclass(tp):
            tp = _field_types(tp).get(part)
        else:
            return None
    return tp


def _quoted(value: str) -> str:
    """A YAML single-quoted scalar (a quote inside is written twice)."""
    return "'" + value.replace("'", "''") + "'"


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union or type(tp).__name__ == "UnionType":
        args = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def did_you_mean(word: str, candidates: list[str]) -> str:
    """`` (did you mean X?)`` for the closest candidate, or nothing."""
    import difflib

    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def canonical_key(cls: type, key: str, spelled: str) -> str:
    """``loop.log-every`` -> ``loop.log_every``: field names accept hyphens and underscores alike;
    keys of a dict-valued option (stage names such as ``text-lm``) are kept as they are written.
    An unknown name is a UserError naming it (``spelled``: how the user wrote it) with a suggestion."""
    parts = key.split(".")
    tp: Any = cls
    canonical: list[str] = []
    for part in parts:
        tp = _unwrap_optional(tp)
        if dataclasses.is_dataclass(tp):
            name = part.replace("-", "_")
            types = _field_types(tp)
            if name not in types:
                prefix = ".".join(canonical)
                known = [("--" + prefix + "." if prefix else "--") + f.replace("_", "-") for f in types]
                raise UserError(f"unknown option {spelled}" + did_you_mean(spelled if spelled.startswith("--")
                                                                          else "--" + spelled, known))
            canonical.append(name)
            tp = types[name]
        elif typing.get_origin(tp) is dict:
            canonical.append(part)
            tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        else:
            raise UserError(f"unknown option {spelled}: {'.'.join(canonical)} has no sub-options")
    return ".".join(canonical)


def argv_to_dotlist(cls: type, argv: list[str]) -> tuple[list[str], str | None]:
    """Turn ``--some-flag value`` / ``--bool-flag`` / ``a.b=c`` into an OmegaConf dotlist.

    Returns the dotlist and the ``--config`` file, if one was given. A comma-separated value for
    a list-typed field becomes a list (``--fractions 0,0.1,0.2``). Names take hyphens or
    underscores alike, as flags and as ``name=value``.
    """
    dotlist: list[str] = []
    config_file = None
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--"):
            key = token[2:]
            value: str | None = None
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            if key == "config":
                if value is None:
                    raise UserError("--config needs a YAML file or a shipped config's name")
                config_file = value
                i += 1
                continue
            key = canonical_key(cls, key, "--" + key)
            if value is None:
                value = "true"
            field_type = _dotted_type(cls, key)
            if _is_list_type(field_type) and not value.startswith("["):
                value = "[" + value + "]"
            elif _is_str_type(field_type):
                value = _quoted(value)  # keep "10:14" a string: YAML would read it as base-60 614
            dotlist.append(f"{key}={value}")
        elif "=" in token:
            key, value = token.split("=", 1)
            dotlist.append(f"{canonical_key(cls, key, key)}={value}")
        else:
            raise UserError(f"unexpected argument {token!r} (use --name value or name=value)")
        i += 1
    return dotlist, config_file


_CONVERSION = re.compile(r"Value '(.*)' of type '\w+' could not be converted to (\w+)")
_NOT_BOOL = re.compile(r"Value '(.*)' is not a valid bool")
_KINDS = {"Float": "a number", "Integer": "a whole number", "Boolean": "true or false"}


def _explain(error: OmegaConfBaseException) -> str:
    """One line naming the option and the value (OmegaConf speaks of keys and Python types)."""
    message = str(getattr(error, "msg", "") or error).strip().splitlines()[0]
    key = getattr(error, "full_key", None)
    if not key:
        return f"bad configuration: {message}"
    flag = "--" + ".".join(part.replace("_", "-") for part in str(key).split("."))
    if flag[-1] == "]":  # an element of a list option: fractions[1] -> --fractions
        flag = flag[: flag.rindex("[")]
    conversion = _CONVERSION.search(message)
    if conversion:
        return f"{flag}: {conversion[1]!r} is not {_KINDS.get(conversion[2], conversion[2].lower())}"
    not_bool = _NOT_BOOL.search(message)
    if not_bool:
        return f"{flag}: {not_bool[1]!r} is not true or false"
    return f"{flag}: {message}"


SHIPPED_CONFIGS = Path(__file__).parent / "configs"  # the YAML files that ship with the package


def shipped_configs() -> list[str]:
    """The names of the shipped configs (``train-on-smollm2``, ...), for ``--config NAME``."""
    return sorted(path.stem for path in SHIPPED_CONFIGS.glob("*.yaml"))


def config_path(config_file: str) -> Path:
    """The YAML file ``--config`` names: a file that exists wins; else a shipped config by its
    name, with or without ``.yaml`` (``--config train-on-smollm2``). Anything else is one line
    naming the shipped configs."""
    path = Path(config_file)
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"--config {config_file}: a directory, not a YAML file")
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") and (SHIPPED_CONFIGS / f"{name}.yaml").is_file():
        return SHIPPED_CONFIGS / f"{name}.yaml"
    names = shipped_configs()
    raise UserError(f"config file not found: {config_file} (neither a file nor a shipped config: "
                    f"{', '.join(names) or 'none'}){did_you_mean(name, names)}")


def build_config(cls: type[T], dotlist: list[str] = (), config_file: str | None = None) -> T:
    """Defaults <- YAML file <- dotted overrides, validated into an instance of ``cls``.
    ``config_file`` is a path, or the name of a shipped config (:func:`config_path`)."""
    try:
        merged = OmegaConf.structured(cls)
        if config_file is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(config_path(config_file)))
        if dotlist:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(dotlist)))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise UserError("missing required option: " + ", ".join("--" + m.replace("_", "-") for m in missing))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise UserError(_explain(error)) from None
    except yaml.YAMLError as error:
        raise UserError(f"bad configuration: {str(error).strip().splitlines()[0]}") from None


def to_yaml(config: Any) -> str:
    """The resolved configuration as YAML, written into every run directory."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config: Any, path: str | Path) -> None:
    """Write ``config`` as it ran: a command's ``--device`` (``auto`` and all) as the device it
    resolved to (:func:`speechprune.model.device.as_run`, which refuses one this machine lacks)."""
    from speechprune.files import write_text

    if dataclasses.is_dataclass(config) and any(f.name == "device" for f in dataclasses.fields(config)):
        from speechprune.model.device import as_run  # torch: only a command that loads a model has --device

        config = as_run(config)
    write_text(path, to_yaml(config))


def describe_options(cls: type, prefix: str = "", instance: Any = None) -> list[tuple[str, str, str]]:
    """(name, default, help) rows for ``--help``: names with hyphens, nested dataclasses flattened
    to dotted names (with the defaults of the enclosing default, ``instance``, where one sets
    them), a dict of dataclasses (``stages``) as one row for the dict and one per field
    (``stages.NAME.steps``) with each entry's default, a list of named dataclasses as the list of
    their names; defaults as they would be typed."""
    rows = []
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name.replace("_", "-")
        tp = _unwrap_optional(types[f.name])
        default = _default_of(f) if instance is None else getattr(instance, f.name)
        text = f.metadata.get("help", "")
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_options(tp, name + ".", default if dataclasses.is_dataclass(default) else None))
            continue
        item_type = typing.get_args(tp)[0] if typing.get_origin(tp) is list and typing.get_args(tp) else None
        if item_type is not None and dataclasses.is_dataclass(item_type):
            names = [getattr(entry, "name", None) or type(entry).__name__ for entry in default or []]
            entry_fields = ", ".join(x.name for x in dataclasses.fields(item_type))
            rows.append((name, "{" + ", ".join(names) + "}" if names else "(none)",
                         (text + "; " if text else "") + f"each entry: {entry_fields}; give the list in --config FILE.yaml"))
            continue
        value_type = typing.get_args(tp)[1] if typing.get_origin(tp) is dict and typing.get_args(tp) else None
        if value_type is not None and dataclasses.is_dataclass(value_type) and isinstance(default, dict):
            rows.append((name, "{" + ", ".join(default) + "}" if default else "(none)",
                         (text + "; " if text else "") + f"set a field with --{name}.NAME.FIELD VALUE"))
            for sub in dataclasses.fields(value_type):
                per_entry = ", ".join(f"{key}: {typed(getattr(entry, sub.name))}" for key, entry in default.items())
                rows.append((f"{name}.NAME.{sub.name.replace('_', '-')}", per_entry or typed(_default_of(sub)),
                             sub.metadata.get("help", "")))
            continue
        rows.append((name, typed(default), text))
    return rows


_REQUIRED = object()


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _REQUIRED


def typed(value: Any) -> str:
    """A default as a user would type it: lists comma-separated, booleans true/false."""
    if value is _REQUIRED:
        return "(required)"
    if value is None or value == "" or value == [] or value == {}:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(typed(v) for v in value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {typed(v)}" for k, v in value.items()) + "}"  # YAML, one key: NAME.KEY=VALUE
    return str(value)


def require(condition: bool, message: str) -> None:
    """Validation helper for ``__post_init__``: raise a one-line UserError unless ``condition``."""
    if not condition:
        raise UserError(message)


def require_choice(value: Any, choices: Sequence[str], option: str) -> None:
    """Validation helper for an option that takes one of ``choices``: a one-line UserError naming
    the option, the choices and the closest one (``--strategy angualr`` -> did you mean angular?)."""
    if value not in choices:
        raise UserError(f"{option} must be one of {', '.join(map(str, choices))}, not {value!r}"
                        + did_you_mean(str(value), [str(c) for c in choices]))


def require_choices(values: Sequence[Any], choices: Sequence[str], option: str) -> None:
    """:func:`require_choice` for each value of a list option."""
    for value in values:
        require_choice(value, choices, option)


# how an output was allowed to replace or continue another, not what it holds
NOT_REPRODUCING = ("overwrite", "resume", "fresh")


def _settings(config: Any) -> dict:
    """A config (a dataclass instance or the dict of its config.yaml) as plain YAML-like data."""
    if isinstance(config, dict):
        return config
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def _flow(value: Any) -> str:
    """A value as it is typed after ``name=``: bare where YAML reads it back unchanged, else JSON
    (which YAML reads as flow style)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        try:
            plain = value and yaml.safe_load(value) == value and not any(c in value for c in ",[]{}#'\"")
        except yaml.YAMLError:
            plain = False
        return value if plain else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def _changed(value: Any, default: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for everything in ``value`` that differs from ``default``."""
    if isinstance(value, dict) and isinstance(default, dict):
        for name, entry in value.items():
            if name in default:
                yield from _changed(entry, default[name], f"{key}.{name}" if key else str(name))
            else:
                yield (f"{key}.{name}" if key else str(name)), entry
    elif value != default or default == "???":
        yield key, value


def command_line(command: str, cls: type, config: Any) -> str:
    """The ``speechprune COMMAND ...`` line that makes ``config`` (an instance of ``cls``, or the
    dict of the config.yaml an output keeps) again: every option that differs from its default and
    every required one; top-level options as ``--name value`` (lists comma-separated), nested ones
    as dotted ``name=value``, a positional option as bare words; shell-quoted."""
    import shlex

    settings = _settings(config)
    defaults = OmegaConf.to_container(OmegaConf.structured(cls), resolve=False, throw_on_missing=False)
    positional = getattr(cls, "positional", None)
    words = ["speechprune", *command.split()]
    if positional and settings.get(positional):
        words += [str(v) for v in settings[positional]]
    for key, value in _changed({k: v for k, v in settings.items() if k != positional and k not in NOT_REPRODUCING},
                               defaults, ""):
        top, flag = "." not in key, "--" + key.replace("_", "-")
        if top and isinstance(value, bool):
            words += [flag] if value else [flag, "false"]
        elif top and isinstance(value, (int, float)) or top and isinstance(value, str) and value \
                and not value.startswith("-"):
            words += [flag, str(value)]
        elif top and isinstance(value, list) and value and all(
                isinstance(v, (int, float, str)) and not isinstance(v, bool) and _flow(v) == str(v) for v in value):
            words += [flag, ",".join(map(str, value))]
        else:
            words.append(f"{key}={_flow(value)}")
    return " ".join(shlex.quote(word) for word in words)


def saved_command(command: str, cls: type, folder: str | Path) -> str | None:
    """:func:`command_line` of the config.yaml in ``folder`` (None when there is none to read)."""
    path = Path(folder) / "config.yaml"
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return command_line(command, cls, settings) if isinstance(settings, dict) else None
