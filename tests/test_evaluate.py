"""Scoring against independent references, and the eval command's outputs."""

from __future__ import annotations

import json

import pytest
import sacrebleu

from speechprune.evaluate import EvalConfig, evaluate, score, word_error_rate
from tests.helpers import build_tiny_speechllm, write_tiny_manifest


def test_wer_normalises_case_and_punctuation_and_counts_edits():
    result = word_error_rate(["The cat sat.", "Two dogs, running!"], ["the cat sat", "two dog running extra"])
    # one substitution (dogs->dog) and one insertion (extra) over 6 reference words
    assert result["wer"] == pytest.approx(2 / 6)
    assert result["substitutions"] == 1 and result["insertions"] == 1 and result["deletions"] == 0


def test_empty_hypothesis_is_all_deletions():
    assert word_error_rate(["a b c"], [""])["wer"] == pytest.approx(1.0)


def test_translation_scores_match_sacrebleu():
    refs = ["le chat dort.", "deux chiens courent vite."]
    hyps = ["le chat dort.", "deux chiens courent."]
    rows = [{"task": "st", "src_lang": "en", "tgt_lang": "fr", "reference": r, "hypothesis": h}
            for r, h in zip(refs, hyps)]
    metrics = score(rows)
    assert metrics["st"]["conditions"] == ["en-fr"]
    assert metrics["st"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert metrics["st"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert "nrefs:1" in metrics["st"]["bleu_signature"]


def test_eval_writes_metrics_per_manifest(tiny_manifest, tmp_path):
    import torch

    from speechprune.data.manifest import load_manifest

    utterances = load_manifest(tiny_manifest)
    torch.manual_seed(0)
    model = build_tiny_speechllm(utterances)
    model.save(tmp_path / "m")
    second = write_tiny_manifest(tmp_path / "data2", name="other.jsonl", with_st=False, seed=1)
    results = evaluate(EvalConfig(model=str(tmp_path / "m"), data=[str(tiny_manifest), str(second)],
                                  out=str(tmp_path / "eval"), max_new_tokens=4, batch_size=3))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"tiny", "other"}
    assert metrics["sets"]["tiny"]["asr"]["utterances"] == 6 and "bleu" in metrics["sets"]["tiny"]["st"]
    assert metrics["sets"]["tiny"]["asr"]["conditions"] == ["en-en"]
    lines = (tmp_path / "eval" / "tiny.hypotheses.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [u.id for u in utterances]
    assert results["tiny"].metrics["asr"]["wer"] >= 0
