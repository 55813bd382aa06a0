"""A miniature study end to end (tiny models, a few steps), its numbers checked against the scans
and sweeps they name, recomputed here independently: once on synthetic base LLMs that the study
text-pretrains, once on pretrained decoders given as tiny GGUF files (the shape of
configs/study-real.yaml); the shipped configs' plans; the listening bar."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import spearmanr

from speechprune.claims import ListeningBar, smallest_largest
from speechprune.config import build_config
from speechprune.errors import UserError
from speechprune.model import gguf as model_gguf
from speechprune.report import ReportConfig, report
from speechprune.study import StudyConfig, conditions, study
from tests.helpers import tiny_real_study_config
from tests.helpers import tiny_study_config as _tiny_study

CLAIMS = ["(1)", "(2)", "(3)", "(4)", "(5)"]


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


def _block_means(out: Path, saved: dict, names: list[str]) -> tuple[float, float]:
    """Mean Spearman of base-on-text vs SpeechLLM-on-speech and of SpeechLLM text vs speech over
    ``names``, from the scans the study names."""
    inherited, text_speech = [], []
    for name in names:
        entry = saved["conditions"][name]
        base = _angular(out / "base" / entry["decoder"] / f"scan-{'+'.join(entry['tasks'])}", "text")
        inherited.append(_spearman(base, _angular(out / entry["scan"], "speech")))
        text_speech.append(_spearman(_angular(out / entry["scan"], "text"), _angular(out / entry["scan"], "speech")))
    return float(np.mean(inherited)), float(np.mean(text_speech))


def _largest_unhealed(summary_dir: Path, heal: str = "none") -> float:
    """The fraction every test set of a sweep keeps acceptable (the smallest of their largest)."""
    summary = json.loads((summary_dir / "summary.json").read_text())
    return min(v["fraction"] for k, v in summary["largest_acceptable"].items() if k.startswith(f"angular/{heal}/"))


def _check_size_claim(out: Path, claim: dict) -> None:
    """Claim (3) on decoders of one size per family: it says it cannot be read off them, then gives
    each decoder's largest acceptable fractions, unhealed and healed, as its sweep found them."""
    measured = claim["measured"]
    assert measured.startswith("not tested by these decoders: the claim needs several sizes of one family")
    per_decoder = measured.split("Per decoder: ")[1]
    for sweep_dir in claim["evidence"].split(", "):
        line = per_decoder.split(f"{sweep_dir.split('/')[1].split('.')[0]} (")[1].split(" healed (")[0]
        assert f"{_largest_unhealed(out / sweep_dir):.2f} unhealed" in line
        assert line.endswith(f"{_largest_unhealed(out / sweep_dir, 'receiving-mlp'):.2f}")


def _consensus_starts(out: Path, saved: dict, names: list[str]) -> dict[int, int]:
    mean = np.mean([_block_table(_angular(out / saved["conditions"][c]["scan"], "speech")) for c in names], axis=0)
    return {n: int(np.nanargmin(mean[n - 1])) for n in range(1, mean.shape[0] + 1)}


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
    assert [c["claim"][:3] for c in saved["claims"][:5]] == CLAIMS
    rows = saved["claims"][5:]  # one per condition: its test metric and the listening bar
    assert [r["claim"].split()[1] for r in rows] == list(saved["conditions"])
    for row, entry in zip(rows, saved["conditions"].values()):
        assert "listening bar passed" in row["measured"] and "not evidence" not in row["measured"]
        assert all(f"{task}.test" in row["measured"] for task in entry["tasks"])  # beside its test metrics
    for claim in saved["claims"]:
        assert claim["measured"] and "not measured" not in claim["measured"], claim
        assert claim["paper"] and claim["evidence"], claim
        for evidence in claim["evidence"].split(", "):
            assert (out / evidence).is_dir(), evidence

    # claim (1): the mean Spearman, recomputed from the base and SpeechLLM scans it names
    names = list(saved["conditions"])
    inherited, text_speech = _block_means(out, saved, names)
    assert _numbers(saved["claims"][0]["measured"])[0] == pytest.approx(inherited, abs=5e-4)
    assert _numbers(saved["claims"][1]["measured"])[0] == pytest.approx(text_speech, abs=5e-4)

    # claim (3): llama-2 and qwen2-3 are one size per family, and it says so; each decoder's line has
    # the fractions of the sweep it names
    _check_size_claim(out, saved["claims"][2])
    # agreement matrices: one per decoder with two or more conditions, symmetric, equal to a direct recomputation
    assert list(saved["agreement"]) == ["qwen2-3"]
    matrix = saved["agreement"]["qwen2-3"]
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
    assert set(backbone["single_task"]) == set(single)  # the multi-task model pruned with each one's own block
    for name, entry in backbone["single_task"].items():
        assert entry["fraction"] == _largest_unhealed(out / entry["sweep"])
        assert entry["sweep"] in saved["claims"][4]["evidence"]
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


