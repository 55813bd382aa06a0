"""The one training loop for kinds other than this toolkit's SpeechLLM: the next-token loss with
logits at labelled positions only (against full logits), healing a plain causal LM with gradient
accumulation (against one batch of the same utterances), and under bf16 autocast (against float32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Gemma2Config, GraniteConfig, LlamaConfig

from speechprune.data.manifest import Utterance
from speechprune.errors import UserError
from speechprune.heal import HealConfig, heal, heal_model, lora_targets
from speechprune.model import device as device_module
from speechprune.model.decoder import next_token_loss
from speechprune.model.interface import load_model
from speechprune.model.layout import IGNORE_INDEX, DecoderInputs
from speechprune.prune.run import PruneConfig, prune
from speechprune.train import LoraConfig, with_lora
from tests.helpers import WORD_VOCAB_SIZE, save_word_tokenizer, tiny_causal_lm

VOCAB = WORD_VOCAB_SIZE
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64)


def _llama():
    return AutoModelForCausalLM.from_config(LlamaConfig(**TEXT))


def _lora_llama():
    return with_lora(_llama(), ["gate_proj", "down_proj"], LoraConfig(rank=2, alpha=4))


def _granite():  # divides its logits by logits_scaling in its own head code
    return AutoModelForCausalLM.from_config(GraniteConfig(**TEXT, logits_scaling=4.0))


def _gemma2():  # soft-caps its logits in its own head code
    return AutoModelForCausalLM.from_config(Gemma2Config(**TEXT, final_logit_softcapping=3.0))


def _qwen2_audio():  # its forward has no logits_to_keep: every position is computed, the labelled kept
    import transformers

    config = AutoConfig.for_model("qwen2_audio", text_config={"model_type": "qwen2", **TEXT}, audio_token_index=5,
                                  audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2,
                                                    encoder_ffn_dim=32, num_mel_bins=80, max_source_positions=1500))
    return transformers.Qwen2AudioForConditionalGeneration(config)


# model builder -> whether its LM head should see the labelled positions only
MODELS = {"llama": (_llama, True), "llama+lora": (_lora_llama, True), "granite": (_granite, True),
          "gemma2": (_gemma2, True), "qwen2_audio": (_qwen2_audio, False)}


def _inputs(batch: int = 3, length: int = 9, hidden: int = 32) -> DecoderInputs:
    """Right-padded random inputs whose labels cover a different span of each row."""
    generator = torch.Generator().manual_seed(0)
    lengths = [9, 6, 4][:batch]
    attention = torch.tensor([[1] * n + [0] * (length - n) for n in lengths])
    labels = torch.full((batch, length), IGNORE_INDEX)
    for row, n in enumerate(lengths):
        start = n // 2
        labels[row, start - 1: n - 1] = torch.randint(0, VOCAB, (n - start,), generator=generator)
    return DecoderInputs(inputs_embeds=torch.randn(batch, length, hidden, generator=generator),
                         attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
                         regions={}, labels=labels)


@pytest.mark.parametrize("name", list(MODELS))
def test_loss_on_labelled_positions_equals_the_loss_over_full_logits(name):
    build, labelled_only = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    inputs = _inputs()
    with torch.no_grad():
        full = model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                     position_ids=inputs.position_ids, use_cache=False).logits
    reference = torch.nn.functional.cross_entropy(full.flatten(0, 1).float(), inputs.labels.flatten(),
                                                  ignore_index=IGNORE_INDEX)
    rows = []
    head = model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1]))
    with torch.no_grad():
        loss = next_token_loss(model, inputs)
    head.remove()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    labelled = int((inputs.labels != IGNORE_INDEX).sum())
    assert rows == [torch.Size([labelled]) if labelled_only else full.shape[:2]]


def _fixed_length_utterances(count: int) -> list[Utterance]:
    """Text-only utterances whose targets all have three words (of save_tiny_tokenizer's vocabulary):
    every one carries the same number of labels, so two half batches average to the whole batch."""
    generator = torch.Generator().manual_seed(1)
    utterances = []
    for i in range(count):
        words = " ".join(f"w{int(w)}" for w in torch.randint(0, VOCAB - 3, (3,), generator=generator))
        utterances.append(Utterance(id=f"u{i}", audio=None, text=words, task="asr", src_lang="en", tgt_lang="en",
                                    target=words))
    return utterances


@pytest.fixture
def plain_lm(tmp_path) -> Path:
    folder = tmp_path / "llm"
    tiny_causal_lm("llama", **{**TEXT, "num_hidden_layers": 3}).save_pretrained(folder)
    save_word_tokenizer(folder)
    return folder


def _healed(plain_lm: Path, out: Path, batch_size: int, grad_accum: int) -> dict[str, torch.Tensor]:
    model = load_model(str(plain_lm))
    targets = lora_targets(model.causal_lm, "all-mlp")
    results = heal_model(model, _fixed_length_utterances(8), targets, out, steps=3, lr=1e-2, batch_size=batch_size,
                         grad_accum=grad_accum, checkpoint_every=2)
    assert [r["steps"] for r in results] == [3]
    return {name: tensor.clone() for name, tensor in model.causal_lm.state_dict().items() if "lora_" in name}


def test_healing_a_plain_lm_accumulates_gradients_like_one_larger_batch(plain_lm, tmp_path):
    accumulated = _healed(plain_lm, tmp_path / "accumulated", batch_size=2, grad_accum=2)
    whole = _healed(plain_lm, tmp_path / "whole", batch_size=4, grad_accum=1)
    one_half = _healed(plain_lm, tmp_path / "half", batch_size=2, grad_accum=1)
    assert accumulated.keys() == whole.keys() and accumulated
    for name, tensor in whole.items():
        torch.testing.assert_close(accumulated[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    # the comparison can fail: half the batch without accumulation trains differently
    assert any(not torch.allclose(one_half[name], whole[name], rtol=1e-4, atol=1e-6) for name in whole)
    # the loop left its end-of-stage checkpoint (resume point) under OUT/checkpoints: the adapters alone
    checkpoints = tmp_path / "whole" / "checkpoints"
    saved = torch.load(checkpoints / json.loads((checkpoints / "latest.json").read_text())["checkpoint"] / "model.pt",
                       weights_only=True)
    assert saved.keys() == {f"causal_lm.{name}" for name in whole}


def test_a_plain_lm_refuses_what_only_a_speechllm_trains(plain_lm, tmp_path):
    model = load_model(str(plain_lm))
    targets = lora_targets(model.causal_lm, "all-mlp")
    with pytest.raises(UserError, match="projector"):
        heal_model(model, _fixed_length_utterances(4), targets, tmp_path / "out", steps=1, lr=1e-3, projector=True)


def test_healing_under_bf16_autocast_starts_from_the_same_loss_and_says_what_ran(plain_lm, tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.setattr(device_module, "bf16_matmul_speedup", lambda: 3.0)  # auto takes bf16 on any CPU
    prune(PruneConfig(model=str(plain_lm), out=str(tmp_path / "pruned"), drop="1:2"))
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(u.text for u in _fixed_length_utterances(4)) + "\n")
    losses, ran = {}, {}
    for precision in ("no", "auto"):
        out = heal(HealConfig(model=str(tmp_path / "pruned"), data=[str(texts)], out=str(tmp_path / precision),
                              steps=1, lr=1e-3, batch_size=4, mixed_precision=precision))
        record = json.loads((out / "heal.json").read_text())
        losses[precision], ran[precision] = record["stages"][0]["final_loss"], record["mixed_precision"]
    assert ran == {"no": "no", "auto": "bf16"}
    printed = capsys.readouterr().out
    assert "precision: bf16 autocast (its matmul 3.0x faster than float32 here)" in printed
    assert "under bf16 autocast ->" in printed and printed.count("autocast ->") == 1  # the summary says it
    # one step: the loss of the same pruned weights, computed in two precisions
    assert losses["auto"] == pytest.approx(losses["no"], rel=5e-2)
    assert losses["auto"] != losses["no"]  # autocast did run
    with pytest.raises(UserError, match="--mixed-precision must be one of"):
        HealConfig(model="m", data=["d"], out="o", mixed_precision="bf32")
