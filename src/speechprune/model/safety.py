"""How models are read: weights through safetensors only and no code from a model directory,
unless the user says otherwise: a :class:`LoadingPolicy`, the ``loading`` field of every command
that loads a model (``--trust-remote-code`` / ``--allow-pickle`` on the command line, or
``load_model(path, loading=LoadingPolicy(allow_pickle=True))`` from Python).

Pickled weights (``pytorch_model.bin``, ``.pt``) can run any code when they are loaded, and so can
a model's own Python files (``trust_remote_code``): a model from elsewhere must not do either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speechprune.errors import UserError
from speechprune.options.model import LoadingPolicy

PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFE = LoadingPolicy()


def check_weights(path: str | Path, loading: LoadingPolicy = SAFE) -> None:
    """Refuse, naming the file, a local model directory whose weights exist only pickled (unless
    allowed), or that has a config but no weights at all."""
    root = Path(path)
    if not root.is_dir() or any(root.glob("*.safetensors")) or any(root.glob("*.safetensors.index.json")):
        return
    pickled = sorted(p.name for p in root.iterdir() if p.suffix in PICKLED)
    if pickled and not loading.allow_pickle:
        raise UserError(f"{root / pickled[0]}: pickled weights can run code when loaded; convert them to "
                        "safetensors, or pass --allow-pickle if you trust where they came from")
    if not pickled and (root / "config.json").is_file():
        raise UserError(f"{root}: config.json but no weights (*.safetensors) beside it")


def pretrained(loader: Any, path: str | Path, what: str, weights: bool = True, loading: LoadingPolicy = SAFE,
               **kwargs: Any) -> Any:
    """``loader.from_pretrained(path, **kwargs)`` under ``loading`` (``weights=False`` for a
    config); any failure to read the model is one line naming ``what`` and ``path``."""
    kwargs.setdefault("trust_remote_code", loading.trust_remote_code)
    if weights:
        check_weights(path, loading)
        if not loading.allow_pickle:
            kwargs.setdefault("use_safetensors", True)
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = " (pass --trust-remote-code to run the model's own code)" if "trust_remote_code" in str(error) else ""
        raise UserError(f"cannot load {what} {str(path)!r}: {reason}{hint}") from None
