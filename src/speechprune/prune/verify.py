"""The check every export passes before it is written: the pruned model, reloaded as a user would
load it, gives the logits of the original with the removed layers skipped by forward hooks (a
different mechanism from the surgery, so it checks it), and its cached decoding equals uncached."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from speechprune.errors import UserError


def probe_ids(model: Any) -> torch.Tensor:
    """Random token ids for the export check, avoiding the speech placeholder (whose embedding a
    speech-LLM replaces by audio features)."""
    from speechprune.model.decoder import text_config

    causal_lm = model.causal_lm
    vocab = int(getattr(text_config(causal_lm), "vocab_size", 0) or causal_lm.get_input_embeddings().num_embeddings)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 16), generator=generator)
    reserved = getattr(model, "speech_token_id", None)
    return ids if reserved is None else torch.where(ids == reserved, (ids + 1) % vocab, ids)


@torch.no_grad()
def reference_logits(causal_lm: Any, skip: list[int], input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the untouched model with the layers ``skip`` made identities by forward hooks (a
    different mechanism from the surgery, so it checks it)."""
    from speechprune.model.decoder import decoder_layers

    def identity(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    layers = decoder_layers(causal_lm)
    handles = [layers[i].register_forward_hook(identity, with_kwargs=True) for i in skip]
    try:
        device = next(causal_lm.parameters()).device
        return causal_lm(input_ids.to(device), use_cache=False).logits.float().cpu()
    finally:
        for handle in handles:
            handle.remove()


def _tolerance(reference: torch.Tensor, dtype: torch.dtype) -> float:
    scale = max(1.0, float(reference.abs().max()))
    return scale * (1e-5 if dtype in (torch.float32, torch.float64) else 2e-2)


@torch.no_grad()
def verify_export(reload: Callable[[Path], tuple[Any, dict]], path: Path, num_layers: int, reference: torch.Tensor,
                  input_ids: torch.Tensor) -> dict[str, Any]:
    """Reload ``path`` with ``reload`` (``from_pretrained`` of the original's class) and check: no
    weight missing or newly initialised, ``num_layers`` layers, logits equal ``reference`` and cached
    decoding equals uncached. UserError if not."""
    from speechprune.model.decoder import decoder_layers

    model, info = reload(path)
    model.eval()
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise UserError(f"export check: {path} reloads with {problems}; refusing to write it")
    if len(decoder_layers(model)) != num_layers:
        raise UserError(f"export check: {path} reloads with {len(decoder_layers(model))} layers, not {num_layers}")
    dtype = next(model.parameters()).dtype
    tolerance = _tolerance(reference, dtype)
    logits = model(input_ids, use_cache=False).logits.float()
    logits_error = float((logits - reference).abs().max())
    if not logits_error <= tolerance:
        raise UserError(f"export check: the pruned {type(model).__name__} differs from the original with the layers "
                        f"skipped by {logits_error:.3g} (tolerance {tolerance:.3g}); this architecture is not supported")
    prefix = model(input_ids[:, :-1], use_cache=True)
    step = model(input_ids[:, -1:], cache=prefix.cache, use_cache=True).logits[:, -1].float()
    cache_error = float((step - logits[:, -1]).abs().max())
    if not cache_error <= tolerance:
        raise UserError(f"export check: cached decoding of the pruned {type(model).__name__} differs from uncached "
                        f"by {cache_error:.3g} (tolerance {tolerance:.3g})")
    return {"logits_max_abs_error": logits_error, "cached_max_abs_error": cache_error, "tolerance": tolerance}
