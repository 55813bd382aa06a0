"""Which decoder layers to remove: the strategies, from a scan result or from a model.

Scan-based (no model needed; ``scan`` is a :class:`~speechprune.scan.result.ScanResult`, or the
dict of a ``scan.json``, checked through it):
- ``angular``: the contiguous block [l*, l*+n) with l* = argmin_l angular[l][l+n] (Gromov et al.);
- ``bi``: the n layers of lowest Block Influence BI_l = 1 - cosine[l][l+1], not necessarily
  adjacent (ShortGPT);
- ``last``: the n deepest layers before the final one, [L-1-n, L-1) (Gromov's simple baseline).

Model-based, with the measurement passed in as a callable so that this module needs neither the
scan nor the evaluation stage:
- ``iterative``: remove one layer at a time, re-scanning the pruned model between steps;
- ``greedy-score``: SLEB / Moslem; each round, switch each remaining layer off in turn (in place,
  :func:`~speechprune.prune.surgery.skip_layers`) and keep the removal with the best score; a
  score that offers ``removal_scores`` scores a whole round reusing the layers before each
  candidate (see :func:`greedy_score`).

Every function returns the layers to remove as sorted, 0-based indices of the original decoder.
Ties are broken towards the lowest index, so every choice is deterministic.

Defaults: ``input="auto"`` takes the scan's speech input when it has one, else its text input;
``region="all"`` (every real position, token-weighted; ShortGPT's choice; Gromov et al. used the
last token, ``region="last"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from speechprune.errors import UserError
from speechprune.options.prune import (DEFAULT_INPUT, DEFAULT_REGION, MODEL_STRATEGIES,  # noqa: F401  (re-exported)
                                       SCAN_STRATEGY_NAMES, STRATEGIES)
from speechprune.prune.surgery import skip_layers
from speechprune.scan.blocks import layers_for_fraction  # noqa: F401  (one definition, re-exported)
from speechprune.scan.result import ScanResult


# a scan result, or the dict of a scan.json (read through ScanResult, which checks it)
Scan = ScanResult | Mapping[str, Any]


def _check_n(n: int, num_layers: int, most: int | None = None) -> int:
    most = num_layers - 1 if most is None else most
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= most:
        raise UserError(f"--remove must be an integer in [0, {most}] for a {num_layers}-layer decoder, not {n!r}")
    return n


def scan_matrix(scan: Scan, metric: str, input: str = DEFAULT_INPUT, region: str = DEFAULT_REGION) -> np.ndarray:
    """The (L+1)x(L+1) ``metric`` ("angular" or "cosine") matrix of one input and region."""
    return ScanResult.of(scan).matrix(input, region, metric)


def resolve_input(scan: Scan, input: str) -> str:
    """The scan input that ``input`` names: ``auto`` is speech when the scan has it, else text."""
    return ScanResult.of(scan).resolve_input(input)


def scan_num_layers(scan: Scan) -> int:
    return ScanResult.of(scan).num_layers


def check_scan_fits(scan: Scan, decoder_config: Any, scan_name: str) -> None:
    """Refuse a scan made on another model: its decoder's layer count, hidden size or family
    (as scan.json records them) differ from the decoder about to be pruned."""
    scan = ScanResult.of(scan)
    scanned = scan.model or {}
    mine = {"num_layers": getattr(decoder_config, "num_hidden_layers", None),
            "hidden_size": getattr(decoder_config, "hidden_size", None),
            "family": getattr(decoder_config, "model_type", None)}
    theirs = {**{key: scanned.get(key) for key in ("hidden_size", "family")}, "num_layers": scan.num_layers}
    differ = [f"{key} {theirs[key]} vs {mine[key]}" for key in mine
              if theirs[key] is not None and mine[key] is not None and theirs[key] != mine[key]]
    if differ:
        raise UserError(f"--scan {scan_name} was made on another model ({', '.join(differ)} in the model to prune)")


def angular(scan: Scan, n: int, input: str = DEFAULT_INPUT, region: str = DEFAULT_REGION) -> list[int]:
    """The block [l*, l*+n), l* = argmin_l angular[l][l+n] over l = 0..L-n (lowest l on ties)."""
    scan = ScanResult.of(scan)
    num_layers = scan.num_layers
    _check_n(n, num_layers)
    if n == 0:
        return []
    distance = scan.matrix(input, region, "angular")
    start = min(range(num_layers - n + 1), key=lambda l: (distance[l][l + n], l))
    return list(range(start, start + n))


def block_influence(scan: Scan, n: int, input: str = DEFAULT_INPUT, region: str = DEFAULT_REGION) -> list[int]:
    """The n layers of lowest BI_l = 1 - cosine[l][l+1] (ShortGPT), sorted."""
    scan = ScanResult.of(scan)
    num_layers = scan.num_layers
    _check_n(n, num_layers)
    cosine = scan.matrix(input, region, "cosine")
    order = sorted(range(num_layers), key=lambda l: (1.0 - cosine[l][l + 1], l))
    return sorted(order[:n])


def last(num_layers: int, n: int) -> list[int]:
    """The n deepest layers before the final layer: [L-1-n, L-1)."""
    _check_n(n, num_layers)
    return list(range(num_layers - 1 - n, num_layers - 1))


def _last_from_scan(scan: Scan, n: int, input: str = DEFAULT_INPUT, region: str = DEFAULT_REGION) -> list[int]:
    return last(scan_num_layers(scan), n)


# Strategies that choose from a scan alone: name -> function(scan, n, input, region).
SCAN_STRATEGIES: dict[str, Callable[..., list[int]]] = dict(
    zip(SCAN_STRATEGY_NAMES, (angular, block_influence, _last_from_scan), strict=True))


def iterative(
    causal_lm: Any,
    n: int,
    rescan: Callable[[Any], Scan],
    input: str = DEFAULT_INPUT,
    region: str = DEFAULT_REGION,
    criterion: str = "angular",
    trace: list[dict] | None = None,
) -> list[int]:
    """Remove n layers one at a time: each step scans the model as pruned so far (``rescan(model)``
    returns a scan result of that model) and removes the single layer ``criterion`` ("angular" or
    "bi") picks. The model is pruned in place only while it is re-scanned and is unchanged on return.
    ``trace``, if given, receives one record per step."""
    from speechprune.model.decoder import decoder_layers

    if criterion not in ("angular", "bi"):
        raise UserError(f"iterative criterion must be 'angular' or 'bi', not {criterion!r}")
    choose = SCAN_STRATEGIES[criterion]
    num_layers = len(decoder_layers(causal_lm))
    _check_n(n, num_layers)
    removed: list[int] = []
    for step in range(n):
        with skip_layers(causal_lm, removed) as kept:
            scan = ScanResult.of(rescan(causal_lm))
        if scan.num_layers != len(kept):
            raise ValueError(f"rescan returned a {scan.num_layers}-layer scan for a {len(kept)}-layer model")
        (local,) = choose(scan, 1, input, region)
        removed = sorted([*removed, kept[local]])
        if trace is not None:
            trace.append({"step": step, "removed": kept[local], "index_in_pruned_model": local})
    return removed


GREEDY_METHODS = ("auto", "prefix", "full")


def greedy_score(
    causal_lm: Any,
    n: int,
    score: Callable[[Any], float],
    candidates: Sequence[int] | None = None,
    trace: list[dict] | None = None,
    method: str = "auto",
) -> list[int]:
    """SLEB / Moslem greedy removal: n rounds; each round switches every remaining candidate layer
    off in turn (together with those already removed; in place, nothing copied) and keeps the one
    whose score is lowest (lower is better: loss, WER, negative chrF). ``candidates`` restricts
    which layers may go (default: all). The model is unchanged on return.

    ``score(model) -> float`` scores the model as it is (run it on cached decoder inputs, see
    :func:`speechprune.prune.calibration.loss_score`). ``method``: ``"full"`` calls it once per
    candidate (a full forward each); ``"prefix"`` asks ``score.removal_scores(model, removed,
    candidates)`` for the whole round at once, which reuses the layers before each candidate
    (:class:`~speechprune.prune.calibration.LossScore` does); ``"auto"`` takes ``"prefix"`` when the
    score offers it. Both choose the same layers: each candidate's score comes from the same layer
    computations on the same inputs (equal bit for bit where tested; at most float rounding apart)."""
    from speechprune.model.decoder import decoder_layers

    if method not in GREEDY_METHODS:
        raise UserError(f"greedy-score method must be one of {', '.join(GREEDY_METHODS)}, not {method!r}")
    round_scores = getattr(score, "removal_scores", None)
    if method == "prefix" and round_scores is None:
        raise UserError("greedy-score method 'prefix' needs a score with removal_scores (see loss_score)")
    if method == "full":
        round_scores = None
    num_layers = len(decoder_layers(causal_lm))
    _check_n(n, num_layers)
    pool = list(range(num_layers)) if candidates is None else sorted(set(candidates))
    outside = [c for c in pool if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_layers]
    if outside:
        raise UserError(f"greedy-score candidates {outside} are not layers of a {num_layers}-layer decoder")
    if len(pool) < n:
        raise UserError(f"greedy-score cannot remove {n} layers from {len(pool)} candidates")
    removed: list[int] = []
    for step in range(n):
        remaining = [c for c in pool if c not in removed]
        if round_scores is not None:
            by_candidate = round_scores(causal_lm, removed, remaining)
            results = [(float(by_candidate[c]), c) for c in remaining]
        else:
            results = []
            for candidate in remaining:
                with skip_layers(causal_lm, [*removed, candidate]):
                    results.append((float(score(causal_lm)), candidate))
        # NaN (a broken model) ranks last; ties go to the lowest layer index.
        best_score, best = min(results, key=lambda r: (math.isnan(r[0]), r[0], r[1]))
        if math.isnan(best_score):
            raise ValueError("greedy-score: the score is NaN for every candidate")
        removed = sorted([*removed, best])
        if trace is not None:
            trace.append({"step": step, "removed": best, "score": best_score,
                          "scores": {str(c): s for s, c in sorted(results, key=lambda r: r[1])}})
    return removed


def choose_from_scan(strategy: str, scan: Scan, n: int, input: str = DEFAULT_INPUT,
                     region: str = DEFAULT_REGION) -> list[int]:
    """Dispatch a scan-based strategy by name."""
    if strategy not in SCAN_STRATEGIES:
        raise UserError(f"strategy {strategy!r} does not choose from a scan alone; scan-based: {', '.join(SCAN_STRATEGIES)}")
    return SCAN_STRATEGIES[strategy](scan, n, input, region)
