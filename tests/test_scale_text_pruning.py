"""bench/scale_text_pruning.py (ShortGPT's table, by size) in its quick mode (about 7 s): three tiny GGUF
decoders scanned and swept by perplexity through the Python API; every number of its table is the
sweeps' own (summary.json, results.json), its parameters and layers the models'; the figure and a
time estimate per model are written. bench/plain_llm_pruning.py's split keeps the earlier held-out
texts first."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from transformers import AutoModelForCausalLM

from speechprune.model import gguf as model_gguf

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(markdown: str, first_column: str) -> list[dict]:
    """The rows of the Markdown table whose header starts with ``first_column``, by column name."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def _interval(value: float, low: float, high: float) -> str:
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"  # the tiny models' perplexities are all below 10,000


def test_quick_scale_table_comes_from_the_sweeps(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(model_gguf.CACHE_ENV, str(tmp_path / "cache"))
    bench = _load("scale_text_pruning")
    out = tmp_path / "run"
    rows = bench.main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "held-out texts: 40 (looks 10, 20, 40)" in printed
    models = {"tiny-llama-3": 3, "tiny-qwen2-4": 4, "tiny-qwen2-8": 8}
    for model in models:  # a time estimate from each model's first cell
        assert f"{model}.gguf: first cell (unpruned, 10 texts)" in printed
    assert (out / "scale.png").stat().st_size > 0
    assert json.loads((out / "scale.json").read_text()) == json.loads(json.dumps(rows))

    markdown = (out / "scale.md").read_text()
    table = _table(markdown, "model")
    lines = [("angular", "none"), ("angular", "receiving-mlp"), ("bi", "none"), ("last", "none")]
    assert sorted((r["model"], r["strategy"], r["healing"]) for r in table) == sorted(
        (m, s, "none" if h == "none" else f"LoRA, {h}") for m in models for s, h in lines)
    for row in table:
        model, heal = row["model"], "none" if row["healing"] == "none" else row["healing"].removeprefix("LoRA, ")
        sweep = out / model / ("sweep" if heal == "none" else "sweep-healed")
        summary = json.loads((sweep / "summary.json").read_text())
        entry = summary["largest_acceptable"][f"{row['strategy']}/{heal}/heldout"]
        base = summary["baseline"]["heldout"]["lm"]
        assert row["largest acceptable fraction"] == f"{entry['fraction']:.3f}"
        assert row["layers removed"].split()[0] == str(entry["removed_count"])
        assert row["largest not ruled out"] == f"{entry['fraction_not_ruled_out']:.3f} " \
                                               f"({entry['removed_count_not_ruled_out']} layers)"
        assert row["decided at"] == f"{entry['utterances']} texts"
        assert row["baseline perplexity [95% CI]"] == (f"{_interval(base['perplexity'], *base['perplexity_interval'])} "
                                                       f"({base['utterances']} texts, {base['tokens']:,} tokens)")
        # parameters and layers are the model's own
        assert int(row["layers"]) == models[model]
        checkpoint = model_gguf.decoder_checkpoint(str(out / "models" / f"{model}.gguf"))
        parameters = AutoModelForCausalLM.from_pretrained(checkpoint).num_parameters()
        assert row["parameters"] == f"{parameters / 1e6:.1f}M"

    # the perplexity curves: every measured cell of every sweep, as results.json has it
    for model in models:
        section = markdown.split(f"## {model} (")[1].split("\n## ")[0]
        for sweep in ("sweep", "sweep-healed"):
            for cell in json.loads((out / model / sweep / "results.json").read_text()):
                text = _interval(cell["perplexity"], cell["perplexity_low"], cell["perplexity_high"])
                assert text + ("" if cell["removed"] == 0 else f" {cell['verdict']}") in section


def test_the_held_out_set_grows_to_800_and_keeps_the_earlier_200_first(tmp_path):
    plain = _load("plain_llm_pruning")
    assert plain.SETS == {"calibration": 200, "healing": 800, "heldout": 800}
    texts = [f"text number {i} of the source" for i in range(2_000)]
    now = plain.split(texts, tmp_path / "now")
    before = plain.split(texts, tmp_path / "before", sets={"calibration": 200, "healing": 800, "heldout": 200})
    read = lambda path: path.read_text().splitlines()  # noqa: E731
    assert len(read(now["heldout"])) == 800 and read(now["heldout"])[:200] == read(before["heldout"])
    assert read(now["calibration"]) == read(before["calibration"]) and read(now["healing"]) == read(before["healing"])
    assert plain.model_folder("qwen2.5-coder-0.5b") == "qwen2.5-coder-0.5b"
    assert plain.model_folder("/models/tiny.gguf") == "tiny"
