"""Prefill-only layer skipping: the decoder runs without some layers while it reads the prefix
(speech + prompt) and with all of them for the tokens it generates (:func:`prefill_skip`).

A SpeechLLM's prefix is long (about ten positions per second of speech) and is read in one
forward; the answer is generated one position at a time. Skipping layers only in that first
forward takes most of the saving of full pruning on long prefixes while every generated token
still passes through the whole decoder.

Semantics, per decoder layer named in ``layers``:
- a *prefill* forward (the one that starts the KV cache: the cache holds no position for that
  layer yet; or any forward without a cache) passes the hidden state through unchanged, exactly as
  the pruned model would, and still writes the layer's keys and values for the prefix positions
  into the cache, computed from the state that enters the layer (the pass-through state);
- every later forward (a non-empty cache: generated tokens) runs the layer in full, attending to
  those prefix keys/values.
So the prefill logits, and with them the first generated token, are those of the model with the
layers removed; later tokens use the full stack.

How the skipped layer's cache is filled (``fill``):
- ``"kv"``: only ``input_layernorm`` -> key/value projections (-> ``k_norm`` where the family has
  one) -> rotary on the keys -> ``cache.update``. No query, no attention product, no output
  projection, no MLP. Supported for attention classes whose forward is known to compute keys and
  values exactly this way: Llama, Mistral, Qwen2/2.5, Qwen3, Gemma, Gemma2, Gemma3.
- ``"attention"``: the layer's own attention sublayer on the input-normed state, output discarded
  (no MLP); works for any decoder layer with ``input_layernorm`` and ``self_attn``.
- ``"auto"`` (default): ``"kv"`` where supported, else ``"attention"``.

Nothing is copied: each named layer's ``forward`` is wrapped (an instance attribute) and restored
on exit, even after an exception. Layer indices are 0-based and refer to the layers as they are
when the context is entered (inside :func:`~speechprune.prune.surgery.skip_layers`, the kept ones).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from speechprune.errors import UserError
from speechprune.model.decoder import decoder_layers
from speechprune.prune.surgery import validate_indices

FILLS = ("auto", "kv", "attention")
# Attention classes whose keys/values are k_proj/v_proj(h).view(..., head_dim) [-> k_norm over
# head_dim] -> transpose -> their module's apply_rotary_pos_emb -> cache.update(k, v, layer_idx)
# (checked against transformers 5.24).
KV_ATTENTIONS = frozenset({"LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention",
                           "GemmaAttention", "Gemma2Attention", "Gemma3Attention"})
_MARK = "_speechprune_prefill_skip"
_MISSING = object()
# Arguments of a decoder layer that its attention does not receive through **kwargs.
_LAYER_ONLY = ("hidden_states", "attention_mask", "position_embeddings", "cache", "past_key_values")


@contextlib.contextmanager
def prefill_skip(causal_lm: Any, layers: Sequence[int], fill: str = "auto") -> Iterator[list[int]]:
    """Within the ``with`` block, the decoder layers ``layers`` are skipped in prefill forwards and
    run in full for generated tokens (see the module docstring). Yields the sorted indices.
    An empty ``layers`` changes nothing."""
    if fill not in FILLS:
        raise UserError(f"prefill fill must be one of {', '.join(FILLS)}, not {fill!r}")
    modules = decoder_layers(causal_lm)
    skip = validate_indices(list(layers), len(modules), "layers to skip in prefill")
    patched: list[tuple[nn.Module, Any]] = []
    try:
        for index in skip:
            layer = modules[index]
            if getattr(layer.forward, _MARK, False):
                raise UserError(f"decoder layer {index} is already skipped in prefill (nested prefill_skip)")
            filler = _filler(layer, index, fill)
            previous = layer.__dict__.get("forward", _MISSING)
            layer.forward = _wrap(layer, layer.forward, filler)
            patched.append((layer, previous))
        yield skip
    finally:
        for layer, previous in reversed(patched):
            if previous is _MISSING:
                del layer.forward
            else:
                layer.forward = previous


def kv_fill_supported(layer: nn.Module) -> bool:
    """Whether ``fill="kv"`` applies to this decoder layer (its attention class is a known one)."""
    attention = getattr(layer, "self_attn", None)
    return (attention is not None and type(attention).__name__ in KV_ATTENTIONS
            and hasattr(layer, "input_layernorm") and _rotary(attention) is not None
            and all(hasattr(attention, name) for name in ("k_proj", "v_proj", "head_dim", "layer_idx")))


def _rotary(attention: nn.Module) -> Callable | None:
    return getattr(sys.modules.get(type(attention).__module__), "apply_rotary_pos_emb", None)


def _filler(layer: nn.Module, index: int, fill: str) -> Callable[[torch.Tensor, Any, dict], None]:
    """The function that writes a skipped layer's prefix keys/values into the cache."""
    if fill in ("auto", "kv") and kv_fill_supported(layer):
        return _kv_filler(layer)
    if fill == "kv":
        raise UserError(f"decoder layer {index} ({type(layer).__name__}): fill='kv' supports the attention "
                        f"classes {', '.join(sorted(KV_ATTENTIONS))}; use fill='attention'")
    if not (hasattr(layer, "input_layernorm") and isinstance(getattr(layer, "self_attn", None), nn.Module)
            and isinstance(getattr(layer.self_attn, "layer_idx", None), int)):
        raise UserError(f"decoder layer {index} ({type(layer).__name__}) has no input_layernorm and self_attn "
                        "with a layer_idx; cannot fill its KV cache in prefill")
    return _attention_filler(layer)


