"""The report's figures, each returned as text that goes straight into the HTML: heatmaps as inline
SVG (every cell carries l, n and the distance for the hover read-out), the rest as matplotlib PNGs
in data: URIs. Nothing is fetched at view time.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from speechprune.report.summary import row_metric
from speechprune.scan.blocks import block_distances
from speechprune.sweep import wer_limit

COLOUR_MAP = "viridis_r"  # the scan's own heatmaps use it: low distance (redundant) is yellow


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_uri(figure) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plain_text():
    """Labels come from data: a '$' in a condition name must not switch matplotlib to math mode."""
    import matplotlib

    return matplotlib.rc_context({"text.parse_math": False})


def _hex(colour_map, value: float) -> str:
    r, g, b, _ = colour_map(value)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def distance_range(matrices: list) -> tuple[float, float]:
    """One colour scale for heatmaps shown side by side."""
    tables = [block_distances(np.asarray(m)) for m in matrices]
    return float(min(np.nanmin(t) for t in tables)), float(max(np.nanmax(t) for t in tables))


def heatmap_svg(angular, title: str, vmin: float, vmax: float) -> str:
    """Block size n (rows, n = 1 at the bottom) against start l; each cell's data-* attributes and
    <title> hold l, n, the block [l, l+n) and d(x_l, x_{l+n}); l*(n) is marked with a dot."""
    import matplotlib

    colour_map = matplotlib.colormaps[COLOUR_MAP]
    table = block_distances(np.asarray(angular))
    num_layers = table.shape[0]
    cell = max(10, min(34, 320 // num_layers))
    left, top, bottom = 44, 26, 40
    width, height = max(left + cell * num_layers + 10, 300), top + cell * num_layers + bottom
    span = (vmax - vmin) or 1.0
    parts = [f'<svg class="heatmap" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="16" class="svg-title">{escape(title)}</text>']
    for n in range(1, num_layers + 1):
        y = top + (num_layers - n) * cell
        row = table[n - 1, : num_layers - n + 1]
        best = int(np.nanargmin(row))
        for start, distance in enumerate(row):
            x = left + start * cell
            colour = _hex(colour_map, (distance - vmin) / span)
            parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{colour}" '
                         f'data-l="{start}" data-n="{n}" data-d="{distance:.5f}">'
                         f'<title>l={start}, n={n}, block [{start},{start + n}), d={distance:.5f}</title></rect>')
        cx, cy = left + best * cell + cell / 2, y + cell / 2
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="{max(2, cell // 6)}" fill="#d62728" pointer-events="none"/>')
    step = max(1, num_layers // 8)
    for k in range(0, num_layers, step):
        parts.append(f'<text x="{left + k * cell + cell / 2}" y="{top + num_layers * cell + 14}" '
                     f'class="tick" text-anchor="middle">{k}</text>')
        n = k + 1
        parts.append(f'<text x="{left - 6}" y="{top + (num_layers - n) * cell + cell / 2 + 4}" class="tick" '
                     f'text-anchor="end">{n}</text>')
    parts.append(f'<text x="{left + num_layers * cell / 2}" y="{height - 6}" class="axis" text-anchor="middle">'
                 f'start layer l</text>')
    parts.append(f'<text x="12" y="{top + num_layers * cell / 2}" class="axis" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + num_layers * cell / 2})">block size n</text>')
    parts.append("</svg>")
    return "".join(parts)


def colour_bar_svg(vmin: float, vmax: float, steps: int = 24) -> str:
    import matplotlib

    colour_map = matplotlib.colormaps[COLOUR_MAP]
    width = 220
    parts = [f'<svg class="colourbar" width="{width + 80}" height="34" '
             f'role="img" aria-label="colour scale">']
    for k in range(steps):
        parts.append(f'<rect x="{40 + k * width / steps}" y="2" width="{width / steps + 0.5}" height="12" '
                     f'fill="{_hex(colour_map, k / (steps - 1))}"/>')
    parts.append(f'<text x="36" y="28" class="tick" text-anchor="start">{vmin:.3f}</text>')
    parts.append(f'<text x="{40 + width}" y="28" class="tick" text-anchor="end">{vmax:.3f}</text>')
    parts.append(f'<text x="{40 + width / 2}" y="28" class="tick" text-anchor="middle">angular distance</text>')
    parts.append("</svg>")
    return "".join(parts)


def best_blocks_png(profiles: list[dict]) -> str:
    """l*(n) against n per profile (top) and the distance of that block with its bootstrap 95%
    interval (bottom). profiles: ``label``, ``best_blocks`` and optionally ``stability``."""
    plt = _pyplot()
    with _plain_text():
        figure, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True)
        for k, profile in enumerate(profiles):
            ns = np.array([b["n"] for b in profile["best_blocks"]])
            offset = (k - (len(profiles) - 1) / 2) * 0.08  # side by side where the lines coincide
            top.plot(ns + offset, [b["start"] for b in profile["best_blocks"]], marker="o", markersize=4,
                     label=profile["label"])
            stability = profile.get("stability") or []
            if stability and all(s.get("distance_ci95") for s in stability):
                dist = np.array([s["distance"] for s in stability])
                lo = np.array([s["distance_ci95"][0] for s in stability])
                hi = np.array([s["distance_ci95"][1] for s in stability])
                bottom.errorbar(np.array([s["n"] for s in stability]) + offset, dist, yerr=[dist - lo, hi - dist],
                                fmt="o", markersize=3, capsize=2, label=profile["label"])
            else:
                bottom.plot(ns + offset, [b["distance"] for b in profile["best_blocks"]], "o", markersize=3,
                            label=f"{profile['label']} (no bootstrap)")
        from matplotlib.ticker import MaxNLocator

        for axis in (top, bottom):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        top.yaxis.set_major_locator(MaxNLocator(integer=True))
        top.set_ylabel("best start l*(n)")
        top.legend(fontsize=7)
        bottom.set_ylabel("d(x_l*, x_l*+n)\n95% bootstrap interval")
        bottom.set_xlabel("block size n")
        bottom.legend(fontsize=7)
        return _png_uri(figure)


def perplexity_png(curve: list[dict], levelled_off_at: int | None) -> str:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 3.2))
    axis.plot([c["step"] for c in curve], [c["dev_ppl"] for c in curve], marker="o", markersize=3)
    if levelled_off_at is not None:
        axis.axvline(levelled_off_at, color="grey", linestyle=":", label=f"levelled off (step {levelled_off_at})")
        axis.legend(loc="upper right")
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("dev perplexity (log scale)")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    return _png_uri(figure)


def sweep_png(rows: list[dict], summary: dict, set_name: str) -> tuple[str, int]:
    """WER (or BLEU, or perplexity) against the removed fraction, one line per strategy and healing, each point with
    its 95% bootstrap interval as an error bar, x ticks at the fractions run, the acceptability limit
    dotted and each line's largest acceptable fraction starred. Returns the image and how many of
    the intervals drawn are shorter than their marker (hidden behind it)."""
    plt = _pyplot()
    of_set = [r for r in rows if r["set"] == set_name]
    metric, label, _ = row_metric(of_set) or ("wer", "WER", 3)
    baseline = [r for r in of_set if r["removed"] == 0]
    marker_size = 4.0  # points
    hidden = 0
    with _plain_text():
        figure, axis = plt.subplots(figsize=(6.4, 4.2))
        lines = []
        for strategy, heal in sorted({(r["strategy"], r["heal"]) for r in of_set if r["removed"] > 0}):
            line = sorted(baseline + [r for r in of_set if (r["strategy"], r["heal"]) == (strategy, heal)],
                          key=lambda r: r["fraction"])
            line = [r for r in line if r.get(metric) is not None]
            xs, ys = [r["fraction"] for r in line], [r[metric] for r in line]
            low = [r.get(f"{metric}_low") for r in line]
            high = [r.get(f"{metric}_high") for r in line]
            style = "-" if heal == "none" else "--"
            if all(v is not None for v in low + high):
                drawn = axis.errorbar(xs, ys, yerr=[[y - lo for y, lo in zip(ys, low)],
                                                    [hi - y for y, hi in zip(ys, high)]],
                                      fmt=style, marker="o", markersize=marker_size, capsize=3,
                                      label=f"{strategy}, heal: {heal}")[0]
                lines.append((line, low, high))
            else:
                drawn = axis.plot(xs, ys, style, marker="o", markersize=marker_size,
                                  label=f"{strategy}, heal: {heal} (no interval)")[0]
            best = summary.get("largest_acceptable", {}).get(f"{strategy}/{heal}/{set_name}")
            if best is not None:
                at = [r for r in line if abs(r["fraction"] - best["fraction"]) < 1e-3]
                if at:
                    axis.plot([at[0]["fraction"]], [at[0][metric]], "*", markersize=15, color=drawn.get_color(),
                              markeredgecolor="black")
        if metric == "wer" and baseline and "rules" in summary:
            limit = wer_limit(baseline[0]["wer"], SimpleNamespace(**summary["rules"]))
            axis.axhline(limit, color="grey", linestyle=":", linewidth=1.5, label=f"acceptable WER ({limit:.3f})")
        fractions = sorted({r["fraction"] for r in of_set})
        axis.set_xticks(fractions, [f"{f:.3g}" for f in fractions])
        axis.set_xlabel("fraction of decoder layers removed (ticks: the fractions run)")
        axis.set_ylabel(label + " (bars: 95% bootstrap interval)")
        axis.set_title(f"{set_name} (star: largest acceptable fraction)", fontsize=9)
        axis.legend(fontsize=7)
        figure.canvas.draw()  # the transform below needs the final axis limits
        pixels_per_point = figure.dpi / 72
        seen = set()
        for line, low, high in lines:
            for row, lo, hi in zip(line, low, high):
                key = (row["fraction"], row["strategy"], row["heal"], lo, hi)
                if key in seen:
                    continue
                seen.add(key)
                (_, y0), (_, y1) = axis.transData.transform([(row["fraction"], lo), (row["fraction"], hi)])
                hidden += abs(y1 - y0) < marker_size * pixels_per_point
        return _png_uri(figure), hidden


def block_influence_png(profiles: list[dict]) -> str:
    """ShortGPT's Block Influence BI_l = 1 - mean cos(x_l, x_l+1) per decoder layer, one bar group
    per input; the bi strategy removes the layers with the lowest BI. profiles: ``label``, ``values``."""
    plt = _pyplot()
    with _plain_text():
        figure, axis = plt.subplots(figsize=(6.4, 3.0))
        width = 0.8 / max(1, len(profiles))
        for k, profile in enumerate(profiles):
            layers = np.arange(len(profile["values"]))
            axis.bar(layers + (k - (len(profiles) - 1) / 2) * width, profile["values"], width=width,
                     label=profile["label"])
        from matplotlib.ticker import MaxNLocator

        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("decoder layer l (0-based)")
        axis.set_ylabel("BI_l = 1 - cos(x_l, x_l+1)")
        axis.legend(fontsize=7)
        return _png_uri(figure)


def difference_png(result, region: str) -> str:
    """The speech-minus-text heatmap of one region (drawn by the scan's own figure code)."""
    from speechprune.scan.plots import DIFFERENCE_LABEL, difference_heatmap

    plt = _pyplot()
    speech, text = result.inputs["speech"][region], result.inputs["text"][region]
    with _plain_text():
        figure, axis = plt.subplots(figsize=(4.6, 3.5))
    image = difference_heatmap(axis, speech.angular, text.angular, f"speech minus text input, {region} positions")
    figure.colorbar(image, ax=axis, label=DIFFERENCE_LABEL)
    figure.tight_layout()
    return _png_uri(figure)


def file_uri(path) -> str:
    """A PNG file written by a command, as a data: URI (the page fetches nothing)."""
    with open(path, "rb") as handle:
        return "data:image/png;base64," + base64.b64encode(handle.read()).decode("ascii")


def agreement_matrix_png(conditions: list[str], metrics: dict) -> str:
    """One panel per agreement metric: conditions against conditions, values written in the cells."""
    plt = _pyplot()
    names = [name for name, values in metrics.items() if values]
    with _plain_text():
        figure, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names) + 0.6, 3.6), squeeze=False)
        for axis, name in zip(axes[0], names):
            matrix = np.asarray(metrics[name], dtype=np.float64)
            image = axis.imshow(matrix, cmap="viridis" if name != "mean_abs_shift" else "viridis_r")
            for i in range(matrix.shape[0]):
                for j in range(matrix.shape[1]):
                    axis.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
            axis.set_xticks(range(len(conditions)), conditions, rotation=45, ha="right", fontsize=7)
            axis.set_yticks(range(len(conditions)), conditions, fontsize=7)
            axis.set_title(name, fontsize=9)
            figure.colorbar(image, ax=axis, fraction=0.046)
        figure.tight_layout()
        return _png_uri(figure)


