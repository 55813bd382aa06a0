"""Speech encoders behind one small interface, picked by the checkpoint's ``model_type``.

- Whisper (log-mel input). Whisper is trained on 30 s windows; ``window="dynamic"`` runs only as
  many frames as the longest utterance of the batch needs (positional embeddings sliced), with a
  key-padding mask, so short audio does not pay for 30 s and padding never leaks into real
  positions. ``window="full"`` pads to 30 s as the original model does; either way the output is
  cut to each utterance's real length before it reaches the decoder.
- wav2vec2 / HuBERT / WavLM (raw waveform), with the checkpoint's own feature extractor.

Every encoder turns one waveform into a per-utterance feature tensor (``featurize``), pads a
batch of them (``collate``) and maps the batch to hidden states plus real lengths (``forward``);
``output_dim`` is the states' width and ``frame_ms`` the speech each state stands for.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from speechprune.errors import UserError
from speechprune.model.safety import SAFE, LoadingPolicy, pretrained

SAMPLE_RATE = 16000


def _key_padding_mask(lengths: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask [B, 1, 1, width]: 0 for real frames, dtype-min for padding."""
    real = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
    mask = torch.zeros(real.shape, dtype=dtype, device=lengths.device)
    mask.masked_fill_(~real, torch.finfo(dtype).min)
    return mask[:, None, None, :]


