"""Figures of a scan: Gromov-style heatmaps (block size n against start l, colour = distance) per
input and region, the best start l*(n) against n, and the bootstrap stability of l*(n); and the
side-by-side figure of ``compare``. Matplotlib's Agg canvas (no pyplot), nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speechprune.scan.blocks import block_distances


def _figure(figsize: tuple[float, float], margins: dict | None = None):
    """A figure drawn by the Agg canvas, without pyplot (whose import and figure manager cost more
    than drawing a scan's figures); fixed margins instead of tight_layout's extra draw pass."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    fig.subplots_adjust(**(margins or {"left": 0.13, "right": 0.97, "bottom": 0.12, "top": 0.92}))
    return fig


def heatmap(ax, angular: np.ndarray, title: str, vmin: float | None = None, vmax: float | None = None):
    """Draw one block-distance heatmap into ``ax``; returns the image for a colour bar."""
    table = block_distances(np.asarray(angular))
    num_layers = table.shape[0]
    image = ax.imshow(np.ma.masked_invalid(table), origin="lower", aspect="auto", cmap="viridis_r",
                      vmin=vmin, vmax=vmax, extent=(-0.5, num_layers - 0.5, 0.5, num_layers + 0.5),
                      interpolation="nearest")
    starts = [int(np.nanargmin(table[n - 1, : num_layers - n + 1])) for n in range(1, num_layers + 1)]
    ax.plot(starts, range(1, num_layers + 1), "o", color="red", markersize=3, label="l*(n)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("start layer l (block [l, l+n), 0-based)")
    ax.set_ylabel("block size n")
    ax.set_title(title, fontsize=9)
    return image


def scan_figures(payload: dict, out: Path) -> list[str]:
    """Write every figure of one scan into ``out``; returns the file names."""
    out = Path(out)
    names: list[str] = []
    num_layers = payload["num_layers"]
    for input_name, data in payload["inputs"].items():
        for region, entry in data["regions"].items():
            if entry["angular"] is None:
                continue
            fig = _figure((5.5, 4.5), {"left": 0.12, "right": 0.98, "bottom": 0.11, "top": 0.93})
            ax = fig.subplots()
            image = heatmap(ax, entry["angular"], f"{input_name} input, {region} positions "
                                                  f"({entry['count']} counted)")
            fig.colorbar(image, ax=ax, label="angular distance d(x_l, x_{l+n})")
            name = f"heatmap_{input_name}_{region}.png"
            fig.savefig(out / name, dpi=110)
            names.append(name)
            if entry.get("stability"):
                name = f"stability_{input_name}_{region}.png"
                stability_figure(entry["stability"], f"{input_name} input, {region} positions", out / name)
                names.append(name)
    fig = _figure((5.5, 4.5))
    ax = fig.subplots()
    for input_name, data in payload["inputs"].items():
        for region, entry in data["regions"].items():
            if entry["best_blocks"]:
                ns = [b["n"] for b in entry["best_blocks"]]
                ax.plot(ns, [b["start"] for b in entry["best_blocks"]], marker="o", markersize=3,
                        label=f"{input_name}/{region}")
    ax.set_xlabel("block size n")
    ax.set_ylabel("best start l*(n) (0-based)")
    ax.set_xlim(0.5, num_layers + 0.5)
    ax.set_ylim(-0.5, num_layers - 0.5)
    ax.set_title("best block [l*(n), l*(n)+n) for every n", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(out / "best_blocks.png", dpi=110)
    names.append("best_blocks.png")
    return names


def stability_figure(stability: list[dict], title: str, path: Path) -> None:
    ns = np.array([s["n"] for s in stability])
    dist = np.array([s["distance"] for s in stability])
    fig = _figure((6, 7), {"left": 0.17, "right": 0.97, "bottom": 0.07, "top": 0.95, "hspace": 0.12})
    axes = fig.subplots(3, 1, sharex=True)
    lo = np.array([s["distance_ci95"][0] if s["distance_ci95"] else np.nan for s in stability])
    hi = np.array([s["distance_ci95"][1] if s["distance_ci95"] else np.nan for s in stability])
    axes[0].errorbar(ns, dist, yerr=[dist - lo, hi - dist], fmt="o", markersize=3, capsize=2)
    axes[0].set_ylabel("d of l*(n)\n(95% CI)")
    margin = np.array([s["margin"] if s["margin"] is not None else np.nan for s in stability])
    mlo = np.array([s["margin_ci95"][0] if s["margin_ci95"] else np.nan for s in stability])
    mhi = np.array([s["margin_ci95"][1] if s["margin_ci95"] else np.nan for s in stability])
    axes[1].errorbar(ns, margin, yerr=[margin - mlo, mhi - margin], fmt="o", markersize=3, capsize=2)
    axes[1].axhline(0, color="grey", linewidth=0.8)
    axes[1].set_ylabel("margin to runner-up\n(95% CI)")
    axes[2].bar(ns, [s["change_rate"] or 0.0 for s in stability])
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel("P(l*(n) changes)\nunder resampling")
    axes[2].set_xlabel("block size n")
    axes[0].set_title(f"stability of the best block, {title}", fontsize=9)
    fig.savefig(path, dpi=110)


def compare_figure(profiles: list[dict], path: Path, title: str = "") -> None:
    """Heatmaps side by side, on one colour scale. profiles: dicts with ``label`` and ``angular``."""
    from matplotlib.figure import Figure

    tables = [block_distances(np.asarray(p["angular"])) for p in profiles]
    vmin = float(min(np.nanmin(t) for t in tables))
    vmax = float(max(np.nanmax(t) for t in tables))
    fig = Figure(figsize=(4.2 * len(profiles) + 1, 4.2))
    axes = fig.subplots(1, len(profiles), squeeze=False)
    image = None
    for k, (ax, profile) in enumerate(zip(axes[0], profiles)):
        image = heatmap(ax, profile["angular"], profile["label"], vmin=vmin, vmax=vmax)
        if k:
            ax.set_ylabel("")
    fig.colorbar(image, ax=list(axes[0]), label="angular distance")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
