"""``speechprune scan`` and ``speechprune compare`` end to end: a tiny SpeechLLM directory and a plain
causal-LM directory, the output names other tools read, resume after a kill, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechprune.cli import main
from speechprune.config import build_config
from speechprune.data.manifest import load_manifest
from speechprune.errors import UserError
from speechprune.model.layout import REGIONS
from speechprune.model.speechllm import SpeechLLM
from speechprune.scan.result import ScanResult
from speechprune.scan.run import ScanConfig, scan
from speechprune.scan.scanner import Scanner
from tests.helpers import build_tiny_speechllm, write_tiny_manifest


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    manifest = write_tiny_manifest(root / "data")
    utterances = load_manifest(manifest)
    torch.manual_seed(0)
    model = build_tiny_speechllm(utterances, layers=4)
    model.save(root / "slm")
    model.decoder.save_pretrained(root / "llm")
    model.tokenizer.save_pretrained(root / "llm")
    return {"root": root, "manifest": manifest, "slm": root / "slm", "llm": root / "llm", "utterances": utterances}


def read(out: Path) -> dict:
    return json.loads((out / "scan.json").read_text())


def test_scan_speechllm_both_inputs_writes_the_documented_names(models, tmp_path):
    out = tmp_path / "scan"
    assert main(["scan", "--model", str(models["slm"]), "--data", str(models["manifest"]), "--out", str(out),
                 "--batch-size", "5", "--bootstrap", "50"]) == 0
    payload = read(out)
    assert payload["num_layers"] == 4
    assert "0-based" in payload["index_convention"] and "before the final norm" in payload["index_convention"]
    assert set(payload["inputs"]) == {"speech", "text"}
    assert {"model", "data", "settings"} <= set(payload)
    assert payload["model"]["kind"] == "speechllm" and payload["data"]["utterances"] == len(models["utterances"])
    for name, data in payload["inputs"].items():
        assert set(data["regions"]) == set(REGIONS)
        for region, entry in data["regions"].items():
            angular = np.array(entry["angular"])
            assert angular.shape == (5, 5) and np.array(entry["cosine"]).shape == (5, 5)
            np.testing.assert_array_equal(angular, angular.T)
            assert entry["count"] > 0
            assert [b["n"] for b in entry["best_blocks"]] == [1, 2, 3, 4]
            for block in entry["best_blocks"]:
                assert block["distance"] == angular[block["start"], block["start"] + block["n"]]
            assert len(entry["block_influence"]) == 4
        assert len(data["regions"]["all"]["stability"]) == 4
        assert data["regions"]["last"]["count"] == len(models["utterances"])
    # text input: the source transcript stands where the speech was, so the regions differ only there
    tokenizer = SpeechLLM.load(models["slm"]).tokenizer
    source_tokens = sum(len(tokenizer(u.text, add_special_tokens=False)["input_ids"]) for u in models["utterances"])
    assert payload["inputs"]["text"]["regions"]["speech"]["count"] == source_tokens
    for region in ("prompt", "target", "last"):
        assert payload["inputs"]["text"]["regions"][region]["count"] == payload["inputs"]["speech"]["regions"][region]["count"]
    for figure in ["heatmap_speech_all.png", "heatmap_text_last.png", "best_blocks.png", "stability_speech_all.png"]:
        assert (out / figure).stat().st_size > 0
    assert not (out / ".checkpoint").exists()
    # the typed result holds every field of the file: loading and saving it again gives the same bytes
    loaded = ScanResult.load(out)
    assert loaded.figures and loaded.seconds is not None and not loaded.is_consensus
    assert loaded.inputs["speech"]["all"].count == payload["inputs"]["speech"]["regions"]["all"]["count"]
    assert loaded.save(tmp_path / "again.json").read_bytes() == (out / "scan.json").read_bytes()

    cmp = tmp_path / "cmp"
    assert main(["compare", str(out), "--out", str(cmp), "--regions", "all,last", "--fractions", "0.25,0.5"]) == 0
    result = json.loads((cmp / "compare.json").read_text())
    assert [p["input"] for p in result["profiles"]] == ["speech", "text"]
    assert {p["region"] for p in result["pairs"]} == {"all", "last"}
    for pair in result["pairs"]:
        assert -1 <= pair["spearman"] <= 1 and 0 <= pair["same_best_start"] <= 1
        assert set(pair["jaccard"]) == {"0.25", "0.5"}
    assert (cmp / "compare_all.png").exists()


def test_scan_plain_llm_on_text_and_compare_with_the_speechllm(models, tmp_path):
    out = tmp_path / "llm_scan"
    assert main(["scan", "--model", str(models["llm"]), "--data", str(models["manifest"]), "--out", str(out),
                 "--regions", "all,last", "--stability-regions", "last", "--plots=false"]) == 0
    payload = read(out)
    assert list(payload["inputs"]) == ["text"] and payload["model"]["kind"] == "causal-lm"
    assert set(payload["inputs"]["text"]["regions"]) == {"all", "last"}
    assert "stability" in payload["inputs"]["text"]["regions"]["last"]
    assert "stability" not in payload["inputs"]["text"]["regions"]["all"]
    slm = tmp_path / "slm_scan"
    assert main(["scan", "--model", str(models["slm"]), "--data", str(models["manifest"]), "--out", str(slm),
                 "--input", "text", "--regions", "all,last", "--bootstrap", "0", "--plots=false"]) == 0
    cmp = tmp_path / "cmp"
    assert main(["compare", str(slm), str(out), "--out", str(cmp), "--labels", "speechllm,llm", "--plots=false"]) == 0
    result = json.loads((cmp / "compare.json").read_text())
    assert [p["label"] for p in result["profiles"]] == ["speechllm", "llm"]
    assert [(p["a"], p["b"], p["region"]) for p in result["pairs"]] == [("speechllm", "llm", "all"),
                                                                         ("speechllm", "llm", "last")]


def test_bad_input_is_one_line_exit_2(models, tmp_path, capsys):
    common = ["--data", str(models["manifest"]), "--out", str(tmp_path / "x")]
    assert main(["scan", "--model", str(models["llm"]), "--input", "speech"] + common) == 2
    assert "plain causal LM" in capsys.readouterr().err
    assert main(["scan", "--model", str(models["slm"]), "--regions", "all,nose"] + common) == 2
    assert "nose" in capsys.readouterr().err
    assert main(["scan", "--model", str(models["slm"]), "--dtype", "float8"] + common) == 2
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    assert "not a scan" in capsys.readouterr().err


def test_resume_after_a_kill_equals_an_uninterrupted_scan(models, tmp_path, monkeypatch):
    settings = dict(model=str(models["slm"]), data=str(models["manifest"]), batch_size=3, bootstrap=100,
                    checkpoint_every=1, plots=False)
    whole = scan(ScanConfig(out=str(tmp_path / "whole"), **settings))

    out = tmp_path / "resumed"
    real_step = Scanner.step
    calls = {"n": 0}

    def dying_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed during the third batch
        real_step(self, batch)

    monkeypatch.setattr(Scanner, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        scan(ScanConfig(out=str(out), **settings))
    assert (out / ".checkpoint").is_dir() and not (out / "scan.json").exists()
    calls["n"] = 0
    resumed = scan(ScanConfig(out=str(out), **settings))
    assert calls["n"] == 4 - 2  # 12 utterances in 4 batches, 2 were checkpointed
    assert resumed["inputs"] == whole["inputs"]  # identical, bit for bit
    assert not (out / ".checkpoint").exists()


def test_a_checkpoint_of_another_scan_is_refused_unless_fresh(models, tmp_path, monkeypatch):
    settings = dict(model=str(models["llm"]), data=str(models["manifest"]), bootstrap=0, checkpoint_every=1,
                    plots=False, out=str(tmp_path / "o"))

    def die(self, batch):
        raise KeyboardInterrupt

    real_step = Scanner.step
    monkeypatch.setattr(Scanner, "step", lambda self, batch: (real_step(self, batch), setattr(Scanner, "step", die)))
    with pytest.raises(KeyboardInterrupt):
        scan(ScanConfig(batch_size=4, **settings))
    monkeypatch.setattr(Scanner, "step", real_step)
    # other settings: refused when OUT is claimed, before the checkpoint's own fingerprint is read
    with pytest.raises(UserError, match="holds an unfinished run with other settings; pass --overwrite"):
        scan(ScanConfig(batch_size=5, **settings))
    assert scan(ScanConfig(batch_size=5, overwrite=True, **settings))["inputs"]["text"]["regions"]["all"]["count"] > 0


def test_config_from_dotted_overrides():
    config = build_config(ScanConfig, ["model=m", "data=d", "out=o", "dtype=bfloat16", "device_map=auto"])
    assert config.dtype == "bfloat16" and config.device_map == "auto" and config.input == "auto"


def test_device_map_and_dtype_options_on_a_plain_llm(models, tmp_path):
    common = dict(model=str(models["llm"]), data=str(models["manifest"]), bootstrap=0, plots=False,
                  regions=["all"], stability_regions=[])
    plain = scan(ScanConfig(out=str(tmp_path / "a"), **common))
    mapped = scan(ScanConfig(out=str(tmp_path / "b"), device_map="auto", **common))
    assert mapped["settings"]["device_map"] == "auto"
    np.testing.assert_allclose(mapped["inputs"]["text"]["regions"]["all"]["angular"],
                               plain["inputs"]["text"]["regions"]["all"]["angular"], rtol=0, atol=1e-9)
    half = scan(ScanConfig(out=str(tmp_path / "c"), dtype="bfloat16", **common))
    assert half["settings"]["dtype"] == "bfloat16" and half["settings"]["accumulation"] == "float64"
    np.testing.assert_allclose(half["inputs"]["text"]["regions"]["all"]["angular"],
                               plain["inputs"]["text"]["regions"]["all"]["angular"], rtol=0, atol=0.05)
    speech = {**common, "model": str(models["slm"])}
    slm_plain = scan(ScanConfig(out=str(tmp_path / "d"), **speech))
    slm_mapped = scan(ScanConfig(out=str(tmp_path / "e"), device_map="auto", **speech))
    for name in slm_plain["inputs"]:
        np.testing.assert_allclose(slm_mapped["inputs"][name]["regions"]["all"]["angular"],
                                   slm_plain["inputs"][name]["regions"]["all"]["angular"], rtol=0, atol=1e-9)
