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

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

from speechprune.looks import ALPHA, LOOKS, SAMPLES, Looks  # noqa: F401  (re-exported)

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


def corpus_values(metric: str, totals: np.ndarray) -> np.ndarray:
    """:func:`corpus_value` of each row of ``totals`` (one row of summed statistics per resample);
    WER and perplexity in one vectorised step, BLEU and chrF through sacrebleu row by row."""
    if metric in ("wer", "perplexity"):
        errors, words = totals[:, 0], totals[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            if metric == "perplexity":
                return np.where(words > 0, np.exp(errors / words), np.nan)
            return np.where(words > 0, errors / words, (errors > 0).astype(np.float64))
    value_of = corpus_value(metric)
    return np.array([value_of(row) for row in totals], dtype=np.float64)


# ----------------------------------------------------------------------------- resampling
@functools.lru_cache(maxsize=4)  # every verdict of a look draws the same resamples: a sweep asks for few sizes
def resample_weights(utterances: int, samples: int = SAMPLES, seed: int = SEED) -> np.ndarray:
    """``samples`` x ``utterances`` counts: how often each utterance is drawn in each sample
    (read-only: the array is shared by every caller of the same arguments)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, utterances, size=(samples, utterances))
    flat = (drawn + np.arange(samples)[:, None] * utterances).ravel()  # one bin per (sample, utterance)
    weights = np.bincount(flat, minlength=samples * utterances).reshape(samples, utterances).astype(np.float64)
    weights.flags.writeable = False
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
    draws = corpus_values(metric, resample_weights(len(statistics), samples, seed) @ statistics)
    low, high = _quantiles(draws, level)
    return Interval(value, low, high, level, samples, len(statistics))


def paired_draws(metric: str, baseline: np.ndarray, pruned: np.ndarray, samples: int = SAMPLES,
                 seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The corpus metric of the baseline and of the pruned model on the same resampled utterances
    (rows of both arrays belong to the same utterances, in the same order)."""
    if baseline.shape[0] != pruned.shape[0]:
        raise ValueError(f"paired bootstrap needs the same utterances: {baseline.shape[0]} against {pruned.shape[0]}")
    weights = resample_weights(len(baseline), samples, seed)
    return corpus_values(metric, weights @ baseline), corpus_values(metric, weights @ pruned)


def relative_change(metric: str, baseline: np.ndarray, pruned: np.ndarray, samples: int = SAMPLES,
                    level: float = LEVEL, seed: int = SEED) -> Interval:
    """(pruned - baseline) / baseline of the corpus metric, with its paired bootstrap interval."""
    value_of = corpus_value(metric)
    return _change(value_of(baseline.sum(axis=0)), value_of(pruned.sum(axis=0)),
                   *paired_draws(metric, baseline, pruned, samples, seed), level, len(baseline))


def _change(base_value: float, pruned_value: float, base_draws: np.ndarray, pruned_draws: np.ndarray,
            level: float, utterances: int) -> Interval:
    with np.errstate(divide="ignore", invalid="ignore"):
        change = (pruned_draws - base_draws) / base_draws
        value = (pruned_value - base_value) / base_value if base_value else float("nan")
    finite = change[np.isfinite(change)]
    low, high = _quantiles(finite, level) if finite.size else (float("nan"), float("nan"))
    return Interval(float(value), low, high, level, len(base_draws), utterances)


def bca_bounds(point: float, draws: np.ndarray, jackknife: np.ndarray, level: float) -> tuple[float, float]:
    """The bias-corrected and accelerated (BCa, Efron 1987) bootstrap interval of a statistic:
    percentiles of ``draws`` moved by the bias correction ``z0`` (how many draws fall below the
    ``point`` estimate) and the acceleration ``a`` (the skewness of the ``jackknife``
    leave-one-out values): the usual correction for a skewed statistic such as a corpus WER. In
    the simulation of docs/verdicts.md it matched the plain percentile interval within the
    simulation's own error."""
    normal = NormalDist()
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return float("nan"), float("nan")
    below = np.mean(finite < point) + 0.5 * np.mean(finite == point)
    z0 = normal.inv_cdf(float(np.clip(below, 1.0 / finite.size, 1.0 - 1.0 / finite.size)))
    spread = jackknife[np.isfinite(jackknife)]
    spread = spread.mean() - spread
    scale = 6.0 * float((spread ** 2).sum()) ** 1.5
    acceleration = float((spread ** 3).sum()) / scale if scale > 0 else 0.0
    tail = (1.0 - level) / 2
    moved = [normal.cdf(z0 + z / (1.0 - acceleration * z))
             for z in (z0 + normal.inv_cdf(tail), z0 + normal.inv_cdf(1.0 - tail))]
    low, high = np.quantile(finite, moved)
    return float(low), float(high)


@dataclass(frozen=True)
class Verdict:
    """Whether a pruned model keeps its baseline's quality, and how sure that is: ``margin`` is
    the pruned metric's distance to the rule's limit (negative: inside it), with its paired interval."""

    verdict: str
    margin: Interval
    change: Interval
    rules: dict = field(default_factory=dict)  # a verdict that combines several rules: each rule's own

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "margin": self.margin.as_dict(), "relative_change": self.change.as_dict()}


