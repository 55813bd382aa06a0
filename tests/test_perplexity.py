"""Perplexity without decoding (eval --metric perplexity, the default for a plain LLM) against
transformers' own loss, and the sweep that prunes a plain LLM by it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from speechprune.cli import main

TEXTS = ["the red cat sleeps", "two dogs run fast today", "a bird", "the cat sees a dog and a bird",
         "three birds fly over the red house", "the dog eats"]


def tiny_plain_llm(folder: Path, layers: int = 4) -> Path:
    """A tiny Llama with a word-level tokenizer that frames a text as ``<s> words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for text in TEXTS:
        for word in text.split():
            vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("plain")
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    return {"root": root, "model": tiny_plain_llm(root / "llm"), "texts": root / "texts.txt"}


def reference_perplexity(model_dir: Path, texts: list[str]) -> tuple[float, int]:
    """One text at a time through transformers' own loss (labels = input ids): no padding at all."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            predicted = ids.shape[1] - 1
            nll += model(ids, labels=ids).loss.item() * predicted
            tokens += predicted
    return math.exp(nll / tokens), tokens


def test_eval_perplexity_of_a_plain_llm_equals_transformers_loss_on_padded_batches(plain, tmp_path, capsys):
    assert main(["eval", "--model", str(plain["model"]), "--data", str(plain["texts"]), "--out", str(tmp_path / "ev"),
                 "--batch-size", "4"]) == 0  # batches of unequal lengths: padding must not count
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    lm = metrics["sets"]["texts"]["lm"]
    expected, tokens = reference_perplexity(plain["model"], TEXTS)
    assert metrics["metric"] == "perplexity" and lm["layout"] == "plain"
    assert lm["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert lm["tokens"] == tokens and lm["utterances"] == len(TEXTS)
    assert lm["perplexity_interval"][0] <= lm["perplexity"] <= lm["perplexity_interval"][1]
    losses = [json.loads(line) for line in (tmp_path / "ev" / "texts.losses.jsonl").read_text().splitlines()]
    assert [row["tokens"] for row in losses] == [len(text.split()) for text in TEXTS]
    assert "perplexity [95% CI]" in capsys.readouterr().out


def test_a_speech_model_is_not_scored_on_text_only_data(plain, tmp_path, capsys, tiny_manifest):
    from speechprune.data.manifest import load_manifest
    from tests.helpers import build_tiny_speechllm

    model = build_tiny_speechllm(load_manifest(tiny_manifest)).save(tmp_path / "speechllm")
    code = main(["eval", "--model", str(model), "--data", str(plain["texts"]), "--out", str(tmp_path / "ev")])
    assert code == 2 and "needs audio" in capsys.readouterr().err


def test_sweep_prunes_a_plain_llm_by_perplexity_with_and_without_healing(plain, tmp_path):
    scan = tmp_path / "scan"
    assert main(["scan", "--model", str(plain["model"]), "--data", str(plain["texts"]), "--out", str(scan),
                 "--plots", "false"]) == 0
    out = tmp_path / "sweep"
    assert main(["sweep", "--model", str(plain["model"]), "--scan", str(scan), "--train", str(plain["texts"]),
                 "--test", str(plain["texts"]), "--fractions", "0,0.25,0.5", "--strategies", "angular,last",
                 "--heal", "none,receiving-mlp", "--heal-steps", "2", "--batch-size", "3", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    baseline = next(r for r in rows if r["removed"] == 0)
    expected, _ = reference_perplexity(plain["model"], TEXTS)
    assert baseline["perplexity"] == pytest.approx(expected, rel=1e-5) and baseline["wer"] is None
    pruned = [r for r in rows if r["removed"] > 0]
    assert {(r["strategy"], r["heal"], r["removed"]) for r in pruned} == {
        (s, h, n) for s in ("angular", "last") for h in ("none", "receiving-mlp") for n in (1, 2)}
    assert all(r["perplexity_low"] <= r["perplexity"] <= r["perplexity_high"] for r in rows)
    assert all(r["verdict"] in ("acceptable", "not acceptable", "undecided") for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["largest_acceptable"]) == {f"{s}/{h}/texts" for s in ("angular", "last")
                                                 for h in ("none", "receiving-mlp")}
    assert (out / "curve_texts.png").is_file()
