"""Prefill-only skipping on every decoder family: nothing skipped = plain generation; the prefill
(first token) equals the pruned model's; later tokens equal an independent reference that runs the
full stack on a cache whose skipped layers' prefix keys/values come from the layers' own attention
code; the model is untouched afterwards."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from speechprune.errors import UserError
from speechprune.model.decoder import decoder_layers, final_norm
from speechprune.prune.prefill import kv_fill_supported, prefill_skip
from speechprune.prune.surgery import skip_layers
from tests.helpers import (DECODER_FAMILIES, assert_clear_greedy_path, tiny_causal_lm, tiny_model_config,
                           write_tiny_manifest)

L = 6
VOCAB = 89
PREFIX = 10
NEW = 4
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=L, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, bos_token_id=None, eos_token_id=None,
              pad_token_id=0, initializer_range=0.3)
MIXED = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention",
         "full_attention"]
SKIPS = {"block": [2, 3], "scattered": [0, 3, 5]}


def tiny(family: str, seed: int = 0):
    return tiny_causal_lm(family, seed, mix=MIXED, **COMMON)


def prompt(batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, PREFIX), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate(model, input_ids, attention_mask=None, new=NEW):
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=new,
                         min_new_tokens=new, do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, input_ids.shape[1]:], torch.stack(out.logits, 1)


def snapshot(model) -> dict:
    return {name: value.clone() for name, value in model.state_dict().items()}


@torch.no_grad()
def reference(model, input_ids, skip, new=NEW):
    """Greedy tokens and logits of prefill-only skipping, built from public pieces: the prefix's
    layer inputs come from the pruned model (skip_layers); every layer's prefix keys/values are
    written by that layer's own attention module on its input; then the untouched model decodes."""
    layers = list(decoder_layers(model))
    calls: dict[int, dict] = {}  # per layer: the keyword arguments the model passes (rope, masks, ...)
    handles = [layer.register_forward_pre_hook(
        lambda module, args, kwargs, i=i: calls.__setitem__(i, kwargs), with_kwargs=True)
        for i, layer in enumerate(layers)]
    model(input_ids=input_ids, use_cache=True)
    for handle in handles:
        handle.remove()

    inputs: dict[int, torch.Tensor] = {}  # per original layer index: the state entering it (pruned run)
    def record(index):
        return lambda module, args, kwargs: inputs.__setitem__(index, args[0] if args else kwargs["hidden_states"])
    handles = [layers[i].register_forward_pre_hook(record(i), with_kwargs=True) for i in range(L) if i not in skip]
    handles.append(final_norm(model).register_forward_pre_hook(record(L), with_kwargs=True))
    with skip_layers(model, skip):
        first_logits = model(input_ids=input_ids, use_cache=False).logits[:, -1]
    for handle in handles:
        handle.remove()
    for i in reversed(range(L)):
        if i in skip:
            inputs[i] = inputs[i + 1]

    cache = DynamicCache(config=model.config)
    for i, layer in enumerate(layers):
        kwargs = {k: v for k, v in calls[i].items() if k not in ("cache", "hidden_states")}
        layer.self_attn(hidden_states=layer.input_layernorm(inputs[i]), cache=cache, **kwargs)
    logits = [first_logits]
    tokens = [first_logits.argmax(-1)]
    for _ in range(new - 1):
        step = model(input_ids=tokens[-1][:, None], cache=cache, use_cache=True).logits[:, -1]
        logits.append(step)
        tokens.append(step.argmax(-1))
    return torch.stack(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_nothing_skipped_is_plain_generation(family):
    model = tiny(family)
    ids = prompt(batch=2)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    plain = generate(model, ids, mask)
    with prefill_skip(model, []) as skipped:
        assert skipped == []
        inside = generate(model, ids, mask)
    assert torch.equal(plain[0], inside[0])
    assert torch.equal(plain[1], inside[1])


@pytest.mark.parametrize("family", DECODER_FAMILIES)
@pytest.mark.parametrize("where", SKIPS)
def test_prefill_is_the_pruned_model_and_later_tokens_the_full_stack(family, where):
    model = tiny(family)
    skip = SKIPS[where]
    ids = prompt()
    before = snapshot(model)
    with prefill_skip(model, skip) as skipped:
        assert skipped == skip
        tokens, logits = generate(model, ids)
    with skip_layers(model, skip):
        pruned_tokens, pruned_logits = generate(model, ids, new=1)
    ref_tokens, ref_logits = reference(model, ids, skip)
    assert_clear_greedy_path(ref_logits)
    torch.testing.assert_close(logits[:, 0], pruned_logits[:, 0], rtol=0, atol=1e-5)
    assert torch.equal(tokens[:, 0], pruned_tokens[:, 0])

    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    # the later tokens did run the skipped layers: pruned decoding differs from them
    with skip_layers(model, skip):
        _, pruned_all = generate(model, ids)
    assert not torch.allclose(logits[:, 1:], pruned_all[:, 1:], atol=1e-4)

    after = snapshot(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))
    assert model.config.num_hidden_layers == L


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen3"])
def test_kv_fill_equals_attention_fill_with_padding(family):
    model = tiny(family)
    assert kv_fill_supported(decoder_layers(model)[0])
    ids = prompt(batch=2, seed=3)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    results = {}
    for fill in ("kv", "attention"):
        with prefill_skip(model, [1, 2, 4], fill=fill):
            results[fill] = generate(model, ids, mask)
    assert_clear_greedy_path(results["attention"][1])
    assert torch.equal(results["kv"][0], results["attention"][0])
    torch.testing.assert_close(results["kv"][1], results["attention"][1], rtol=1e-5, atol=1e-5)
    with skip_layers(model, [1, 2, 4]):  # padded prefill too equals the pruned model's
        _, pruned = generate(model, ids, mask, new=1)
    torch.testing.assert_close(results["kv"][1][:, 0], pruned[:, 0], rtol=0, atol=1e-5)


