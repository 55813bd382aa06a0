"""Figures of a scan: Gromov-style heatmaps (block size n against start l, colour = distance) per
input and region, where both inputs were scanned the speech-minus-text difference of those
heatmaps, the best start l*(n) against n, and the bootstrap stability of l*(n); and the
side-by-side figure of ``compare``. Matplotlib with the Agg backend, nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speechprune.scan.blocks import block_distances
from speechprune.scan.result import ScanResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


DISTANCE_LABEL = r"angular distance $d(x_l,\ x_{l+n})$ = arccos(cos) / $\pi$"
MARKERS = "osD^v<>p*h"


def heatmap(ax, angular: np.ndarray, title: str, vmin: float | None = None, vmax: float | None = None):
    """Draw one block-distance heatmap into ``ax``; returns the image for a colour bar."""
    table = block_distances(np.asarray(angular))
    num_layers = table.shape[0]
    image = ax.imshow(np.ma.masked_invalid(table), origin="lower", aspect="auto", cmap="viridis_r",
                      vmin=vmin, vmax=vmax, extent=(-0.5, num_layers - 0.5, 0.5, num_layers + 0.5),
                      interpolation="nearest")
    starts = [int(np.nanargmin(table[n - 1, : num_layers - n + 1])) for n in range(1, num_layers + 1)]
    ax.plot(starts, range(1, num_layers + 1), "o", color="red", markersize=3, label=r"best start $l^*(n)$")
    ax.legend(fontsize=7, loc="upper right")
    _block_axes(ax, title)
    return image


def _block_axes(ax, title: str) -> None:
    """Integer ticks and the [l, l+n) labels of a block heatmap."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("start layer l, 0-based\n(block [l, l+n) removed)")
    ax.set_ylabel("block size n (layers)")
    ax.set_title(title, fontsize=9)


DIFFERENCE_LABEL = r"$d_{speech} - d_{text}$ (positive: speech finds the block less redundant)"


def difference_heatmap(ax, speech: np.ndarray, text: np.ndarray, title: str):
    """Draw d_speech - d_text of every block [l, l+n) into ``ax`` on a diverging scale centred on 0;
    returns the image for a colour bar."""
    table = block_distances(np.asarray(speech)) - block_distances(np.asarray(text))
    num_layers = table.shape[0]
    bound = float(np.nanmax(np.abs(table))) or 1e-12
    image = ax.imshow(np.ma.masked_invalid(table), origin="lower", aspect="auto", cmap="RdBu_r", vmin=-bound,
                      vmax=bound, extent=(-0.5, num_layers - 0.5, 0.5, num_layers + 0.5), interpolation="nearest")
    _block_axes(ax, title)
    return image


def difference_figure(result: ScanResult, region: str, path: Path) -> str:
    """The speech-minus-text heatmap of one region of a scan with both inputs."""
    plt = _pyplot()
    speech, text = result.inputs["speech"][region], result.inputs["text"][region]
    fig, ax = plt.subplots(figsize=(6, 4.8))
    counts = f" ({speech.count} and {text.count} positions)" if speech.count is not None else ""
    image = difference_heatmap(ax, speech.angular, text.angular,
                               f"{result.subject()}\nspeech minus text input, {region} positions{counts}")
    fig.colorbar(image, ax=ax, label=DIFFERENCE_LABEL)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def scan_figures(result: ScanResult, out: Path) -> list[str]:
    """Write every figure of one scan into ``out``; returns the file names."""
    plt = _pyplot()
    out = Path(out)
    names: list[str] = []
    about = result.subject()
    for input_name, regions in result.inputs.items():
        for region, entry in regions.items():
            if not entry.counted:
                continue
            fig, ax = plt.subplots(figsize=(6, 4.8))
            counted = f" ({entry.count} counted)" if entry.count is not None else ""
            image = heatmap(ax, entry.angular, f"{about}\n{input_name} input, {region} positions{counted}")
            fig.colorbar(image, ax=ax, label=DISTANCE_LABEL)
            fig.tight_layout()
            name = f"heatmap_{input_name}_{region}.png"
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            names.append(name)
            if entry.stability:
                name = f"stability_{input_name}_{region}.png"
                stability_figure(entry.stability, f"{about}\n{input_name} input, {region} positions", out / name)
                names.append(name)
    if {"speech", "text"} <= set(result.inputs):
        for region, entry in result.inputs["speech"].items():
            other = result.inputs["text"].get(region)
            if entry.counted and other is not None and other.counted:
                names.append(difference_figure(result, region, out / f"heatmap_speech_minus_text_{region}.png"))
    names.append(best_blocks_figure(result, out / "best_blocks.png"))
    return names


