"""Shared fixtures: tiny manifests with synthetic audio, tiny SpeechLLM configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.manifest import Utterance
from speechprune.model.speechllm import (DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig, SpeechLLM,
                                        decoder_texts)

SENTENCES = [("the red cat sleeps.", "le chat rouge dort."), ("two dogs run.", "deux chiens courent."),
             ("a big bird sings.", "un grand oiseau chante."), ("the cat sees a dog.", "le chat voit un chien."),
             ("three birds fly.", "trois oiseaux volent."), ("the dog eats.", "le chien mange.")]


def write_tiny_manifest(folder: Path, name: str = "tiny.jsonl", with_st: bool = True, seed: int = 0) -> Path:
    """A manifest of short tone-and-noise clips; lengths differ so that batches need padding."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (en, fr) in enumerate(SENTENCES):
        seconds = 0.6 + 0.15 * i
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(t.shape)
        sf.write(folder / f"u{i}.wav", wave.astype(np.float32), 16000)
        lines.append({"id": f"asr-{i}", "audio": f"u{i}.wav", "text": en, "task": "asr", "src_lang": "en",
                      "tgt_lang": "en", "target": en, "duration": seconds})
        if with_st:
            lines.append({"id": f"st-{i}", "audio": f"u{i}.wav", "text": en, "task": "st", "src_lang": "en",
                          "tgt_lang": "fr", "target": fr, "duration": seconds})
    path = folder / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def tiny_model_config(layers: int = 4, decoder_type: str = "llama", encoder_type: str = "whisper") -> ModelConfig:
    encoders = {
        "whisper": {"model_type": "whisper", "num_mel_bins": 80, "d_model": 32, "encoder_layers": 2,
                    "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "max_source_positions": 400},
        "wav2vec2": {"model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64, "conv_dim": [16, 16, 16], "conv_stride": [5, 4, 4],
                     "conv_kernel": [10, 4, 4], "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
                     "feat_extract_norm": "layer", "do_stable_layer_norm": True},
    }
    return ModelConfig(
        encoder=EncoderConfig(config=encoders[encoder_type]),
        projector=ProjectorConfig(stack=2, hidden_dim=48),
        decoder=DecoderConfig(config={"model_type": decoder_type, "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": layers, "num_attention_heads": 4,
                                      "num_key_value_heads": 2, "max_position_embeddings": 256,
                                      "head_dim": 8},
                              bpe_vocab_size=300),
    )


@pytest.fixture
def tiny_manifest(tmp_path: Path) -> Path:
    return write_tiny_manifest(tmp_path / "data")


def build_tiny_speechllm(utterances: list[Utterance], **config) -> SpeechLLM:
    """A tiny SpeechLLM built as ``train`` builds one: BPE on the texts the decoder reads, the
    CTC alphabet from the transcripts; ``config`` goes to :func:`tiny_model_config`."""
    model_config = tiny_model_config(**config)
    return SpeechLLM.build(model_config, decoder_texts(model_config.prompts, utterances),
                           [u.text for u in utterances])


# Greedy decodes of one model through two float32 computations (cached vs uncached, batched vs single,
# a reference implementation) are promised to agree token for token on any CPU, thread count or BLAS
# only where no step's top two logits lie within rounding of each other. Such tests assert this
# margin on their own inputs first, so a failure says "pick another input", not "the code is wrong".
GREEDY_MARGIN = 1e-4  # ten times the 1e-5 logit tolerance the suite holds two such paths to


def assert_clear_greedy_path(logits, margin: float = GREEDY_MARGIN) -> None:
    """Every step of ``logits`` ([..., vocab]) has its best token ahead of the next by ``margin``."""
    top_two = logits.float().topk(2, dim=-1).values
    gap = float((top_two[..., 0] - top_two[..., 1]).min())
    assert gap > margin, f"greedy path is near a tie (top-2 gap {gap:.2e}): not comparable across machines"
