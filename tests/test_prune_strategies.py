"""Layer choice: scan-based strategies on synthetic scans with a known answer, the fraction
rounding, and the iterative / greedy-score strategies with stand-in measurement callables."""

from __future__ import annotations

import copy

import pytest
import torch

from speechprune.errors import UserError
from speechprune.model.decoder import decoder_layers
from speechprune.model.layout import DecoderInputs, Segment, assemble
from speechprune.prune import strategies
from speechprune.prune.calibration import loss_score
from speechprune.prune.strategies import (
    angular,
    block_influence,
    greedy_score,
    iterative,
    last,
    layers_for_fraction,
)
from speechprune.prune.surgery import remove_layers
from tests.helpers import alternating_layers, build_tiny_speechllm, synthetic_scan, tiny_causal_lm


def test_angular_finds_the_known_block():
    scan = synthetic_scan(12, (5, 9))
    assert angular(scan, 4) == [5, 6, 7, 8]
    assert angular(scan, 2) == [5, 6]  # ties inside the block go to the lowest start
    assert angular(scan, 0) == []
    widest = angular(scan, 11)
    assert widest in (list(range(11)), list(range(1, 12)))


def test_angular_reads_the_selected_input_and_region():
    scan = synthetic_scan(10, (2, 5))
    scan["inputs"]["text"] = synthetic_scan(10, (6, 9))["inputs"]["text"]
    assert angular(scan, 3) == [2, 3, 4]  # auto = speech when scanned
    assert angular(scan, 3, input="text") == [6, 7, 8]
    only_text = synthetic_scan(10, (6, 9), inputs=("text",))
    assert angular(only_text, 3) == [6, 7, 8]  # auto falls back to text (plain LLM scans)
    with pytest.raises(UserError, match="no 'speech' input"):
        angular(only_text, 3, input="speech")
    with pytest.raises(UserError, match="no region 'prompt'"):
        angular(scan, 3, region="prompt")


def test_block_influence_takes_the_lowest_not_necessarily_adjacent():
    cos = [0.5, 0.99, 0.6, 0.7, 0.98, 0.4, 0.97, 0.2]
    scan = synthetic_scan(8, (0, 0), step_cos=cos)
    assert block_influence(scan, 3) == [1, 4, 6]
    assert block_influence(scan, 1) == [1]
    assert block_influence(scan, 0) == []


def test_last_is_the_deepest_before_the_final_layer():
    assert last(10, 3) == [6, 7, 8]
    assert last(10, 0) == []
    assert last(10, 9) == list(range(9))
    with pytest.raises(UserError):
        last(10, 10)
    assert strategies.choose_from_scan("last", synthetic_scan(10, (0, 2)), 2) == [7, 8]


def test_registry_dispatches_by_name():
    scan = synthetic_scan(12, (5, 9))
    assert set(strategies.SCAN_STRATEGIES) == {"angular", "bi", "last"}
    assert strategies.choose_from_scan("angular", scan, 4) == angular(scan, 4)
    assert strategies.STRATEGIES == ("angular", "bi", "last", "iterative", "greedy-score")
    with pytest.raises(UserError, match="scan alone"):
        strategies.choose_from_scan("iterative", scan, 1)


@pytest.mark.parametrize("fraction, num_layers, expected", [
    (0.0, 16, 0), (0.25, 16, 4), (0.1, 16, 2),  # 1.6 -> 2
    (0.125, 12, 2),  # 1.5 -> 2: half rounds up (not to even)
    (0.375, 12, 5),  # 4.5 -> 5
    (0.3, 28, 8),  # 8.4 -> 8
    (0.99, 8, 7),  # 7.92 -> 8, capped: one layer always stays
    (0.5, 1, 0),
    (0.58, 25, 15),  # 0.58 * 25 = 14.499999999999998 in binary: still the half, up
])
def test_fraction_rounding(fraction, num_layers, expected):
    assert layers_for_fraction(fraction, num_layers) == expected


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, "half", True])
def test_bad_fraction(fraction):
    with pytest.raises(UserError, match="fraction"):
        layers_for_fraction(fraction, 10)


def test_bad_scan_shapes():
    scan = synthetic_scan(6, (1, 3))
    with pytest.raises(UserError, match="--remove"):
        angular(scan, 6)
    broken = copy.deepcopy(scan)
    broken["inputs"]["speech"]["regions"]["all"]["angular"] = [[0.0]]
    with pytest.raises(UserError, match="7x7"):
        angular(broken, 2)
    with pytest.raises(UserError, match="num_layers"):
        angular({"inputs": {}}, 2)


# ---- model-based strategies -------------------------------------------------------------------

def tiny_llama(layers: int = 6, seed: int = 0):
    return tiny_causal_lm("llama", seed, vocab_size=53, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                          num_attention_heads=2, num_key_value_heads=1)


