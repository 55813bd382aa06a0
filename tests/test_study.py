"""A miniature study end to end (tiny models, a few steps), its numbers checked against the scans
and sweeps they name, recomputed here independently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from speechprune.config import build_config
from speechprune.report import ReportConfig, report
from speechprune.study import StudyConfig, conditions, study
from tests.helpers import tiny_study_config as _tiny_study

def _block_table(angular) -> np.ndarray:
    angular = np.asarray(angular)
    size = angular.shape[0] - 1
    return np.array([[angular[l, l + n] if l + n <= size else np.nan for l in range(size)] for n in range(1, size + 1)])


def _angular(scan_dir: Path, input: str) -> np.ndarray:
    return np.asarray(json.loads((scan_dir / "scan.json").read_text())["inputs"][input]["regions"]["all"]["angular"])


def _spearman(a, b) -> float:
    ta, tb = _block_table(a), _block_table(b)
    valid = np.isfinite(ta)
    return float(spearmanr(ta[valid], tb[valid]).statistic)


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


def test_conditions_vary_one_axis_from_the_reference(tmp_path):
    config = _tiny_study(tmp_path)
    plan = {c.name: c for c in conditions(config)}
    reference = "qwen2-3.whisper.asr-en.lora"  # the deepest decoder is the reference by default
    assert set(plan[reference].axes) == {"decoder", "encoder", "task", "language", "mode"}
    assert set(plan) == {reference, "llama-2.whisper.asr-en.lora", "qwen2-3.wav2vec2.asr-en.lora",
                         "qwen2-3.whisper.st-en-fr.lora", "qwen2-3.whisper.asr-fr.lora",
                         "qwen2-3.whisper.asr-en.frozen", "qwen2-3.whisper.multi.lora"}
    assert plan["qwen2-3.whisper.multi.lora"].source_languages() == ("en", "fr")
    config.reference_decoder = "llama-2"
    assert "llama-2.wav2vec2.asr-en.lora" in {c.name for c in conditions(config)}


@pytest.mark.slow
def test_miniature_study_numbers_come_from_its_scans(tmp_path, capsys):
    config = _tiny_study(tmp_path)
    result = study(config)
    out = Path(config.out)
    saved = json.loads((out / "study.json").read_text())
    assert saved["claims"] == json.loads(json.dumps(result["claims"]))
    assert [c["claim"][:3] for c in saved["claims"]] == ["(1)", "(2)", "(3)", "(4)", "(5)"]
    for claim in saved["claims"]:
        assert claim["measured"] and "not measured" not in claim["measured"], claim
        assert claim["paper"] and claim["evidence"], claim
        for evidence in claim["evidence"].split(", "):
            assert (out / evidence).is_dir(), evidence

    # claim (1): the mean Spearman, recomputed from the base and SpeechLLM scans it names
    names = list(saved["conditions"])
    inherited, text_speech = [], []
    for name in names:
        entry = saved["conditions"][name]
        tasks = "+".join(entry["tasks"])
        base = _angular(out / "base" / entry["decoder"] / f"scan-{tasks}", "text")
        inherited.append(_spearman(base, _angular(out / entry["scan"], "speech")))
        text_speech.append(_spearman(_angular(out / entry["scan"], "text"), _angular(out / entry["scan"], "speech")))
    assert _numbers(saved["claims"][0]["measured"])[0] == pytest.approx(np.mean(inherited), abs=5e-4)
    assert _numbers(saved["claims"][1]["measured"])[0] == pytest.approx(np.mean(text_speech), abs=5e-4)

    # claim (3): one line per decoder, its fractions those of the sweep summary it names
    for sweep_dir in saved["claims"][2]["evidence"].split(", "):
        summary = json.loads((out / sweep_dir / "summary.json").read_text())
        decoder = sweep_dir.split("/")[1].split(".")[0]
        fractions = [v["fraction"] for k, v in summary["largest_acceptable"].items() if "/none/" in k]
        assert f"{decoder} (" in saved["claims"][2]["measured"]
        assert f"{min(fractions):.2f} unhealed" in saved["claims"][2]["measured"].split(decoder)[1]

    # agreement matrices: same-depth conditions, symmetric, equal to a direct recomputation
    matrix = saved["agreement"]
    conds = matrix["conditions"]
    assert "llama-2.whisper.asr-en.lora" not in conds and len(conds) == 6
    rho = np.asarray(matrix["metrics"]["spearman"])
    assert np.allclose(rho, rho.T) and np.allclose(np.diag(rho), 1)
    a, b = (_angular(out / saved["conditions"][c]["scan"], "speech") for c in conds[:2])
    assert rho[0, 1] == pytest.approx(_spearman(a, b), abs=1e-9)

    # consensus: argmin of the mean block distance over the single-task conditions
    single = [c for c in conds if len(saved["conditions"][c]["tasks"]) == 1]
    mean = np.mean([_block_table(_angular(out / saved["conditions"][c]["scan"], "speech")) for c in single], axis=0)
    for row in saved["consensus"]["rows"]:
        n = row["n"]
        assert row["consensus_start"] == int(np.nanargmin(mean[n - 1]))
        assert set(row["per_condition"]) == set(single)
    assert set(saved["sweeps"]) >= {"llama-2.whisper.asr-en.lora", "qwen2-3.whisper.asr-en.lora", "consensus"}
    for path in saved["sweeps"].values():
        assert (out / path / "summary.json").is_file()
    backbone = saved["consensus"]["backbone"]
    summary = json.loads((out / "consensus" / "sweep" / "summary.json").read_text())
    healed = [v["fraction"] for k, v in summary["largest_acceptable"].items() if k.startswith("angular/receiving-mlp/")]
    assert backbone["consensus_healed"] == min(healed) and len(healed) == 3
    assert (out / "base" / "llama-2" / "model" / "curve.png").is_file()
    for entry in saved["conditions"].values():  # the warmed-up encoder's CTC error rate, as measured once
        warm = out / "encoders" / f"{entry['encoder']}-{'+'.join(sorted({t.split('-')[1] for t in entry['tasks']}))}"
        assert entry["encoder_ctc_cer"] == json.loads((warm / "ctc_cer.json").read_text())["cer"] >= 0
    assert "claims" in capsys.readouterr().out

    # a rerun reuses every finished part: nothing is trained again
    model_file = out / "conditions" / names[0] / "model" / "speechllm.json"
    stamp = model_file.stat().st_mtime_ns
    again = study(config)
    assert model_file.stat().st_mtime_ns == stamp
    assert f"reusing the finished steps of the same run in {out}" in capsys.readouterr().err
    assert again["claims"] == result["claims"]

    # the report reads the whole study: its claims, every scan (the consensus too) and sweep
    md = (report(ReportConfig(run=[str(out)])).parent / "report.md").read_text(encoding="utf-8")
    assert f"| {saved['claims'][0]['claim']} |" in md
    consensus_section = md.split("## Scan: consensus/scan")[1].split("\n## ")[0]
    assert "the mean of their angular matrices" in consensus_section and "Not in this run" not in consensus_section
    for row in saved["consensus"]["rows"]:  # the consensus scan's l*(n) are the study's consensus starts
        start = row["consensus_start"]
        assert f"| {row['n']} | {start} | [{start},{start + row['n']}) | - |" in consensus_section
    assert md.count("## Sweep: ") == len(saved["sweeps"])


def test_the_shipped_example_config_plans_every_axis():
    from importlib.resources import files

    config = build_config(StudyConfig, [], str(files("speechprune") / "configs" / "study.yaml"))
    assert config == build_config(StudyConfig)  # the example documents the defaults, value for value
    plan = conditions(config)
    axes = {axis for c in plan for axis in c.axes}
    assert axes == {"decoder", "encoder", "task", "language", "mode", "multitask"}
    assert len([c for c in plan if "decoder" in c.axes]) == 6
    assert len([c for c in plan if "language" in c.axes]) == 3
    assert len(plan) == 13
