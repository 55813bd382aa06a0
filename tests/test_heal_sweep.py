"""Healing (LoRA on the receiving MLPs) and the pruning sweep on a tiny SpeechLLM."""

from __future__ import annotations

import json

import pytest
import torch

from speechprune.bootstrap import Interval, SequentialVerdict, Verdict
from speechprune.errors import UserError
from speechprune.data.manifest import load_manifest
from speechprune.heal import HealConfig, heal, healing_layers, lora_targets
from speechprune import sweep as sweep_module
from speechprune.model.decoder import decoder_layers
from speechprune.model.speechllm import SpeechLLM
from speechprune.model.tokenizer import train_bpe_tokenizer
from speechprune.prune.apply import read_scan
from speechprune.prune.run import PruneConfig, prune
from speechprune.prune.strategies import layers_for_fraction
from speechprune.sweep import SweepConfig, sweep
from tests.helpers import build_tiny_speechllm, fake_scan, synthetic_scan, write_scan, write_tiny_manifest


@pytest.fixture
def tiny_speechllm(tiny_manifest, tmp_path):
    utterances = load_manifest(tiny_manifest)
    torch.manual_seed(0)
    model = build_tiny_speechllm(utterances, layers=6)
    return model.save(tmp_path / "model")


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


@pytest.mark.slow  # a whole sweep with healing: over 15 s
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


# ---- one pruning path: a sweep cell is what `prune` makes -----------------------------------------

EXPORT_ONLY = {"config", "verification", "mergekit", "not_copied", "previous_pruning"}  # of prune's directory


@pytest.mark.parametrize("strategy", ["angular", "bi", "last"])
def test_a_sweep_cell_is_what_prune_makes_from_the_same_scan(strategy, tiny_speechllm, tmp_path):
    scan = fake_scan(tmp_path, 6)
    fraction = layers_for_fraction(0.34, 6) / 6  # what sweep() hands run_cell for --fractions 0.34
    config = SweepConfig(model=str(tiny_speechllm), scan=str(scan), train=[], test=[], out=str(tmp_path / "sweep"))
    cell_model, cell_record = sweep_module.pruned_model(config, read_scan(str(scan)), strategy, fraction)

    prune(PruneConfig(model=str(tiny_speechllm), out=str(tmp_path / "pruned"), scan=str(scan), fraction=fraction,
                      strategy=strategy))
    written = json.loads((tmp_path / "pruned" / "pruning.json").read_text())
    assert len(written["removed"]) == 2 and (strategy != "angular" or written["removed"] == [2, 3])
    assert cell_record == {key: value for key, value in written.items() if key not in EXPORT_ONLY}

    expected = SpeechLLM.load(tmp_path / "pruned").state_dict()
    actual = {name: tensor.cpu() for name, tensor in cell_model.module.state_dict().items()}
    assert actual.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert not different, different  # the same layers copied by the same surgery: equal bytes
    assert len(decoder_layers(cell_model.causal_lm)) == cell_model.causal_lm.config.num_hidden_layers == 4

    # prefill-only: the same choice, the model left whole
    whole, prefill_record = sweep_module.pruned_model(config, read_scan(str(scan)), strategy, fraction,
                                                      prefill_only=True)
    assert prefill_record["removed"] == written["removed"] and prefill_record["kept"] == written["kept"]
    assert len(decoder_layers(whole.causal_lm)) == 6


def save_tiny_moe_lm(folder) -> None:
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    config = Qwen2MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            shared_expert_intermediate_size=16, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=2, num_experts=4, num_experts_per_tok=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    train_bpe_tokenizer(["a b c"], vocab_size=40).save_pretrained(folder)


