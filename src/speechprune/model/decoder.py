"""Where the parts of any Hugging Face causal LM live: its decoder layers and its final norm; and
the next-token loss of a decoder on its inputs.

Every supported family (Llama, Qwen2/2.5/3, Mistral, Gemma 1/2/3) exposes its base model through
``get_decoder()``, which holds ``layers`` (an ``nn.ModuleList``) and ``norm``. Scan, prune and
heal reach the layers only through these two functions.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import PreTrainedModel

from speechprune.model.layout import IGNORE_INDEX, DecoderInputs


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


def _labelled_logits(causal_lm: nn.Module, inputs: DecoderInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [N, V] at the N labelled positions, their labels [N] and the [B, T] mask of them."""
    device = inputs.inputs_embeds.device
    labels = inputs.labels.to(device)
    labelled = labels != IGNORE_INDEX
    keep = {"logits_to_keep": labelled} if _takes_logits_to_keep(causal_lm) else {}
    logits = causal_lm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask.to(device),
                       position_ids=inputs.position_ids.to(device), use_cache=False, **keep).logits
    if logits.dim() == 3:  # [B, T, V]: the class computed every position
        logits = logits[labelled]
    return logits, labels[labelled], labelled


def next_token_loss(causal_lm: nn.Module, inputs: DecoderInputs) -> torch.Tensor:
    """Mean cross-entropy over the positions that carry a label, with logits computed at those
    positions only: a large vocabulary's LM head (Gemma-3-270M's) costs more than the layers, and
    most positions of a task sequence (speech, prompt) predict nothing. The model's own head code
    runs (``logits_to_keep``), so a family's logit scaling or soft-capping still applies; a class
    without ``logits_to_keep`` (Qwen2-Audio) computes every position and the labelled ones are kept."""
    logits, labels, _ = _labelled_logits(causal_lm, inputs)
    return nn.functional.cross_entropy(logits.float(), labels)


def sequence_log_losses(causal_lm: nn.Module, inputs: DecoderInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence of the batch: the summed negative log-likelihood (nats, float64) of its labelled
    tokens and their number; what a perplexity and its bootstrap over sequences are made of."""
    logits, labels, labelled = _labelled_logits(causal_lm, inputs)
    losses = nn.functional.cross_entropy(logits.float(), labels, reduction="none").double()
    rows = labelled.nonzero()[:, 0]  # the sequence each labelled position belongs to, in order
    sums = torch.zeros(labelled.shape[0], dtype=torch.float64, device=losses.device).index_add_(0, rows, losses)
    return sums.cpu(), labelled.sum(dim=1).cpu()


def _takes_logits_to_keep(causal_lm: nn.Module) -> bool:
    inner = causal_lm.get_base_model() if hasattr(causal_lm, "get_base_model") else causal_lm  # peft
    return "logits_to_keep" in inspect.signature(type(inner).forward).parameters
