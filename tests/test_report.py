"""``speechprune report``: what it finds in a run directory, what it says is missing, that its
numbers are the run's numbers, that text from data stays text; and, in headless chromium, that the
page loads with no console error and no broken image, hovers, and shows markup as text."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from speechprune.bootstrap import interval
from speechprune.cli import main
from speechprune.data.manifest import load_manifest
from speechprune.evaluate import EvalConfig, evaluate
from speechprune.files import RUN_MARKER, run_signature, write_json
from speechprune.report import ReportConfig, report
from speechprune.scan.compare import CompareConfig, compare
from speechprune.scan.run import ScanConfig, scan
from speechprune.sweep import SweepConfig, sweep
from tests.chromium import Browser, find_chromium
from tests.helpers import build_tiny_speechllm, write_tiny_manifest

LAYERS = 4
MARKUP = ["<script>window.__pwned = 1</script>", "<img src=x onerror=\"window.__pwned = 2\">"]
MARKUP_FOLDER = "run <svg onload=window.__pwned=3>"  # a path with markup (no '/': it is one folder)


WORDS_PER_UTTERANCE, UTTERANCES = 100, 6


def _row(errors: int) -> dict:
    """A decoded utterance of WORDS_PER_UTTERANCE words with ``errors`` of them substituted."""
    words = [f"w{i}" for i in range(WORDS_PER_UTTERANCE)]
    return {"task": "asr", "src_lang": "en", "tgt_lang": "en", "reference": " ".join(words),
            "hypothesis": " ".join(["x"] * errors + words[errors:])}


def _sweep_cell(strategy: str, removed: list[int], heal: str, wer: float) -> dict:
    """A cell record as the sweep writes it (decoding an untrained tiny model for every cell would
    take minutes; the sweep's own table, summary and curves are then made from these by sweep()).
    Every utterance has the same error rate, so that every paired bootstrap draw gives the same
    verdict as the point values."""
    errors = np.full((UTTERANCES, 2), [round(wer * WORDS_PER_UTTERANCE), WORDS_PER_UTTERANCE], dtype=np.float64)
    estimate = interval("wer", errors)
    return {"strategy": strategy if removed else "none", "fraction": len(removed) / LAYERS,
            "removed_count": len(removed), "heal": heal, "removed": removed, "kept_layers": LAYERS - len(removed),
            "original_layers": LAYERS, "heal_seconds": 0.0,
            "sets": {"tiny": {"asr": {"utterances": UTTERANCES, "words": UTTERANCES * WORDS_PER_UTTERANCE,
                                      "wer": estimate.value, "wer_interval": [estimate.low, estimate.high]},
                              "decode_seconds": 1.0 + 0.5 * (LAYERS - len(removed))}},
            "rows": {"tiny": [_row(round(wer * WORDS_PER_UTTERANCE)) for _ in range(UTTERANCES)]},
            "test_utterances": {"tiny": UTTERANCES},
            "decoder_bytes": 1000 * (LAYERS - len(removed)), "model_bytes": 2000}


def build_run(root: Path, manifest: Path, labels: list[str] | None = None) -> Path:
    """A small real run: model, scan (speech and text, bootstrap), compare, eval, sweep."""
    torch.manual_seed(0)
    model = build_tiny_speechllm(load_manifest(manifest), layers=LAYERS).save(root / "model")
    scan(ScanConfig(model=str(model), data=str(manifest), input="both", out=str(root / "scan"), bootstrap=20))
    compare(CompareConfig(scans=[str(root / "scan")], out=str(root / "compare"), labels=labels or []))
    evaluate(EvalConfig(model=str(model), data=[str(manifest)], out=str(root / "eval"), max_new_tokens=3))
    config = SweepConfig(model=str(model), scan=str(root / "scan"), train=[str(manifest)], test=[str(manifest)],
                         out=str(root / "sweep"), fractions=[0.0, 0.25, 0.5], strategies=["angular"],
                         heal=["none", "receiving-mlp"])
    cells = root / "sweep" / "cells"
    cells.mkdir(parents=True)
    # the cells stand as an unfinished run of this same sweep, which then resumes from them
    write_json(root / "sweep" / RUN_MARKER, {"signature": run_signature("sweep", config)})
    # baseline WER 0.10: the limit is max(0.125, 0.12) = 0.125
    records = {"baseline": _sweep_cell("none", [], "none", 0.10),
               "angular-remove1-none": _sweep_cell("angular", [2], "none", 0.11),
               "angular-remove2-none": _sweep_cell("angular", [1, 2], "none", 0.30),
               "angular-remove1-receiving-mlp": _sweep_cell("angular", [2], "receiving-mlp", 0.10),
               "angular-remove2-receiving-mlp": _sweep_cell("angular", [1, 2], "receiving-mlp", 0.12)}
    for name, record in records.items():
        write_json(cells / f"{name}.json", record)
    sweep(config)
    return root


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    return build_run(root / "run", write_tiny_manifest(root / "data"))


@pytest.fixture(scope="module")
def markup_run(tmp_path_factory) -> Path:
    """A run whose transcripts, labels, claims and paths all contain markup."""
    root = tmp_path_factory.mktemp("markup") / MARKUP_FOLDER
    manifest = write_tiny_manifest(root / "data", with_st=False)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for k, line in enumerate(lines):
        line["text"] = line["target"] = f"{MARKUP[k % 2]} the cat"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    build_run(root, manifest, labels=MARKUP)
    write_json(root / "study.json", {"claims": [{"claim": MARKUP[0], "measured": MARKUP[1], "paper": "a & b",
                                                 "evidence": "<b>bold?</b>"}]})
    return root


def _report(run: Path) -> tuple[str, str]:
    path = report(ReportConfig(run=[str(run)]))
    return path.read_text(encoding="utf-8"), (path.parent / "report.md").read_text(encoding="utf-8")


def test_report_shows_the_runs_own_numbers(small_run):
    html, md = _report(small_run)
    payload = json.loads((small_run / "scan" / "scan.json").read_text())
    # every heatmap cell carries d(x_l, x_l+n) straight from the scan's matrix
    cells = re.findall(r'data-l="(\d+)" data-n="(\d+)" data-d="([0-9.]+)"', html)
    per_map = LAYERS * (LAYERS + 1) // 2
    assert len(cells) == 4 * per_map  # speech and text, all and last positions
    speech_all = np.asarray(payload["inputs"]["speech"]["regions"]["all"]["angular"])
    for l, n, d in cells[:per_map]:
        assert abs(float(d) - speech_all[int(l), int(l) + int(n)]) <= 5e-6  # printed with 5 decimals
    # the l*(n) table: argmin over starts, recomputed here from the matrix
    for n in range(1, LAYERS + 1):
        start = int(np.argmin([speech_all[l, l + n] for l in range(LAYERS - n + 1)]))
        assert f"| {n} | {start} | [{start},{start + n}) |" in md
    # Block Influence per layer: 1 - mean cos(x_l, x_l+1), from the scan's cosine matrix
    cosine = np.asarray(payload["inputs"]["speech"]["regions"]["all"]["cosine"])
    for layer in range(LAYERS):
        assert f"| {layer} | {1 - cosine[layer, layer + 1]:.4f} |" in md
    # the sweep: without healing 1 layer of 4 is acceptable, healed 2 (limit 0.125), with the removed
    # layers, the largest level not ruled out and the counts it rests on
    assert ("| angular | none | tiny | 0.250 | 1 | 2 | 0.250 | 1 layer acceptable at 6; 2 layers not acceptable at 6 "
            "utterances | 6 utterances, 600 words |") in md
    assert ("| angular | receiving-mlp | tiny | 0.500 | 2 | 1 2 | 0.500 | 1 layer acceptable at 6; 2 layers acceptable "
            "at 6 utterances | 6 utterances, 600 words |") in md
    cells = md[md.index("| test set | strategy | healing | removed |"):]
    assert cells.splitlines()[2].startswith("| tiny | none | none | 0 | none | 0.100 [0.100, 0.100] |")  # baseline first
    assert "| tiny | angular | none | 2 | 1 2 | 0.300 [0.300, 0.300] | - | +200.0% [+200.0%, +200.0%] | not acceptable at 6 |" in md
    # every point's interval is zero wide here: the caption says they hide behind their markers
    # (baseline, two levels of two lines)
    assert "5 intervals are narrower than the marker" in md
    pair = json.loads((small_run / "compare" / "compare.json").read_text())["pairs"][0]
    assert f"| {pair['region']} | scan/speech | scan/text | {pair['spearman']:.3f} |" in md
    # bitmaps: speech-minus-text (all, last), Block Influence, l*(n), the compare's two figures, the sweep curve
    assert html.count("<img ") == 7
    assert html.count('alt="compare_') == 2 and html.count('alt="speech minus text') == 2
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img [^>]*src="([^"]*)"', html))
    assert "Not in this run: no study here" in html and "http://" not in html and "https://" not in html


def test_report_leads_with_its_findings(small_run):
    from speechprune.evaluate import with_interval

    _, md = _report(small_run)
    titles = re.findall(r"^## (.+)$", md, flags=re.MULTILINE)
    assert titles[0] == "Findings" and titles[-2:] == ["Not in this run", "What this run directory holds"]
    findings = md[: md.index("\n## ", md.index("## Findings") + 1)]
    asr = json.loads((small_run / "eval" / "metrics.json").read_text())["sets"]["tiny"]["asr"]
    assert f"| WER of model on tiny | {with_interval(asr, 'wer')} | 6 utterances, {asr['words']} words; " in findings
    assert ("| largest acceptable fraction of model (angular, healing none, tiny) | 0.250 (1 layer); removes layers 2; "
            "1 layer acceptable at 6; 2 layers not acceptable at 6 utterances | at most 6 utterances, 600 words;") in findings
    pair = json.loads((small_run / "compare" / "compare.json").read_text())["pairs"][0]
    assert f"Spearman {pair['spearman']:.3f}" in findings
    # nothing that is missing is said before the findings are over
    assert "Not in this run" not in md[: md.index("## Not in this run")]


def test_report_on_a_single_scan_has_findings(small_run, tmp_path, capsys):
    from speechprune.scan.compare import agreement

    only_scan = tmp_path / "only-scan"
    shutil.copytree(small_run / "scan", only_scan)
    capsys.readouterr()
    _, md = _report(only_scan)
    terminal = capsys.readouterr().err
    result = json.loads((only_scan / "scan.json").read_text())["inputs"]
    speech, text = (np.asarray(result[i]["regions"]["all"]["angular"]) for i in ("speech", "text"))
    rho = agreement(speech, text, [])["spearman"]
    for shown in (md, terminal):
        assert "most redundant blocks" in shown and f"Spearman {rho:.3f}" in shown
    best = result["speech"]["regions"]["all"]["best_blocks"][0]
    assert f"n=1: [{best['start']},{best['end']}) d={best['distance']:.3f}" in md


def test_report_says_what_is_missing(small_run, tmp_path):
    only_scan = tmp_path / "only-scan"
    shutil.copytree(small_run / "scan", only_scan / "scan")
    _, md = _report(only_scan)
    for kind in ("sweep", "eval", "compare", "study"):
        assert f"no {kind} here" in md
    nested = tmp_path / "study"
    shutil.copytree(small_run / "scan", nested / "cond-a" / "scan")
    shutil.copytree(small_run / "sweep", nested / "cond-a" / "sweep")
    stopped = json.loads((nested / "cond-a" / "sweep" / "summary.json").read_text())
    stopped["stopped"] = {"rule": "any-set", "lines": {"angular/none": 3}}  # as a sweep with --stop-line writes it
    write_json(nested / "cond-a" / "sweep" / "summary.json", stopped)
    write_json(nested / "study.json", {
        "claims": [{"claim": "text and speech agree", "measured": "Spearman 0.97", "paper": "nearly identical",
                    "evidence": "cond-a/scan"}],
        "agreement": {"conditions": ["a", "b"], "metrics": {"spearman": [[1, 0.9], [0.9, 1]],
                                                            "same_best_share": [[1, 0.5], [0.5, 1]],
                                                            "mean_abs_shift": [[0, 1.5], [1.5, 0]]}},
        "consensus": {"rows": [{"n": 1, "consensus_start": 2, "per_condition": {"a": 2, "b": 3}}]},
        "sweeps": {"a": "cond-a/sweep", "b": "cond-b/sweep"},
        "conditions": {
            "a": {"decoder": "smollm2", "num_layers": 30, "evidence": True, "bar_misses": [],
                  "metrics": {"asr-en.test": {"asr": {"wer": 0.065, "wer_interval": [0.045, 0.087],
                                                      "utterances": 100, "words": 679}}},
                  "inherited": {"spearman": 0.9912, "same_best_start": 0.75},
                  "text_speech": {"spearman": 0.998, "same_best_start": 1.0}},
            "b": {"decoder": "gemma3", "num_layers": 18, "evidence": False,
                  "bar_misses": ["WER on asr-fr.test 0.412 > 0.20"],
                  "metrics": {"asr-fr.test": {"asr": {"wer": 0.412, "wer_interval": [0.35, 0.47],
                                                      "utterances": 100, "words": 700}}}}},
        "time": {"seconds_by_kind": {"SpeechLLM training": 300.0, "sweeps": 100.0}}})
    html, md = _report(nested)
    assert "| text and speech agree | nearly identical | Spearman 0.97 | cond-a/scan |" in md
    assert "| 1 | 2 | 2 | 3 |" in md  # n, consensus start, per condition a, b
    assert "| a | cond-a/sweep | shown below |" in md and "| b | cond-b/sweep | not found |" in md
    assert "Scan: cond-a/scan" in md and "Sweep: cond-a/sweep" in md
    assert "Not every cell was run (--stop-line any-set): angular/none not run from 3 layers removed on." in md
    assert 'alt="agreement across conditions"' in html
    assert "| SpeechLLM training | 300 | 75% |" in md and "| all | 400 | 100% |" in md
    assert ("| a | smollm2 (30 layers) | WER on asr-en.test 0.065 [0.045, 0.087] (100 utterances, 679 words) | yes "
            "| Spearman 0.991, same l*(n) 75% | Spearman 0.998, same l*(n) 100% |") in md
    assert "| b | gemma3 (18 layers) | WER on asr-fr.test 0.412 [0.350, 0.470] (100 utterances, 700 words) " \
           "| not evidence: WER on asr-fr.test 0.412 &gt; 0.20 | not measured | not measured |" in md


def test_report_refuses_what_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no toolkit outputs" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert not list((tmp_path / "empty").iterdir())


def test_markup_from_data_is_escaped(markup_run):
    html, md = _report(markup_run)
    assert html.count("<script") == 1  # the page's own
    assert "<img src=x" not in html and "<svg onload" not in html and "<b>bold" not in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert "<script" not in md and "&lt;img src=x onerror=" in md


# in a real browser -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.skip("BROWSER TESTS SKIPPED: chromium is not installed (make test installs it with apt-get "
                    "install chromium; it could not here)")
    try:
        import websocket  # noqa: F401
    except ImportError:
        pytest.skip("BROWSER TESTS SKIPPED: the websocket-client package is missing (pip install -e '.[test]')")
    opened = Browser(executable)
    yield opened
    opened.close()


@pytest.mark.slow
def test_report_renders_in_chromium(small_run, browser, tmp_path):
    path = report(ReportConfig(run=[str(small_run)], out=str(tmp_path)))
    browser.open(path)
    assert browser.problems() == []
    images = browser.evaluate("Array.from(document.images).map(i => [i.complete && i.naturalWidth > 0, i.alt])")
    assert len(images) == 7 and all(ok for ok, _ in images), images
    assert browser.evaluate("document.querySelectorAll('svg.heatmap').length") == 4
    # hovering a cell reads out its l, n and distance
    cell = browser.evaluate("(() => { const c = document.querySelectorAll('svg.heatmap rect[data-l]')[5];"
                            " const r = c.getBoundingClientRect(); c.scrollIntoView();"
                            " const s = c.getBoundingClientRect();"
                            " return [s.x + s.width / 2, s.y + s.height / 2, c.dataset.l, c.dataset.n, c.dataset.d]; })()")
    browser.move_mouse(cell[0], cell[1])
    shown = browser.evaluate("document.getElementById('hover').textContent")
    assert shown == f"l={cell[2]}, n={cell[3]}, block [{cell[2]},{int(cell[2]) + int(cell[3])}), distance {cell[4]}"
    browser.evaluate("window.scrollTo(0, 0)")
    browser.screenshot(tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert browser.problems() == []


@pytest.mark.slow
def test_markup_is_shown_as_text_in_chromium(markup_run, browser):
    browser.open(report(ReportConfig(run=[str(markup_run)])))
    assert browser.problems() == []
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    assert browser.evaluate("document.scripts.length") == 1
    assert browser.evaluate("document.querySelectorAll('img:not([src^=\"data:image/png\"]), [onerror], [onload]')"
                            ".length") == 0
    text = browser.evaluate("document.body.innerText")
    assert MARKUP[0] in text and MARKUP[1] in text and MARKUP_FOLDER in text and "<b>bold?</b>" in text


def test_demo_rerun_reuses_finished_steps_and_ends_with_the_report(small_run, tmp_path):
    from speechprune.demo import DemoConfig, demo

    out = tmp_path / "demo"
    for step in ("model", "eval", "scan", "compare", "sweep"):
        shutil.copytree(small_run / step, out / step)
    write_json(out / "corpus" / "corpus.json", {})
    config = DemoConfig(out=str(out), tiny=True)  # the from-scratch path: no base LLM step to reuse
    write_json(out / RUN_MARKER, {"signature": run_signature("demo", config)})  # an unfinished demo
    stamp = (out / "sweep" / "summary.json").stat().st_mtime_ns
    path = demo(config)
    assert path == out / "report.html" and (out / "sweep" / "summary.json").stat().st_mtime_ns == stamp
    md = (out / "report.md").read_text()
    assert "## Demo: demo\n" in md and "base LLM" in md and "| angular | receiving-mlp | tiny | 0.500 | 2 |" in md


def test_report_joins_pruned_and_healed_models_to_their_evaluations(small_run, tmp_path):
    from speechprune.evaluate import with_interval
    from speechprune.heal import HealConfig, heal
    from speechprune.prune.run import PruneConfig, prune

    root = tmp_path / "models"
    manifest = next((small_run.parent / "data").glob("*.jsonl"))
    prune(PruneConfig(model=str(small_run / "model"), out=str(root / "pruned"), drop="1:3"))
    heal(HealConfig(model=str(root / "pruned"), data=[str(manifest)], out=str(root / "healed"), steps=2, batch_size=4))
    for name in ("pruned", "healed"):
        evaluate(EvalConfig(model=str(root / name), data=[str(manifest)], out=str(root / f"eval-{name}"),
                            max_new_tokens=3))
    shutil.copytree(small_run / "eval", root / "eval-original")  # its model lies outside this folder
    _, md = _report(root)
    strategy = json.loads((root / "pruned" / "pruning.json").read_text())["strategy"]
    for name, healed in (("pruned", "no"), ("healed", "LoRA on receiving-mlp")):
        asr = json.loads((root / f"eval-{name}" / "metrics.json").read_text())["sets"]["tiny"]["asr"]
        assert (f"| {name} | 2 of 4 | 1 2 | {strategy} | {healed} | tiny | {with_interval(asr, 'wer')} | - | "
                f"6 utterances, {asr['words']} words | eval-{name} |") in md
        assert f"## Evaluation: eval-{name} (model: {name})" in md
    assert f"| {small_run / 'model'} | all | none | - | no | tiny |" in md
    assert md.index("## Models and their evaluations") < md.index("## Evaluation: ")


def test_a_perplexity_result_is_reported_with_its_interval_and_tokens(tmp_path):
    """A plain LLM is judged by its perplexity: evaluation and sweep files holding one are shown as
    WER and BLEU are (written here by hand, in the form the evaluation and the sweep give them)."""
    lm = {"utterances": 5, "tokens": 120, "perplexity": 12.3, "perplexity_interval": [11.0, 13.9]}
    write_json(tmp_path / "eval" / "metrics.json", {"model": str(tmp_path / "llm"), "sets": {"text": {"lm": lm}}})
    rows = [{"strategy": strategy, "heal": "none", "removed": removed, "fraction": removed / 4, "set": "text",
             "wer": None, "bleu": None, "perplexity": value, "perplexity_low": value - 1, "perplexity_high": value + 1,
             "utterances": 5, "words": 120, "relative_change": value / 12.3 - 1 if removed else None,
             "relative_change_low": None, "relative_change_high": None, "verdict": "undecided" if removed else "-",
             "decoder_size_ratio": 1 - removed / 4, "removed_layers": " ".join(map(str, range(removed)))}
            for strategy, removed, value in (("none", 0, 12.3), ("angular", 1, 14.0))]
    write_json(tmp_path / "sweep" / "results.json", rows)
    write_json(tmp_path / "sweep" / "summary.json", {"largest_acceptable": {"angular/none/text": {
        "fraction": 0.0, "removed_count": 0, "removed": [], "fraction_not_ruled_out": 0.25,
        "removed_count_not_ruled_out": 1, "utterances": 5, "words": 120}}, "rules": {"wer_rise": 0.25,
                                                                                   "wer_floor": 0.02, "bleu_drop": 0.25}})
    html, md = _report(tmp_path)
    assert "| perplexity of llm on text | 12.30 [11.00, 13.90] | 5 utterances, 120 tokens; 95% bootstrap |" in md
    assert ("| sweep baseline perplexity of ? on text (nothing removed) | 12.30 [11.30, 13.30] | 5 utterances, "
            "120 tokens; 95% bootstrap |") in md
    assert "0.000 (0 layers; not ruled out: 0.250, 1 layer)" in md
    assert "120 words" not in md, "a perplexity rests on tokens, not words"
    assert "| text | angular | none | 1 | 0 | - | - | 14.00 [13.00, 15.00] | +13.8% | undecided |" in md
    assert html.count('alt="sweep curve text"') == 1


def _hand_sweep(folder: Path, model: str, dtype: str, decoder_bytes: int, layers: int, largest: dict) -> None:
    """A finished sweep's files as the sweep writes them, by hand: its config (model, dtype), its
    baseline cell (the unpruned decoder's bytes and layers), results and summary (``largest``:
    line key -> (fraction, fraction not ruled out))."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"model: {model}\ndtype: {dtype}\n", encoding="utf-8")
    write_json(folder / "cells" / "baseline.json", {"decoder_bytes": decoder_bytes, "original_layers": layers})
    write_json(folder / "results.json", [{"strategy": "none", "heal": "none", "removed": 0, "fraction": 0.0,
                                          "set": "text", "perplexity": 10.0, "utterances": 100, "words": 2000}])
    write_json(folder / "summary.json", {"largest_acceptable": {key: {
        "fraction": fraction, "removed_count": round(fraction * layers), "removed": list(range(round(fraction * layers))),
        "fraction_not_ruled_out": not_ruled_out, "removed_count_not_ruled_out": round(not_ruled_out * layers),
        "utterances": 200, "words": 4000} for key, (fraction, not_ruled_out) in largest.items()}})


def test_sweeps_of_several_decoder_sizes_are_set_against_each_other(tmp_path):
    """Sweeps of models of different sizes give the largest acceptable fraction by decoder size: the
    parameters from each baseline cell's bytes and the sweep's dtype, one figure and one table row per
    model and line; a line swept twice on one model is ambiguous and left out, and a line of one size
    has nothing to compare."""
    _hand_sweep(tmp_path / "small" / "sweep", "small-lm", "float32", 4 * 500_000, 8,
                {"angular/none/text": (0.125, 0.125), "bi/none/text": (0.0, 0.0)})
    _hand_sweep(tmp_path / "small" / "sweep-again", "small-lm", "float32", 4 * 500_000, 8,
                {"bi/none/text": (0.125, 0.25)})
    _hand_sweep(tmp_path / "large" / "sweep", "large-lm", "bfloat16", 2 * 1_500_000_000, 28,
                {"angular/none/text": (0.25, 0.5), "last/none/text": (0.0, 0.0)})
    html, md = _report(tmp_path)
    assert "## Largest acceptable fraction by decoder size" in md
    assert "Each sweep's largest acceptable fraction" in md  # quotes stay readable in the Markdown
    assert html.count('alt="largest acceptable fraction by decoder size"') == 1
    assert "| small-lm | 0.5M | 8 | angular | none | text | 0.125 | 1 | 0.125 |" in md
    assert "| large-lm | 1.50B | 28 | angular | none | text | 0.250 | 7 | 0.500 |" in md
    assert "200 utterances, 4,000 tokens" in md
    assert "| small-lm | 0.5M | 8 | bi |" not in md, "two sweeps of one model give the bi line: ambiguous"
    assert "| large-lm | 1.50B | 28 | last |" not in md, "one size on the last line: nothing to compare"


def test_sweeps_of_one_size_have_no_size_comparison(tmp_path):
    _hand_sweep(tmp_path / "a" / "sweep", "lm-a", "float32", 4 * 1000, 8, {"angular/none/text": (0.125, 0.125)})
    _hand_sweep(tmp_path / "b" / "sweep", "lm-b", "float32", 4 * 1000, 8, {"angular/none/text": (0.0, 0.125)})
    html, md = _report(tmp_path)
    assert "by decoder size" not in md and "by decoder size" not in html
