"""Healing (LoRA on the receiving MLPs) and the pruning sweep on a tiny SpeechLLM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechprune.errors import UserError
from speechprune.data.manifest import load_manifest
from speechprune.heal import HealConfig, heal, healing_layers, lora_targets
from speechprune.model.speechllm import SpeechLLM
from speechprune.prune.run import PruneConfig, prune
from speechprune.sweep import SweepConfig, sweep
from tests.conftest import build_tiny_speechllm


@pytest.fixture
def tiny_speechllm(tiny_manifest, tmp_path):
    utterances = load_manifest(tiny_manifest)
    torch.manual_seed(0)
    model = build_tiny_speechllm(utterances, layers=6)
    return model.save(tmp_path / "model")


def fake_scan(tmp_path, num_layers: int):
    """A scan.json whose block distances make layers 2..3 clearly the most redundant."""
    rng = np.random.default_rng(0)
    size = num_layers + 1
    angular = np.abs(np.subtract.outer(np.arange(size), np.arange(size))) * 0.1 + rng.uniform(0, 0.01, (size, size))
    angular[2, 4] = angular[4, 2] = 0.01
    angular = (angular + angular.T) / 2
    np.fill_diagonal(angular, 0)
    cosine = np.cos(angular * np.pi)
    scan = {"num_layers": num_layers, "inputs": {"speech": {"regions": {"all": {
        "angular": angular.tolist(), "cosine": cosine.tolist(), "count": 10}}}}}
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "scan.json").write_text(json.dumps(scan))
    return tmp_path / "scan"


def test_healing_layers_follow_removed_blocks():
    # 8 layers, remove [2,4) and [7,8): layer 4 receives the first block (pruned index 2); the
    # block at the end has no receiver, so the last kept layer (pruned index 4) heals it
    kept = [0, 1, 4, 5, 6]
    assert healing_layers(kept, 8) == [2, 4]
    assert healing_layers([0, 1, 2, 5, 6, 7], 8) == [3]


def test_receiving_mlp_targets_only_those_mlps(tiny_speechllm):
    model = SpeechLLM.load(tiny_speechllm)
    names = lora_targets(model.decoder, "receiving-mlp", [1, 3])
    assert names and all(".layers.1.mlp." in n or ".layers.3.mlp." in n for n in names)
    assert len(names) == 6  # gate, up, down in two layers
    assert len(lora_targets(model.decoder, "all-mlp")) == 18


def test_heal_changes_only_receiving_mlps(tiny_speechllm, tiny_manifest, tmp_path):
    prune(PruneConfig(model=str(tiny_speechllm), out=str(tmp_path / "pruned"), drop="2:4"))
    before = SpeechLLM.load(tmp_path / "pruned").state_dict()
    out = heal(HealConfig(model=str(tmp_path / "pruned"), data=[str(tiny_manifest)], out=str(tmp_path / "healed"),
                          steps=3, lr=1e-2, batch_size=4))
    after = SpeechLLM.load(out).state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("decoder.model.layers.2.mlp.") for name in changed), changed
    assert (out / "adapters" / "decoder" / "adapter_config.json").exists()
    assert json.loads((out / "heal.json").read_text())["receiving_layers"] == [2]
    assert json.loads((out / "pruning.json").read_text())["removed"] == [2, 3]


def test_sweep_writes_table_curves_and_skips_finished_cells(tiny_speechllm, tiny_manifest, tmp_path):
    scan = fake_scan(tmp_path, 6)
    config = SweepConfig(model=str(tiny_speechllm), scan=str(scan), train=[str(tiny_manifest)],
                         test=[str(tiny_manifest)], out=str(tmp_path / "sweep"), fractions=[0.0, 0.34],
                         strategies=["angular", "last"], heal=["none", "receiving-mlp"], heal_steps=2, batch_size=6,
                         prefill_only=True)
    summary = sweep(config)
    cells = sorted(p.name for p in (tmp_path / "sweep" / "cells").iterdir())
    assert cells == ["angular-remove2-none.json", "angular-remove2-prefill-only.json",
                     "angular-remove2-receiving-mlp.json", "baseline.json", "last-remove2-none.json",
                     "last-remove2-prefill-only.json", "last-remove2-receiving-mlp.json"]
    prefill = json.loads((tmp_path / "sweep" / "cells" / "angular-remove2-prefill-only.json").read_text())
    assert prefill["kept_layers"] == 4 and prefill["decoder_bytes"] == json.loads(
        (tmp_path / "sweep" / "cells" / "baseline.json").read_text())["decoder_bytes"], "prefill-only keeps every weight"
    angular = json.loads((tmp_path / "sweep" / "cells" / "angular-remove2-none.json").read_text())
    assert angular["removed"] == [2, 3] and angular["kept_layers"] == 4
    last = json.loads((tmp_path / "sweep" / "cells" / "last-remove2-none.json").read_text())
    assert last["removed"] == [3, 4]
    assert angular["decoder_bytes"] < json.loads((tmp_path / "sweep" / "cells" / "baseline.json").read_text())["decoder_bytes"]
    assert (tmp_path / "sweep" / "results.csv").read_text().count("\n") == 7 * 1 + 1
    assert (tmp_path / "sweep" / "curve_tiny.png").exists()
    assert "angular/none/tiny" in summary["largest_acceptable"]
    stamp = (tmp_path / "sweep" / "cells" / "baseline.json").stat().st_mtime_ns
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        sweep(config)  # a finished sweep is never replaced unasked (an unfinished one resumes: test_robustness)
    assert (tmp_path / "sweep" / "cells" / "baseline.json").stat().st_mtime_ns == stamp
