"""When a sweep judges a test set: the looks (after 100, 200, 400, 800 utterances by default) and
the error each look may spend. Plain Python, so that the command options can name its defaults
without loading numpy; :mod:`speechprune.bootstrap` computes the verdicts."""

from __future__ import annotations

import math
from dataclasses import dataclass

SAMPLES = 1000  # bootstrap resamples of an interval at 95%
ALPHA = 0.025  # the chance of "acceptable" for a model whose true metric sits exactly at the limit
LOOKS = (100, 200, 400, 800)
TAIL_DRAWS = 20  # resamples at least this many beyond each quantile the verdict reads


@dataclass(frozen=True)
class Looks:
    """When a test set is judged, and at what level: after ``sizes[0]`` utterances, then after each
    larger size, up to all of a set (at most ``sizes[-1]``).

    The error is spent over the looks by Bonferroni: with ``K`` looks, each look's verdict uses a
    two-sided interval of level ``1 - 2 alpha / K``, so that each of its one-sided calls
    ("acceptable", "not acceptable") errs with chance at most ``alpha / K`` at that look. A cell
    called acceptable on the whole sequence has been called so at one look at least; by the union
    bound, for a model whose true metric sits at the limit the chance of that is at most
    ``K x alpha / K = alpha``, whatever the correlation between looks (docs/verdicts.md). With one
    look (a set no larger than ``sizes[0]``) it is the fixed-size verdict at ``1 - 2 alpha``
    (95% for the default ``alpha`` 0.025)."""

    sizes: tuple[int, ...] = LOOKS
    alpha: float = ALPHA

    def __post_init__(self):
        sizes = tuple(int(s) for s in self.sizes)
        if not sizes or sizes[0] < 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"looks must be increasing positive utterance counts, not {list(self.sizes)}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), not {self.alpha}")
        object.__setattr__(self, "sizes", sizes)

    def plan(self, available: int) -> tuple[int, ...]:
        """The looks a test set of ``available`` utterances takes: each size below the last, then
        the last (all of the set, at most ``sizes[-1]``)."""
        last = min(self.sizes[-1], available)
        return tuple(s for s in self.sizes if s < last) + (last,)

    def level(self, looks: int) -> float:
        """The two-sided interval level of each look's verdict when a set takes ``looks`` looks."""
        return 1.0 - 2.0 * self.alpha / looks

    def samples(self, looks: int) -> int:
        """Bootstrap resamples per look: at least :data:`SAMPLES`, and :data:`TAIL_DRAWS` beyond the
        look's tail quantile."""
        return max(SAMPLES, math.ceil(TAIL_DRAWS / (self.alpha / looks)))