class WhisperSpeechEncoder(nn.Module):
    """The encoder half of Whisper, run on a window that fits the batch."""

    kind: ClassVar[str] = "whisper"

    def __init__(self, encoder: WhisperEncoder, feature_extractor: WhisperFeatureExtractor, window: str = "dynamic"):
        super().__init__()
        if window not in ("dynamic", "full"):
            raise UserError(f"encoder window must be 'dynamic' or 'full', not {window!r}")
        self.model = encoder
        self.feature_extractor = feature_extractor
        self.window = window
        self.output_dim = encoder.config.d_model
        self.max_frames = encoder.config.max_source_positions * 2  # conv2 has stride 2
        # milliseconds of speech per output frame: the log-mel hop times the two convolutions' strides
        strides = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        self.frame_ms = 1000.0 * feature_extractor.hop_length * strides / SAMPLE_RATE

    @classmethod
    def from_config(cls, config: dict, window: str = "dynamic", hop_length: int = 160) -> "WhisperSpeechEncoder":
        whisper_config = WhisperConfig(**config)
        frames = whisper_config.max_source_positions * 2
        extractor = WhisperFeatureExtractor(feature_size=whisper_config.num_mel_bins, hop_length=hop_length,
                                            chunk_length=max(1, frames * hop_length // SAMPLE_RATE))
        return cls(WhisperEncoder(whisper_config), extractor, window)

    @classmethod
    def from_pretrained(cls, path: str, window: str = "dynamic", loading: LoadingPolicy = SAFE) -> "WhisperSpeechEncoder":
        config = pretrained(AutoConfig, path, "speech encoder config", weights=False, loading=loading)
        if "WhisperEncoder" in (config.architectures or []):
            encoder = pretrained(WhisperEncoder, path, "speech encoder", loading=loading)
        else:  # a full Whisper checkpoint: keep the encoder, drop the text decoder
            encoder = pretrained(WhisperModel, path, "speech encoder", loading=loading).get_encoder()
        return cls(encoder, WhisperFeatureExtractor.from_pretrained(path), window)

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)

    def featurize(self, wave: np.ndarray) -> torch.Tensor:
        """Log-mel frames [frames, mel] of one utterance, without padding."""
        frames = min(len(wave) // self.feature_extractor.hop_length, self.max_frames)
        if frames < 1:
            raise UserError("audio shorter than one frame")
        features = self.feature_extractor(wave, sampling_rate=SAMPLE_RATE, padding="longest",
                                          truncation=False, return_tensors="np")["input_features"][0]
        return torch.from_numpy(np.ascontiguousarray(features[:, :frames].T))

    def collate(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([f.shape[0] for f in features])
        width = self.max_frames if self.window == "full" else int(lengths.max()) + int(lengths.max()) % 2
        # zero padding, exactly what the convolutions pad a lone utterance with
        batch = torch.zeros(len(features), features[0].shape[1], width)
        for row, feature in enumerate(features):
            batch[row, :, : feature.shape[0]] = feature.T
        return {"input_features": batch, "frame_lengths": lengths}

    def output_lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        return (frame_lengths + 1) // 2

    def forward(self, input_features: torch.Tensor, frame_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        frame_lengths = frame_lengths.to(input_features.device)
        hidden = nn.functional.gelu(model.conv1(input_features.to(model.conv1.weight.dtype)))
        # zero conv1's output past each real length, so conv2 sees what it sees on a lone utterance
        real = torch.arange(hidden.shape[-1], device=hidden.device)[None, :] < frame_lengths[:, None]
        hidden = hidden * real[:, None, :].to(hidden.dtype)
        hidden = nn.functional.gelu(model.conv2(hidden)).permute(0, 2, 1)
        width = hidden.shape[1]
        hidden = hidden + model.embed_positions.weight[:width]
        hidden = nn.functional.dropout(hidden, p=model.dropout, training=self.training)
        lengths = self.output_lengths(frame_lengths)
        mask = _key_padding_mask(lengths, width, hidden.dtype)
        for layer in model.layers:
            hidden = layer(hidden, mask)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return model.layer_norm(hidden), lengths


class WaveformSpeechEncoder(nn.Module):
    """wav2vec2, HuBERT or WavLM on the raw 16 kHz waveform."""

    kind: ClassVar[str] = "waveform"

    def __init__(self, model: nn.Module, feature_extractor, window: str = "dynamic"):
        super().__init__()
        self.model = model
        self.feature_extractor = feature_extractor
        self.window = window
        self.output_dim = model.config.hidden_size
        self.frame_ms = 1000.0 * math.prod(model.config.conv_stride) / SAMPLE_RATE  # the conv front end's hop

    @classmethod
    def from_config(cls, config: dict, window: str = "dynamic", hop_length: int = 160) -> "WaveformSpeechEncoder":
        from transformers import Wav2Vec2FeatureExtractor

        model_config = AutoConfig.for_model(**config)
        extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                             do_normalize=True, return_attention_mask=True)
        return cls(AutoModel.from_config(model_config), extractor, window)

    @classmethod
    def from_pretrained(cls, path: str, window: str = "dynamic", loading: LoadingPolicy = SAFE) -> "WaveformSpeechEncoder":
        return cls(pretrained(AutoModel, path, "speech encoder", loading=loading),
                   AutoFeatureExtractor.from_pretrained(path), window)

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)

    def featurize(self, wave: np.ndarray) -> torch.Tensor:
        values = self.feature_extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_values"][0]
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))

    def collate(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([f.shape[0] for f in features])
        batch = torch.zeros(len(features), int(lengths.max()))
        for row, feature in enumerate(features):
            batch[row, : feature.shape[0]] = feature
        return {"input_values": batch, "sample_lengths": lengths}

    def forward(self, input_values: torch.Tensor, sample_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sample_lengths = sample_lengths.to(input_values.device)
        attention = None
        if getattr(self.feature_extractor, "return_attention_mask", False):
            attention = (torch.arange(input_values.shape[1], device=input_values.device)[None] < sample_lengths[:, None]).long()
        hidden = self.model(input_values.to(next(self.model.parameters()).dtype), attention_mask=attention).last_hidden_state
        lengths = self.model._get_feat_extract_output_lengths(sample_lengths).clamp(max=hidden.shape[1])
        return hidden, lengths.long()


# model_type of the checkpoint -> encoder class. Add a family here, nowhere else.
ENCODERS: dict[str, type[nn.Module]] = {
    "whisper": WhisperSpeechEncoder,
    "wav2vec2": WaveformSpeechEncoder,
    "hubert": WaveformSpeechEncoder,
    "wavlm": WaveformSpeechEncoder,
}


def _encoder_class(model_type: str) -> type[nn.Module]:
    if model_type not in ENCODERS:
        raise UserError(f"unsupported speech encoder type {model_type!r} (supported: {', '.join(ENCODERS)})")
    return ENCODERS[model_type]


def build_encoder(config: dict, window: str = "dynamic", hop_length: int = 160) -> nn.Module:
    """A randomly initialised encoder from a config dict that names its ``model_type``
    (``hop_length`` applies to log-mel encoders only)."""
    config = dict(config)
    model_type = config.get("model_type", "whisper")
    cls = _encoder_class(model_type)
    if cls is WhisperSpeechEncoder:
        config.pop("model_type", None)
    return cls.from_config(config, window, hop_length)


def load_encoder(path: str, window: str = "dynamic", loading: LoadingPolicy = SAFE) -> nn.Module:
    """An encoder from a local checkpoint directory or hub id, or a CTranslate2 Whisper (a
    faster-whisper folder or a short name, converted once: model/ctranslate2.py)."""
    from speechprune.model.ctranslate2 import encoder_checkpoint

    path = encoder_checkpoint(path)
    model_type = pretrained(AutoConfig, path, "speech encoder config", weights=False, loading=loading).model_type
    return _encoder_class(model_type).from_pretrained(path, window, loading)
