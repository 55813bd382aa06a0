"""How sure a corpus metric is: bootstrap intervals over utterances, for one model and for a pruned
model against its baseline on the same utterances.

Every corpus metric here is a function of summed per-utterance statistics:
- WER: (word errors, reference words) per utterance; WER = sum(errors) / sum(words);
- perplexity: (summed negative log-likelihood in nats, tokens) per utterance; exp(sum / sum);
- BLEU and chrF: sacrebleu's own sufficient statistics (n-gram matches and totals per segment),
  scored by sacrebleu from their sums, so a resample costs one sum and one score, not a re-tokenising.

A bootstrap sample draws ``n`` utterances with replacement from the ``n`` scored and recomputes the
corpus metric from the drawn rows; the interval is the central ``level`` quantile range over
``samples`` draws (percentile bootstrap). A paired bootstrap draws the same utterances for both
models, so that what the two share (hard utterances) cancels out. Draws come from a seeded numpy
generator: the same rows give the same interval on every machine.

The acceptability verdict of a pruned model (:func:`verdict`) reads the paired draws of its margin
to the rule's limit: acceptable when the whole interval is inside the limit, not acceptable when
the whole interval is outside it, otherwise undecided at this test size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

SAMPLES = 1000
LEVEL = 0.95
SEED = 0
VERDICTS = ("acceptable", "not acceptable", "undecided")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval and what it rests on."""

    value: float
    low: float
    high: float
    level: float
    samples: int
    utterances: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


# ----------------------------------------------------------------------------- per-utterance statistics
def _sacrebleu_metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU, "chrf": CHRF}[name]()


def utterance_statistics(metric: str, references: list[str], hypotheses: list[str],
                         wer_pairs: list[tuple[int, int]] | None = None) -> np.ndarray:
    """One row of summable statistics per utterance: ``wer`` takes ``wer_pairs`` (errors, words),
    computed by the evaluator's normaliser (``perplexity`` takes its (nll, tokens) pairs the same
    way); ``bleu`` and ``chrf`` are sacrebleu's segment statistics (sacrebleu 2.6's
    ``_extract_corpus_statistics``: the same numbers its ``corpus_score`` sums)."""
    if metric in ("wer", "perplexity"):
        return np.asarray(wer_pairs, dtype=np.float64).reshape(-1, 2)
    return sacrebleu_statistics(metric, references, hypotheses)[0]


def sacrebleu_statistics(metric: str, references: list[str], hypotheses: list[str]) -> tuple[np.ndarray, str]:
    """``bleu`` or ``chrf``: sacrebleu's per-segment statistics and the metric's signature, from one
    pass over the texts (the corpus score is :func:`corpus_value` of their sum)."""
    scorer = _sacrebleu_metric(metric)
    rows = np.asarray(scorer._extract_corpus_statistics(hypotheses, [references]), dtype=np.float64)
    return rows, str(scorer.get_signature())


def corpus_value(metric: str) -> Callable[[np.ndarray], float]:
    """Summed statistics -> the corpus metric (WER as a fraction, BLEU and chrF in sacrebleu's 0-100)."""
    if metric == "perplexity":
        return lambda total: float(np.exp(total[0] / total[1])) if total[1] > 0 else float("nan")
    if metric == "wer":
        return lambda total: float(total[0] / total[1]) if total[1] > 0 else float(total[0] > 0)
    scorer = _sacrebleu_metric(metric)
    # sacrebleu reads BLEU's counts as integers; the sums of integer rows are whole numbers
    return lambda total: float(scorer._compute_score_from_stats(list(np.rint(total).astype(np.int64))).score)