def test_iterative_rescans_the_pruned_model_and_maps_back_to_original_indices():
    model = tiny_llama(6)
    # Fake scanner: the "redundant" layer is always the one with the largest original index that is
    # still present, recognised by an attribute on the layer module (so it sees the pruned model).
    for index, layer in enumerate(decoder_layers(model)):
        layer.original_index = index
    seen = []

    def rescan(m):
        present = [layer.original_index for layer in decoder_layers(m)]
        seen.append(present)
        target = present.index(max(present[:-1]))  # never the final layer
        return synthetic_scan(len(present), (target, target + 1))

    trace = []
    removed = iterative(model, 3, rescan, trace=trace)
    assert removed == [2, 3, 4]
    assert seen == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 5], [0, 1, 2, 5]]
    assert [step["removed"] for step in trace] == [4, 3, 2]
    assert len(decoder_layers(model)) == 6 and model.config.num_hidden_layers == 6  # unchanged


def calibration_batches(model, count: int = 2):
    embed = model.get_input_embeddings()
    generator = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(count):
        utterances = []
        for length in (5, 7):
            speech = torch.randn(length, 32, generator=generator)
            target = torch.randint(0, 53, (4,), generator=generator)
            with torch.no_grad():
                utterances.append([Segment(speech, "speech"), Segment(embed(target), "target", target)])
        batches.append(assemble(utterances))
    return batches


def test_greedy_score_matches_the_deep_copy_way_without_copying(monkeypatch):
    model = tiny_llama(6)
    batches = calibration_batches(model)
    score = loss_score(batches)

    # the slow way: deep-copy the model per candidate and really remove the layers
    def brute_force(n):
        removed = []
        for _ in range(n):
            results = []
            for candidate in range(6):
                if candidate in removed:
                    continue
                clone = copy.deepcopy(model)
                remove_layers(clone, sorted([*removed, candidate]))
                results.append((score(clone), candidate))
            removed = sorted([*removed, min(results)[1]])
        return removed

    expected = brute_force(2)
    baseline = score(model)

    def no_copies(*args, **kwargs):
        raise AssertionError("greedy-score must not copy the model")

    monkeypatch.setattr(copy, "deepcopy", no_copies)
    trace = []
    assert greedy_score(model, 2, score, trace=trace) == expected
    assert sorted(step["removed"] for step in trace) == expected
    assert len(trace[0]["scores"]) == 6 and len(trace[1]["scores"]) == 5
    assert score(model) == baseline  # the model is back as it was


def test_greedy_score_reuses_cached_inputs_and_respects_candidates():
    model = tiny_llama(5)
    calls = []

    def score(m):
        present = len(decoder_layers(m))
        calls.append(present)
        # prefers removing layer ids with the highest weight norm of their first projection
        return -sum(float(layer.mlp.up_proj.weight.detach().abs().sum()) for layer in decoder_layers(m))

    removed = greedy_score(model, 1, score, candidates=[1, 2])
    assert len(removed) == 1 and removed[0] in (1, 2)
    assert calls == [4, 4]
    with pytest.raises(UserError, match="candidates"):
        greedy_score(model, 1, score, candidates=[9])
    with pytest.raises(UserError, match="cannot remove 3"):
        greedy_score(model, 3, score, candidates=[0, 1])


def test_loss_score_is_token_weighted_and_ignores_unlabelled_positions():
    model = tiny_llama(3)
    batches = calibration_batches(model, 2)
    score = loss_score(batches)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            out = model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids).logits
            for b in range(out.shape[0]):
                for t in range(out.shape[1]):
                    label = int(batch.labels[b, t])
                    if label != -100:
                        total += float(torch.nn.functional.cross_entropy(out[b, t][None], torch.tensor([label])))
                        count += 1
    assert count == 2 * 2 * 4
    assert score(model) == pytest.approx(total / count, rel=1e-6)
    assert isinstance(batches[0], DecoderInputs)


# ----------------------------------------------------------------------------- greedy-score, prefix reuse
# Both methods run the same float32 layers on the same inputs; a different CPU / BLAS may block a
# matmul differently for the tail's shapes only through the same calls, so the scores may differ by
# a few float32 rounding steps per layer: 2e-5 (~ 150 ulps of a loss near 4) bounds that with room.
SCORE_TOLERANCE = 2e-5


def tiny_family(family: str, layers: int, seed: int = 0):
    return tiny_causal_lm(family, seed, mix=alternating_layers(layers), max_window_layers=2, vocab_size=53,
                          hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                          num_key_value_heads=1, max_position_embeddings=64,
                          initializer_range=0.2)  # layers that change the stream a lot: no near-tied scores


def padded_batches(model, count: int = 2, padding_side: str = "right", seed: int = 3):
    """Speech-like embeddings then target tokens, lengths 5..11 (past the sliding window of 4)."""
    embed = model.get_input_embeddings()
    hidden = embed.weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(count):
        utterances = []
        for length in (3 + 2 * b, 7, 5):
            speech = torch.randn(length, hidden, generator=generator)
            target = torch.randint(0, 53, (4,), generator=generator)
            with torch.no_grad():
                utterances.append([Segment(speech, "speech"), Segment(embed(target), "target", target)])
        batches.append(assemble(utterances, padding_side=padding_side))
    return batches