def verdict(metric: str, baseline: np.ndarray, pruned: np.ndarray, limit: Callable[[float], float],
            higher_is_better: bool, samples: int = SAMPLES, level: float = LEVEL, seed: int = SEED) -> Verdict:
    """Acceptable, not acceptable or undecided: the pruned metric against ``limit(baseline metric)``
    on the same resampled utterances (``limit`` maps an array of baseline values elementwise). The margin is signed so that negative is inside the limit
    (``pruned - limit`` for an error rate, ``limit - pruned`` for a score)."""
    value_of = corpus_value(metric)
    sign = -1.0 if higher_is_better else 1.0
    margin_of = lambda base_values, pruned_values: sign * (  # noqa: E731
        pruned_values - np.asarray(limit(np.asarray(base_values, dtype=np.float64)), dtype=np.float64))
    base_draws, pruned_draws = paired_draws(metric, baseline, pruned, samples, seed)
    point = float(margin_of([value_of(baseline.sum(axis=0))], np.array([value_of(pruned.sum(axis=0))]))[0])
    # leave-one-utterance-out margins, for the interval's acceleration
    jackknife = margin_of(corpus_values(metric, baseline.sum(axis=0) - baseline),
                          corpus_values(metric, pruned.sum(axis=0) - pruned))
    low, high = bca_bounds(point, margin_of(base_draws, pruned_draws), jackknife, level)
    margin = Interval(point, low, high, level, samples, len(baseline))
    decided = "acceptable" if high <= 0 else "not acceptable" if low > 0 else "undecided"
    return Verdict(decided, margin, _change(value_of(baseline.sum(axis=0)), value_of(pruned.sum(axis=0)),
                                            base_draws, pruned_draws, level, len(baseline)))


# ----------------------------------------------------------------------------- verdicts over several looks
@dataclass(frozen=True)
class SequentialVerdict:
    """The verdict of the last look taken, the utterances it rests on, and whether it is final:
    decided, or undecided at the set's last look."""

    verdict: Verdict
    utterances: int
    looks: tuple[int, ...]
    final: bool

    @property
    def next_look(self) -> int | None:
        """The utterances the next look needs (None when this verdict is final)."""
        return None if self.final else self.looks[self.looks.index(self.utterances) + 1]

    def as_dict(self) -> dict:
        return {**self.verdict.as_dict(), "utterances": self.utterances, "looks": list(self.looks),
                "final": self.final, "decided_at": self.utterances if self.verdict.verdict != "undecided" else None}


def sequential(judge: Callable[[int, float, int], Verdict], looks: Looks, available: int,
               scored: int) -> SequentialVerdict:
    """The sequential verdict of a set of ``available`` utterances of which the first ``scored``
    are scored: ``judge(n, level, samples)`` (the verdict on the first ``n``) at each look up to
    ``scored``, stopping at the first that decides. Not final when the scored rows run out before a
    decision and the set has a further look."""
    plan = looks.plan(available)
    taken = [n for n in plan if n <= scored]
    if not taken:
        raise ValueError(f"the first look needs {plan[0]} utterances; {scored} scored")
    for n in taken:
        found = judge(n, looks.level(len(plan)), looks.samples(len(plan)))
        if found.verdict != "undecided":
            return SequentialVerdict(found, n, plan, final=True)
    return SequentialVerdict(found, taken[-1], plan, final=taken[-1] == plan[-1])


def sequential_verdict(metric: str, baseline: np.ndarray, pruned: np.ndarray, limit: Callable[[float], float],
                       higher_is_better: bool, looks: Looks, available: int, seed: int = SEED) -> SequentialVerdict:
    """:func:`verdict` at each look of a set of ``available`` utterances, as :func:`sequential`
    takes them: ``pruned`` holds the first rows of the set in order, ``baseline`` at least as many
    (the first ``n`` of each are paired at a look of ``n``)."""
    if len(baseline) < len(pruned):
        raise ValueError(f"the baseline has {len(baseline)} scored utterances; the pruned model {len(pruned)}")
    return sequential(lambda n, level, samples: verdict(metric, baseline[:n], pruned[:n], limit, higher_is_better,
                                                        samples, level, seed), looks, available, len(pruned))