def best_blocks_figure(result: ScanResult, path: Path) -> str:
    """l*(n) against n: one panel per input, one marker per region, lines nudged apart vertically so
    that regions that agree stay visible instead of hiding each other."""
    plt = _pyplot()
    num_layers = result.num_layers
    inputs = [(name, regions) for name, regions in result.inputs.items()
              if any(entry.best_blocks for entry in regions.values())]
    fig, axes = plt.subplots(1, max(1, len(inputs)), figsize=(5.2 * max(1, len(inputs)), 4.6), squeeze=False,
                             sharey=True)
    for ax, (input_name, all_regions) in zip(axes[0], inputs):
        regions = [(region, entry) for region, entry in all_regions.items() if entry.best_blocks]
        step = 0.3 / max(1, len(regions) - 1)
        for k, (region, entry) in enumerate(regions):
            offset = (k - (len(regions) - 1) / 2) * step if len(regions) > 1 else 0.0
            ns = [b["n"] for b in entry.best_blocks]
            ax.plot(ns, [b["start"] + offset for b in entry.best_blocks], marker=MARKERS[k % len(MARKERS)],
                    markersize=5, linewidth=1, alpha=0.85, fillstyle="none", label=region)
        ax.set_xlabel("block size n (layers)")
        ax.set_xlim(0.5, num_layers + 0.5)
        ax.set_ylim(-0.5, num_layers - 0.5)
        ax.grid(alpha=0.3)
        ax.set_title(f"{input_name} input", fontsize=9)
        ax.legend(fontsize=7, title="region", title_fontsize=7)
    axes[0][0].set_ylabel("best start l*(n), 0-based\n(regions nudged apart by < 0.2 to stay visible)")
    fig.suptitle(f"{result.subject()}: most redundant block [l*(n), l*(n)+n) for every n", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def stability_figure(stability: list[dict], title: str, path: Path) -> None:
    plt = _pyplot()
    ns = np.array([s["n"] for s in stability])
    dist = np.array([s["distance"] for s in stability])
    fig, axes = plt.subplots(3, 1, figsize=(6, 7.4), sharex=True)
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
    rates = [s["change_rate"] or 0.0 for s in stability]
    axes[2].bar(ns, rates)
    axes[2].set_ylim(0, 1)
    if not any(rates):
        axes[2].text(0.5, 0.5, "l*(n) never changed under resampling (every rate is 0)", ha="center",
                     va="center", transform=axes[2].transAxes, fontsize=9, color="dimgrey")
    axes[2].set_ylabel("P(l*(n) changes)\nunder resampling")
    axes[2].set_xlabel("block size n (layers); l*(n) is the 0-based start of block [l, l+n)")
    from matplotlib.ticker import MaxNLocator

    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title(f"stability of the best block (bootstrap over utterances)\n{title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_figure(profiles: list[dict], path: Path, title: str = "") -> None:
    """Heatmaps side by side, on one colour scale. profiles: dicts with ``label`` and ``angular``."""
    plt = _pyplot()
    tables = [block_distances(np.asarray(p["angular"])) for p in profiles]
    vmin = float(min(np.nanmin(t) for t in tables))
    vmax = float(max(np.nanmax(t) for t in tables))
    fig, axes = plt.subplots(1, len(profiles), figsize=(4.2 * len(profiles) + 1, 4.2), squeeze=False)
    image = None
    for k, (ax, profile) in enumerate(zip(axes[0], profiles)):
        image = heatmap(ax, profile["angular"], profile["label"], vmin=vmin, vmax=vmax)
        if k:
            ax.set_ylabel("")
    fig.colorbar(image, ax=list(axes[0]), label=DISTANCE_LABEL)
    if title:
        fig.suptitle(title, fontsize=9, y=1.06)  # above the panels' own titles
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
