"""Where the parts of any Hugging Face causal LM live: its decoder layers and its final norm.

Every supported family (Llama, Qwen2/2.5/3, Mistral, Gemma 1/2/3) exposes its base model through
``get_decoder()``, which holds ``layers`` (an ``nn.ModuleList``) and ``norm``. Scan, prune and
heal reach the layers only through these two functions.
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel


def base_model(causal_lm: PreTrainedModel) -> nn.Module:
    decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else causal_lm
    if not hasattr(decoder, "layers"):
        raise TypeError(f"{type(causal_lm).__name__}: cannot find the decoder layers (no .layers on its decoder)")
    return decoder


def decoder_layers(causal_lm: PreTrainedModel) -> nn.ModuleList:
    """The decoder's layer list, index 0 = the first layer the embeddings enter."""
    return base_model(causal_lm).layers


def final_norm(causal_lm: PreTrainedModel) -> nn.Module:
    """The norm applied after the last layer (x_L is taken BEFORE it)."""
    return base_model(causal_lm).norm


def text_config(causal_lm: PreTrainedModel):
    """The config that describes the decoder layers (``text_config`` for multimodal wrappers)."""
    config = causal_lm.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config
