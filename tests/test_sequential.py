"""Verdicts over several looks (:class:`speechprune.bootstrap.Looks`): stopping at the first look
that decides must not call a model at the limit acceptable more often than ``alpha``, and a clear
difference must decide at the first look. No model: per-utterance word errors are drawn so that the
true corpus WER of the pruned model sits exactly at the rule's limit (docs/verdicts.md)."""

from __future__ import annotations

import numpy as np
import pytest

from speechprune.bootstrap import ALPHA, Looks, sequential_verdict

LOOKS = Looks((50, 100, 200, 400))


def limit(wer):
    """The sweep's ASR rule: +25% relative, at least +0.02 absolute."""
    return np.maximum(wer * 1.25, wer + 0.02)


def draw(rng: np.random.Generator, utterances: int, baseline_wer: float, pruned_wer: float):
    """Paired per-utterance (errors, words) of a baseline and a pruned model. Each utterance has its
    own difficulty (a gamma factor of mean 1, shared by both models: hard utterances are hard for
    both), errors are Poisson given it, so that each model's true corpus WER is exactly its rate."""
    words = rng.integers(3, 12, size=utterances).astype(np.float64)
    difficulty = rng.gamma(2.0, 0.5, size=utterances)
    baseline = np.column_stack([rng.poisson(words * baseline_wer * difficulty), words])
    pruned = np.column_stack([rng.poisson(words * pruned_wer * difficulty), words])
    return baseline, pruned


def run(repetitions: int, baseline_wer: float, pruned_wer: float, seed: int) -> list:
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(repetitions):
        baseline, pruned = draw(rng, LOOKS.sizes[-1], baseline_wer, pruned_wer)
        found.append(sequential_verdict("wer", baseline, pruned, limit, False, LOOKS, LOOKS.sizes[-1]))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("baseline_wer", [0.05, 0.20])  # the absolute floor decides the limit, then the relative rise
def test_a_model_at_the_limit_is_called_acceptable_at_most_alpha_of_the_time(baseline_wer):
    repetitions = 1000
    found = run(repetitions, baseline_wer, float(limit(baseline_wer)), seed=11)
    accepted = sum(f.verdict.verdict == "acceptable" for f in found) / repetitions
    # one-sided 99% Monte-Carlo bound on the rate of a rule that errs exactly at alpha
    assert accepted <= ALPHA + 2.33 * np.sqrt(ALPHA * (1 - ALPHA) / repetitions), accepted
    assert all(f.final for f in found)
    undecided = [f for f in found if f.verdict.verdict == "undecided"]
    assert undecided and all(f.utterances == LOOKS.sizes[-1] for f in undecided), "undecided only after the last look"


def test_a_clear_difference_decides_at_the_first_look():
    broken = run(60, 0.05, 0.30, seed=5)  # a pruned model six times worse than its baseline
    assert sum(f.verdict.verdict == "not acceptable" and f.utterances == 50 for f in broken) >= 0.9 * len(broken)
    same = run(60, 0.05, 0.05, seed=6)  # nothing lost: the limit is 0.02 away
    assert all(f.verdict.verdict != "not acceptable" for f in same)
    assert sum(f.verdict.verdict == "acceptable" for f in same) >= 0.9 * len(same)


def test_looks_plan_levels_and_bad_settings():
    looks = Looks((100, 200, 400, 800), 0.025)
    assert looks.plan(1000) == (100, 200, 400, 800)
    assert looks.plan(300) == (100, 200, 300), "the last look is all of a smaller set"
    assert looks.plan(60) == (60,)
    assert looks.level(1) == pytest.approx(0.95), "one look: the fixed-size 95% verdict"
    assert looks.level(4) == pytest.approx(1 - 2 * 0.025 / 4)
    assert looks.samples(4) * (0.025 / 4) >= 20, "enough resamples beyond the tail quantile"
    for sizes, alpha in (((100, 100), 0.025), ((0, 100), 0.025), ((), 0.025), ((100,), 0.6), ((100,), 0.0)):
        with pytest.raises(ValueError):
            Looks(sizes, alpha)


def test_a_look_pairs_the_first_utterances_of_both_and_needs_enough_of_them():
    rng = np.random.default_rng(2)
    baseline, pruned = draw(rng, 400, 0.05, 0.05)
    part = sequential_verdict("wer", baseline, pruned[:120], limit, False, LOOKS, 400)
    assert part.looks == LOOKS.sizes
    if part.verdict.verdict == "undecided":  # 120 scored: the looks at 50 and 100 taken, 200 next
        assert (part.utterances, part.final, part.next_look) == (100, False, 200)
    else:
        assert part.final and part.utterances in (50, 100) and part.verdict.margin.utterances == part.utterances
    with pytest.raises(ValueError, match="first look needs 50"):
        sequential_verdict("wer", baseline, pruned[:20], limit, False, LOOKS, 400)
    with pytest.raises(ValueError, match="baseline has 100"):
        sequential_verdict("wer", baseline[:100], pruned[:200], limit, False, LOOKS, 400)
