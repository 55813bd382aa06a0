"""``speechprune compare``: how much two or more scan profiles agree on the redundant blocks.

A profile is one (scan, input) pair at one region; a scan with both inputs gives two profiles, so
``speechprune compare OUT`` compares its speech and text profiles. For every pair of profiles:
Spearman correlation of their block-distance matrices (every valid [l, l+n)), the fraction of
block sizes n with the same best start l*(n), the mean |l*_a(n) - l*_b(n)|, and the Jaccard index
of the layers each would remove at the given fractions. Writes compare.json and figures.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from speechprune.config import require, save_config
from speechprune.console import show, table
from speechprune.errors import UserError
from speechprune.files import claims_output
from speechprune.options.scan import CompareConfig  # noqa: F401  (re-exported)
from speechprune.scan.blocks import best_blocks, block_distances, layers_for_fraction, removed_layers
from speechprune.scan.result import ScanResult


def agreement(a: np.ndarray, b: np.ndarray, fractions: list[float]) -> dict:
    """Agreement of two (L+1)x(L+1) angular matrices of the same L."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise UserError(f"cannot compare scans of {a.shape[0] - 1} and {b.shape[0] - 1} layers")
    num_layers = a.shape[0] - 1
    ta, tb = block_distances(a), block_distances(b)
    valid = np.isfinite(ta)
    rho = spearmanr(ta[valid], tb[valid]).statistic if valid.sum() > 1 else float("nan")
    la = [x["start"] for x in best_blocks(a)]
    lb = [x["start"] for x in best_blocks(b)]
    choice = range(1, num_layers)  # sizes with more than one candidate start
    same = [la[n - 1] == lb[n - 1] for n in choice]
    delta = [abs(la[n - 1] - lb[n - 1]) for n in choice]
    jaccard = {}
    for fraction in fractions:
        n = layers_for_fraction(fraction, num_layers)
        ra, rb = set(removed_layers(a, n)), set(removed_layers(b, n))
        jaccard[str(fraction)] = {"layers": n, "a": sorted(ra), "b": sorted(rb),
                                  "jaccard": (len(ra & rb) / len(ra | rb)) if ra | rb else 1.0}
    return {
        "spearman": float(rho),
        "same_best_start": float(np.mean(same)) if same else 1.0,
        "mean_abs_delta_start": float(np.mean(delta)) if delta else 0.0,
        "jaccard": jaccard,
        "best_start_a": la,
        "best_start_b": lb,
    }


@claims_output("compare")
def compare(config: CompareConfig) -> dict:
    """How much two or more scans (or the speech and text inputs of one scan) agree:
    Spearman of block distances, same l*(n), mean |delta l*(n)|, Jaccard of removed layers."""
    from speechprune.files import staged_dir, write_json

    profiles = []
    for path in config.scans:
        result = ScanResult.load(path)
        names = [config.input] if config.input else list(result.inputs)
        for name in names:
            if name not in result.inputs:
                raise UserError(f"{path}: the scan has no {name!r} input (it has {', '.join(result.inputs)})")
            folder = Path(path).parent.name if Path(path).is_file() else Path(path).name
            profiles.append({"scan": str(path), "input": name, "label": f"{folder}/{name}", "subject": result.subject(),
                             "num_layers": result.num_layers, "regions": result.inputs[name]})
    if len(profiles) < 2:
        raise UserError("compare needs at least two profiles: two scans, or one scan with both inputs")
    if config.labels:
        require(len(config.labels) == len(profiles),
                f"--labels: {len(config.labels)} labels for {len(profiles)} profiles")
        for profile, label in zip(profiles, config.labels):
            profile["label"] = label
    layers = {p["num_layers"] for p in profiles}
    if len(layers) > 1:
        depths = {p["scan"]: p["num_layers"] for p in profiles}  # one entry per scan, not per input
        raise UserError("compare: the scans have different numbers of layers: "
                        + ", ".join(f"{scan} has {layers}" for scan, layers in depths.items()))
    for profile in profiles:
        for region in config.regions:
            entry = profile["regions"].get(region)
            if entry is None or not entry.counted:
                raise UserError(f"{profile['scan']}: no {region!r} statistics for the {profile['input']} input "
                                f"(choose --regions among those it counted)")

    pairs = []
    for region in config.regions:
        for a, b in itertools.combinations(profiles, 2):
            result = agreement(a["regions"][region].angular, b["regions"][region].angular, config.fractions)
            pairs.append({"a": a["label"], "b": b["label"], "region": region, **result})
    payload = {
        "index_convention": "0-based layers; block [l, l+n) end-exclusive; l*(n) = best start for block size n",
        "profiles": [{k: p[k] for k in ("label", "scan", "input", "num_layers")} for p in profiles],
        "regions": list(config.regions),
        "fractions": list(config.fractions),
        "pairs": pairs,
    }
    with staged_dir(config.out) as staging:
        if config.plots:
            from speechprune.scan.plots import compare_figure

            figures = []
            for region in config.regions:
                name = f"compare_{region}.png"
                rho = [p["spearman"] for p in pairs if p["region"] == region]
                compare_figure([{"label": p["label"], "angular": p["regions"][region].angular} for p in profiles],
                               staging / name, title="; ".join(dict.fromkeys(p["subject"] for p in profiles))
                               + f"\n{region} positions; Spearman " + ", ".join(f"{r:.3f}" for r in rho))
                figures.append(name)
            payload["figures"] = figures
        write_json(staging / "compare.json", payload)
        save_config(config, staging / "config.yaml")
    show(summary(payload, config.out))
    return payload


def summary(payload: dict, out: str) -> object:
    """One row per pair of profiles and region."""
    fractions = payload["fractions"]
    return table(f"compare: {len(payload['profiles'])} profiles -> {out}",
                 ("region", "a", "b", "Spearman", "same l*(n)", "mean |dl*|", *(f"Jaccard @{f}" for f in fractions)),
                 [(p["region"], p["a"], p["b"], p["spearman"], p["same_best_start"], p["mean_abs_delta_start"],
                   *(p["jaccard"][str(f)]["jaccard"] for f in fractions)) for p in payload["pairs"]],
                 caption="same l*(n): share of block sizes n with the same best start; Jaccard: of the layers each "
                         "would remove at that fraction")
