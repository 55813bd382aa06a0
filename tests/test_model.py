"""SpeechLLM assembly: layout and regions, batch invariance, encoders, exact save/load round trip."""

from __future__ import annotations

import pytest
import torch

from speechprune.data.manifest import load_manifest
from speechprune.model.layout import IGNORE_INDEX, Segment, assemble
from speechprune.model.speechllm import DEFAULT_PROMPTS, SpeechLLM, decoder_texts
from speechprune.model.tokenizer import train_bpe_tokenizer
from speechprune.model.text import text_decoder_inputs
from tests.helpers import assert_clear_greedy_path, build_tiny_speechllm


def build(manifest, **kwargs) -> tuple[SpeechLLM, list]:
    utterances = load_manifest(manifest)
    torch.manual_seed(0)
    model = build_tiny_speechllm(utterances, **kwargs)
    return model.eval(), utterances


def test_assemble_labels_and_regions_follow_layout():
    emb = torch.arange(7 * 2, dtype=torch.float32).reshape(7, 2)
    segs = [Segment(emb[:1], None), Segment(emb[1:3], "speech"), Segment(emb[3:4], "prompt", torch.tensor([5])),
            Segment(emb[4:5], None, torch.tensor([1])), Segment(emb[5:7], "target", torch.tensor([8, 2]))]
    short = [Segment(emb[:1], None), Segment(emb[1:2], "speech"), Segment(emb[5:7], "target", torch.tensor([9, 2]))]
    for side in ("left", "right"):
        out = assemble([segs, short], side)
        assert out.inputs_embeds.shape == (2, 7, 2)
        row = out.attention_mask[1].bool()
        assert int(row.sum()) == 4
        # labels: the position before each target token predicts it; nothing else is predicted
        real_labels = out.labels[1][row].tolist()
        assert real_labels == [IGNORE_INDEX, 9, 2, IGNORE_INDEX]
        assert out.labels[0].tolist() == [IGNORE_INDEX] * 4 + [8, 2, IGNORE_INDEX]
        assert out.position_ids[1][row].tolist() == [0, 1, 2, 3]
        for name in ("speech", "prompt", "target", "last"):
            assert not (out.regions[name] & ~out.attention_mask.bool()).any(), "padding must be in no region"
        assert out.regions["last"].sum() == 2
        assert out.regions["speech"][0].sum() == 2 and out.regions["target"][0].sum() == 2


def test_regions_cover_speech_prompt_target(tiny_manifest):
    model, utterances = build(tiny_manifest)
    batch = next(model.batches(utterances, batch_size=4))
    inputs = model.decoder_inputs(batch)
    encoded, lengths = model.encode(batch)
    expected_speech = model.projector.output_lengths(lengths)
    assert inputs.regions["speech"].sum(1).tolist() == expected_speech.tolist()
    assert inputs.regions["target"].sum(1).tolist() == [len(t) for t in batch.target_ids]
    assert inputs.regions["prompt"].sum(1).tolist() == [len(p) for p in batch.prompt_ids]
    # all = markers(2) + speech + prompt + <bos> + target
    assert (inputs.regions["all"].sum(1) == 2 + expected_speech + inputs.regions["prompt"].sum(1) + 1
            + inputs.regions["target"].sum(1)).all()
    text = model.decoder_inputs(batch, source="text")
    assert text.regions["speech"].sum(1).tolist() == [len(s) for s in batch.source_ids]


@pytest.mark.parametrize("encoder_type", ["whisper", "wav2vec2"])
def test_outputs_do_not_depend_on_batch_composition(tiny_manifest, encoder_type):
    """Padding (in the encoder and in the decoder) must not change any utterance's result."""
    model, utterances = build(tiny_manifest, encoder_type=encoder_type)
    batch = next(model.batches(utterances[:5], batch_size=5))
    with torch.no_grad():
        joint = model.decoder_inputs(batch)
        logits = model.decoder(inputs_embeds=joint.inputs_embeds, attention_mask=joint.attention_mask,
                               position_ids=joint.position_ids).logits
        for row, utt in enumerate(utterances[:5]):
            alone = model.decoder_inputs(next(model.batches([utt], batch_size=1)))
            single = model.decoder(inputs_embeds=alone.inputs_embeds, attention_mask=alone.attention_mask,
                                   position_ids=alone.position_ids).logits[0]
            mask = joint.attention_mask[row].bool()
            torch.testing.assert_close(logits[row][mask], single, atol=2e-5, rtol=1e-4)