def test_restored_after_an_exception_and_after_exit():
    model = tiny("llama")
    ids = prompt()
    plain = generate(model, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with prefill_skip(model, [1, 2]):
            raise RuntimeError("boom")
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))
    with prefill_skip(model, [1, 2]):
        pass
    again = generate(model, ids)
    assert torch.equal(plain[0], again[0]) and torch.equal(plain[1], again[1])


def test_an_existing_instance_forward_is_restored():
    model = tiny("llama")
    layer = decoder_layers(model)[2]
    calls = []
    original = layer.forward

    def wrapped(*args, **kwargs):  # e.g. an accelerate hook
        calls.append(1)
        return original(*args, **kwargs)

    layer.forward = wrapped
    ids = prompt()
    with prefill_skip(model, [2]):
        generate(model, ids, new=3)
    assert len(calls) == 2  # the two generated tokens after the first ran the full (wrapped) layer
    assert layer.__dict__["forward"] is wrapped


def test_uncached_forward_is_the_pruned_model():
    model = tiny("mistral")
    ids = prompt()
    with skip_layers(model, [1, 4]):
        pruned = model(input_ids=ids, use_cache=False).logits
    with prefill_skip(model, [1, 4]), torch.no_grad():
        inside = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(inside, pruned, rtol=0, atol=1e-5)


def test_bad_arguments():
    model = tiny("llama")
    with pytest.raises(UserError, match="out of range"):
        with prefill_skip(model, [L]):
            pass
    with pytest.raises(UserError, match="fill"):
        with prefill_skip(model, [1], fill="mlp"):
            pass
    with pytest.raises(UserError, match="nested"):
        with prefill_skip(model, [1]), prefill_skip(model, [1]):
            pass
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))


def test_speechllm_generate_first_token_is_the_pruned_model(tmp_path):
    from speechprune.data.manifest import load_manifest
    from speechprune.model.speechllm import SpeechLLM

    utterances = list(load_manifest(write_tiny_manifest(tmp_path / "data", with_st=False)))
    torch.manual_seed(0)
    model = SpeechLLM.build(tiny_model_config(layers=4), [u.target for u in utterances]).eval()
    batch = next(model.batches(utterances, batch_size=4))  # lengths differ: left-padded prefixes
    inputs = model.decoder_inputs(batch, with_target=False, padding_side="left")

    def first_logits():
        out = model.decoder.generate(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                     max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True, pad_token_id=model.tokenizer.pad_token_id)
        return out.logits[0]

    with torch.no_grad():
        with skip_layers(model.decoder, [1, 2]):
            pruned = first_logits()
        with prefill_skip(model.decoder, [1, 2]):
            inside = first_logits()
            texts = model.generate(batch, max_new_tokens=3)
    torch.testing.assert_close(inside, pruned, rtol=0, atol=1e-5)
    assert len(texts) == len(batch)


def test_positional_and_keyword_hidden_states():
    model = tiny("qwen2")
    layer = decoder_layers(model)[1]
    x = torch.randn(1, 5, 64)
    with prefill_skip(model, [1]), torch.no_grad():
        assert layer(x) is x
        assert layer(hidden_states=x) is x
        assert layer(x, None, None, None) is x  # attention_mask, position_ids, cache given positionally
