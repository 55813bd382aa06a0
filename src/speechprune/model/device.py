"""Where and in what dtype a command runs: the one place that turns ``--device`` and ``--dtype``
(:func:`speechprune.options.model.device_option`, :func:`~speechprune.options.model.dtype_option`)
into torch's, and refuses a device this machine does not have in one line.

``auto`` is the GPU when there is one (torch's current CUDA device), else the CPU; ``cuda`` is the
current CUDA device; ``cuda:N`` that one, and N must be below the number of GPUs. Training's
``--loop.mixed-precision auto`` is decided here too (:func:`training_precision`)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
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


# ----------------------------------------------------------------------------- training precision
PROBE_SIZE, PROBE_REPEATS = 512, 5  # a 512 x 512 matmul, timed 5 times in each precision (a fraction of a second)
BF16_MARGIN = 1.1  # bf16 autocast must be at least this many times as fast: a near tie keeps float32, the more precise


@functools.lru_cache(maxsize=None)
def bf16_matmul_speedup(size: int = PROBE_SIZE, repeats: int = PROBE_REPEATS) -> float:
    """How many times faster a ``size`` x ``size`` matmul runs under CPU bf16 autocast than in
    float32 here: the fastest of ``repeats`` timings of each, interleaved (so that other work on the
    machine slows both alike), on one thread: the kernels' own speeds, which a busy machine disturbs
    least (on a 2-core AVX512-BF16 CPU beside a two-thread job, two threads measured 0.65x and one
    thread 2.1x; a whole training step there runs 1.4x faster in bf16). Once per process. Where the
    CPU lacks AVX512-BF16 and AMX, bf16 is emulated and this is well below 1 (BENCHMARKS.md: about
    7x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _speedup(size, repeats)
    finally:
        torch.set_num_threads(threads)


def _speedup(size: int, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))

    def float32() -> None:
        torch.mm(a, b)

    def bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.mm(a, b)

    best = {float32: math.inf, bf16: math.inf}
    for run in best:  # warm-up: the first call of each picks its kernels
        run()
    for _ in range(repeats):
        for run in best:
            started = time.perf_counter()
            run()
            best[run] = min(best[run], time.perf_counter() - started)
    return best[float32] / max(best[bf16], 1e-9)


def native_cpu_bf16() -> bool:
    """Whether oneDNN computes bf16 natively on this CPU (AVX512-BF16 or AMX), not emulated."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def training_precision(mixed_precision: str, device: torch.device) -> tuple[str, str]:
    """``(precision, line)``: what ``--loop.mixed-precision`` (``no | bf16 | fp16 | auto``) runs as
    on ``device`` (Accelerate's ``no``, ``bf16`` or ``fp16``), and for ``auto`` the one line that
    says which and why (else ""). ``auto`` is bf16 autocast where it pays: on a CUDA GPU that has
    bf16; on the CPU where :func:`bf16_matmul_speedup` finds its matmul at least
    :data:`BF16_MARGIN` times as fast as float32's; float32 elsewhere."""
    if mixed_precision != "auto":
        return mixed_precision, ""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"precision: bf16 autocast ({device} computes bf16)"
        return "no", f"precision: float32 ({device} has no bf16)"
    if device.type != "cpu":
        return "no", f"precision: float32 (bf16 autocast is not probed on {device.type})"
    speedup = bf16_matmul_speedup()
    if speedup >= BF16_MARGIN:
        return "bf16", f"precision: bf16 autocast (its matmul {speedup:.1f}x faster than float32 here)"
    return "no", (f"precision: float32 (bf16 autocast's matmul {speedup:.2f}x float32's speed here"
                  + (f", under the {BF16_MARGIN}x it must gain" if speedup >= 1 else
                     "" if native_cpu_bf16() else ": emulated, no AVX512-BF16 or AMX")
                  + ")")