def test_the_listening_bar_judges_every_test_set():
    metrics = {"sets": {"asr-en.test": {"asr": {"wer": 0.1}}, "asr-fr.test": {"asr": {"wer": 0.25}},
                        "st-en-fr.test": {"st": {"bleu": 12.0}}}}
    assert ListeningBar(0.2, 0.0).misses(metrics) == ["WER on asr-fr.test 0.250 > 0.20"]
    assert ListeningBar(0.3, 15.0).misses(metrics) == ["BLEU on st-en-fr.test 12.0 < 15.0"]
    assert ListeningBar(0.3, 0.0).misses(metrics) == []
    assert "BLEU stated only" in ListeningBar(0.2, 0.0).describe()


def test_what_every_test_set_keeps_is_the_smallest_of_each_bound():
    # set a: 2 layers decided acceptable, 3 undecided, 4 not; set b: 1 decided, 4 undecided, 5 not
    entry = lambda fraction, upper, utterances: {  # noqa: E731
        "fraction": fraction, "removed_count": int(fraction * 10), "removed": list(range(int(fraction * 10))),
        "fraction_not_ruled_out": upper, "removed_count_not_ruled_out": int(upper * 10),
        "removed_not_ruled_out": list(range(int(upper * 10))), "utterances": utterances, "words": 7 * utterances}
    summary = {"largest_acceptable": {"angular/none/a": entry(0.2, 0.3, 100), "angular/none/b": entry(0.1, 0.4, 90),
                                      "angular/receiving-mlp/a": entry(0.5, 0.5, 100)}}
    every = smallest_largest(summary, "angular", "none")
    assert (every["fraction"], every["removed"]) == (0.1, [0])  # set b's entry
    assert (every["fraction_not_ruled_out"], every["removed_count_not_ruled_out"],
            every["removed_not_ruled_out"]) == (0.3, 3, [0, 1, 2])  # set a rules out 0.4
    assert (every["test_sets"], every["utterances"], every["words"]) == (2, 190, 1330)  # it rests on both sets
    assert "test_sets" not in smallest_largest(summary, "angular", "receiving-mlp")


@pytest.mark.parametrize("settings, message", [
    ({"decoders": [{"name": "x"}]}, "x: set exactly one of config and pretrained, not neither"),
    ({"decoders": [{"name": "x", "config": {"model_type": "llama"}, "pretrained": "x.gguf"}]},
     "x: set exactly one of config and pretrained, not both"),
    ({"multilingual_decoder": "nope"}, "multilingual_decoder 'nope' is not among the decoders"),
    ({"encoders": [{"name": "w"}]}, "w: set exactly one of config and pretrained, not neither"),
    ({"speechllm": {"token_ctc_vocabulary": "some"}}, "speechllm.token_ctc_vocabulary must be one of full, corpus"),
    ({"evaluation": {"bleu_bar": 120}}, r"evaluation.bleu_bar must be in \[0, 100\]"),
])
def test_study_settings_are_checked_in_one_line(tmp_path, settings, message):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(UserError, match=message) as error:
        build_config(StudyConfig, [], str(path))
    assert "\n" not in str(error.value)


