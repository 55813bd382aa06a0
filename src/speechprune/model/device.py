"""Where and in what dtype a command runs: the one place that turns ``--device`` and ``--dtype``
(:func:`speechprune.options.model.device_option`, :func:`~speechprune.options.model.dtype_option`)
into torch's, and refuses a device this machine does not have in one line.

``auto`` is the GPU when there is one (torch's current CUDA device), else the CPU; ``cuda`` is the
current CUDA device; ``cuda:N`` that one, and N must be below the number of GPUs."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from speechprune.errors import UserError
from speechprune.options.model import DTYPE_NAMES

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # --dtype -> the torch dtype


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``--device`` as a torch device: ``auto`` -> ``cuda`` when CUDA is there, else ``cpu``.
    Asking for CUDA without one, or for ``cuda:N`` past the GPUs there are, is a one-line
    :class:`UserError` (exit 2)."""
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        placed = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N (N: a GPU's index), not {name!r}") from None
    if placed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UserError(f"--device {name}: {why}; use --device cpu (or auto, the GPU when there is one)")
        if placed.index is not None and placed.index >= count:
            raise UserError(f"--device {name}: there {'is' if count == 1 else 'are'} {count} CUDA GPU"
                            f"{'' if count == 1 else 's'} here (cuda:0 to cuda:{count - 1})")
    return placed


def torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``--dtype`` as a torch dtype; ``auto`` (and None): the checkpoint's own (None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, not {dtype!r}")
    return DTYPES[dtype]


def as_run(config: Any, **resolved: Any) -> Any:
    """A copy of a command's config that says what ran: its ``device`` resolved
    (:func:`resolve_device`: ``auto`` -> ``cpu`` or ``cuda``) and any other field set as given in
    ``resolved`` (the checkpoint's dtype for ``--dtype auto``, say). The config itself is left as it
    was (it signs the run); the copy is not validated again."""
    if not dataclasses.is_dataclass(config):
        return config
    fields = {f.name for f in dataclasses.fields(config)}
    ran = copy.copy(config)
    if "device" in fields and isinstance(config.device, str):
        object.__setattr__(ran, "device", str(resolve_device(config.device)))
    for name, value in resolved.items():
        if name in fields and value is not None:
            object.__setattr__(ran, name, value)
    return ran