def test_the_sweep_refuses_what_prune_refuses(tiny_speechllm, tiny_manifest, tmp_path):
    save_tiny_moe_lm(tmp_path / "moe")
    (tmp_path / "for-moe").mkdir()
    (tmp_path / "for-other").mkdir()
    cases = {"mixture-of-experts": (tmp_path / "moe", fake_scan(tmp_path / "for-moe", 4)),  # unsafe architecture
             "scanned a 8-layer decoder": (tiny_speechllm, fake_scan(tmp_path / "for-other", 8))}  # another model
    for reason, (model, scan) in cases.items():
        with pytest.raises(UserError, match=reason) as by_prune:
            prune(PruneConfig(model=str(model), out=str(tmp_path / "pruned"), scan=str(scan), fraction=0.34))
        with pytest.raises(UserError) as by_sweep:
            sweep(SweepConfig(model=str(model), scan=str(scan), train=[str(tiny_manifest)], test=[str(tiny_manifest)],
                              out=str(tmp_path / f"sweep-{len(reason)}"), fractions=[0.0, 0.34],
                              strategies=["angular"], heal=["none"]))
        assert str(by_sweep.value) == str(by_prune.value)
        assert not (tmp_path / "pruned").exists()


def test_a_cell_stops_decoding_at_twice_the_longest_reference(tiny_speechllm, tiny_manifest, tmp_path, monkeypatch):
    limits = []
    original = sweep_module.measure

    def recording(*args, **kwargs):
        limits.append(kwargs.get("max_new_tokens"))
        return original(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "measure", recording)
    scan = fake_scan(tmp_path, 6)
    common = dict(model=str(tiny_speechllm), scan=str(scan), train=[str(tiny_manifest)], test=[str(tiny_manifest)],
                  fractions=[0.0], strategies=["angular"], heal=["none"], batch_size=6)
    sweep(SweepConfig(out=str(tmp_path / "a"), **common))
    tokenizer = SpeechLLM.load(tiny_speechllm).tokenizer
    longest = max(len(tokenizer(u.target, add_special_tokens=False).input_ids) for u in load_manifest(tiny_manifest))
    assert limits == [2 * longest + 16]
    assert json.loads((tmp_path / "a" / "cells" / "baseline.json").read_text())["max_new_tokens"] == 2 * longest + 16
    sweep(SweepConfig(out=str(tmp_path / "b"), max_new_tokens=5, **common))
    assert limits[-1] == 5


def test_a_cell_that_removes_layers_already_measured_is_reused_not_run(tiny_speechllm, tiny_manifest, tmp_path,
                                                                        monkeypatch):
    # layers 3..4 are the most redundant: angular and last (which keeps the final layer) both remove [3, 4]
    scan = write_scan(tmp_path / "scan", synthetic_scan(6, (3, 5), inputs=("speech",)))
    ran = []
    run_cell = sweep_module.run_cell
    monkeypatch.setattr(sweep_module, "run_cell", lambda *args: ran.append(args[2]) or run_cell(*args))

    def swept(name: str, strategies: list[str], **settings) -> dict:
        sweep(SweepConfig(model=str(tiny_speechllm), scan=str(scan), train=[str(tiny_manifest)],
                          test=[str(tiny_manifest)], out=str(tmp_path / name), fractions=[0.0, 0.34],
                          strategies=strategies, heal=["none"], batch_size=6, **settings))
        return {p.stem: json.loads(p.read_text()) for p in (tmp_path / name / "cells").glob("*.json")}

    first = swept("first", ["angular", "last"])
    assert ran == ["none", "angular"]  # the baseline and one pruned model
    assert first["last-remove2-none"]["reused_from"] == str(tmp_path / "first" / "cells" / "angular-remove2-none.json")
    assert first["last-remove2-none"]["strategy"] == "last" and first["last-remove2-none"]["removed"] == [3, 4]
    assert first["last-remove2-none"]["sets"] == first["angular-remove2-none"]["sets"]

    second = swept("second", ["last"], reuse=[str(tmp_path / "first")])
    assert len(ran) == 2, "another sweep of the same model and test set reuses every cell it shares"
    assert second["baseline"]["sets"] == first["baseline"]["sets"]
    assert second["last-remove2-none"]["reused_from"] == first["last-remove2-none"]["reused_from"]

    swept("third", ["last"], reuse=[str(tmp_path / "first")], max_test_utterances=3)
    assert len(ran) == 4, "other test utterances are another measurement"
    with pytest.raises(UserError, match=r"--reuse .*absent: not a sweep directory \(no cells/\)"):
        swept("fourth", ["last"], reuse=[str(tmp_path / "absent")])