def test_the_shipped_real_config_plans_nine_conditions_without_a_model_file(monkeypatch):
    from importlib.resources import files

    import speechprune.study as study_module

    def no_model_file(path):
        raise AssertionError(f"planning opened {path}")

    monkeypatch.setattr(study_module, "decoder_checkpoint", no_model_file)
    config = build_config(StudyConfig, [], str(files("speechprune") / "configs" / "study-real.yaml"))
    assert [(d.name, d.pretrained, d.config) for d in config.decoders] == [("smollm2", "smollm2-135m", {}),
                                                                          ("gemma3", "gemma3-270m", {})]
    # the reference encoder pretrained Whisper base (frozen), against the synthetic study's wav2vec2
    synthetic = {e.name: e for e in build_config(StudyConfig).encoders}
    assert [(e.name, e.pretrained) for e in config.encoders] == [("whisper", "whisper-base"), ("wav2vec2", "")]
    assert config.encoders[1] == synthetic["wav2vec2"]
    s, e = config.speechllm, config.evaluation
    assert (s.warmup_steps, s.warmup_batch_size, s.proj_steps, s.copy_steps) == (800, 16, 800, 30)
    assert (s.joint_steps, s.multitask_joint_steps, s.warmup_languages) == (200, 400, "study")
    assert (s.projector.stack, s.projector.position_ms, s.token_ctc_vocabulary) == (4, 160, "corpus")
    # 160 ms a decoder position for either encoder: Whisper's 20 ms frames (10 ms mel hop, conv stride 2)
    # and wav2vec2's 20 ms frames by 8 (stacked by 4, wav2vec2's left the projector's token CTC stuck:
    # docs/study.md)
    from speechprune.model.encoders import build_encoder
    from speechprune.options.model import EncoderConfig

    wav2vec2_ms = build_encoder(config.encoders[1].config, hop_length=EncoderConfig().hop_length).frame_ms
    assert [s.projector.for_encoder(ms).stack for ms in (20.0, wav2vec2_ms)] == [8, 8]
    assert config.loop.mixed_precision == "auto"
    assert (config.loop.lora.rank, config.loop.lora.alpha) == (16, 32)
    corpus = config.corpus
    assert (corpus.train_sentences, corpus.dev_sentences, corpus.test_sentences) == (2000, 100, 400)
    assert e.looks == [100, 200, 400], "sweeps read up to all 400 test utterances, in looks"
    # study-scale's heal, under bf16 autocast where this CPU's bf16 matmul is faster
    assert (e.heal_steps, e.heal_mixed_precision) == (20, "auto")
    assert (e.fractions, e.test_utterances, e.wer_bar, e.bleu_bar) == ([0.0, 0.1, 0.2, 0.3, 0.4], 100, 0.2, 0.0)
    plan = {c.name: set(c.axes) for c in conditions(config)}
    assert plan == {
        "smollm2.whisper.asr-en.lora": {"decoder", "encoder", "mode"},  # the reference
        "smollm2.whisper.asr-en.frozen": {"mode"},
        "smollm2.wav2vec2.asr-en.lora": {"encoder"},
        "gemma3.whisper.asr-en.lora": {"decoder", "task", "language"},
        "gemma3.whisper.asr-fr.lora": {"language"},
        "gemma3.whisper.asr-es.lora": {"language"},
        "gemma3.whisper.st-en-fr.lora": {"task"},
        "gemma3.whisper.st-fr-en.lora": {"task"},
        "gemma3.whisper.multi.lora": {"multitask"},
    }
    assert next(c for c in conditions(config) if c.axes == ("multitask",)).tasks == tuple(config.tasks)


