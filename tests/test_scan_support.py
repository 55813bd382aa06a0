"""Shared helpers of the scan tests (tiny decoders of every family, hand-built decoder inputs, the
naive reference); imported by the other test_scan_* files. Holds no tests itself."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from speechprune.model.decoder import base_model
from speechprune.model.layout import REGIONS, DecoderInputs, Segment, assemble

HIDDEN = 32


def tiny_decoder(family: str = "llama", layers: int = 5, seed: int = 0) -> nn.Module:
    """A randomly initialised causal LM of the given family, small enough for a test."""
    import transformers as tf

    common = dict(vocab_size=64, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if family == "llama":
        config = tf.LlamaConfig(**common)
        cls = tf.LlamaForCausalLM
    elif family == "qwen2":  # sliding window on the layers above max_window_layers
        config = tf.Qwen2Config(**common, use_sliding_window=True, sliding_window=4, max_window_layers=2)
        cls = tf.Qwen2ForCausalLM
    elif family == "mistral":
        config = tf.MistralConfig(**common, sliding_window=4)
        cls = tf.MistralForCausalLM
    elif family == "gemma":
        config = tf.GemmaConfig(**common, head_dim=8)
        cls = tf.GemmaForCausalLM
    elif family == "gemma2":
        config = tf.Gemma2Config(**common, head_dim=8, sliding_window=4)
        cls = tf.Gemma2ForCausalLM
    elif family == "gemma3":
        config = tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=4, sliding_window_pattern=2)
        cls = tf.Gemma3ForCausalLM
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = cls(config).eval()
    return model


def utterance_segments(model: nn.Module, rng: torch.Generator, speech: int, prompt: int, target: int) -> list[Segment]:
    """<a> speech </a> prompt <bos> target <eos>, speech as random vectors, the rest as token embeddings."""
    embed = model.get_input_embeddings()

    def tokens(n: int, region):
        ids = torch.randint(4, 64, (n,), generator=rng)
        return Segment(embed(ids).detach(), region, ids)

    return [
        Segment(embed(torch.tensor([1])).detach(), None, torch.tensor([1])),
        Segment(torch.randn(speech, HIDDEN, generator=rng) * 0.05, "speech"),
        Segment(embed(torch.tensor([2])).detach(), None, torch.tensor([2])),
        tokens(prompt, "prompt"),
        Segment(embed(torch.tensor([3])).detach(), None, torch.tensor([3])),
        tokens(target, "target"),
    ]


def corpus(model: nn.Module, count: int = 7, seed: int = 0) -> list[list[Segment]]:
    """Utterances of different lengths (so that batches need padding)."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        lengths = torch.randint(2, 9, (3,), generator=rng).tolist()
        out.append(utterance_segments(model, rng, *lengths))
    return out


def batches(utterances: list[list[Segment]], batch_size: int, padding_side: str = "right"):
    """(global indices, DecoderInputs) in manifest order."""
    for start in range(0, len(utterances), batch_size):
        chunk = list(range(start, min(len(utterances), start + batch_size)))
        yield chunk, assemble([utterances[i] for i in chunk], padding_side=padding_side,
                              utterance_ids=[f"u{i}" for i in chunk])


@torch.no_grad()
def reference_states(model: nn.Module, inputs: DecoderInputs) -> list[torch.Tensor]:
    """x_0..x_L the naive way: output_hidden_states keeps all of them, but its last entry comes after
    the final norm (transformers 5.x), so x_L is taken from a forward with the norm removed."""
    out = model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids, output_hidden_states=True, use_cache=False)
    hidden = list(out.hidden_states)
    base = base_model(model)
    norm, base.norm = base.norm, nn.Identity()
    try:
        last = base(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                    position_ids=inputs.position_ids, use_cache=False).last_hidden_state
    finally:
        base.norm = norm
    assert torch.allclose(norm(last), hidden[-1], atol=1e-5)  # hidden[-1] is the normed x_L
    return hidden[:-1] + [last]


def reference_scan(model: nn.Module, utterances: list[list[Segment]], batch_size: int = 3,
                   regions=REGIONS) -> dict[str, dict]:
    """Per region: (L+1)x(L+1) mean angular and cosine, by a loop over n and l, keeping all states."""
    per_region = {r: {"ang": None, "cos": None, "count": 0} for r in regions}
    for _, inputs in batches(utterances, batch_size):
        states = torch.stack(reference_states(model, inputs)).double()  # [L+1, B, T, H]
        num = states.shape[0]
        for region in regions:
            mask = inputs.regions[region] & inputs.attention_mask.bool()
            x = states[:, mask]  # [L+1, N, H]
            acc = per_region[region]
            if acc["ang"] is None:
                acc["ang"] = np.zeros((num, num))
                acc["cos"] = np.zeros((num, num))
            for n in range(1, num):
                for l in range(0, num - n):
                    c = torch.nn.functional.cosine_similarity(x[l], x[l + n], dim=-1, eps=1e-300).clamp(-1, 1)
                    acc["ang"][l, l + n] += (torch.arccos(c) / math.pi).sum().item()
                    acc["cos"][l, l + n] += c.sum().item()
            acc["count"] += int(mask.sum())
    result = {}
    for region, acc in per_region.items():
        ang = acc["ang"] / max(acc["count"], 1)
        cos = acc["cos"] / max(acc["count"], 1)
        ang = ang + ang.T
        cos = cos + cos.T
        np.fill_diagonal(cos, 1.0)
        result[region] = {"angular": ang, "cosine": cos, "count": acc["count"]}
    return result
