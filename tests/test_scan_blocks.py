"""Block statistics from the pairwise matrix, the bootstrap stability, and compare's agreement."""

from __future__ import annotations

import numpy as np
import pytest

from speechprune.scan.accumulate import to_matrix
from speechprune.scan.blocks import (best_blocks, block_distances, block_influence, layers_for_fraction,
                                     removed_layers)
from speechprune.scan.compare import agreement
from speechprune.scan.stability import bootstrap_blocks


def random_angular(num_layers: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pairs = rng.uniform(0.05, 0.6, size=(num_layers + 1) * num_layers // 2)
    return to_matrix(pairs, num_layers)


def test_block_distances_and_best_blocks_match_a_loop_over_n():
    angular = random_angular(6)
    table = block_distances(angular)
    assert table.shape == (6, 6)
    for n in range(1, 7):
        candidates = {l: angular[l, l + n] for l in range(0, 7 - n)}
        for l in range(6):
            if l in candidates:
                assert table[n - 1, l] == candidates[l]
            else:
                assert np.isnan(table[n - 1, l])
        best = best_blocks(angular)[n - 1]
        start = min(candidates, key=lambda l: (candidates[l], l))
        assert best == {"n": n, "start": start, "end": start + n, "distance": candidates[start]}


def test_block_influence_and_removed_layers():
    cosine = 1.0 - random_angular(4, seed=1)
    np.fill_diagonal(cosine, 1.0)
    assert block_influence(cosine) == pytest.approx([1 - cosine[l, l + 1] for l in range(4)])
    angular = np.zeros((5, 5))
    angular[:] = 0.5
    angular[2, 4] = angular[4, 2] = 0.1  # block [2, 4) is the best pair
    np.fill_diagonal(angular, 0)
    assert removed_layers(angular, 2) == [2, 3]
    assert removed_layers(angular, 0) == []
    assert layers_for_fraction(0.25, 16) == 4 and layers_for_fraction(0.99, 5) == 4  # at least one layer stays


def test_bootstrap_is_seeded_and_sees_clear_and_tied_blocks():
    num_layers = 3  # pairs: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    rng = np.random.default_rng(0)
    counts = rng.integers(5, 20, size=40)
    per_token = np.array([0.30, 0.5, 0.6, 0.10, 0.5, 0.30])  # n=1: [1,2) clearly best; n=2: l=0 vs 1 tie
    noise = rng.normal(0, 0.02, size=(40, 6))
    sums = (per_token + noise) * counts[:, None]
    first = bootstrap_blocks(sums, counts, num_layers, resamples=300, seed=3)
    again = bootstrap_blocks(sums, counts, num_layers, resamples=300, seed=3)
    assert first == again
    n1, n2, n3 = first
    assert n1["start"] == 1 and n1["runner_up"] in (0, 2)
    assert n1["change_rate"] == 0.0 and n1["margin_ci95"][0] > 0.1
    low, high = n1["distance_ci95"]
    assert low < n1["distance"] < high and high - low < 0.05
    assert 0.2 < n2["change_rate"] < 0.8  # a near tie flips under resampling
    assert n2["margin_ci95"][0] < 0 < n2["margin_ci95"][1]
    assert n3["runner_up"] is None and n3["change_rate"] == 0.0
    assert bootstrap_blocks(np.zeros((0, 6)), np.zeros(0), num_layers) == []


def test_agreement_of_identical_and_different_profiles():
    a = random_angular(8, seed=2)
    same = agreement(a, a, [0.25, 0.5])
    assert same["spearman"] == pytest.approx(1.0)
    assert same["same_best_start"] == 1.0 and same["mean_abs_delta_start"] == 0.0
    assert all(v["jaccard"] == 1.0 for v in same["jaccard"].values())
    b = random_angular(8, seed=3)
    other = agreement(a, b, [0.25])
    assert -1.0 <= other["spearman"] < 0.9
    la, lb = other["best_start_a"], other["best_start_b"]
    assert other["mean_abs_delta_start"] == pytest.approx(np.mean([abs(la[n] - lb[n]) for n in range(7)]))
    removed_a, removed_b = set(removed_layers(a, 2)), set(removed_layers(b, 2))
    assert other["jaccard"]["0.25"]["jaccard"] == pytest.approx(len(removed_a & removed_b) / len(removed_a | removed_b))
