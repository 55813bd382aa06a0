"""Greedy decoding that drops finished rows (model/greedy.py) against transformers' generate.

The decoders run in float64 so that the two, whose batches differ in size after a row finishes,
round alike to far below any arg-max margin of these random models."""

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GenerationConfig

from tests.helpers import DECODER_FAMILIES, tiny_decoder
from speechprune.model.greedy import changes_logits, greedy_tokens
from speechprune.model.speechllm import generate_text

STEPS = 9
PAD = 0


def left_padded_prefix(model, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = model.get_input_embeddings().weight.shape[1]
    width = max(lengths)
    embeds = torch.randn(len(lengths), width, hidden, generator=generator, dtype=torch.float64)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length:] = 1
        embeds[row, : width - length] = 0.0
    return embeds, mask


def reference(model, embeds, mask, eos: int, **settings) -> list[list[int]]:
    """generate()'s new tokens per row, cut after the row's first <eos> (generate pads after it)."""
    out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=STEPS, do_sample=False,
                         eos_token_id=eos, pad_token_id=PAD, use_cache=True, **settings)
    rows = []
    for row in out.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def compare_over_eos_tokens(model, embeds, mask) -> int:
    """Every second vocabulary entry as <eos> in turn: the same tokens as generate() each time. Returns the
    number of cases where a row ended while another went on (the cases that drop a row)."""
    dropping = 0
    for eos in range(0, model.config.vocab_size, 2):
        expected = reference(model, embeds, mask, eos)
        assert greedy_tokens(model, embeds, mask, STEPS, [eos]) == expected, f"eos {eos}"
        lengths = {len(row) for row in expected}
        dropping += len(lengths) > 1 and min(lengths) < STEPS
    return dropping


@pytest.mark.parametrize("family", sorted(DECODER_FAMILIES))
def test_same_tokens_as_generate_with_rows_dropped(family):
    # a prefix longer than the families' 4-token sliding windows, rows of different padding
    model = tiny_decoder(family, layers=4).double()
    embeds, mask = left_padded_prefix(model, [9, 5, 7, 3])
    assert compare_over_eos_tokens(model, embeds, mask) > 0  # rows were dropped mid-batch


def test_a_lora_wrapped_decoder():
    model = tiny_decoder("llama", layers=3).double()
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    embeds, mask = left_padded_prefix(model, [6, 4, 8], seed=1)
    assert compare_over_eos_tokens(wrapped, embeds, mask) > 0


def test_generation_settings_that_change_logits_go_through_generate():
    model = tiny_decoder("llama", layers=3).double()
    assert not changes_logits(model.generation_config)
    model.generation_config = GenerationConfig(repetition_penalty=3.0, pad_token_id=PAD)
    assert changes_logits(model.generation_config)
    embeds, mask = left_padded_prefix(model, [6, 4, 8], seed=2)
    eos = 5

    class Tokens:  # generate_text's tokenizer: ids as text, <eos> (a special token) left out
        eos_token_id, pad_token_id = eos, PAD

        def batch_decode(self, rows, skip_special_tokens):
            return [" ".join(str(t) for t in row if t not in (eos, PAD)) for row in rows.tolist()]

    inputs = SimpleNamespace(inputs_embeds=embeds, attention_mask=mask)  # what generate_text reads
    penalised = generate_text(model, Tokens(), inputs, max_new_tokens=STEPS, drop_finished=True)
    plain = [" ".join(str(t) for t in row if t != eos) for row in reference(model, embeds, mask, eos)]
    expected = [" ".join(str(t) for t in row if t not in (eos, PAD))
                for row in reference(model, embeds, mask, eos, repetition_penalty=3.0)]
    assert penalised == expected
    assert penalised != plain  # the penalty changed the choices, so the path taken matters


def test_no_new_tokens_and_an_empty_batch():
    model = tiny_decoder("llama", layers=2).double()
    embeds, mask = left_padded_prefix(model, [3, 2])
    assert greedy_tokens(model, embeds, mask, 0, [1]) == [[], []]
    assert greedy_tokens(model, embeds[:0], mask[:0], 5, [1]) == []
