"""Speech shared between models with one encoder and projector (``LoadedModel.share_speech``): the
test utterances are read and encoded once, and a pruned model decodes and scores them exactly as it
does alone."""

from __future__ import annotations

import pytest
import torch

from speechprune.data.manifest import load_manifest
from speechprune.evaluate import decode, perplexity
from speechprune.model.interface import load_model
from speechprune.prune.apply import Selection, prune_model
from tests.helpers import build_tiny_speechllm


@pytest.fixture
def tiny_speechllm(tiny_manifest, tmp_path):
    torch.manual_seed(0)
    return build_tiny_speechllm(load_manifest(tiny_manifest), layers=6).save(tmp_path / "model")


def _pruned(folder):
    model = load_model(str(folder))
    prune_model(model, Selection(strategy="last", count=2))
    return model


def test_a_pruned_model_reading_shared_speech_decodes_and_scores_as_it_does_alone(tiny_speechllm, tiny_manifest,
                                                                                  monkeypatch):
    utterances = load_manifest(tiny_manifest)
    shared: dict = {}
    unpruned = load_model(str(tiny_speechllm))
    assert unpruned.share_speech(shared)
    filled = decode(unpruned, utterances, batch_size=4, max_new_tokens=6)  # as the sweep's baseline cell
    assert len(shared) == len(utterances)
    assert filled.rows == decode(load_model(str(tiny_speechllm)), utterances, batch_size=4, max_new_tokens=6).rows

    alone = decode(_pruned(tiny_speechllm), utterances, batch_size=4, max_new_tokens=6)
    alone_losses = perplexity(_pruned(tiny_speechllm), utterances, batch_size=4)
    # a model reading the shared speech neither reads audio nor runs its encoder or projector
    monkeypatch.setattr("speechprune.model.speechllm.load_audio", lambda *a, **k: pytest.fail("audio read"))
    reading = _pruned(tiny_speechllm)
    reading.share_speech(shared)
    for part in (reading.speechllm.encoder, reading.speechllm.projector):
        part.register_forward_pre_hook(lambda *a: pytest.fail("encoder or projector run"))
    assert decode(reading, utterances, batch_size=4, max_new_tokens=6).rows == alone.rows
    assert perplexity(reading, utterances, batch_size=4).rows == alone_losses.rows
    assert any(row["hypothesis"] for row in alone.rows)  # the comparison compares something


def test_shared_speech_keys_utterances_by_id_and_audio(tiny_speechllm, tiny_manifest, tmp_path):
    # two test sets may use the same ids for different audio: each is encoded, neither is taken for the other
    from tests.helpers import write_tiny_manifest

    first = load_manifest(tiny_manifest)
    second = load_manifest(write_tiny_manifest(tmp_path / "other", seed=7))
    assert [u.id for u in first] == [u.id for u in second]
    shared: dict = {}
    model = load_model(str(tiny_speechllm))
    model.share_speech(shared)
    decode(model, first, batch_size=4, max_new_tokens=2)
    decode(model, second, batch_size=4, max_new_tokens=2)
    assert len(shared) == len(first) + len(second)
    assert all(positions.device.type == "cpu" for positions in shared.values())