def parameters_text(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def size_figure(points: list[dict]):
    """The largest acceptable fraction removed against the decoder's parameters (log axis), one line
    per strategy, healing and test set, each point's bar reaching up to the largest fraction not
    ruled out. ``points``: dicts with model, parameters, strategy, heal, set, fraction and
    fraction_not_ruled_out (:func:`speechprune.report.summary.size_points`). Returns the matplotlib
    figure; :func:`size_png` is the report's image of it."""
    plt = _pyplot()
    lines = sorted({(p["strategy"], p["heal"], p["set"]) for p in points})
    several_sets = len({p["set"] for p in points}) > 1
    with _plain_text():
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for k, (strategy, heal, set_name) in enumerate(lines):
            line = sorted((p for p in points if (p["strategy"], p["heal"], p["set"]) == (strategy, heal, set_name)),
                          key=lambda p: p["parameters"])
            shift = 1 + 0.04 * (k - (len(lines) - 1) / 2)  # lines side by side on the log axis, not on top
            y = [p["fraction"] for p in line]
            up = [max(0.0, p["fraction_not_ruled_out"] - p["fraction"]) for p in line]
            label = strategy + ("" if heal == "none" else f", healed ({heal})") + (f", {set_name}" if several_sets
                                                                                   else "")
            axis.errorbar([p["parameters"] * shift for p in line], y, yerr=[[0.0] * len(y), up], marker="o",
                          capsize=4, label=label)
        axis.set_xscale("log")
        named: dict[int, list[str]] = {}
        for size, name in sorted({(p["parameters"], p["model"]) for p in points}):
            named.setdefault(size, []).append("/".join(Path(name).parts[-2:]))  # a path's tail: the table has it whole
        axis.set_xticks(list(named), ["\n".join(names + [parameters_text(size)]) for size, names in named.items()],
                        fontsize=7)
        axis.minorticks_off()
        axis.set_xlabel("decoder parameters (log scale)")
        axis.set_ylabel("largest acceptable fraction removed")
        axis.set_title("Largest acceptable fraction of layers removed, by decoder size\n"
                       "(bar: up to the largest fraction not ruled out)", fontsize=9)
        axis.set_ylim(0, min(1.0, max(p["fraction_not_ruled_out"] for p in points) + 0.08))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        figure.tight_layout()
    return figure


def size_png(points: list[dict]) -> str:
    return _png_uri(size_figure(points))
