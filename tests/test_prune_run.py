"""``speechprune prune``: --drop parsing, plain HF and SpeechLLM directories in and out,
pruning.json and mergekit.yaml, scan-based selection, and the CLI's exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from speechprune.cli import main
from speechprune.errors import UserError
from speechprune.model.decoder import decoder_layers
from speechprune.prune import run as prune_run
from speechprune.prune.run import PruneConfig, parse_drop, prune
from tests.helpers import (SENTENCES, WORD_VOCAB_SIZE, save_word_tokenizer, synthetic_scan, tiny_causal_lm,
                           tiny_model_config, write_tiny_manifest)

L = 8
VOCAB = WORD_VOCAB_SIZE


def save_tiny_lm(folder: Path, family: str = "llama") -> Path:
    tiny_causal_lm(family, vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=L,
                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64).save_pretrained(folder)
    save_word_tokenizer(folder)
    return folder


def text_scan(num_layers: int, redundant: tuple[int, int]) -> dict:
    """A plain LLM's scan (text input only) whose layers ``redundant`` [a, b) hardly move the stream."""
    return synthetic_scan(num_layers, redundant, inputs=("text",))


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny-llama")


@torch.no_grad()
def skipped_logits(model_dir: Path, skip: list[int], ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def identity(module, args, kwargs, output):
        return args[0] if args else kwargs["hidden_states"]

    for i in skip:
        decoder_layers(model)[i].register_forward_hook(identity, with_kwargs=True)
    return model(ids, use_cache=False).logits


# ---- --drop ---------------------------------------------------------------------------------

def test_parse_drop():
    assert parse_drop("10:14,20:22") == [10, 11, 12, 13, 20, 21]
    assert parse_drop(" 3:4 , 0:2") == [0, 1, 3]
    assert parse_drop("6:8", num_layers=8) == [6, 7]


@pytest.mark.parametrize("drop, message", [
    ("5", "START:END"), ("a:b", "START:END"), ("3-5", "START:END"), ("4:2", "empty"), ("3:3", "empty"),
    ("1:4,3:5", "overlap"), ("-1:2", "START:END"), ("1:2:3", "START:END"), ("1:2,", "START:END"),
])
def test_bad_drop_strings(drop, message):
    with pytest.raises(UserError, match=message):
        parse_drop(drop)


def test_drop_range_checked_against_the_decoder():
    with pytest.raises(UserError, match="out of range"):
        parse_drop("6:9", num_layers=8)
    with pytest.raises(UserError, match="all 8"):
        parse_drop("0:8", num_layers=8)


def test_config_validation():
    with pytest.raises(UserError, match="give --drop"):
        PruneConfig(model="m", out="o")
    with pytest.raises(UserError, match="not with --drop"):
        PruneConfig(model="m", out="o", drop="1:2", scan="s")
    with pytest.raises(UserError, match="not with --drop"):
        PruneConfig(model="m", out="o", drop="1:2", remove=1)
    with pytest.raises(UserError, match="--remove N / --fraction F"):
        PruneConfig(model="m", out="o", scan="s")
    with pytest.raises(UserError, match="--remove N / --fraction F"):
        PruneConfig(model="m", out="o", scan="s", remove=2, fraction=0.2)
    with pytest.raises(UserError, match="--strategy must be one of .*, not 'best'"):
        PruneConfig(model="m", out="o", scan="s", remove=2, strategy="best")
    with pytest.raises(UserError, match="chooses from a scan"):
        PruneConfig(model="m", out="o", remove=2)
    with pytest.raises(UserError, match="chooses from a scan"):
        PruneConfig(model="m", out="o", remove=2, strategy="bi")
    with pytest.raises(UserError, match="fraction"):
        PruneConfig(model="m", out="o", scan="s", fraction=1.0)
    PruneConfig(model="m", out="o", remove=2, strategy="last")  # needs no scan
    PruneConfig(model="m", out="o", remove=2, strategy="greedy-score", data="d.jsonl")
    # the option parser reads a lone 10:14 as the base-60 integer 614; it is read back
    assert PruneConfig(model="m", out="o", drop="614").drop == "10:14"


# ---- plain Hugging Face directory ------------------------------------------------------------

def test_prune_plain_lm_directory(lm_dir, tmp_path):
    out = tmp_path / "pruned"
    record = prune(PruneConfig(model=str(lm_dir), out=str(out), drop="2:4,6:7"))

    assert record["removed"] == [2, 3, 6] and record["kept"] == [0, 1, 4, 5, 7]
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert len(decoder_layers(model)) == model.config.num_hidden_layers == 5
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, skipped_logits(lm_dir, [2, 3, 6], ids), atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(out)("w1 w2")["input_ids"] == [1, 2]

    pruning = json.loads((out / "pruning.json").read_text())
    assert pruning["removed"] == [2, 3, 6]
    assert pruning["kept_ranges"] == [[0, 2], [4, 6], [7, 8]]
    assert pruning["removed_blocks"] == [[2, 4], [6, 7]] and pruning["receiving_layers"] == [2, 4]
    assert pruning["original_num_layers"] == 8 and pruning["num_layers"] == 5
    assert pruning["strategy"] == "drop" and pruning["kind"] == "causal-lm"
    assert "0-based" in pruning["index_convention"] and "end-exclusive" in pruning["index_convention"]
    assert pruning["verification"]["logits_max_abs_error"] <= 1e-5

    recipe = yaml.safe_load((out / "mergekit.yaml").read_text())
    assert recipe["merge_method"] == "passthrough" and recipe["dtype"] == "float32"
    assert [s["sources"][0]["layer_range"] for s in recipe["slices"]] == [[0, 2], [4, 6], [7, 8]]
    assert {s["sources"][0]["model"] for s in recipe["slices"]} == {str(lm_dir.resolve())}
    assert not list(tmp_path.glob(".*partial"))


def test_prune_from_scan_with_each_scan_strategy(lm_dir, tmp_path):
    scan_dir = tmp_path / "scan"
    scan_dir.mkdir()
    (scan_dir / "scan.json").write_text(json.dumps(text_scan(L, (3, 6))))
    expected = {"angular": [3, 4, 5], "last": [4, 5, 6]}
    for strategy, removed in {"angular": [3, 4], "last": [5, 6]}.items():
        record = prune(PruneConfig(model=str(lm_dir), out=str(tmp_path / strategy), scan=str(scan_dir),
                                   fraction=0.3, strategy=strategy))  # floor(0.3 * 8 + 0.5) = 2
        assert record["n"] == 2 and record["removed"] == removed
    record = prune(PruneConfig(model=str(lm_dir), out=str(tmp_path / "a3"), scan=str(scan_dir), remove=3))
    assert record["removed"] == expected["angular"] and record["block_distance"] == pytest.approx(0.06 / math.pi)
    assert record["input"] == "text" and record["region"] == "all"  # "auto" resolved: the scan has text only
    assert record["scan"] == str((scan_dir / "scan.json").resolve())
    record = prune(PruneConfig(model=str(lm_dir), out=str(tmp_path / "l3"), scan=str(scan_dir), remove=3,
                               strategy="last"))
    assert record["removed"] == expected["last"]
    record = prune(PruneConfig(model=str(lm_dir), out=str(tmp_path / "b2"), scan=str(scan_dir), remove=2,
                               strategy="bi", region="last"))
    assert len(record["removed"]) == 2 and set(record["removed"]) <= {3, 4, 5}


def test_scan_of_another_model_is_refused(lm_dir, tmp_path):
    (tmp_path / "scan.json").write_text(json.dumps(text_scan(12, (3, 6))))
    with pytest.raises(UserError, match="12-layer"):
        prune(PruneConfig(model=str(lm_dir), out=str(tmp_path / "o"), scan=str(tmp_path), remove=2))
    assert not (tmp_path / "o").exists()


def test_model_strategies_need_their_callables(lm_dir, tmp_path):
    (tmp_path / "scan.json").write_text(json.dumps(text_scan(L, (3, 6))))
    for strategy in ("iterative", "greedy-score"):
        with pytest.raises(UserError, match=f"--strategy {strategy} .* give --data"):
            prune(PruneConfig(model=str(lm_dir), out=str(tmp_path / "o"), scan=str(tmp_path), remove=1,
                              strategy=strategy))
    assert not (tmp_path / "o").exists()

    # with a score (here: all candidates tie, so the lowest indices go)
    record = prune(PruneConfig(model=str(lm_dir), out=str(tmp_path / "g"), scan=str(tmp_path), remove=2,
                               strategy="greedy-score"), score=lambda m: float(len(decoder_layers(m))))
    assert record["removed"] == [0, 1]
    assert [step["removed"] for step in record["steps"]] == [0, 1]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "g").config.num_hidden_layers == 6

    # with a rescan: the first scan points at layer 5, the scan of the pruned model at its layer 2
    def rescan(model):
        return text_scan(len(decoder_layers(model)), (5, 6) if len(decoder_layers(model)) == L else (2, 3))

    record = prune(PruneConfig(model=str(lm_dir), out=str(tmp_path / "i"), scan=str(tmp_path), remove=2,
                               strategy="iterative"), rescan=rescan)
    assert record["removed"] == [2, 5]