@pytest.mark.slow
def test_miniature_study_on_pretrained_gguf_decoders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(model_gguf.CACHE_ENV, str(tmp_path / "cache"))
    config = tiny_real_study_config(tmp_path)
    llama, frozen, wav2vec2 = "llama.whisper.asr-en.lora", "llama.whisper.asr-en.frozen", "llama.wav2vec2.asr-en.lora"
    asr_en, asr_fr, st = "gemma3.whisper.asr-en.lora", "gemma3.whisper.asr-fr.lora", "gemma3.whisper.st-en-fr.lora"
    multi = "gemma3.whisper.multi.lora"
    # the reference decoder is the deeper one, its depth read from the GGUF (4 layers against 3)
    assert {c.name: set(c.axes) for c in conditions(config)} == {
        llama: {"decoder", "encoder", "mode"}, frozen: {"mode"}, wav2vec2: {"encoder"},
        asr_en: {"decoder", "task", "language"}, asr_fr: {"language"}, st: {"task"}, multi: {"multitask"}}
    result = study(config)
    out = Path(config.out)
    saved = json.loads((out / "study.json").read_text())
    assert saved["claims"] == json.loads(json.dumps(result["claims"]))
    claims = {c["claim"][:3]: c for c in saved["claims"][:5]}
    assert list(claims) == CLAIMS

    # each pretrained decoder is its own base LLM (nothing text-pretrained), its SpeechLLMs built on its weights
    files = [d.pretrained for d in config.decoders]
    assert saved["decoders"] == {"llama": {"family": "llama", "num_layers": 4, "pretrained": files[0]},
                                 "gemma3": {"family": "gemma3", "num_layers": 3, "pretrained": files[1]}}
    assert not list(out.glob("base/*/model"))

    # one warm-up per encoder on every language of the study; the multi-task model its own joint steps
    assert sorted(p.name for p in (out / "encoders").iterdir()) == ["wav2vec2-en+fr", "whisper-en+fr"]
    for name, entry in saved["conditions"].items():
        log = json.loads((out / entry["model"] / "train_log.json").read_text())
        joint = next(stage["steps"] for stage in log["stages"] if stage["name"] == "joint")
        assert joint == (5 if name == multi else 3)

    # where the time went: every step that ran, timed once and grouped by kind
    spent = saved["time"]
    assert {"encoder warm-ups", "SpeechLLM training", "evaluations", "scans", "compares",
            "sweeps"} <= set(spent["seconds_by_kind"])
    trained = sorted(step for step in spent["seconds_by_step"] if step.startswith("SpeechLLM "))
    assert trained == sorted(f"SpeechLLM {name}" for name in saved["conditions"])
    assert spent["seconds_by_kind"]["SpeechLLM training"] == pytest.approx(
        sum(spent["seconds_by_step"][step] for step in trained), abs=0.5)
    assert spent["seconds_measured"] == pytest.approx(sum(spent["seconds_by_step"].values()), abs=0.5)
    assert "where the time went" in capsys.readouterr().out
    for entry in saved["conditions"].values():
        decoder = json.loads((out / entry["model"] / "decoder" / "config.json").read_text())
        family = saved["decoders"][entry["decoder"]]["family"]  # a GGUF file's architecture: gemma3 is gemma3_text
        assert decoder["model_type"] in (family, f"{family}_text") and decoder["hidden_size"] == 64
        assert entry["num_layers"] == saved["decoders"][entry["decoder"]]["num_layers"]

    # the listening bar: BLEU 100 is out of reach, so the two conditions with a translation test set are not evidence
    evidence = [name for name, entry in saved["conditions"].items() if entry["evidence"]]
    assert set(saved["conditions"]) - set(evidence) == {st, multi}
    rows = {row["claim"].split()[1]: row for row in saved["claims"][5:]}
    assert set(rows) == set(saved["conditions"])
    for name, row in rows.items():
        assert ("not evidence" in row["measured"]) == (name in (st, multi))
        assert all(f"{task}.test" in row["measured"] for task in saved["conditions"][name]["tasks"])
        assert (out / row["evidence"] / "metrics.json").is_file()
    assert "BLEU on st-en-fr.test" in rows[st]["measured"] and "< 100.0" in rows[st]["measured"]

    # claims (1) and (2): means over the evidence only, recomputed from the scans they name
    inherited, text_speech = _block_means(out, saved, evidence)
    assert _numbers(claims["(1)"]["measured"])[0] == pytest.approx(inherited, abs=5e-4)
    assert _numbers(claims["(2)"]["measured"])[0] == pytest.approx(text_speech, abs=5e-4)
    for claim in (claims["(1)"], claims["(2)"]):
        assert f"n={len(evidence)})" in claim["measured"]
        assert claim["measured"].endswith(f"left out): {st}, {multi}")
        assert st not in claim["evidence"] and multi not in claim["evidence"]

    # claim (3): one size per family, and it says so; each decoder's line has its sweep's fractions
    _check_size_claim(out, claims["(3)"])

    # claim (4): each axis over its evidence conditions, which share a decoder; the task axis keeps one
    assert {axis: a["conditions"] for axis, a in saved["axes"].items()} == {
        "encoder": [llama, wav2vec2], "language": [asr_en, asr_fr], "mode": [llama, frozen]}
    assert f"task: not measured (of its conditions only {asr_en} passed the listening bar)" in claims["(4)"]["measured"]
    assert "(not evidence" not in claims["(4)"]["measured"]  # no axis that was measured lost a condition
    for axis, a in saved["axes"].items():
        pair = [_angular(out / saved["conditions"][c]["scan"], "speech") for c in a["conditions"]]
        found = re.search(rf"{axis}: Spearman (-?\d+\.\d+)", claims["(4)"]["measured"]).group(1)
        assert float(found) == pytest.approx(_spearman(*pair), abs=5e-4)

    # agreement: one matrix per decoder over its evidence conditions, equal to a direct recomputation
    assert {d: m["conditions"] for d, m in saved["agreement"].items()} == {"llama": [llama, wav2vec2, frozen],
                                                                          "gemma3": [asr_en, asr_fr]}
    for matrix in saved["agreement"].values():
        a, b = (_angular(out / saved["conditions"][c]["scan"], "speech") for c in matrix["conditions"][:2])
        assert matrix["metrics"]["spearman"][0][1] == pytest.approx(_spearman(a, b), abs=1e-9)

    # claim (5): the consensus of the multilingual decoder's single-task evidence conditions, and the
    # multi-task model pruned with it, with its own blocks and with each single-task condition's
    starts = _consensus_starts(out, saved, [asr_en, asr_fr])
    for row in saved["consensus"]["rows"]:
        assert row["consensus_start"] == starts[row["n"]] and set(row["per_condition"]) == {asr_en, asr_fr}
    backbone = saved["consensus"]["backbone"]
    assert backbone["condition"] == multi and backbone["consensus_of"] == [asr_en, asr_fr]
    assert backbone["consensus_healed"] == _largest_unhealed(out / "consensus" / "sweep", "receiving-mlp")
    assert backbone["consensus_unhealed"] == _largest_unhealed(out / "consensus" / "sweep")
    assert backbone["own_unhealed"] == _largest_unhealed(out / "consensus" / "sweep-own")
    # one model and test sets: its sweeps measure the unpruned model once, and a block two sources share once
    first, *others = backbone["sweeps"]
    for other in others:
        cell = json.loads((out / other / "cells" / "baseline.json").read_text())
        assert cell["reused_from"] == str(out / first / "cells" / "baseline.json")
    measured = claims["(5)"]["measured"]
    assert measured.startswith("not evidence: the multi-task model missed the listening bar (BLEU on st-en-fr.test")
    assert list(backbone["single_task"]) == [asr_en, st, asr_fr]  # in plan order
    for name, entry in backbone["single_task"].items():
        settings = yaml.safe_load((out / entry["sweep"] / "config.yaml").read_text())
        assert (settings["scan"], settings["model"]) == (str(out / saved["conditions"][name]["scan"]),
                                                         str(out / saved["conditions"][multi]["model"]))
        assert entry["fraction"] == _largest_unhealed(out / entry["sweep"]) and entry["evidence"] == (name != st)
        assert f"{name}: {entry['fraction']:.2f} (" in measured and entry["sweep"] in claims["(5)"]["evidence"]
    assert measured.split(f"{st}: ")[1].split("]")[0].endswith("[its condition is not evidence")
    assert set(saved["sweeps"]) == {llama, asr_en, "consensus", "consensus-own"} | {
        f"consensus-from-{name}" for name in (asr_en, asr_fr, st)}

    # a rerun reuses every finished part: nothing is trained or dequantised again
    models = sorted(out.glob("conditions/*/model/speechllm.json"))
    stamps = [path.stat().st_mtime_ns for path in models]
    capsys.readouterr()
    again = study(config)
    assert len(models) == 7 and [path.stat().st_mtime_ns for path in models] == stamps
    err = capsys.readouterr().err
    assert f"reusing the finished steps of the same run in {out}" in err and "dequantising" not in err
    assert again["claims"] == result["claims"]

    # the report draws one agreement matrix per decoder
    html = report(ReportConfig(run=[str(out)])).read_text(encoding="utf-8")
    assert 'alt="agreement across conditions of decoder llama"' in html
    assert 'alt="agreement across conditions of decoder gemma3"' in html