def test_stop_line_leaves_out_only_cells_that_cannot_change_what_it_decides(tiny_speechllm, tmp_path, monkeypatch):
    # two test sets; set "a" is not acceptable from 2 layers removed, set "b" from 3 (at 2 undecided)
    tests = [str(write_tiny_manifest(tmp_path / "data", name, with_st=False)) for name in ("a.jsonl", "b.jsonl")]
    worst = {"a": 2, "b": 3}
    nothing = Interval(0.0, 0.0, 0.0, 0.95, 0, 6)
    monkeypatch.setattr(sweep_module, "set_verdict", lambda cell, baseline, set_name, config: SequentialVerdict(
        Verdict("not acceptable" if cell["removed_count"] >= worst[set_name] else
                "undecided" if cell["removed_count"] == worst[set_name] - 1 == 2 else "acceptable", nothing, nothing),
        6, (6,), final=True))
    ran = []
    run_cell = sweep_module.run_cell
    monkeypatch.setattr(sweep_module, "run_cell", lambda *args: ran.append(args[3]) or run_cell(*args))
    scan = fake_scan(tmp_path, 6)

    def swept(rule: str) -> tuple[list[int], dict]:
        ran.clear()
        summary = sweep(SweepConfig(model=str(tiny_speechllm), scan=str(scan), train=[], test=tests,
                                    out=str(tmp_path / rule), fractions=[0.0, 0.17, 0.34, 0.5, 0.67],
                                    strategies=["angular"], heal=["none"], batch_size=6, stop_line=rule))
        return [layers_for_fraction(f, 6) for f in ran], summary

    everything, full = swept("never")
    assert everything == [0, 1, 2, 3, 4] and "stopped" not in full
    every_set, per_set = swept("every-set")
    assert every_set == [0, 1, 2, 3], "both sets have failed at 3 layers removed"
    assert per_set["largest_acceptable"] == full["largest_acceptable"]
    assert per_set["stopped"]["lines"] == {"angular/none": 4}
    any_set, first_failure = swept("any-set")
    assert any_set == [0, 1, 2], "set a fails at 2 layers removed"
    largest = lambda summary, key: summary["largest_acceptable"][f"angular/none/{key}"]  # noqa: E731
    assert largest(first_failure, "a") == largest(full, "a")
    assert min(largest(first_failure, s)["removed_count"] for s in "ab") == \
        min(largest(full, s)["removed_count"] for s in "ab") == 1
    assert largest(full, "b")["removed_count_not_ruled_out"] == 2
    assert largest(first_failure, "b")["removed_count_not_ruled_out"] == 2
    assert (tmp_path / "any-set" / "results.csv").read_text().count("\n") == 3 * 2 + 1
    with pytest.raises(UserError, match=r"--stop-line must be one of never, any-set, every-set, not 'any'"):
        SweepConfig(model="m", scan="s", train=[], test=[], out="o", stop_line="any")


