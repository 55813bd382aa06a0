"""What follows from one pairwise matrix with no further pass: the distance of every block
[l, l+n), the best start l*(n) for every n, ShortGPT's Block Influence, the layers to remove.

Convention: 0-based layers; x_i enters layer i; removing block [l, l+n) (end-exclusive) feeds x_l
straight into layer l+n, so the block's distance is d(x_l, x_{l+n}) = angular[l][l+n].
"""

from __future__ import annotations

import math

import numpy as np

from speechprune.errors import UserError

INDEX_CONVENTION = (
    "0-based layers; x_i is the residual stream entering decoder layer i (x_0 = the input of layer 0, "
    "x_L = the last layer's output before the final norm); entry [i][j] compares x_i with x_j; "
    "block [l, l+n) is end-exclusive, and removing it feeds x_l into layer l+n."
)


def block_distances(angular: np.ndarray) -> np.ndarray:
    """[L, L] array: row n-1 (block size n = 1..L), column l (start), d(x_l, x_{l+n}); NaN where l+n > L."""
    angular = np.asarray(angular, dtype=np.float64)
    num_layers = angular.shape[0] - 1
    out = np.full((num_layers, num_layers), np.nan)
    for n in range(1, num_layers + 1):
        starts = np.arange(0, num_layers - n + 1)
        out[n - 1, starts] = angular[starts, starts + n]
    return out


def best_blocks(angular: np.ndarray) -> list[dict]:
    """For every n = 1..L: the start l*(n) = argmin_l d(x_l, x_{l+n}) (ties: the smallest l)."""
    table = block_distances(angular)
    result = []
    for n in range(1, table.shape[0] + 1):
        row = table[n - 1, : table.shape[0] - n + 1]
        start = int(np.argmin(row))
        result.append({"n": n, "start": start, "end": start + n, "distance": float(row[start])})
    return result


def block_influence(cosine: np.ndarray) -> list[float]:
    """ShortGPT's BI_l = 1 - mean cos(x_l, x_{l+1}) for every layer l = 0..L-1."""
    cosine = np.asarray(cosine, dtype=np.float64)
    num_layers = cosine.shape[0] - 1
    return [float(1.0 - cosine[l, l + 1]) for l in range(num_layers)]


def layers_for_fraction(fraction: float, num_layers: int) -> int:
    """How many layers a removed fraction means, everywhere in the toolkit: round half up,
    n = floor(fraction * L + 0.5), capped at L - 1 so that at least one layer always stays.
    ``fraction`` must be in [0, 1)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise UserError(f"--fraction must be a number in [0, 1), not {fraction!r}")
    # round(..., 9) first, so that binary noise (0.35 * 10 = 3.4999999999999996) cannot flip a half
    return min(math.floor(round(fraction * num_layers, 9) + 0.5), num_layers - 1)


def removed_layers(angular: np.ndarray, n: int) -> list[int]:
    """The layers of the best contiguous block of size n (empty for n = 0)."""
    if n <= 0:
        return []
    start = best_blocks(angular)[n - 1]["start"]
    return list(range(start, start + n))
