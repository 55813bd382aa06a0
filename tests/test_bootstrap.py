"""Bootstrap intervals and verdicts against independent references: jiwer and sacrebleu scoring the
resampled utterance lists themselves."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest
import sacrebleu

from speechprune.bootstrap import interval, paired_draws, resample_weights, utterance_statistics, verdict
from speechprune.evaluate import metric_statistics, word_error_rate, word_errors

REFS = ["the red cat sleeps", "two dogs run fast", "a big bird sings", "the cat sees a dog", "three birds fly",
        "the dog eats", "a small mouse hides", "four cows walk home"]
HYPS = ["the red cat sleeps", "two dog run", "a big bird sings loudly", "the cat sees the dog", "three bird fly",
        "the dog eats", "a mouse hides", "four cows walk home"]
FRENCH_REFS = ["le chat rouge dort.", "deux chiens courent.", "un grand oiseau chante.", "le chat voit un chien.",
               "trois oiseaux volent.", "le chien mange."]
FRENCH_HYPS = ["le chat rouge dort.", "deux chien court.", "un oiseau chante.", "le chat voit le chien.",
               "trois oiseaux volent vite.", "le chien mange."]


def _drawn_lists(weights_row: np.ndarray, items: list[str]) -> list[str]:
    return [items[i] for i, count in enumerate(weights_row.astype(int)) for _ in range(count)]


def test_per_utterance_word_errors_sum_to_jiwer_corpus_counts():
    counts = word_errors(REFS, HYPS)
    output = jiwer.process_words(REFS, HYPS)
    assert sum(c["substitutions"] for c in counts) == output.substitutions
    assert sum(c["deletions"] for c in counts) == output.deletions
    assert sum(c["insertions"] for c in counts) == output.insertions
    assert word_error_rate(REFS, HYPS)["wer"] == pytest.approx(jiwer.wer(REFS, HYPS), abs=1e-12)


def test_each_bootstrap_draw_equals_jiwer_and_sacrebleu_on_the_drawn_utterances():
    weights = resample_weights(len(REFS), samples=20, seed=3)
    wer_rows = utterance_statistics("wer", REFS, HYPS, [(c["substitutions"] + c["deletions"] + c["insertions"],
                                                         c["words"]) for c in word_errors(REFS, HYPS)])
    for row in weights:
        refs, hyps = _drawn_lists(row, REFS), _drawn_lists(row, HYPS)
        drawn = row @ wer_rows
        assert drawn[0] / drawn[1] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    weights = resample_weights(len(FRENCH_REFS), samples=20, seed=4)
    for name, reference in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf)):
        rows = utterance_statistics(name, FRENCH_REFS, FRENCH_HYPS)
        base_draws, _ = paired_draws(name, rows, rows, samples=20, seed=4)
        for row, value in zip(weights, base_draws):
            expected = reference(_drawn_lists(row, FRENCH_HYPS), [_drawn_lists(row, FRENCH_REFS)]).score
            assert value == pytest.approx(expected, abs=1e-9)


def test_interval_brackets_the_value_reports_its_counts_and_is_seeded():
    rows = metric_statistics("asr", [{"reference": r, "hypothesis": h} for r, h in zip(REFS, HYPS)])["wer"]
    first, again = interval("wer", rows, samples=300), interval("wer", rows, samples=300)
    assert first == again
    assert first.low <= first.value <= first.high and first.low < first.high
    assert (first.utterances, first.samples, first.level) == (len(REFS), 300, 0.95)
    wider = interval("wer", rows, samples=300, level=0.99)
    assert wider.low <= first.low and wider.high >= first.high


def test_an_interval_narrows_as_the_test_set_grows():
    rows = utterance_statistics("wer", REFS, HYPS, [(c["substitutions"] + c["deletions"] + c["insertions"],
                                                     c["words"]) for c in word_errors(REFS, HYPS)])
    small, large = interval("wer", rows), interval("wer", np.tile(rows, (16, 1)))
    assert large.value == pytest.approx(small.value)
    assert (large.high - large.low) < 0.5 * (small.high - small.low)


def _wer_rows(refs, hyps):
    return metric_statistics("asr", [{"reference": r, "hypothesis": h} for r, h in zip(refs, hyps)])["wer"]


def test_verdict_is_acceptable_unacceptable_or_undecided_by_its_paired_interval():
    refs = REFS * 10
    baseline = _wer_rows(refs, HYPS * 10)
    limit = lambda wer: np.maximum(wer * 1.25, wer + 0.02)  # noqa: E731 - the sweep's rule
    same = verdict("wer", baseline, baseline, limit, higher_is_better=False)
    assert same.verdict == "acceptable" and same.margin.high < 0 and same.change.value == 0
    garbage = _wer_rows(refs, ["nothing like it at all"] * len(refs))
    worse = verdict("wer", baseline, garbage, limit, higher_is_better=False)
    assert worse.verdict == "not acceptable" and worse.margin.low > 0 and worse.change.low > 1
    # one more error in a few utterances: on 8 utterances the limit lies inside the interval
    few = _wer_rows(REFS, HYPS)
    nudged = _wer_rows(REFS, [h + " extra" if i in (0, 5) else h for i, h in enumerate(HYPS)])
    close = verdict("wer", few, nudged, limit, higher_is_better=False)
    assert close.verdict == "undecided" and close.margin.low <= 0 < close.margin.high


def test_score_verdict_for_bleu_reads_higher_as_better():
    base = utterance_statistics("bleu", FRENCH_REFS * 5, FRENCH_HYPS * 5)
    perfect = utterance_statistics("bleu", FRENCH_REFS * 5, FRENCH_REFS * 5)
    better = verdict("bleu", base, perfect, lambda bleu: 0.75 * bleu, higher_is_better=True)
    assert better.verdict == "acceptable" and better.change.value > 0


def test_eval_metrics_carry_intervals_and_counts():
    result = word_error_rate(REFS, HYPS)
    low, high = result["wer_interval"]
    assert low <= result["wer"] <= high
    assert result["words"] == sum(len(r.split()) for r in REFS)
    assert result["bootstrap_samples"] == 1000 and result["interval_level"] == 0.95


def _cell(removed: int, hyps: list[str], refs: list[str]) -> dict:
    from speechprune.evaluate import score

    rows = [{"task": "asr", "src_lang": "en", "tgt_lang": "en", "reference": r, "hypothesis": h}
            for r, h in zip(refs, hyps)]
    return {"strategy": "angular" if removed else "none", "heal": "none", "removed_count": removed,
            "original_layers": 8, "removed": list(range(8 - removed, 8)), "decoder_bytes": 8 - removed,
            "sets": {"test": score(rows)}, "rows": {"test": rows}, "test_utterances": {"test": len(rows)}}


def test_sweep_summary_reads_verdicts_into_a_largest_acceptable_fraction_and_its_upper_end():
    from speechprune.sweep import SweepConfig, _table, summarise

    refs, hyps = REFS * 4, HYPS * 4
    nudged = [h + " extra" if i % 8 == 0 else h for i, h in enumerate(hyps)]  # a few more errors: undecided
    cells = [_cell(0, hyps, refs), _cell(1, hyps, refs), _cell(2, nudged, refs),
             _cell(3, ["nothing at all"] * len(refs), refs)]
    config = SweepConfig(model="m", scan="s", train=["t"], test=["x"], out="o", strategies=["angular"], heal=["none"])
    rows = {r["removed"]: r for r in _table(cells, cells[0], config)}
    assert [rows[n]["verdict"] for n in range(4)] == ["acceptable", "acceptable", "undecided", "not acceptable"]
    assert rows[0]["utterances"] == len(refs) and rows[0]["words"] == sum(len(r.split()) for r in refs)
    assert rows[2]["relative_change_low"] <= rows[2]["relative_change"] <= rows[2]["relative_change_high"]
    best = summarise(cells, config)["largest_acceptable"]["angular/none/test"]
    assert (best["removed_count"], best["removed_count_not_ruled_out"]) == (1, 2)
    assert best["removed"] == [7] and best["utterances"] == len(refs)
    assert [(v["removed_count"], v["verdict"], v["utterances"]) for v in best["verdicts"]] == [
        (1, "acceptable", len(refs)), (2, "undecided", len(refs)), (3, "not acceptable", len(refs))]
    assert best["removed_not_ruled_out"] == [6, 7], "the layers of the largest level not ruled out"