def test_a_sweep_reads_each_test_set_in_looks_and_the_baseline_only_as_far_as_a_cell_needed(
        tiny_speechllm, tmp_path, monkeypatch):
    # six test utterances judged at looks of 2, 4 and 6: one layer removed decides acceptable at 4,
    # two decide not acceptable at the first look, three stay undecided to the last
    test = str(write_tiny_manifest(tmp_path / "data", "a.jsonl", with_st=False))
    decided_at = {1: (4, "acceptable"), 2: (2, "not acceptable"), 3: (None, "undecided")}
    nothing = Interval(0.0, 0.0, 0.0, 0.95, 0, 6)
    levels = set()

    def rules_at(cell, baseline, set_name, config, upto, level, samples):
        levels.add(level)
        assert len(baseline["rows"][set_name]) >= upto and len(cell["rows"][set_name]) >= upto, "paired on the same"
        at, found = decided_at[cell["removed_count"]]
        return {"wer": Verdict(found if at is not None and upto >= at else "undecided", nothing, nothing)}

    monkeypatch.setattr(sweep_module, "_rules_at", rules_at)
    scored = []
    measure = sweep_module.measure
    monkeypatch.setattr(sweep_module, "measure", lambda model, utterances, *args, **kwargs: scored.append(
        len(utterances)) or measure(model, utterances, *args, **kwargs))
    config = SweepConfig(model=str(tiny_speechllm), scan=str(fake_scan(tmp_path, 6)), train=[], test=[test],
                         out=str(tmp_path / "sweep"), fractions=[0.0, 0.17, 0.34, 0.5], strategies=["angular"],
                         heal=["none"], batch_size=6, looks=[2, 4, 6], alpha=0.03)
    summary = sweep(config)
    cells = {path.stem: json.loads(path.read_text()) for path in (tmp_path / "sweep" / "cells").glob("*.json")}
    assert {name: len(cell["rows"]["a"]) for name, cell in cells.items()} == {
        "baseline": 6, "angular-remove1-none": 4, "angular-remove2-none": 2, "angular-remove3-none": 6}
    # baseline 2 (its own first look), cells 2+2, 2, 2+2+2; the baseline extended to 4, then to 6
    assert sorted(scored) == sorted([2, 2, 2, 2, 2, 2, 2, 2, 2]) and sum(scored) == 6 + 4 + 2 + 6
    assert levels == {1 - 2 * 0.03 / 3}, "three looks: each judged at alpha / 3"
    trail = summary["largest_acceptable"]["angular/none/a"]["verdicts"]
    assert [(t["removed_count"], t["verdict"], t["utterances"]) for t in trail] == [
        (1, "acceptable", 4), (2, "not acceptable", 2)]
    rows = {r["removed"]: r for r in json.loads((tmp_path / "sweep" / "results.json").read_text())}
    assert (rows[1]["decided_at"], rows[2]["decided_at"], rows[3]["decided_at"]) == (4, 2, None)
    assert rows[3]["utterances"] == 6 and rows[3]["verdict"] == "undecided"
    assert cells["angular-remove1-none"]["sets"]["a"]["asr"]["utterances"] == 4, "metrics over the scored utterances"
    cost = summary["scoring_cost"]["a"]
    assert (cost["cells"], cost["utterances"]) == (4, 18)
    assert (cost["fixed_first_look"]["utterances"], cost["fixed_last_look"]["utterances"]) == (8, 24)
    assert cost["decode_seconds"] == pytest.approx(sum(c["sets"]["a"]["decode_seconds"] for c in cells.values()))


def test_a_cell_healed_under_another_precision_is_another_measurement(tmp_path):
    def measured(heal: str, precision: str) -> dict:
        config = SweepConfig(model="m", scan="s", train=["t"], test=["x"], out=str(tmp_path / "o"),
                             heal_mixed_precision=precision)
        return sweep_module.measured_on(config, heal)

    healed = measured("receiving-mlp", "no")
    assert "heal_mixed_precision" not in healed  # float32, as every cell measured before the option: still reused
    assert measured("receiving-mlp", "auto") == {**healed, "heal_mixed_precision": "auto"}
    assert measured("none", "auto") == measured("none", "no")  # nothing healed: the precision changes nothing
    with pytest.raises(UserError, match="--heal-mixed-precision must be one of no, bf16, fp16, auto, not 'fp8'"):
        SweepConfig(model="m", scan="s", train=["t"], test=["x"], out="o", heal_mixed_precision="fp8")