def test_qwen2_sliding_window_directory_round_trip(tmp_path):
    source = save_tiny_lm(tmp_path / "qwen2", family="qwen2")
    out = tmp_path / "pruned"
    prune(PruneConfig(model=str(source), out=str(out), drop="1:2,4:5"))
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6 and config["max_window_layers"] == 2
    assert config["layer_types"] == ["full_attention"] * 2 + ["sliding_attention"] * 4


def test_failed_verification_leaves_no_output(lm_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise UserError("export check: simulated mismatch")

    monkeypatch.setattr(prune_run, "verify_export", broken)
    with pytest.raises(UserError, match="simulated"):
        prune(PruneConfig(model=str(lm_dir), out=str(tmp_path / "o"), drop="1:2"))
    assert list(tmp_path.iterdir()) == []


# ---- SpeechLLM directory ----------------------------------------------------------------------

def test_prune_speechllm_directory(speechllm_dir, tmp_path):
    import shutil

    trained, _ = speechllm_dir
    source = tmp_path / "speechllm"
    shutil.copytree(trained, source)
    (source / "adapters" / "decoder").mkdir(parents=True)
    (source / "adapters" / "decoder" / "adapter_config.json").write_text("{}")
    (source / "adapters" / "encoder").mkdir(parents=True)
    (source / "adapters" / "encoder" / "adapter_config.json").write_text("{}")
    (source / "decoder" / "chat_template.jinja").write_text("{{ messages }}")

    out = tmp_path / "pruned"
    record = prune(PruneConfig(model=str(source), out=str(out), drop="4:6"))

    assert record["kind"] == "speechllm"
    for same in ("speechllm.json", "encoder/config.json", "encoder/model.safetensors", "projector.safetensors",
                 "tokenizer/tokenizer.json", "adapters/encoder/adapter_config.json", "decoder/chat_template.jinja"):
        assert (out / same).read_bytes() == (source / same).read_bytes(), same
    assert not (out / "adapters" / "decoder").exists()  # names layers that are gone
    assert record["not_copied"] == ["adapters/decoder"]
    model, info = AutoModelForCausalLM.from_pretrained(out / "decoder", output_loading_info=True)
    assert not info["missing_keys"] and len(decoder_layers(model)) == 4
    # decoder/ is a complete Hugging Face model: its tokenizer is the SpeechLLM's
    text = "the red cat sleeps."
    assert AutoTokenizer.from_pretrained(out / "decoder")(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(source / "tokenizer")(text)["input_ids"]
    mergekit = (out / "mergekit.yaml").read_text()
    recipe = yaml.safe_load(mergekit)
    assert recipe["slices"][0]["sources"][0]["model"] == str((source / "decoder").resolve())
    assert [s["sources"][0]["layer_range"] for s in recipe["slices"]] == [[0, 4]]
    assert "Llama" in mergekit.split("slices:")[0] and "layer_types" in mergekit.split("slices:")[0]


@pytest.fixture(scope="module")
def speechllm_dir(tmp_path_factory) -> tuple[Path, Path]:
    from speechprune.model.speechllm import SpeechLLM

    folder = tmp_path_factory.mktemp("slm")
    manifest = write_tiny_manifest(folder / "data", with_st=False)
    torch.manual_seed(0)
    model = SpeechLLM.build(tiny_model_config(layers=6), texts=[t for pair in SENTENCES for t in pair])
    model.save(folder / "slm")
    return folder / "slm", manifest


def test_prune_a_real_speechllm(speechllm_dir, tmp_path):
    from speechprune.model.speechllm import SpeechLLM

    source, _ = speechllm_dir
    prune(PruneConfig(model=str(source), out=str(tmp_path / "pruned"), drop="1:3"))
    pruned = SpeechLLM.load(tmp_path / "pruned")
    assert len(decoder_layers(pruned.decoder)) == 4
    embeds = torch.randn(1, 7, pruned.decoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    original = SpeechLLM.load(source)

    def identity(module, args, kwargs, output):
        return args[0] if args else kwargs["hidden_states"]

    for i in (1, 2):
        decoder_layers(original.decoder)[i].register_forward_hook(identity, with_kwargs=True)
    with torch.no_grad():
        torch.testing.assert_close(pruned.decoder(inputs_embeds=embeds).logits,
                                   original.decoder(inputs_embeds=embeds).logits, atol=1e-5, rtol=0)


def test_greedy_score_and_iterative_on_cached_speech_inputs(speechllm_dir, tmp_path):
    from speechprune.model.speechllm import SpeechLLM
    from speechprune.prune.calibration import cached_decoder_inputs, loss_score, scan_rescan
    from speechprune.prune.strategies import angular, greedy_score

    source, manifest = speechllm_dir
    # the same choice as greedy-score computed by hand on the same cached inputs, one full forward
    # per candidate (the reference; the command reuses each round's prefix)
    decoder, batches = cached_decoder_inputs(str(source), str(manifest), "speech", batch_size=4)
    assert len(batches) == 2 and batches[0].regions["speech"].any()
    reference_trace: list[dict] = []
    expected = greedy_score(decoder, 2, loss_score(batches), trace=reference_trace, method="full")

    encodes = []
    original_encode = SpeechLLM.encode

    def counting_encode(self, batch):
        encodes.append(len(batch.ids))
        return original_encode(self, batch)

    SpeechLLM.encode = counting_encode
    try:
        out = tmp_path / "greedy"
        assert main(["prune", "--model", str(source), "--out", str(out), "--strategy", "greedy-score",
                     "--remove", "2", "--data", str(manifest), "--batch-size", "4", "--device", "cpu"]) == 0
    finally:
        SpeechLLM.encode = original_encode
    assert sum(encodes) == 6  # every utterance encoded once, not once per candidate
    record = json.loads((out / "pruning.json").read_text())
    assert record["removed"] == expected and record["utterances"] == 6
    assert len(record["steps"]) == 2 and len(record["steps"][0]["scores"]) == 6
    for step, reference in zip(record["steps"], reference_trace):  # same computation; 2e-5: float32 rounding
        assert step["scores"] == pytest.approx(reference["scores"], abs=2e-5, rel=0)
        ranked = sorted(reference["scores"].values())
        assert ranked[1] - ranked[0] > 8e-5  # no near-tie: the same choice holds on any CPU
    assert SpeechLLM.load(out).decoder.config.num_hidden_layers == 4

    # iterative: its first step is the best single layer of a scan of the full model
    rescan = scan_rescan(batches, "speech", ["all"])
    full_scan = rescan(decoder)
    assert full_scan.num_layers == 6
    first = angular(full_scan, 1)[0]
    out = tmp_path / "iterative"
    assert main(["prune", "--model", str(source), "--out", str(out), "--strategy", "iterative",
                 "--fraction", "0.34", "--data", str(manifest), "--device", "cpu"]) == 0
    record = json.loads((out / "pruning.json").read_text())
    assert record["n"] == 2 and record["steps"][0]["removed"] == first and len(record["removed"]) == 2


# ---- CLI ----------------------------------------------------------------------------------------

def test_cli_prune_succeeds(lm_dir, tmp_path):
    out = tmp_path / "out"
    # a lone 2:4 goes through the option parser's base-60 reading and back
    assert main(["prune", "--model", str(lm_dir), "--out", str(out), "--drop", "2:4"]) == 0
    assert json.loads((out / "pruning.json").read_text())["removed"] == [2, 3]
    out2 = tmp_path / "out2"
    assert main(["prune", "--model", str(lm_dir), "--out", str(out2), "--drop", "0:1,6:7"]) == 0
    assert json.loads((out2 / "pruning.json").read_text())["removed"] == [0, 6]
    (tmp_path / "scan.json").write_text(json.dumps(text_scan(L, (3, 6))))
    out3 = tmp_path / "out3"
    assert main(["prune", "--model", str(lm_dir), "--out", str(out3), "--scan", str(tmp_path),
                 "--fraction", "0.25", "--strategy", "angular"]) == 0
    assert json.loads((out3 / "pruning.json").read_text())["removed"] == [3, 4]
    out4 = tmp_path / "out4"
    assert main(["prune", "--model", str(lm_dir), "--out", str(out4), "--strategy", "last", "--remove", "3"]) == 0
    assert json.loads((out4 / "pruning.json").read_text())["removed"] == [4, 5, 6]


@pytest.mark.parametrize("args", [
    ["--drop", "4:2"],
    ["--drop", "6:12"],
    ["--drop", "0:8"],
    ["--drop", "x"],
    [],
    ["--scan", "nowhere", "--remove", "2"],
    ["--scan", "SCAN", "--remove", "9"],
    ["--scan", "SCAN", "--remove", "2", "--strategy", "iterative"],
    ["--scan", "SCAN", "--remove", "2", "--input", "speech"],
    ["--scan", "SCAN", "--fraction", "1.5"],
    ["--remove", "2"],
    ["--remove", "2", "--strategy", "greedy-score"],
    ["--remove", "2", "--strategy", "greedy-score", "--data", "missing.jsonl"],
    ["--drop", "1:2", "--scan", "SCAN"],
])
def test_cli_bad_input_exits_2_and_leaves_no_output(lm_dir, tmp_path, args, capsys):
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "scan.json").write_text(json.dumps(text_scan(L, (3, 6))))
    args = [str(tmp_path / "scan") if a == "SCAN" else a for a in args]
    out = tmp_path / "out"
    assert main(["prune", "--model", str(lm_dir), "--out", str(out), *args]) == 2
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan"]
    assert capsys.readouterr().err.count("\n") == 1  # one line


def test_cli_bad_model_exits_2(tmp_path):
    assert main(["prune", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--drop", "1:2"]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["prune", "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--drop", "1:2"]) == 2
    assert not (tmp_path / "o").exists()
