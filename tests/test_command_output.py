"""Every command says what it did, and its output directory is what it claims: the summaries the
CLI prints (captured), config.yaml in every run directory, metrics listed once, pruning.json's
resolved input, no empty folders left by a sweep."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml

from speechprune.cli import main
from speechprune.data.manifest import load_manifest
from speechprune.evaluate import score
from tests.helpers import build_tiny_speechllm, fake_scan, tiny_model_config, write_tiny_manifest


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny SpeechLLM (6 layers), its manifest and one scan of it with speech and text input."""
    root = tmp_path_factory.mktemp("commands")
    manifest = write_tiny_manifest(root / "data")
    torch.manual_seed(0)
    build_tiny_speechllm(load_manifest(manifest), layers=6).save(root / "model")
    return root, manifest


def run_cli(argv: list[str], capsys) -> str:
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def scanned(workspace):
    root, manifest = workspace
    out = root / "scan"
    if not out.exists():
        assert main(["scan", "--model", str(root / "model"), "--data", str(manifest), "--out", str(out),
                     "--bootstrap", "20", "--regions", "all,last,target"]) == 0
    return out


def test_scan_prints_best_blocks_and_speech_text_agreement(workspace, capsys):
    from speechprune.scan.compare import agreement

    root, manifest = workspace
    out = run_cli(["scan", "--model", root / "model", "--data", manifest, "--out", root / "scan-printed",
                   "--bootstrap", "0", "--regions", "all,last"], capsys)
    payload = json.loads((root / "scan-printed" / "scan.json").read_text())
    for input_name in ("speech", "text"):
        for region in ("all", "last"):
            entry = payload["inputs"][input_name]["regions"][region]
            row = next(line for line in out.splitlines() if f"{input_name}/{region} " in line)
            shown = re.findall(r"(\d+) \((\d\.\d{3})\)", row)
            best = entry["best_blocks"][: len(shown)]
            assert len(shown) == min(6, payload["num_layers"] - 1) == 5
            assert shown == [(str(b["start"]), f"{b['distance']:.3f}") for b in best]
    expected = agreement(payload["inputs"]["speech"]["regions"]["all"]["angular"],
                         payload["inputs"]["text"]["regions"]["all"]["angular"], [])
    row = next(line for line in out.splitlines() if re.search(r"\ball\b", line) and "/" not in line)
    assert f"{expected['spearman']:.3f}" in row and f"{expected['same_best_start']:.2f}" in row
    assert "0-based" in out and "[l, l+n)" in out


def test_scan_and_compare_write_config_yaml(workspace, scanned, capsys):
    from speechprune.config import build_config
    from speechprune.scan.compare import CompareConfig
    from speechprune.scan.run import ScanConfig

    root, manifest = workspace
    replay = build_config(ScanConfig, [], str(scanned / "config.yaml"))
    assert replay.model == str(root / "model") and replay.regions == ["all", "last", "target"]
    out = run_cli(["compare", scanned, "--out", root / "compare", "--regions", "all"], capsys)
    replay = build_config(CompareConfig, [], str(root / "compare" / "config.yaml"))
    assert replay.scans == [str(scanned)] and replay.regions == ["all"]
    pair = json.loads((root / "compare" / "compare.json").read_text())["pairs"][0]
    row = next(line for line in out.splitlines() if "scan/speech" in line)
    assert f"{pair['spearman']:.3f}" in row