def assert_prefix_equals_full(model, batches, n: int, candidates=None) -> list[int]:
    """Both methods choose the same layers with scores equal within SCORE_TOLERANCE, and the models'
    rounds have no near-tie that rounding could flip (else the check would not hold on any CPU)."""
    score = loss_score(batches)
    full_trace, prefix_trace = [], []
    full = greedy_score(model, n, score, candidates=candidates, trace=full_trace, method="full")
    prefix = greedy_score(model, n, score, candidates=candidates, trace=prefix_trace, method="prefix")
    assert prefix == full
    assert [s["removed"] for s in prefix_trace] == [s["removed"] for s in full_trace]
    for full_step, prefix_step in zip(full_trace, prefix_trace):
        assert full_step["scores"].keys() == prefix_step["scores"].keys()
        for layer, value in full_step["scores"].items():
            assert prefix_step["scores"][layer] == pytest.approx(value, abs=SCORE_TOLERANCE, rel=0)
        ranked = sorted(full_step["scores"].values())
        if len(ranked) > 1:
            assert ranked[1] - ranked[0] > 4 * SCORE_TOLERANCE, f"near-tied scores in round {full_step['step']}"
    return full


@pytest.mark.parametrize("family, layers", [("llama", 6), ("llama", 2), ("qwen2", 5), ("mistral", 4),
                                            ("gemma", 5), ("gemma2", 6), ("gemma3", 7), ("qwen3", 5)])
def test_prefix_reuse_chooses_what_full_forwards_choose(family, layers):
    model = tiny_family(family, layers)
    before = [id(layer) for layer in decoder_layers(model)]
    types = list(getattr(model.config, "layer_types", None) or [])
    chosen = assert_prefix_equals_full(model, padded_batches(model), layers - 1)  # down to one layer
    assert len(chosen) == layers - 1
    # the model is back as it was, no hook left behind
    assert [id(layer) for layer in decoder_layers(model)] == before
    assert model.config.num_hidden_layers == layers
    assert list(getattr(model.config, "layer_types", None) or []) == types
    for index, layer in enumerate(decoder_layers(model)):
        assert not layer._forward_pre_hooks and layer.self_attn.layer_idx == index


def test_prefix_reuse_with_left_padding_and_restricted_candidates():
    model = tiny_family("llama", 7, seed=4)
    batches = padded_batches(model, count=3, padding_side="left")
    assert_prefix_equals_full(model, batches, 3, candidates=[0, 2, 3, 5, 6])
    assert_prefix_equals_full(model, batches, 2, candidates=[1, 2, 4])  # the last layer is no candidate


@pytest.mark.parametrize("decoder_type", ["llama", "qwen2"])
def test_prefix_reuse_on_a_speechllm(decoder_type, tiny_manifest):
    from speechprune.data.manifest import load_manifest

    utterances = load_manifest(tiny_manifest)
    torch.manual_seed(1)
    speechllm = build_tiny_speechllm(utterances, layers=5, decoder_type=decoder_type).eval()
    with torch.no_grad():
        for layer in decoder_layers(speechllm.decoder):  # random layers that matter (no near-ties)
            for weight in (layer.mlp.down_proj.weight, layer.self_attn.o_proj.weight):
                weight.mul_(8.0)
        batches = [speechllm.decoder_inputs(batch) for batch in speechllm.batches(utterances, batch_size=5)]
    assert len(batches) == 3 and batches[0].regions["speech"].any()
    assert_prefix_equals_full(speechllm.decoder, batches, 3)


def test_prefix_reuse_runs_the_counted_layer_forwards():
    """A round over L' kept layers: (L'-1) layers for the forward without the last one (whose
    layer inputs are the states), then L'-1-i layers for the candidate at kept position i."""
    layers = 6
    model = tiny_family("llama", layers)
    batches = padded_batches(model, count=2)
    runs = []
    for layer in decoder_layers(model):
        layer.register_forward_hook(lambda *args: runs.append(1))
    score = loss_score(batches)
    removed: list[int] = []
    for kept in (6, 5, 4):
        runs.clear()
        by_candidate = score.removal_scores(model, removed, [c for c in range(layers) if c not in removed])
        assert len(runs) == len(batches) * ((kept - 1) + (kept - 1) * kept // 2)
        removed = sorted([*removed, min(by_candidate, key=lambda c: (by_candidate[c], c))])
    runs.clear()
    greedy_score(model, 1, score, method="full")
    assert len(runs) == len(batches) * layers * (layers - 1)


def test_greedy_score_method_is_checked():
    model = tiny_llama(3)
    with pytest.raises(UserError, match="method"):
        greedy_score(model, 1, loss_score(calibration_batches(model)), method="fast")
    with pytest.raises(UserError, match="removal_scores"):
        greedy_score(model, 1, lambda m: 0.0, method="prefix")
    assert greedy_score(model, 1, lambda m: float(len(decoder_layers(m))), method="auto") == [0]