# ----------------------------------------------------------------------------- resampling
def resample_weights(utterances: int, samples: int = SAMPLES, seed: int = SEED) -> np.ndarray:
    """``samples`` x ``utterances`` counts: how often each utterance is drawn in each sample."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, utterances, size=(samples, utterances))
    weights = np.zeros((samples, utterances), dtype=np.float64)
    np.add.at(weights, (np.arange(samples)[:, None], drawn), 1.0)
    return weights


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def interval(metric: str, statistics: np.ndarray, samples: int = SAMPLES, level: float = LEVEL,
             seed: int = SEED) -> Interval:
    """The corpus ``metric`` of ``statistics`` (rows of :func:`utterance_statistics`) with its
    percentile bootstrap interval over utterances."""
    value_of = corpus_value(metric)
    value = value_of(statistics.sum(axis=0))
    if len(statistics) == 0:
        return Interval(value, value, value, level, 0, 0)
    draws = resample_weights(len(statistics), samples, seed) @ statistics
    low, high = _quantiles(np.array([value_of(row) for row in draws]), level)
    return Interval(value, low, high, level, samples, len(statistics))


def paired_draws(metric: str, baseline: np.ndarray, pruned: np.ndarray, samples: int = SAMPLES,
                 seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The corpus metric of the baseline and of the pruned model on the same resampled utterances
    (rows of both arrays belong to the same utterances, in the same order)."""
    if baseline.shape[0] != pruned.shape[0]:
        raise ValueError(f"paired bootstrap needs the same utterances: {baseline.shape[0]} against {pruned.shape[0]}")
    value_of = corpus_value(metric)
    weights = resample_weights(len(baseline), samples, seed)
    return (np.array([value_of(row) for row in weights @ baseline]),
            np.array([value_of(row) for row in weights @ pruned]))


def relative_change(metric: str, baseline: np.ndarray, pruned: np.ndarray, samples: int = SAMPLES,
                    level: float = LEVEL, seed: int = SEED) -> Interval:
    """(pruned - baseline) / baseline of the corpus metric, with its paired bootstrap interval."""
    value_of = corpus_value(metric)
    base_value, pruned_value = value_of(baseline.sum(axis=0)), value_of(pruned.sum(axis=0))
    base_draws, pruned_draws = paired_draws(metric, baseline, pruned, samples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = (pruned_draws - base_draws) / base_draws
        value = (pruned_value - base_value) / base_value if base_value else float("nan")
    finite = change[np.isfinite(change)]
    low, high = _quantiles(finite, level) if finite.size else (float("nan"), float("nan"))
    return Interval(float(value), low, high, level, samples, len(baseline))


@dataclass(frozen=True)
class Verdict:
    """Whether a pruned model keeps its baseline's quality, and how sure that is: ``margin`` is
    the pruned metric's distance to the rule's limit (negative: inside it), with its paired interval."""

    verdict: str
    margin: Interval
    change: Interval

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "margin": self.margin.as_dict(), "relative_change": self.change.as_dict()}


def verdict(metric: str, baseline: np.ndarray, pruned: np.ndarray, limit: Callable[[float], float],
            higher_is_better: bool, samples: int = SAMPLES, level: float = LEVEL, seed: int = SEED) -> Verdict:
    """Acceptable, not acceptable or undecided: the pruned metric against ``limit(baseline metric)``
    on the same resampled utterances. The margin is signed so that negative is inside the limit
    (``pruned - limit`` for an error rate, ``limit - pruned`` for a score)."""
    value_of = corpus_value(metric)
    sign = -1.0 if higher_is_better else 1.0
    base_draws, pruned_draws = paired_draws(metric, baseline, pruned, samples, seed)
    margins = sign * (pruned_draws - np.array([limit(b) for b in base_draws]))
    point = sign * (value_of(pruned.sum(axis=0)) - limit(value_of(baseline.sum(axis=0))))
    low, high = _quantiles(margins, level)
    margin = Interval(float(point), low, high, level, samples, len(baseline))
    decided = "acceptable" if high <= 0 else "not acceptable" if low > 0 else "undecided"
    return Verdict(decided, margin, relative_change(metric, baseline, pruned, samples, level, seed))
