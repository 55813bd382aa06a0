"""Typed configuration: every command takes one dataclass, filled from defaults, an optional YAML
file, ``--flag value`` options and dotted overrides (``train.lr=1e-3``) through OmegaConf.

A dataclass validates itself in ``__post_init__`` and raises :class:`UserError` naming the field.
"""

from __future__ import annotations

import dataclasses
import typing
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
        if not dataclasses.is_dataclass(tp):
            return None
        tp = _field_types(tp).get(part)
    return tp


def _quoted(value: str) -> str:
    """A YAML single-quoted scalar (a quote inside is written twice)."""
    return "'" + value.replace("'", "''") + "'"


def argv_to_dotlist(cls: type, argv: list[str]) -> tuple[list[str], str | None]:
    """Turn ``--some-flag value`` / ``--bool-flag`` / ``a.b=c`` into an OmegaConf dotlist.

    Returns the dotlist and the ``--config`` file, if one was given. A comma-separated value for
    a list-typed field becomes a list (``--fractions 0,0.1,0.2``).
    """
    types = _field_types(cls)
    dotlist: list[str] = []
    config_file = None
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--"):
            key = token[2:].replace("-", "_")
            value: str | None = None
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            if key == "config":
                if value is None:
                    raise UserError("--config needs a YAML file")
                config_file = value
            else:
                if value is None:
                    value = "true"
                top = key.split(".")[0]
                if top not in types:
                    raise UserError(f"unknown option --{token[2:].split('=')[0]}")
                field_type = _dotted_type(cls, key)
                if _is_list_type(field_type) and not value.startswith("["):
                    value = "[" + value + "]"
                elif _is_str_type(field_type):
                    value = _quoted(value)  # keep "10:14" a string: YAML would read it as base-60 614
                dotlist.append(f"{key}={value}")
        elif "=" in token:
            top = token.split("=", 1)[0].split(".")[0]
            if top not in types:
                raise UserError(f"unknown setting {token.split('=', 1)[0]!r}")
            dotlist.append(token)
        else:
            raise UserError(f"unexpected argument {token!r} (use --name value or key=value)")
        i += 1
    return dotlist, config_file


def build_config(cls: type[T], dotlist: list[str] = (), config_file: str | None = None) -> T:
    """Defaults <- YAML file <- dotted overrides, validated into an instance of ``cls``."""
    try:
        merged = OmegaConf.structured(cls)
        if config_file is not None:
            if not Path(config_file).is_file():
                raise UserError(f"config file not found: {config_file}")
            merged = OmegaConf.merge(merged, OmegaConf.load(config_file))
        if dotlist:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(dotlist)))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise UserError("missing required option: " + ", ".join("--" + m.replace("_", "-") for m in missing))
        return OmegaConf.to_object(merged)
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"bad configuration: {first_line}") from None


def to_yaml(config: Any) -> str:
    """The resolved configuration as YAML, written into every run directory."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config: Any, path: str | Path) -> None:
    from speechprune.files import write_text

    write_text(path, to_yaml(config))


def describe_options(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(name, default, help) rows for ``--help``, nested dataclasses flattened to dotted names."""
    rows = []
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        tp = types[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_options(tp, name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((name, default, f.metadata.get("help", "")))
    return rows


def require(condition: bool, message: str) -> None:
    """Validation helper for ``__post_init__``: raise a one-line UserError unless ``condition``."""
    if not condition:
        raise UserError(message)
