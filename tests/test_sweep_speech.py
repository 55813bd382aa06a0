"""A sweep computes its test utterances' speech (encoder and projector output) once: every cell
whose encoder and projector are the loaded ones reads it, and scores exactly what it scores alone."""

from __future__ import annotations

import json

import pytest
import torch

from speechprune import sweep as sweep_module
from speechprune.data.manifest import load_manifest
from speechprune.model.kinds import SpeechLLMModel
from speechprune.model.loaded import LoadedModel
from speechprune.model.speechllm import SpeechLLM
from speechprune.prune.apply import read_scan
from speechprune.sweep import PREFILL_ONLY, SweepConfig, sweep
from tests.helpers import build_tiny_speechllm, fake_scan


@pytest.fixture
def tiny_speechllm(tiny_manifest, tmp_path):
    torch.manual_seed(0)
    return build_tiny_speechllm(load_manifest(tiny_manifest), layers=6).save(tmp_path / "model")


def _rows(folder) -> dict:
    return {path.name: json.loads(path.read_text())["rows"] for path in sorted((folder / "cells").glob("*.json"))}


def test_a_sweep_encodes_each_test_utterance_once_and_scores_as_without_sharing(tiny_speechllm, tiny_manifest,
                                                                                tmp_path, monkeypatch):
    encoded = []
    encode = SpeechLLM.encode
    monkeypatch.setattr(SpeechLLM, "encode", lambda self, batch: encoded.extend(batch.ids) or encode(self, batch))
    common = dict(model=str(tiny_speechllm), scan=str(fake_scan(tmp_path, 6)), train=[], test=[str(tiny_manifest)],
                  fractions=[0.0, 0.34], strategies=["angular", "last"], heal=["none"], prefill_only=True,
                  batch_size=4, max_new_tokens=6)
    sweep(SweepConfig(out=str(tmp_path / "shared"), **common))
    utterances = load_manifest(tiny_manifest)
    assert sorted(encoded) == sorted(u.id for u in utterances)  # 5 cells, each utterance encoded once

    monkeypatch.setattr(SpeechLLMModel, "share_speech", LoadedModel.share_speech)  # every cell encodes
    encoded.clear()
    sweep(SweepConfig(out=str(tmp_path / "alone"), **common))
    assert len(encoded) == 5 * len(utterances)
    shared, alone = _rows(tmp_path / "shared"), _rows(tmp_path / "alone")
    assert len(shared) == 5 and shared == alone


class Untouchable(dict):
    """A shared dict that no model may read or fill."""

    def __contains__(self, key):
        raise AssertionError("a cell read the shared speech")

    __getitem__ = __setitem__ = __contains__


@pytest.mark.parametrize("heal, projector, shares", [("receiving-mlp", True, False), ("receiving-mlp", False, True),
                                                     ("none", True, True), (PREFILL_ONLY, True, True)])
def test_only_a_cell_that_healed_its_projector_computes_its_own_speech(heal, projector, shares, tiny_speechllm,
                                                                       tiny_manifest, tmp_path):
    config = SweepConfig(model=str(tiny_speechllm), scan=str(fake_scan(tmp_path, 6)), train=[str(tiny_manifest)],
                         test=[str(tiny_manifest)], out=str(tmp_path / "sweep"), heal_steps=1,
                         heal_projector=projector, batch_size=6, max_new_tokens=2)
    utterances = load_manifest(tiny_manifest)
    run = lambda: sweep_module.run_cell(config, read_scan(config.scan), "last", 2 / 6, heal,  # noqa: E731
                                        {"tiny": utterances}, utterances, tmp_path / "sweep", None, Untouchable())
    if shares:
        with pytest.raises(AssertionError, match="read the shared speech"):
            run()
    else:
        assert run()["rows"]["tiny"]
