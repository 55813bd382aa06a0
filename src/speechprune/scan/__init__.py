"""Redundancy scan: the angular distance and cosine between every pair of decoder layers, per input
(speech, text) and region, from one streaming pass; every block [l, l+n), l*(n) and ShortGPT's
Block Influence follow from it; ``compare`` says how much scans agree.

Owns: hooks (capture x_0..x_L), the one pairwise accumulator, block statistics, stability
bootstrap, the one scan result type (``ScanResult``, scan.json), the ``scan`` and ``compare``
commands and their figures, and the agreement and consensus of many scans. Imports model/ and data/ only.
"""

from speechprune.scan.accumulate import PairwiseStats
from speechprune.scan.blocks import (INDEX_CONVENTION, best_blocks, block_distances, block_influence,
                                     layers_for_fraction, removed_layers)
from speechprune.scan.result import RegionResult, ScanResult
from speechprune.scan.scanner import ScanBatch, Scanner

__all__ = [
    "INDEX_CONVENTION", "PairwiseStats", "RegionResult", "ScanBatch", "ScanResult", "Scanner", "best_blocks",
    "block_distances", "block_influence", "layers_for_fraction", "removed_layers",
]
