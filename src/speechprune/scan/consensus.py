"""Agreement among many scans and the blocks they share: every pair's agreement as matrices, the
pairs of a ``compare`` summed up per metric, and the consensus (the mean angular matrix, whose l*(n)
minimise the mean block distance over the scans), itself a :class:`ScanResult` that any angular
strategy reads. The study uses it across its conditions; nothing here trains or runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from speechprune.scan.blocks import best_blocks, block_distances
from speechprune.scan.compare import agreement
from speechprune.scan.result import RegionResult, ScanResult

# compare.json's name of each agreement metric -> the name it has in a study's tables
METRICS = {"spearman": "spearman", "same_best_share": "same_best_start", "mean_abs_shift": "mean_abs_delta_start"}


def agreement_matrices(angulars: dict[str, np.ndarray]) -> dict:
    """Pairwise agreement of every scan with every other (a scan with itself: 1, 1, 0)."""
    names = list(angulars)
    size = len(names)
    metrics = {"spearman": np.eye(size), "same_best_share": np.eye(size), "mean_abs_shift": np.zeros((size, size))}
    for i in range(size):
        for j in range(i + 1, size):
            result = agreement(angulars[names[i]], angulars[names[j]], [])
            for key, source in METRICS.items():
                metrics[key][i, j] = metrics[key][j, i] = result[source]
    return {"conditions": names, "metrics": {k: v.tolist() for k, v in metrics.items()}}


def pair_metrics(compare_payload: dict, region: str) -> dict[str, list[float]]:
    """Every pair's value of each agreement metric at ``region``, from a compare.json."""
    pairs = [p for p in compare_payload["pairs"] if p["region"] == region]
    return {key: [p[source] for p in pairs] for key, source in METRICS.items()}


def find_pair(compare_payload: dict, a: str, b: str, region: str) -> dict:
    """The compare.json pair of profiles ``a`` and ``b`` (either order) at ``region``."""
    return next(p for p in compare_payload["pairs"] if p["region"] == region and {p["a"], p["b"]} == {a, b})


@dataclass
class Consensus:
    rows: list[dict]  # per n: consensus_start, mean_distance, each scan's own l*(n), mean |shift|
    scan: ScanResult  # the mean matrix and its l*(n), as a scan (kind consensus)


def consensus(angulars: dict[str, np.ndarray], input: str, region: str) -> Consensus:
    """For every n the start minimising the mean block distance over all scans, and each scan's own
    l*(n). Mean block distance = block distance of the mean matrix, so the consensus is also a scan
    (of ``input`` at ``region``) that any angular strategy can read."""
    mean = np.mean(list(angulars.values()), axis=0)
    table = block_distances(mean)
    own = {name: best_blocks(matrix) for name, matrix in angulars.items()}
    rows, consensus_blocks = [], best_blocks(mean)
    for entry in consensus_blocks:
        n = entry["n"]
        starts = {name: blocks[n - 1]["start"] for name, blocks in own.items()}
        rows.append({"n": n, "consensus_start": entry["start"], "mean_distance": float(table[n - 1, entry["start"]]),
                     "per_condition": starts,
                     "mean_abs_shift": float(np.mean([abs(s - entry["start"]) for s in starts.values()]))})
    scan = ScanResult(num_layers=mean.shape[0] - 1, consensus_of=list(angulars),
                      inputs={input: {region: RegionResult(angular=mean.tolist(), best_blocks=consensus_blocks)}})
    return Consensus(rows, scan)
