"""How stable the chosen block is: a bootstrap over utterances of the per-utterance sums.

Each resample draws U utterances with replacement; its block distances are token-weighted
(resampled sums / resampled counts), exactly as the scan's own means are. For every n we report,
for the block l*(n) chosen on the full data: a 95% interval of its distance, the margin to the
runner-up block (the second best start on the full data) with its interval, and how often the
argmin under resampling is a different start than l*(n).
"""

from __future__ import annotations

import numpy as np

from speechprune.scan.accumulate import to_matrix
from speechprune.scan.blocks import best_blocks, block_distances


def bootstrap_blocks(utt_angular: np.ndarray, utt_count: np.ndarray, num_layers: int,
                     resamples: int = 1000, seed: int = 0, chunk: int = 100,
                     angular: np.ndarray | None = None) -> list[dict]:
    """utt_angular: [U, P] per-utterance sums (triu pair order), utt_count: [U]. One dict per n.

    ``angular``: the scan's own (L+1)x(L+1) float64 mean matrix; l*(n) and the runner-up are
    taken from it (by default from the per-utterance sums, which are float32).
    """
    utt_angular = np.asarray(utt_angular, dtype=np.float64)
    utt_count = np.asarray(utt_count, dtype=np.float64)
    total = utt_count.sum()
    if utt_angular.shape[0] == 0 or total <= 0:
        return []
    if angular is None:
        angular = to_matrix(utt_angular.sum(axis=0) / total, num_layers)
    full = block_distances(angular)
    chosen = best_blocks(angular)
    # block (l, n) -> pair column in triu order
    rows, cols = np.triu_indices(num_layers + 1, k=1)
    column = {(int(r), int(c)): k for k, (r, c) in enumerate(zip(rows, cols))}
    starts_of = [np.arange(0, num_layers - n + 1) for n in range(1, num_layers + 1)]
    columns_of = [np.array([column[(l, l + n)] for l in starts_of[n - 1]]) for n in range(1, num_layers + 1)]

    rng = np.random.default_rng(seed)
    u = utt_angular.shape[0]
    samples = []  # [resamples, P] resampled mean distances
    for done in range(0, resamples, chunk):
        size = min(chunk, resamples - done)
        draws = rng.integers(0, u, size=(size, u))
        weights = np.stack([np.bincount(row, minlength=u) for row in draws]).astype(np.float64)
        counts = weights @ utt_count
        with np.errstate(invalid="ignore", divide="ignore"):
            samples.append((weights @ utt_angular) / counts[:, None])
    means = np.concatenate(samples)  # [resamples, P]
    valid = np.isfinite(means).all(axis=1)
    means = means[valid]

    result = []
    for n in range(1, num_layers + 1):
        best = chosen[n - 1]
        row = full[n - 1, : num_layers - n + 1]
        per_sample = means[:, columns_of[n - 1]]  # [S, number of starts]
        best_d = per_sample[:, best["start"]]
        entry = {
            "n": n,
            "start": best["start"],
            "distance": best["distance"],
            "distance_ci95": _interval(best_d),
            "runner_up": None,
            "margin": None,
            "margin_ci95": None,
            "change_rate": float(np.mean(per_sample.argmin(axis=1) != best["start"])) if len(per_sample) else None,
        }
        if row.size > 1:
            order = np.argsort(row, kind="stable")
            runner = int(order[1]) if int(order[0]) == best["start"] else int(order[0])
            entry["runner_up"] = runner
            entry["margin"] = float(row[runner] - row[best["start"]])
            entry["margin_ci95"] = _interval(per_sample[:, runner] - best_d)
        result.append(entry)
    return result


def _interval(values: np.ndarray) -> list[float] | None:
    if values.size == 0:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]