def test_compare_of_different_depths_names_each_scan_once(workspace, scanned, tmp_path, capsys):
    other = tmp_path / "deeper"
    shutil.copytree(scanned, other)
    payload = json.loads((other / "scan.json").read_text())
    payload["num_layers"] += 1  # a valid scan one layer deeper: the last layer's output repeated
    for data in payload["inputs"].values():
        for entry in data["regions"].values():
            for key in ("angular", "cosine"):
                entry[key] = [row + row[-1:] for row in entry[key]] + [entry[key][-1] + entry[key][-1][-1:]]
            for key in ("best_blocks", "block_influence", "stability"):  # they follow from the matrices
                entry.pop(key, None)
    (other / "scan.json").write_text(json.dumps(payload))
    assert main(["compare", str(scanned), str(other), "--out", str(tmp_path / "c")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count(str(scanned)) == 1 and error.count(str(other)) == 1
    assert f"{scanned} has 6" in error and f"{other} has 7" in error


def test_prune_prints_layers_parameters_and_check(workspace, scanned, capsys):
    from transformers import AutoModelForCausalLM

    root, _ = workspace
    out_dir = root / "pruned"
    out = run_cli(["prune", "--model", root / "model", "--out", out_dir, "--fraction", "0.34", "--scan", scanned],
                  capsys)
    pruning = json.loads((out_dir / "pruning.json").read_text())
    before = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(root / "model" / "decoder").parameters())
    after = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(out_dir / "decoder").parameters())
    assert "6 -> 4 decoder layers" in out
    assert " ".join(map(str, pruning["removed"])) in out
    start = pruning["removed"][0]
    assert f"[{start}, {start + 2})" in out
    assert f"{before:,} -> {after:,}" in out and before > after
    assert "passed" in out
    # the input actually used, not "auto"; config.yaml is this run's, not the unpruned model's recipe
    assert pruning["input"] == "speech" and "input speech" in out
    config = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert config["fraction"] == 0.34 and config["model"] == str(root / "model")
    assert "num_hidden_layers" not in (out_dir / "config.yaml").read_text()


def test_prune_from_a_text_only_scan_records_text(workspace, scanned, tmp_path, capsys):
    root, _ = workspace
    text_only = tmp_path / "text-scan"
    text_only.mkdir()
    payload = json.loads((scanned / "scan.json").read_text())
    del payload["inputs"]["speech"]
    (text_only / "scan.json").write_text(json.dumps(payload))
    run_cli(["prune", "--model", root / "model", "--out", tmp_path / "p", "--remove", "1", "--scan", text_only,
             "--verify", "false"], capsys)
    assert json.loads((tmp_path / "p" / "pruning.json").read_text())["input"] == "text"


def test_eval_prints_each_condition_once_and_help_names_the_files(workspace, capsys, tmp_path):
    root, manifest = workspace
    out = run_cli(["eval", "--model", root / "model", "--data", manifest, "--out", tmp_path / "eval",
                   "--max-new-tokens", "3", "--batch-size", "6"], capsys)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["sets"]["tiny"]
    assert {k for k in metrics if isinstance(metrics[k], dict)} == {"asr", "st"}
    assert metrics["asr"]["conditions"] == ["en-en"] and metrics["st"]["conditions"] == ["en-fr"]
    asr = metrics["asr"]
    assert re.search(r"tiny\s+.\s+asr \(en-en\)\s+.\s+6\s+.\s+" + f"{asr['words']}" + r"\s+.\s+"
                     + re.escape(f"{asr['wer']:.3f} [{asr['wer_interval'][0]:.3f}, {asr['wer_interval'][1]:.3f}]"), out)
    assert "WER [95% CI]" in out and "words" in out
    assert out.count("asr") == 1 and out.count("st (en-fr)") == 1
    assert_help_names_the_files(capsys, "eval", tmp_path / "eval")


