"""The scan's pairwise statistics against a naive reference (all states kept, a loop over n and l),
on every supported decoder family, and their invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechprune.model.layout import REGIONS
from speechprune.scan import PairwiseStats, ScanBatch, Scanner
from speechprune.scan.accumulate import pair_index
from tests.helpers import batches, corpus, reference_scan, reference_states, tiny_decoder

FAMILIES = ["llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3"]


def run_scanner(model, utterances, batch_size=3, padding_side="right", **kwargs) -> Scanner:
    with Scanner(model, inputs=["speech"], **kwargs) as scanner:
        for index, inputs in batches(utterances, batch_size, padding_side):
            scanner.step(ScanBatch({"speech": inputs}, index))
    return scanner


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_naive_reference(family):
    model = tiny_decoder(family)
    if family in ("qwen2", "gemma2", "gemma3"):  # the configs really mix sliding-window layers in
        assert "sliding_attention" in model.config.layer_types
        assert "full_attention" in model.config.layer_types
    utterances = corpus(model, 7)
    reference = reference_scan(model, utterances, batch_size=3)
    stats = run_scanner(model, utterances, batch_size=3).stats["speech"]
    for region in REGIONS:
        got = stats.matrices(region)
        assert got["count"] == reference[region]["count"] > 0
        np.testing.assert_allclose(got["angular"], reference[region]["angular"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got["cosine"], reference[region]["cosine"], rtol=0, atol=1e-6)


def test_matrices_are_symmetric_with_zero_diagonal_and_in_range():
    model = tiny_decoder("llama", layers=6)
    stats = run_scanner(model, corpus(model, 5)).stats["speech"]
    for region in REGIONS:
        got = stats.matrices(region)
        angular, cosine = got["angular"], got["cosine"]
        assert angular.shape == (7, 7)
        np.testing.assert_array_equal(angular, angular.T)
        np.testing.assert_array_equal(np.diag(angular), 0.0)
        np.testing.assert_array_equal(np.diag(cosine), 1.0)
        assert (angular >= 0).all() and (angular <= 1).all()
        assert (cosine >= -1).all() and (cosine <= 1).all()
        off = ~np.eye(7, dtype=bool)
        assert (angular[off] > 0).all()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_invariant_to_batch_size_and_padding_side(family):
    model = tiny_decoder(family)
    utterances = corpus(model, 7)
    base = run_scanner(model, utterances, batch_size=7, padding_side="right").stats["speech"]
    for batch_size, side in [(1, "right"), (3, "left"), (4, "right"), (7, "left")]:
        other = run_scanner(model, utterances, batch_size=batch_size, padding_side=side).stats["speech"]
        for region in REGIONS:
            a, b = base.matrices(region), other.matrices(region)
            assert a["count"] == b["count"]
            np.testing.assert_allclose(a["angular"], b["angular"], rtol=0, atol=1e-6)
            np.testing.assert_allclose(a["cosine"], b["cosine"], rtol=0, atol=1e-6)
        for region in base.per_utterance:
            ia, sa, ca = base.utterance_sums(region)
            ib, sb, cb = other.utterance_sums(region)
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_array_equal(ca, cb)
            np.testing.assert_allclose(sa, sb, rtol=0, atol=1e-5)


def test_accumulates_in_float64_for_a_bfloat16_model():
    model = tiny_decoder("llama").to(torch.bfloat16)
    utterances = corpus(model, 4)
    stats = run_scanner(model, utterances, batch_size=2).stats["speech"]
    assert stats.angular_sum.dtype == torch.float64 and stats.cosine_sum.dtype == torch.float64
    # the reference from the very same bfloat16 states, upcast: the sums must not lose anything
    reference = reference_scan(model, utterances, batch_size=2)
    np.testing.assert_allclose(stats.matrices("all")["angular"], reference["all"]["angular"], rtol=0, atol=1e-9)


def test_chunked_gram_and_per_utterance_sums_add_up():
    model = tiny_decoder("mistral")
    utterances = corpus(model, 6)
    whole = run_scanner(model, utterances).stats["speech"]
    tiny_chunks = run_scanner(model, utterances, chunk_bytes=1).stats["speech"]  # one position per chunk
    for region in REGIONS:
        np.testing.assert_allclose(whole.matrices(region)["angular"], tiny_chunks.matrices(region)["angular"],
                                   rtol=0, atol=1e-12)
    for region in whole.per_utterance:
        index, sums, counts = whole.utterance_sums(region)
        assert list(index) == list(range(6))
        slot = whole.regions.index(region)
        assert counts.sum() == int(whole.count[slot])
        np.testing.assert_allclose(sums.sum(axis=0), whole.angular_sum[slot].numpy(), rtol=1e-6)


def test_padding_and_uncounted_positions_never_count():
    model = tiny_decoder("llama")
    utterances = corpus(model, 5)
    scanner = run_scanner(model, utterances, batch_size=5, padding_side="left")
    _, inputs = next(batches(utterances, 5, "left"))
    stats = scanner.stats["speech"]
    for slot, region in enumerate(stats.regions):
        assert int(stats.count[slot]) == int(inputs.regions[region].sum())
    assert int(stats.count[stats.regions.index("last")]) == 5
    assert int(stats.count[stats.regions.index("all")]) == int(inputs.attention_mask.sum())
    assert scanner.capture._buffer is None  # no states kept after the batch


def test_hooks_capture_the_residual_stream_before_the_final_norm():
    model = tiny_decoder("gemma")  # gemma scales the embeddings inside the model: x_0 is after that
    utterances = corpus(model, 3)
    _, inputs = next(batches(utterances, 3))
    states = reference_states(model, inputs)
    from speechprune.scan.hooks import LayerCapture

    real = inputs.attention_mask.bool().flatten()
    index = real.nonzero().squeeze(1)
    with LayerCapture(model) as capture, torch.no_grad():
        capture.arm(index)
        model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
              position_ids=inputs.position_ids, use_cache=False)
        captured = capture.take()
    for i, state in enumerate(states):
        torch.testing.assert_close(captured[i], state.reshape(-1, state.shape[-1])[index])


def test_state_dict_round_trip_and_pair_order():
    rows, cols = pair_index(3)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    stats = PairwiseStats(3, ["all"], ["all"])
    states = torch.randn(4, 10, 8)  # [L+1, N, H]
    stats.add(states, torch.ones(1, 10, dtype=torch.bool), torch.arange(10) % 2, torch.tensor([5, 6]))
    other = PairwiseStats(3, ["all"], ["all"])
    other.load_state_dict(stats.state_dict())
    np.testing.assert_array_equal(other.matrices("all")["angular"], stats.matrices("all")["angular"])
    index, sums, counts = other.utterance_sums("all")
    assert list(index) == [5, 6] and list(counts) == [5, 5]