def _kv_filler(layer: nn.Module) -> Callable[[torch.Tensor, Any, dict], None]:
    attention, norm = layer.self_attn, layer.input_layernorm
    rotary = _rotary(attention)
    k_norm = getattr(attention, "k_norm", None)

    def fill(hidden_states: torch.Tensor, cache: Any, kwargs: dict) -> None:
        position_embeddings = kwargs.get("position_embeddings")
        if position_embeddings is None:
            raise RuntimeError(f"{type(layer).__name__} was called without position_embeddings; "
                               "prefill_skip(fill='kv') needs them (use fill='attention')")
        cos, sin = position_embeddings
        normed = norm(hidden_states)
        shape = (*normed.shape[:-1], -1, attention.head_dim)
        keys = attention.k_proj(normed).view(shape)
        if k_norm is not None:
            keys = k_norm(keys)
        keys = keys.transpose(1, 2)
        values = attention.v_proj(normed).view(shape).transpose(1, 2)
        _, keys = rotary(keys[:, :0], keys, cos, sin)  # an empty query: only the keys are rotated
        cache.update(keys, values, attention.layer_idx,
                     kwargs={name: value for name, value in kwargs.items() if name not in _LAYER_ONLY})

    return fill


def _attention_filler(layer: nn.Module) -> Callable[[torch.Tensor, Any, dict], None]:
    def fill(hidden_states: torch.Tensor, cache: Any, kwargs: dict) -> None:
        arguments = {name: value for name, value in kwargs.items() if name not in ("hidden_states", "past_key_values")}
        arguments["cache"] = cache
        layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **arguments)

    return fill


def _wrap(layer: nn.Module, forward: Callable, fill: Callable[[torch.Tensor, Any, dict], None]) -> Callable:
    signature = inspect.signature(forward)
    var_keyword = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    attention = layer.self_attn

    def prefill_skipping_forward(*args, **kwargs):
        if len(args) != 1 or "hidden_states" in kwargs:  # other than (hidden_states, **keywords): normalise
            kwargs = dict(signature.bind(*args, **kwargs).arguments)
            kwargs.update(kwargs.pop(var_keyword, None) or {})
            args = (kwargs.pop("hidden_states"),)
        hidden_states = args[0]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and int(cache.get_seq_length(attention.layer_idx)) > 0:
            return forward(*args, **kwargs)  # a generated token: the full layer
        if cache is not None:
            fill(hidden_states, cache, kwargs)
        return hidden_states

    setattr(prefill_skipping_forward, _MARK, True)
    return prefill_skipping_forward
