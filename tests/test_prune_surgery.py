"""The one surgery on every decoder family: a pruned model equals the original with those layers
skipped (an independent reference: identity hooks on the untouched model), before and after a
plain save/reload, and cached generation equals uncached."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from speechprune.errors import UserError
from speechprune.model.decoder import decoder_layers
from speechprune.prune.surgery import kept_ranges, receiving_layers, remove_layers, skip_layers, validate_indices
from tests.helpers import DECODER_FAMILIES, assert_clear_greedy_path, tiny_causal_lm

L = 8
VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=L, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)
MIXED = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
         "full_attention", "sliding_attention", "full_attention", "full_attention"]

REMOVALS = {"block": [2, 3, 4], "scattered": [0, 3, 6], "last": [7]}


def tiny(family: str, seed: int = 0):
    return tiny_causal_lm(family, seed, mix=MIXED, **COMMON)


def prompt(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def skipped_reference(model, skip, input_ids) -> torch.Tensor:
    """The untouched model with the layers ``skip`` turned into identities by forward hooks."""
    def identity(module, args, kwargs, output):
        return args[0] if args else kwargs["hidden_states"]

    handles = [decoder_layers(model)[i].register_forward_hook(identity, with_kwargs=True) for i in skip]
    try:
        return model(input_ids, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def logits(model, input_ids) -> torch.Tensor:
    return model(input_ids, use_cache=False).logits


def layer_types(model):
    return list(getattr(model.config, "layer_types", None) or [])


@pytest.mark.parametrize("removal", list(REMOVALS))
@pytest.mark.parametrize("family", list(DECODER_FAMILIES))
def test_pruned_model_equals_original_with_layers_skipped(family, removal, tmp_path):
    remove = REMOVALS[removal]
    model = tiny(family)
    ids = prompt()
    full = logits(model, ids)
    reference = skipped_reference(model, remove, ids)
    assert (full - reference).abs().max() > 1e-3  # the removed layers matter
    original_types = layer_types(model)

    kept = remove_layers(model, remove)

    assert kept == [i for i in range(L) if i not in remove]
    assert len(decoder_layers(model)) == model.config.num_hidden_layers == L - len(remove)
    torch.testing.assert_close(logits(model, ids), reference, atol=1e-5, rtol=0)
    # every kept layer keeps its attention kind
    if original_types:
        assert layer_types(model) == [original_types[i] for i in kept]
    for new_index, layer in enumerate(decoder_layers(model)):
        assert layer.self_attn.layer_idx == new_index

    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    reloaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert len(decoder_layers(reloaded)) == reloaded.config.num_hidden_layers == L - len(remove)
    if original_types:
        assert layer_types(reloaded) == [original_types[i] for i in kept]
    torch.testing.assert_close(logits(reloaded, ids), reference, atol=1e-5, rtol=0)

    # cached generation (past the sliding window of 4) equals uncached greedy generation
    for candidate in (model, reloaded):
        kwargs = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
        cached = candidate.generate(ids, use_cache=True, **kwargs)
        uncached = candidate.generate(ids, use_cache=False, output_logits=True, return_dict_in_generate=True,
                                      **kwargs)
        assert_clear_greedy_path(torch.stack(uncached.logits, 1))
        assert torch.equal(cached, uncached.sequences)


def test_qwen2_max_window_layers_keeps_every_layer_kind(tmp_path):
    model = tiny("qwen2")  # full: 0,1,2; sliding: 3..7
    assert model.config.max_window_layers == 3
    remove_layers(model, [1, 4])  # kept 0,2 | 3,5,6,7
    assert model.config.max_window_layers == 2
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 4
    attention_windows = [layer.self_attn.sliding_window for layer in decoder_layers(model)]
    assert attention_windows == [None, None, 4, 4, 4, 4]
    model.save_pretrained(tmp_path)
    config = AutoModelForCausalLM.from_pretrained(tmp_path).config
    assert config.max_window_layers == 2 and config.layer_types == model.config.layer_types


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_skip_layers_switches_off_in_place_and_restores_everything(family):
    model = tiny(family)
    ids = prompt()
    before = logits(model, ids)
    config_before = model.config.to_dict()
    layers_before = decoder_layers(model)
    params_before = {name: p.data_ptr() for name, p in model.named_parameters()}
    reference = skipped_reference(model, [1, 5], ids)

    with skip_layers(model, [1, 5]) as kept:
        assert kept == [0, 2, 3, 4, 6, 7]
        torch.testing.assert_close(logits(model, ids), reference, atol=1e-5, rtol=0)
        # the very same parameter tensors, nothing copied
        inside = {name: p.data_ptr() for name, p in model.named_parameters()}
        assert set(inside.values()) <= set(params_before.values())

    assert decoder_layers(model) is layers_before
    assert model.config.to_dict() == config_before
    assert [layer.self_attn.layer_idx for layer in decoder_layers(model)] == list(range(L))
    torch.testing.assert_close(logits(model, ids), before, atol=0, rtol=0)

    with pytest.raises(RuntimeError, match="boom"):
        with skip_layers(model, [0]):
            raise RuntimeError("boom")
    assert model.config.to_dict() == config_before and decoder_layers(model) is layers_before


def test_nested_text_config_is_updated_and_other_towers_left_alone(tmp_path):
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    config = Qwen2AudioConfig(
        audio_config=dict(d_model=32, encoder_layers=L, encoder_attention_heads=2, encoder_ffn_dim=64,
                          num_mel_bins=16, max_source_positions=50),
        text_config=dict(model_type="qwen2", **COMMON, use_sliding_window=True, sliding_window=4, max_window_layers=3),
    )
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    ids = prompt()
    reference = skipped_reference(model, [2, 3], ids)
    remove_layers(model, [2, 3])
    text = model.config.text_config
    assert text.num_hidden_layers == 6 and len(text.layer_types) == 6 and text.max_window_layers == 2
    assert model.config.audio_config.encoder_layers == L  # same count as the decoder had, not a decoder list
    torch.testing.assert_close(logits(model, ids), reference, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    reloaded, info = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert len(decoder_layers(reloaded)) == 6
    torch.testing.assert_close(logits(reloaded.eval(), ids), reference, atol=1e-5, rtol=0)


def test_other_per_layer_lists_are_subset_but_token_lists_are_not():
    model = tiny("llama")
    model.config.custom_per_layer = list(range(10, 10 + L))
    model.config.eos_token_id = list(range(L))  # a token list that happens to have L entries
    remove_layers(model, [0, 5])
    assert model.config.custom_per_layer == [11, 12, 13, 14, 16, 17]
    assert model.config.eos_token_id == list(range(L))


def test_bad_indices_are_user_errors():
    model = tiny("llama")
    with pytest.raises(UserError, match="out of range"):
        remove_layers(model, [L])
    with pytest.raises(UserError, match="out of range"):
        remove_layers(model, [-1])
    with pytest.raises(UserError, match="more than once"):
        remove_layers(model, [2, 2])
    with pytest.raises(UserError, match="all 8"):
        remove_layers(model, list(range(L)))
    with pytest.raises(UserError, match="not a layer index"):
        remove_layers(model, [1.5])
    assert len(decoder_layers(model)) == L and model.config.num_hidden_layers == L
    assert remove_layers(model, []) == list(range(L))
    assert validate_indices([5, 1], L) == [1, 5]


def test_kept_ranges_are_end_exclusive():
    assert kept_ranges([0, 1, 4, 6, 7]) == [[0, 2], [4, 5], [6, 8]]
    assert kept_ranges([]) == []


def test_receiving_layers_are_pruned_model_indices():
    # removed [2, 4) and [5, 6) of 8: layers 4 and 6 receive, at pruned positions 2 and 3
    assert receiving_layers([0, 1, 4, 6, 7], 8) == [2, 3]
    assert receiving_layers([0, 1, 2], 5) == []  # the removed block ends the decoder
    assert receiving_layers([3, 4], 5) == [0]


def test_surgery_does_not_copy_weights():
    model = tiny("mistral")
    pointers = {p.data_ptr() for p in decoder_layers(model)[3].parameters()}
    snapshot = copy.deepcopy(decoder_layers(model)[3].state_dict())
    remove_layers(model, [0, 1])
    moved = decoder_layers(model)[1]  # old layer 3
    assert {p.data_ptr() for p in moved.parameters()} == pointers
    for name, tensor in moved.state_dict().items():
        assert torch.equal(tensor, snapshot[name])