def assert_help_names_the_files(capsys, command: str, out_dir) -> None:
    """Every file written is named (placeholders like <manifest> stand for any name) in --out's help,
    and every file named there is written."""
    main([command, "--help"])
    help_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("--out "))
    # what follows "; with --option" names the files of another setting of that option
    help_line = help_line.split("; with --")[0]
    named = re.findall(r"((?:<[\w ]+>|[\w.-])+\.(?:jsonl|json|yaml|png|csv))\b", help_line)
    patterns = [re.compile(re.sub(r"<[\w ]+>", r"[\\w.-]+", re.escape(n).replace("\\<", "<").replace("\\>", ">"))
                           + "$") for n in named]
    written = sorted(p.name for p in out_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    assert all(any(p.match(name) for p in patterns) for name in written), (written, named)
    assert all(any(p.match(name) for name in written) for p in patterns), (written, named)


def test_scan_and_compare_help_name_the_files_they_write(workspace, scanned, capsys, tmp_path):
    root, _ = workspace
    assert_help_names_the_files(capsys, "scan", scanned)
    run_cli(["compare", scanned, "--out", tmp_path / "cmp"], capsys)
    assert_help_names_the_files(capsys, "compare", tmp_path / "cmp")


def test_score_lists_each_condition_once():
    rows = [{"task": "st", "src_lang": "en", "tgt_lang": tgt, "reference": "le chat", "hypothesis": hyp}
            for tgt, hyp in (("fr", "le chat"), ("de", "die katze"), ("fr", "un chat"))]
    rows.append({"task": "asr", "src_lang": "en", "tgt_lang": "en", "reference": "a b", "hypothesis": "a"})
    metrics = score(rows)
    assert set(metrics) == {"asr", "st", "st:en-de", "st:en-fr"}
    assert metrics["asr"]["conditions"] == ["en-en"] and metrics["asr"]["wer"] == 0.5
    assert metrics["st"]["utterances"] == 3 and metrics["st:en-fr"]["utterances"] == 2
    entries = [json.dumps({k: v for k, v in m.items() if k != "conditions"}, sort_keys=True) for m in metrics.values()]
    assert len(set(entries)) == len(entries), "two entries hold the same numbers"


def test_train_says_it_resumed_and_ends_with_a_table(tiny_manifest, tmp_path, capsys, monkeypatch):
    import speechprune.train as train_module
    from speechprune.train import LoopConfig, StageConfig, TrainConfig, train

    stages = {"ctc": StageConfig(steps=2, lm_weight=0.0, ctc_weight=1.0, projector="frozen", decoder="frozen"),
              "joint": StageConfig(steps=3)}
    config = TrainConfig(train=[str(tiny_manifest)], out=str(tmp_path / "run"), model=tiny_model_config(),
                         stages=stages, loop=LoopConfig(batch_size=4, checkpoint_every=1, log_every=1))
    real_save = train_module._save_checkpoint

    def save_then_stop(directory, accelerator, model, optimizer, scheduler, stage_index, step, *rest):
        real_save(directory, accelerator, model, optimizer, scheduler, stage_index, step, *rest)
        if stage_index == 1 and step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert "resumed" not in capsys.readouterr().out
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    train(config)
    out = capsys.readouterr().out
    assert "resumed from step 2 of stage joint (done before: ctc)" in out
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    for stage in log["stages"]:
        row = next(line for line in out.splitlines() if re.search(rf"\b{stage['name']}\b\s+.\s+{stage['steps']}\b",
                                                                  line))
        assert f"{stage['final_loss']:.4f}" in row and f"{stage['seconds']:.1f}" in row


def test_heal_prints_its_stage_and_writes_its_own_config(workspace, capsys, tmp_path):
    root, manifest = workspace
    run_cli(["prune", "--model", root / "model", "--out", tmp_path / "p", "--drop", "2:4", "--verify", "false"],
            capsys)
    out = run_cli(["heal", "--model", tmp_path / "p", "--data", manifest, "--out", tmp_path / "h", "--steps", "2",
                   "--batch-size", "6"], capsys)
    heal = json.loads((tmp_path / "h" / "heal.json").read_text())
    assert "heal: LoRA r=8 on receiving-mlp" in out
    row = next(line for line in out.splitlines() if re.search(r"\bheal\b\s+.\s+2\b", line))
    assert f"{heal['stages'][0]['final_loss']:.4f}" in row
    assert yaml.safe_load((tmp_path / "h" / "config.yaml").read_text())["steps"] == 2


def test_sweep_prints_cells_results_and_largest_acceptable(workspace, capsys, tmp_path):
    from speechprune.sweep import SPEED_NOTE, SweepConfig, sweep

    root, manifest = workspace
    scan = fake_scan(tmp_path, 6)
    summary = sweep(SweepConfig(model=str(root / "model"), scan=str(scan), train=[str(manifest)], test=[str(manifest)],
                                out=str(tmp_path / "sweep"), fractions=[0.0, 0.34], strategies=["angular", "last"],
                                heal=["none", "receiving-mlp"], heal_steps=2, batch_size=6,
                                max_test_utterances=2))
    captured = capsys.readouterr()
    assert "sweep cell 1/5: baseline" in captured.err
    assert re.search(r"sweep cell 5/5 done in [\d.]+ s", captured.err)
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
    baseline = next(r for r in rows if r["removed"] == 0)
    assert f"baseline {baseline['wer']:.3f}" in captured.out
    for key, best in summary["largest_acceptable"].items():
        strategy, heal, _ = key.split("/")
        row = next(line for line in captured.out.splitlines() if f"{strategy}/{heal} " in line)
        cell = next(r for r in rows if (r["strategy"], r["heal"], r["removed"]) == (strategy, heal, 2))
        assert f"{cell['wer']:.3f}{'' if cell['acceptable'] else ' x'}" in row
        assert f"{best['fraction']:.3f} ({best['removed_count']} layers)" in row
    # no speed ratio from timings too short to mean anything, and the user is told where speed is measured
    assert all("decode_speedup" not in r for r in rows)
    assert SPEED_NOTE in captured.out and json.loads((tmp_path / "sweep" / "summary.json").read_text())["speed"]
    assert not (tmp_path / "sweep" / "healing").exists(), "an empty healing/ folder is left behind"
    assert (tmp_path / "sweep" / "config.yaml").exists()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_data_synth_says_what_it_did_when_piped(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["data", "synth", "--out", str(out), "--languages", "en", "--train-sentences", "3",
                 "--dev-sentences", "1", "--test-sentences", "1", "--test-ood-sentences", "1", "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "--st-pairs: left out en-fr, en-de, fr-en, de-en" in captured.out
    assert re.search(r"data synth: speaking: 6/6 utterances done in", captured.err)
    assert re.search(r"asr-en\s+.\s+3\s+.\s+1\s+.\s+1\s+.\s+1", captured.out)
    assert "data synth: 6 utterances spoken" in captured.out
    assert sorted(p.name for p in out.glob("*.jsonl")) == [f"asr-en.{s}.jsonl" for s in ("dev", "test-ood", "test",
                                                                                         "train")]


def test_greedy_score_shows_progress_over_every_candidate(workspace, tmp_path, capsys):
    from speechprune.model.decoder import decoder_layers
    from speechprune.prune.run import PruneConfig, prune

    root, _ = workspace
    prune(PruneConfig(model=str(root / "model"), out=str(tmp_path / "g"), remove=2, strategy="greedy-score",
                      verify=False), score=lambda m: float(len(decoder_layers(m))))
    # two rounds over a 6-layer decoder: 6 candidates, then the 5 left
    assert re.search(r"prune greedy-score: 11/11 candidates done in", capsys.readouterr().err)


def test_greedy_score_progress_keeps_the_prefix_reusing_scorer(workspace, tmp_path, capsys):
    """The progress wrapper must not hide ``removal_scores``: a scorer that offers it is asked for
    whole rounds (never for one full forward per candidate), and the bar still counts candidates."""
    from speechprune.prune.run import PruneConfig, prune

    class RoundScorer:
        rounds: list[tuple[list[int], list[int]]] = []

        def __call__(self, causal_lm):
            raise AssertionError("greedy-score fell back to one full forward per candidate")

        def removal_scores(self, causal_lm, removed, candidates):
            self.rounds.append((list(removed), list(candidates)))
            return {c: float(abs(c - 3)) for c in candidates}  # layer 3 first, then its lower neighbour

    scorer = RoundScorer()
    record = prune(PruneConfig(model=str(workspace[0] / "model"), out=str(tmp_path / "g"), remove=2,
                               strategy="greedy-score", verify=False), score=scorer)
    assert scorer.rounds == [([], [0, 1, 2, 3, 4, 5]), ([3], [0, 1, 2, 4, 5])]
    assert record["removed"] == [2, 3]
    assert re.search(r"prune greedy-score: 11/11 candidates done in", capsys.readouterr().err)
