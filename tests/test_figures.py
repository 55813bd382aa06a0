"""Figures that explain themselves: what each saved figure says is read back from the matplotlib
objects at the moment they are saved (titles, axis labels, notes, lines, axis limits)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from speechprune.scan.blocks import best_blocks  # noqa: E402
from speechprune.scan.result import ScanResult  # noqa: E402
from tests.helpers import noisy_angular  # noqa: E402


@pytest.fixture
def saved(monkeypatch):
    """Every figure saved while the test runs, by file name, as a dict of what it shows."""
    figures: dict[str, dict] = {}
    real_savefig = Figure.savefig

    def record(fig, path, *args, **kwargs):
        axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        # a figure written through files.atomic_path goes to ".NAME.<random>.tmp.png" first
        name = re.sub(r"^\.(.+)\.[^.]+\.tmp\.\w+$", r"\1", Path(path).name)
        figures[name] = {
            "suptitle": fig._suptitle.get_text() if fig._suptitle else "",
            "titles": [ax.get_title() for ax in axes],
            "xlabels": [ax.get_xlabel() for ax in axes],
            "ylabels": [ax.get_ylabel() for ax in axes],
            "colorbar": [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"],
            "texts": [[t.get_text() for t in ax.texts] for ax in axes],
            "lines": [[(line.get_label(), line.get_marker(), np.asarray(line.get_ydata(), dtype=float))
                       for line in ax.lines] for ax in axes],
            "ylim": [ax.get_ylim() for ax in axes],
        }
        return real_savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def _angular(num_layers: int, seed: int) -> np.ndarray:
    return noisy_angular(num_layers, seed, noise=0.02)


def _stability(num_layers: int, rates: list[float]) -> list[dict]:
    return [{"n": n, "distance": 0.1 * n, "distance_ci95": [0.09 * n, 0.11 * n], "margin": 0.01,
             "margin_ci95": [0.005, 0.02], "change_rate": rate} for n, rate in zip(range(1, num_layers + 1), rates)]


def scan_result(num_layers: int = 5) -> ScanResult:
    same = _angular(num_layers, 0)  # regions that agree exactly: their l*(n) lines coincide
    regions = {region: {"angular": same.tolist(), "cosine": np.cos(np.pi * same).tolist(), "count": 40,
                        "best_blocks": best_blocks(same)}
               for region in ("all", "last", "target")}
    regions["all"]["stability"] = _stability(num_layers, [0.0] * num_layers)
    other = _angular(num_layers, 1)
    text = {"all": {"angular": other.tolist(), "cosine": np.cos(np.pi * other).tolist(), "count": 40,
                    "best_blocks": best_blocks(other),
                    "stability": _stability(num_layers, [0.0, 0.3] + [0.0] * (num_layers - 2))}}
    return ScanResult.from_dict({"num_layers": num_layers,
                                 "inputs": {"speech": {"regions": regions}, "text": {"regions": text}},
                                 "model": {"path": "/runs/demo/model"},
                                 "data": {"manifest": "/runs/demo/corpus/asr-en.dev.jsonl"}})


def test_scan_figures_name_model_data_and_index_convention(saved, tmp_path):
    from speechprune.scan.plots import scan_figures

    scan_figures(scan_result(), tmp_path)
    heatmap = saved["heatmap_speech_all.png"]
    assert "model on asr-en.dev.jsonl" in heatmap["titles"][0] and "speech input, all positions" in heatmap["titles"][0]
    assert "0-based" in heatmap["xlabels"][0] and "[l, l+n)" in heatmap["xlabels"][0]
    assert "angular distance" in heatmap["colorbar"][0] and "x_{l+n}" in heatmap["colorbar"][0]
    assert "$" in heatmap["colorbar"][0], "the maths is rendered, not printed as code"
    best = saved["best_blocks.png"]
    assert "model on asr-en.dev.jsonl" in best["suptitle"] and "[l*(n), l*(n)+n)" in best["suptitle"]
    assert "0-based" in best["ylabels"][0]


def test_coinciding_best_block_lines_stay_visible(saved, tmp_path):
    from speechprune.scan.plots import scan_figures

    scan_figures(scan_result(), tmp_path)
    best = saved["best_blocks.png"]
    assert best["titles"] == ["speech input", "text input"]  # one panel per input
    speech = best["lines"][0]
    assert [label for label, _, _ in speech] == ["all", "last", "target"]
    assert len({marker for _, marker, _ in speech}) == 3, "each region has its own marker"
    ys = [y for _, _, y in speech]
    # the three regions have the same l*(n): drawn apart, by less than half a layer, around the true value
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.all(np.abs(ys[a] - ys[b]) > 0.05)
    truth = np.array([b["start"] for b in scan_result().inputs["speech"]["all"].best_blocks])
    assert all(np.all(np.abs(y - truth) < 0.25) for y in ys)


def test_stability_panel_says_when_every_change_rate_is_zero(saved, tmp_path):
    from speechprune.scan.plots import scan_figures

    scan_figures(scan_result(), tmp_path)
    all_zero = saved["stability_speech_all.png"]
    assert any("every rate is 0" in text for text in all_zero["texts"][2])
    assert "model on asr-en.dev.jsonl" in all_zero["titles"][0]
    some_change = saved["stability_text_all.png"]
    assert not any("every rate is 0" in text for text in some_change["texts"][2])


def _rows(baseline_wer: float, wers: list[float], bleus: list[float] | None = None) -> list[dict]:
    rows = []
    for k, (strategy, heal) in enumerate([("none", "none"), ("angular", "none"), ("angular", "receiving-mlp")]):
        removed = 0 if strategy == "none" else 2
        for set_name in ["asr-test"] + (["st-test"] if bleus else []):
            rows.append({"strategy": strategy, "heal": heal, "removed": removed, "fraction": removed / 8,
                         "set": set_name, "wer": (baseline_wer if not removed else wers[k - 1]) if set_name == "asr-test"
                         else None, "bleu": bleus[k] if set_name == "st-test" else None})
    return rows


def test_sweep_curves_draw_the_rule_for_every_metric(saved, tmp_path):
    from speechprune.sweep import SweepConfig, _plot, bleu_limit, wer_limit

    config = SweepConfig(model="/runs/demo/model", scan="s", train=["t"], test=["t"], out=str(tmp_path))
    _plot(_rows(0.1, [0.11, 0.3], bleus=[30.0, 20.0, 25.0]), tmp_path, config)
    wer = saved["curve_asr-test.png"]
    assert "model on asr-test" in wer["titles"][0] and "WER" in wer["titles"][0]
    rules = [y[0] for label, _, y in wer["lines"][0] if label.startswith("acceptable")]
    assert rules == [pytest.approx(wer_limit(0.1, config))]
    bleu = saved["curve_st-test.png"]
    rules = [y[0] for label, _, y in bleu["lines"][0] if label.startswith("acceptable")]
    assert rules == [pytest.approx(bleu_limit(30.0, config))]
    assert bleu["ylim"][0][0] == 0 and bleu["ylim"][0][1] >= 30.0


def test_sweep_wer_axis_is_clipped_and_says_so(saved, tmp_path):
    from speechprune.sweep import WER_AXIS_TOP, SweepConfig, _plot, wer_limit

    config = SweepConfig(model="m", scan="s", train=["t"], test=["t"], out=str(tmp_path))
    _plot(_rows(1.0, [3.0, 2.0]), tmp_path, config)  # a poor baseline: its rule lies above any sensible axis
    wer = saved["curve_asr-test.png"]
    assert wer["ylim"][0] == (0.0, WER_AXIS_TOP) and wer_limit(1.0, config) > WER_AXIS_TOP
    assert not [label for label, _, _ in wer["lines"][0] if label.startswith("acceptable")]
    texts = " ".join(wer["texts"][0])
    assert "above the axis" in texts and f"values above {WER_AXIS_TOP:.2f}" in texts
    # every curve stays on the axis: values beyond it are drawn on the edge
    assert all(np.nanmax(y) <= WER_AXIS_TOP for _, _, y in wer["lines"][0])


def test_sweep_curves_tick_at_the_fractions_run(tmp_path, monkeypatch):
    from matplotlib.figure import Figure as MatplotlibFigure

    from speechprune.sweep import SweepConfig, _plot

    ticks = {}
    real_savefig = MatplotlibFigure.savefig

    def record(fig, path, *args, **kwargs):
        ticks[Path(path).name] = [list(ax.get_xticks()) for ax in fig.axes]
        return real_savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(MatplotlibFigure, "savefig", record)
    config = SweepConfig(model="m", scan="s", train=["t"], test=["t"], out=str(tmp_path))
    _plot(_rows(0.1, [0.11, 0.3]), tmp_path, config)
    (shown,) = [value for name, value in ticks.items() if "curve_asr-test" in name]
    assert shown == [[0.0, 0.25]]  # the baseline and the one level run (2 of 8 layers)


def _report_rows(low_high: dict[int, tuple[float, float]]) -> list[dict]:
    rows = []
    for removed, wer in ((0, 0.10), (1, 0.11), (3, 0.20)):
        low, high = low_high[removed]
        rows.append({"strategy": "angular" if removed else "none", "heal": "none", "removed": removed,
                     "fraction": removed / 8, "set": "test", "wer": wer, "wer_low": low, "wer_high": high,
                     "bleu": None})
    return rows


def test_report_sweep_figure_draws_intervals_and_says_which_hide(monkeypatch):
    from speechprune.report import figures

    drawn = {}

    def keep(figure):
        axis = figure.axes[0]
        drawn["ticks"] = list(axis.get_xticks())
        drawn["bars"] = [collection.get_segments() for collection in axis.collections]
        return "data:image/png;base64,"

    monkeypatch.setattr(figures, "_png_uri", keep)
    summary = {"largest_acceptable": {}, "rules": {"wer_rise": 0.25, "wer_floor": 0.02, "bleu_drop": 0.25}}
    wide = {0: (0.05, 0.15), 1: (0.06, 0.16), 3: (0.15, 0.25)}
    _, hidden = figures.sweep_png(_report_rows(wide), summary, "test")
    assert hidden == 0 and drawn["ticks"] == [0.0, 0.125, 0.375]
    segments = [s for bars in drawn["bars"] for s in bars]
    assert sorted((round(s[0][1], 6), round(s[1][1], 6)) for s in segments) == sorted(wide.values())
    narrow = {0: (0.0999, 0.1001), 1: (0.06, 0.16), 3: (0.1999, 0.2001)}
    _, hidden = figures.sweep_png(_report_rows(narrow), summary, "test")
    assert hidden == 2  # two intervals a fraction of a point tall; the wide one shows


def test_scan_figures_include_the_speech_minus_text_difference(saved, tmp_path):
    from speechprune.scan.blocks import block_distances
    from speechprune.scan.plots import difference_heatmap, scan_figures

    result = scan_result()
    names = scan_figures(result, tmp_path)
    assert "heatmap_speech_minus_text_all.png" in names and "heatmap_speech_minus_text_last.png" not in names
    shown = saved["heatmap_speech_minus_text_all.png"]
    assert "speech minus text input, all positions" in shown["titles"][0]
    assert "d_{speech} - d_{text}" in shown["colorbar"][0]
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    speech, text = (result.inputs[i]["all"].angular for i in ("speech", "text"))
    image = difference_heatmap(axis, speech, text, "t")
    expected = block_distances(np.asarray(speech)) - block_distances(np.asarray(text))
    assert np.allclose(np.ma.filled(image.get_array(), np.nan), expected, equal_nan=True)
    low, high = image.get_clim()
    assert low == -high == -np.nanmax(np.abs(expected))  # centred on 0: no difference is white
    plt.close(figure)