def test_generate_matches_teacher_forced_argmax_and_batching(tiny_manifest):
    model, utterances = build(tiny_manifest)
    batch = next(model.batches(utterances[:4], batch_size=4))
    texts = model.generate(batch, max_new_tokens=6)
    singles = [model.generate(next(model.batches([u], batch_size=1)), max_new_tokens=6)[0] for u in utterances[:4]]
    inputs = model.decoder_inputs(batch, with_target=False, padding_side="left")
    decoded = model.decoder.generate(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                     max_new_tokens=6, do_sample=False, pad_token_id=model.tokenizer.pad_token_id,
                                     eos_token_id=model.tokenizer.eos_token_id, output_logits=True,
                                     return_dict_in_generate=True)
    assert_clear_greedy_path(torch.stack(decoded.logits, 1))
    assert texts == singles
    # the first generated token is the argmax of the teacher-forced logits at <bos>
    out = model.decoder.generate(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                 max_new_tokens=1, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    logits = model.decoder(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                           position_ids=inputs.position_ids).logits[:, -1]
    assert out[:, -1].tolist() == logits.argmax(-1).tolist()


def test_save_load_round_trip_is_exact(tiny_manifest, tmp_path):
    model, utterances = build(tiny_manifest)
    batch = next(model.batches(utterances, batch_size=6))
    with torch.no_grad():
        before = model.losses(batch, 1.0, 0.5)
        hyps = model.generate(batch, max_new_tokens=5)
    model.save(tmp_path / "m")
    loaded = SpeechLLM.load(tmp_path / "m")
    batch2 = next(loaded.batches(utterances, batch_size=6))
    with torch.no_grad():
        after = loaded.losses(batch2, 1.0, 0.5)
    assert float(before["lm"]) == float(after["lm"]) and float(before["ctc"]) == float(after["ctc"])
    assert loaded.generate(batch2, max_new_tokens=5) == hyps
    for name in ("speechllm.json", "encoder", "decoder/config.json", "projector.safetensors", "tokenizer"):
        assert (tmp_path / "m" / name).exists()


def test_decoder_is_a_standard_checkpoint(tiny_manifest, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = build(tiny_manifest, layers=3)
    model.save(tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m" / "decoder")
    assert plain.config.num_hidden_layers == 3
    for (name, a), (_, b) in zip(model.decoder.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


def test_text_inputs_for_plain_llm_match_speechllm_text_layout(tiny_manifest):
    model, utterances = build(tiny_manifest)
    plain = text_decoder_inputs(model.decoder, model.tokenizer, utterances[:3])
    batch = next(model.batches(utterances[:3], batch_size=3))
    with_markers = model.decoder_inputs(batch, source="text")
    # same regions, except the two audio markers that only a SpeechLLM has
    for name in ("speech", "prompt", "target"):
        assert plain.regions[name].sum(1).tolist() == with_markers.regions[name].sum(1).tolist()
    assert (with_markers.regions["all"].sum(1) - plain.regions["all"].sum(1)).tolist() == [2, 2, 2]


def test_load_with_device_map_and_dtype(tiny_manifest, tmp_path):
    model, utterances = build(tiny_manifest)
    model.save(tmp_path / "m")
    placed = SpeechLLM.load(tmp_path / "m", device_map="auto", dtype=torch.bfloat16)
    assert next(placed.decoder.parameters()).dtype == torch.bfloat16
    assert placed.projector.markers.dtype == torch.bfloat16
    batch = next(placed.batches(utterances[:2], batch_size=2))
    assert len(placed.generate(batch, max_new_tokens=3)) == 2


def test_bpe_merges_follow_how_often_the_decoder_reads_a_text():
    prompt = "Transcribe speech to text."
    sentences = [f"the {animal} sat on mat number {i}" for i, animal in enumerate(["cat", "dog", "fox"] * 10)]
    few_merges = 260 + 12  # 256 bytes, 4 special tokens, 12 merges
    by_frequency = train_bpe_tokenizer([prompt] * 200 + sentences, vocab_size=few_merges)
    once_each = train_bpe_tokenizer([prompt] + sentences, vocab_size=few_merges)
    tokens = lambda tokenizer: len(tokenizer(prompt, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert tokens(by_frequency) <= len(prompt) - 12  # every merge went to the prompt read 200 times
    assert tokens(once_each) > tokens(by_frequency)


def test_decoder_texts_count_each_prompt_once_per_utterance(tiny_manifest):
    utterances = load_manifest(tiny_manifest)
    texts = decoder_texts(DEFAULT_PROMPTS, utterances)
    assert texts.count(DEFAULT_PROMPTS["asr"]) == sum(u.task == "asr" for u in utterances)
    assert len(texts) == 3 * len(utterances)


def test_speech_enters_a_scaled_embedding_decoder_at_the_token_vectors_scale(tiny_manifest):
    """Gemma's embedding module scales token vectors by sqrt(hidden); projected speech and the
    markers, which bypass it, are scaled alike (a Llama decoder, unscaled, takes them as they are)."""
    from speechprune.data.manifest import load_manifest

    utterances = [u for u in load_manifest(tiny_manifest) if u.task == "asr"][:3]
    for decoder_type in ("gemma3_text", "llama"):
        torch.manual_seed(0)
        model = build_tiny_speechllm(utterances, decoder_type=decoder_type).eval()
        embedding = model.decoder.get_input_embeddings()
        scale = float(getattr(embedding, "embed_scale", 1.0))
        assert (scale > 5) == (decoder_type == "gemma3_text")
        batch = next(model.batches(utterances, batch_size=3))
        speech = model.project(*model.encode(batch))
        inputs = model.decoder_inputs(batch, speech=speech)
        first = inputs.inputs_embeds[0]
        assert torch.allclose(first[0], model.projector.markers[0] * scale)
        assert torch.allclose(first[1: 1 + len(speech[0])], speech[0] * scale)
        text = model.decoder_inputs(batch, source="text").inputs_embeds[0]
        ids = batch.source_ids[0]
        assert torch.allclose(text[1: 1 + len(ids)], embedding.weight[ids] * scale)


def test_position_ms_gives_every_encoder_as_many_decoder_positions_per_second(tiny_manifest, tmp_path):
    """projector.position_ms sets the stack from the encoder's frame rate: the tiny Whisper (20 ms
    hop, conv stride 2: 40 ms frames) and the tiny wav2vec2 (conv strides 5*4*4 = 80 samples: 5 ms)
    must put the same speech into about as many decoder positions, also when a warmed-up encoder
    of another frame rate is taken over, and the stack must survive save and load."""
    from dataclasses import replace

    from speechprune.model.encoders import SAMPLE_RATE
    from tests.helpers import tiny_model_config

    utterances = load_manifest(tiny_manifest)[:4]
    texts = decoder_texts(DEFAULT_PROMPTS, utterances)
    models = {}
    for encoder_type in ("whisper", "wav2vec2"):
        config = tiny_model_config(encoder_type=encoder_type)
        config = replace(config, projector=replace(config.projector, position_ms=80.0))
        models[encoder_type] = SpeechLLM.build(config, texts, [u.text for u in utterances]).eval()
    assert models["whisper"].encoder.frame_ms == pytest.approx(40.0)
    assert models["wav2vec2"].encoder.frame_ms == pytest.approx(1000 * 80 / SAMPLE_RATE)
    assert (models["whisper"].projector.stack, models["wav2vec2"].projector.stack) == (2, 16)

    def positions(model: SpeechLLM) -> list[int]:
        batch = next(model.batches(utterances, batch_size=len(utterances)))
        with torch.no_grad():
            states, lengths = model.encode(batch)
            return model.projector(states, lengths)[1].tolist()

    seconds = [u.duration for u in utterances]
    for model in models.values():  # 12.5 positions a second, whatever the encoder's frame rate
        assert all(abs(n - s * 12.5) <= 1.5 for n, s in zip(positions(model), seconds)), (positions(model), seconds)
    whisper_at_80 = SpeechLLM.build(replace(tiny_model_config(), projector=replace(
        tiny_model_config().projector, position_ms=80.0, stack=7)), texts, [u.text for u in utterances])
    whisper_at_80.take_encoder(models["wav2vec2"])  # a warmed-up wav2vec2 taken over: its own stack
    assert whisper_at_80.projector.stack == 16 and whisper_at_80.projector_config.stack == 16
    whisper_at_80.save(tmp_path / "model")
    assert SpeechLLM.load(tmp_path / "model").projector.stack == 16
    plain = tiny_model_config()  # position_ms 0: the stack as given
    assert SpeechLLM.build(plain, texts, [u.text for u in utterances]).projector.stack == plain.projector.stack
