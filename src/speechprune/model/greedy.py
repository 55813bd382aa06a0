"""Greedy decoding that takes each row out of the batch at its end-of-sequence token.

transformers' ``generate`` keeps a finished row in the batch, feeding it padding, until every row
has finished or ``max_new_tokens`` is reached. One row that never emits <eos> (a heavily pruned
decoder often repeats itself to the limit) then makes every row of its batch run to the limit.
Here a finished row's KV cache is dropped (``Cache.batch_select_indices``), so later steps compute
only the rows still decoding.

The choices are ``generate``'s: the same positions (the attention mask's running count, as
``generate`` derives them for a left-padded prefix), the same mask and cache, the arg-max of the
last position's logits in float32. Only the rounding of a smaller batch's matrix products differs,
as it does between any two batch sizes.
"""

from __future__ import annotations

import inspect

import torch
from transformers import GenerationConfig

# generation-config settings that make generate() change the logits before its arg-max; a decoder
# whose own generation config sets any of them is decoded by generate() itself
_LOGIT_SETTINGS = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                   "encoder_no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                   "forced_bos_token_id", "forced_eos_token_id", "min_length", "min_new_tokens", "sequence_bias",
                   "exponential_decay_length_penalty", "forced_decoder_ids", "renormalize_logits")
_DEFAULTS = GenerationConfig()  # built once: decoding asks for every batch


def changes_logits(generation_config: GenerationConfig | None) -> bool:
    """Whether ``generate`` would process the logits of greedy decoding under this config."""
    if generation_config is None:
        return False
    return any(getattr(generation_config, name, None) != getattr(_DEFAULTS, name, None) for name in _LOGIT_SETTINGS)


def _accepts(decoder: torch.nn.Module, argument: str) -> bool:
    inner = decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder  # a peft model
    return argument in inspect.signature(inner.forward).parameters


@torch.no_grad()
def greedy_tokens(decoder: torch.nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                  max_new_tokens: int, eos_token_ids: list[int]) -> list[list[int]]:
    """Decode greedily from a left-padded prefix; per row, the new tokens up to and including its
    first end-of-sequence token (or ``max_new_tokens`` of them)."""
    batch = inputs_embeds.shape[0]
    generated: list[list[int]] = [[] for _ in range(batch)]
    if max_new_tokens <= 0 or batch == 0:
        return generated
    device = inputs_embeds.device
    eos = torch.tensor(eos_token_ids, dtype=torch.long, device=device)
    keep_last = {"logits_to_keep": 1} if _accepts(decoder, "logits_to_keep") else {}
    mask = attention_mask.to(device=device, dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    out = decoder(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions, use_cache=True, **keep_last)
    rows = torch.arange(batch, device=device)  # the original row of each row still decoding
    last_position = positions[:, -1]
    for step in range(max_new_tokens):
        tokens = out.logits[:, -1, :].float().argmax(-1)
        for row, token in zip(rows.tolist(), tokens.tolist()):
            generated[row].append(token)
        finished = torch.isin(tokens, eos)
        if step + 1 == max_new_tokens or bool(finished.all()):
            break
        cache = out.cache
        if bool(finished.any()):
            going = (~finished).nonzero().squeeze(1)
            cache.batch_select_indices(going)
            rows, tokens, mask, last_position = rows[going], tokens[going], mask[going], last_position[going]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        last_position = last_position + 1
        out = decoder(input_ids=tokens[:, None], attention_mask=mask, position_ids=last_position[:, None],
                      cache=cache, use_cache=True, **keep_last)
    return generated
