"""The base LLM: text pretraining saved as a standard Hugging Face checkpoint, with its curve."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from speechprune.base_llm import BaseLLMConfig, documents, grammar_texts, levelled_off_at, pretrain_base_llm
from speechprune.data.manifest import load_manifests
from speechprune.model.speechllm import DecoderConfig
from speechprune.report import ReportConfig, report
from speechprune.train import LoopConfig, StageConfig, TrainConfig, train
from tests.helpers import build_tiny_speechllm, tiny_base_llm_config, tiny_model_config, write_tiny_manifest


def test_grammar_texts_render_every_language_and_skip_excluded():
    texts = grammar_texts(30, seed=3, languages=["en", "fr"])
    assert len(texts) == 60 and len(set(texts)) == 60
    fewer = grammar_texts(30, seed=3, languages=["en", "fr"], exclude={texts[0], texts[1]})
    assert fewer == texts[2:]


def test_documents_group_consecutive_sentences_and_repeat_only_earlier_ones_of_the_same_document():
    sentences = [f"sentence {i}." for i in range(10)]
    assert documents(sentences, 4, 0.0, seed=1) == ["sentence 0. sentence 1. sentence 2. sentence 3.",
                                                    "sentence 4. sentence 5. sentence 6. sentence 7.",
                                                    "sentence 8. sentence 9."]
    repeated = documents(sentences * 20, 5, 0.5, seed=2)
    assert documents(sentences * 20, 5, 0.5, seed=2) == repeated  # seeded
    copies = 0
    for index, document in enumerate(repeated):
        parts = [p + "." for p in document.split(". ") if p]
        parts[-1] = parts[-1].rstrip(".") + "."
        originals = (sentences * 20)[5 * index: 5 * index + 5]
        assert parts[0] == originals[0]
        for position, part in enumerate(parts[1:], start=1):
            assert part == originals[position] or part in parts[:position]
            copies += part != originals[position]
    assert 0.3 * 160 < copies < 0.7 * 160  # about half of the 160 non-first sentences are copies


def test_levelled_off_at_finds_the_first_flat_stretch():
    curve = [{"step": s, "dev_ppl": p} for s, p in enumerate([100, 50, 20, 10.0, 9.95, 9.93, 9.92, 9.9])]
    assert levelled_off_at(curve) == 3
    assert levelled_off_at(curve[:5]) is None


def test_base_llm_is_a_hugging_face_causal_lm_with_its_curve(tmp_path):
    out = tmp_path / "base"
    pretrain_base_llm(tiny_base_llm_config(out))
    curve = json.loads((out / "curve.json").read_text())
    assert [c["step"] for c in curve["curve"]] == [0, 2, 4]
    assert curve["train_sentences"] == 80 and curve["dev_sentences"] == 8
    assert curve["train_documents"] == 20 and curve["dev_documents"] == 2
    assert (out / "curve.png").is_file() and not (out / "checkpoints").exists()

    # the last dev perplexity, recomputed from the saved checkpoint alone: <bos> document <eos>
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    dev = grammar_texts(40 + 4, 1 + 7919, ["en", "es"])
    seen = set(grammar_texts(40, 1, ["en", "es"]))
    dev = documents([t for t in dev if t not in seen][:8], 4, 0.4, seed=2)  # the config's defaults, seed 1 + 1
    total, count = 0.0, 0
    with torch.no_grad():
        for text in dev:
            ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
            logits = model(torch.tensor([ids])).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
            count += len(ids) - 1
    # float32 logits summed over a few hundred tokens: agreement to ~1e-5 relative is what float32 promises
    assert curve["final_dev_ppl"] == pytest.approx(math.exp(total / count), rel=1e-4)

    # the report finds the base LLM and shows its own curve: the numbers of curve.json, one figure
    page = report(ReportConfig(run=[str(out)]))
    html, md = page.read_text(encoding="utf-8"), (page.parent / "report.md").read_text(encoding="utf-8")
    first, last = curve["curve"][0], curve["curve"][-1]
    assert "## Base LLM: base\n" in md and "| bases | 1 | base |" in md
    assert f"({curve['train_sentences']} sentences in {curve['train_documents']} documents, en, es)" in md
    assert (f"Dev perplexity during text pretraining: {first['dev_ppl']:.2f} at step 0, "
            f"{last['dev_ppl']:.2f} at step 4; still falling") in md  # 3 measurements cannot level off
    assert 'alt="base LLM perplexity" src="data:image/png;base64,' in html
    assert "no base LLM here" not in md and "no scan here" in md


def test_speechllm_on_a_base_llm_with_a_warm_encoder_and_its_own_projector_lr(tmp_path):
    manifest = write_tiny_manifest(tmp_path / "data", with_st=False)
    config = tiny_model_config()
    base = tmp_path / "base"
    pretrain_base_llm(BaseLLMConfig(out=str(base), languages=["en"], sentences=20, dev_sentences=2, steps=2,
                                    eval_every=2, batch_size=8, decoder=config.decoder,
                                    loop=LoopConfig(checkpoint_every=100)))
    warm = tmp_path / "warm"
    train(TrainConfig(train=[str(manifest)], out=str(warm), model=config, loop=LoopConfig(batch_size=2),
                      stages={"ctc": StageConfig(steps=2, lm_weight=0.0, ctc_weight=1.0, projector="frozen",
                                                 decoder="frozen")}))
    config.decoder = DecoderConfig(pretrained=str(base))
    out = tmp_path / "speechllm"
    train(TrainConfig(train=[str(manifest)], out=str(out), model=config, encoder_from=str(warm),
                      loop=LoopConfig(batch_size=2),
                      stages={"joint": StageConfig(steps=2, decoder="frozen", encoder="frozen", lr=1e-3,
                                                   projector_lr=5e-3)}))
    from safetensors.torch import load_file

    # the frozen decoder is the base LLM's, bit for bit; the encoder is the warm one's
    base_weights = load_file(base / "model.safetensors")
    tuned = load_file(out / "decoder" / "model.safetensors")
    assert base_weights.keys() == tuned.keys()
    assert all(torch.equal(base_weights[k], tuned[k]) for k in base_weights)
    warm_encoder, new_encoder = (load_file(next((d / "encoder").glob("*.safetensors"))) for d in (warm, out))
    assert all(torch.equal(warm_encoder[k], new_encoder[k]) for k in warm_encoder)
    assert json.loads((out / "speechllm.json").read_text())["ctc_alphabet"] == \
        json.loads((warm / "speechllm.json").read_text())["ctc_alphabet"]
    assert load_manifests([manifest])  # the manifest is untouched


def test_projector_lr_gets_its_own_parameter_group():
    from speechprune.train import _param_groups

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.projector = torch.nn.Linear(2, 2)
            self.other = torch.nn.Linear(2, 2)

    model = Tiny()
    params = list(model.parameters())
    groups = _param_groups(model, params, StageConfig(steps=1, lr=1e-3, projector_lr=1e-2))
    assert [len(g["params"]) for g in groups] == [2, 2] and groups[1]["lr"] == 1e-2
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.projector.parameters()}
    assert len(_param_groups(model, params, StageConfig(steps=1))) == 1


def test_ctc_greedy_cer_collapses_repeats_and_blanks(tmp_path):
    from speechprune.train import ctc_greedy_cer

    utterances = load_manifests([write_tiny_manifest(tmp_path / "data", with_st=False)])[:2]
    model = build_tiny_speechllm(utterances).eval()
    alphabet = model.ctc_alphabet

    class Spelled(torch.nn.Module):
        """Best path per utterance: each character of 'a cat' twice, a blank between (so repeats must collapse)."""
        def forward(self, encoded):
            path = []
            for ch in "a cat":
                path += [alphabet.index(ch) + 1] * 2 + [0]
            logits = torch.full((*encoded.shape[:2], len(alphabet) + 1), -10.0)
            logits[:, : len(path)].scatter_(-1, torch.tensor(path)[None, :, None].expand(len(encoded), -1, 1), 10.0)
            logits[:, len(path):, 0] = 10.0
            return logits

    model.ctc_head = Spelled()
    import jiwer
    from speechprune.model.speechllm import normalize_for_ctc

    expected = jiwer.cer([normalize_for_ctc(u.text) for u in utterances], ["a cat"] * 2)
    assert ctc_greedy_cer(model, utterances, batch_size=1) == pytest.approx(expected)
