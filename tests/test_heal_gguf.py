"""Healing a pruned GGUF file (``heal_gguf.py``): the pruning record in the file's metadata, healing
on text files, a GGUF output whose untouched tensors are the input's bytes and whose healed tensors
are the healed model's weights in Q8_0 or F16, and the one-line refusals.

Every GGUF file here is written by the test itself (tests/helpers.py, :func:`write_tiny_gguf`): a
tiny Llama whose blocks cycle through Q8_0, Q4_0 and Q4_1, pruned by ``speechprune prune``.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from speechprune import heal_gguf
from speechprune.cli import main
from speechprune.errors import UserError
from speechprune.heal import HealConfig, heal, healing_data, healing_layers
from speechprune.model import gguf as model_gguf
from speechprune.prune.gguf_export import read_pruning_record
from speechprune.prune.run import PruneConfig, prune
from tests.helpers import save_word_tokenizer, tiny_causal_lm, write_tiny_gguf

TEXTS = "the cat in the hat\nthe hat sat on the cat\n\nthat cat is in the hat\nthe end of the cat\n"
HEALED = {f"blk.2.ffn_{part}.weight" for part in ("gate", "up", "down")}  # pruned layer 2 receives [2, 4)
SETTINGS = ["--steps", "3", "--lr", "5e-2", "--batch-size", "2"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch) -> Path:
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(model_gguf.CACHE_ENV, str(root))
    return root


@pytest.fixture
def models(tmp_path) -> Path:
    """tiny.gguf (6 layers) and pruned.gguf (layers [2, 4) removed) in one folder."""
    folder = tmp_path / "models"
    source = write_tiny_gguf(folder / "tiny.gguf", "llama", layers=6)
    prune(PruneConfig(model=str(source), out=str(folder / "pruned.gguf"), drop="2:4"))
    return folder


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text(TEXTS)
    return path


def _bytes(tensor) -> np.ndarray:
    return np.asarray(tensor.data).view(np.uint8)


def _dequantised(tensor) -> np.ndarray:
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)


def test_a_pruned_gguf_records_its_pruning(models):
    record = read_pruning_record(models / "pruned.gguf")
    assert record["removed"] == [2, 3] and record["kept"] == [0, 1, 4, 5]
    assert record["original_num_layers"] == 6 and record["num_layers"] == 4
    assert record["strategy"] == "drop" and record["source"] == "tiny.gguf"
    assert gguf.GGUFReader(models / "pruned.gguf").fields["speechprune.pruning.kept_layers"].contents() == [0, 1, 4, 5]
    assert healing_layers(record["kept"], record["original_num_layers"]) == [2]
    assert read_pruning_record(models / "tiny.gguf") is None


@pytest.mark.parametrize("kind", ["q8_0", "f16"])
def test_a_pruned_gguf_heals_on_text_into_gguf(models, texts, tmp_path, kind, capsys):
    pruned, healed = models / "pruned.gguf", models / "healed.gguf"
    # the same healing into a Hugging Face folder: the healed model the GGUF file must hold
    folder = heal(HealConfig(model=str(pruned), data=[str(texts)], out=str(tmp_path / "healed-hf"), steps=3, lr=5e-2,
                             batch_size=2))
    assert json.loads((folder / "heal.json").read_text())["receiving_layers"] == [2]
    assert json.loads((folder / "pruning.json").read_text())["kept"] == [0, 1, 4, 5]
    capsys.readouterr()
    assert main(["heal", "--model", str(pruned), "--data", str(texts), "--out", str(healed), "--gguf-type", kind,
                 *SETTINGS]) == 0
    shown = capsys.readouterr().out
    assert "healed GGUF file" in shown and f"written as {kind.upper()}" in shown
    assert sorted(p.name for p in models.iterdir()) == ["healed.gguf", "pruned.gguf", "tiny.gguf"]  # no work folder

    before, after = gguf.GGUFReader(pruned), gguf.GGUFReader(healed)
    old = {t.name: t for t in before.tensors}
    new = {t.name: t for t in after.tensors}
    assert list(new) == list(old)
    weights = load_file(folder / "model.safetensors")
    wanted = Q.Q8_0 if kind == "q8_0" else Q.F16
    for name, tensor in old.items():
        if name not in HEALED:  # copied as stored: the same bytes, the same type
            assert new[name].tensor_type == tensor.tensor_type, name
            assert np.array_equal(_bytes(new[name]), _bytes(tensor)), name
            continue
        assert new[name].tensor_type == wanted and tensor.tensor_type == Q.Q4_0  # layer 4 of 6 was Q4_0
        part = name.split(".")[2].removeprefix("ffn_")
        target = weights[f"model.layers.2.mlp.{part}_proj.weight"].numpy()
        bound = np.abs(target).max() / 127 if kind == "q8_0" else np.abs(target).max() * 2.0 ** -10
        assert np.abs(_dequantised(new[name]) - target).max() <= bound, name
        assert np.abs(_dequantised(tensor) - target).max() > 2 * bound, f"{name}: healing did not change it"

    # metadata: everything the pruned file had, its pruning record among it, and the healing record
    for key, field in before.fields.items():
        if not key.startswith("GGUF."):
            assert after.fields[key].contents() == field.contents() and after.fields[key].types == field.types, key
    assert after.fields["speechprune.pruning.removed_layers"].contents() == [2, 3]
    assert after.fields["speechprune.healing.receiving_layers"].contents() == [2]
    assert after.fields["speechprune.healing.source"].contents() == "pruned.gguf"
    assert after.fields["speechprune.healing.target"].contents() == "receiving-mlp"
    assert set(after.fields["speechprune.healing.changed_tensors"].contents()) == HEALED
    assert set(after.fields["speechprune.healing.changed_tensor_types"].contents()) == {wanted.name}
    assert json.loads(after.fields["speechprune.healing.data"].contents()) == [str(texts)]

    # logits: the file through transformers' GGUF loader against the healed Hugging Face model
    loaded = AutoModelForCausalLM.from_pretrained(str(models), gguf_file=healed.name, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(0, reference.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(ids).logits, loaded(ids).logits
    assert float((got - expected).abs().max()) <= 1e-2 * max(1.0, float(expected.abs().max()))
    unhealed = AutoModelForCausalLM.from_pretrained(str(models), gguf_file=pruned.name, dtype=torch.float32).eval()
    with torch.no_grad():
        assert float((unhealed(ids).logits - expected).abs().max()) > float((got - expected).abs().max())


def test_all_linear_healing_rewrites_attention_in_llama_cpp_row_order(models, texts, capsys):
    """llama.cpp stores a Llama query and key projection with its rows permuted (transformers' GGUF
    loader undoes it): the command's own check (logits through that loader) fails on a wrong order."""
    healed = models / "healed.gguf"
    assert main(["heal", "--model", str(models / "pruned.gguf"), "--data", str(texts), "--out", str(healed),
                 "--target", "all-linear", *SETTINGS]) == 0
    assert "reload check" in capsys.readouterr().out
    changed = set(gguf.GGUFReader(healed).fields["speechprune.healing.changed_tensors"].contents())
    parts = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    assert changed == {f"blk.{i}.{part}.weight" for i in range(4) for part in parts}


def test_a_gemma3_file_pruned_at_its_end_heals_its_last_layer(tmp_path, texts):
    source = write_tiny_gguf(tmp_path / "tiny-gemma3.gguf", "gemma3", layers=12)
    pruned, healed = tmp_path / "pruned.gguf", tmp_path / "healed.gguf"
    prune(PruneConfig(model=str(source), out=str(pruned), drop="9:12"))
    assert main(["heal", "--model", str(pruned), "--data", str(texts), "--out", str(healed), *SETTINGS]) == 0
    fields = gguf.GGUFReader(healed).fields
    assert fields["speechprune.healing.receiving_layers"].contents() == [8]  # no receiver: the last kept layer
    assert set(fields["speechprune.healing.changed_tensors"].contents()) == {
        f"blk.8.ffn_{part}.weight" for part in ("gate", "up", "down")}


def test_a_killed_gguf_healing_leaves_no_file_and_resumes(models, texts, monkeypatch):
    pruned, healed = models / "pruned.gguf", models / "healed.gguf"
    real = heal_gguf.write_healed

    def writes_then_dies(*args):
        real(*args)
        raise KeyboardInterrupt  # after the whole file was written, before its check

    monkeypatch.setattr(heal_gguf, "write_healed", writes_then_dies)
    config = HealConfig(model=str(pruned), data=[str(texts)], out=str(healed), steps=3, lr=1e-2, batch_size=2,
                        checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        heal(config)
    assert not healed.exists()
    work = models / ".healed.gguf.heal"
    assert (work / "checkpoints").is_dir()  # the training's resume point, kept for the rerun
    monkeypatch.setattr(heal_gguf, "write_healed", real)
    assert heal(config) == healed and healed.is_file() and not work.exists()
    assert sorted(p.name for p in models.iterdir()) == ["healed.gguf", "pruned.gguf", "tiny.gguf"]


def _one_line(capsys) -> str:
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    return error[0]


def test_bad_gguf_healing_input_is_one_line(models, texts, tmp_path, capsys):
    out = tmp_path / "out.gguf"
    base = ["heal", "--data", str(texts), "--out", str(out), "--steps", "1"]
    # a GGUF file that speechprune did not prune: no record, so no receiving layers
    assert main([*base, "--model", str(models / "tiny.gguf")]) == 2
    assert "without a pruning record" in _one_line(capsys)
    assert main(["heal", "--data", str(texts), "--out", str(tmp_path / "folder"), "--model",
                 str(models / "tiny.gguf")]) == 2
    assert "without a pruning record" in _one_line(capsys)
    assert main([*base, "--model", str(models / "pruned.gguf"), "--format", "onnx"]) == 2
    assert "--format must be hf, gguf or auto" in _one_line(capsys)
    assert main([*base, "--model", str(models / "pruned.gguf"), "--gguf-type", "q4_0"]) == 2
    assert "--gguf-type must be q8_0 or f16" in _one_line(capsys)
    assert main(["heal", "--data", str(texts), "--out", str(tmp_path / "folder"), "--format", "gguf",
                 "--model", str(models / "pruned.gguf")]) == 2
    assert "--out ending in .gguf" in _one_line(capsys)
    assert main([*base, "--model", str(tmp_path)]) == 2  # a folder cannot be written back as GGUF
    assert "needs a GGUF --model" in _one_line(capsys)
    assert not out.exists() and not (tmp_path / "folder").exists()
    assert sorted(p.name for p in models.iterdir()) == ["pruned.gguf", "tiny.gguf"]


def test_heal_reads_text_files_for_a_plain_lm_and_refuses_them_for_speech(tmp_path):
    folder = tmp_path / "llm"
    tiny_causal_lm("llama", vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8).save_pretrained(folder)
    save_word_tokenizer(folder)
    words = tmp_path / "words.txt"
    words.write_text("w1 w2 w3\nw4 w5\n\nw6 w7 w8 w9\n")
    out = heal(HealConfig(model=str(folder), data=[str(words)], out=str(tmp_path / "healed"), target="all-mlp",
                          steps=2, batch_size=2))
    assert json.loads((out / "heal.json").read_text())["stages"][0]["steps"] == 2
    speech_model = types.SimpleNamespace(sources=("speech", "text"), path="speechllm")
    with pytest.raises(UserError, match="needs audio, but .*words.txt is text only"):
        healing_data(HealConfig(model="m", data=[str(words)], out="o"), speech_model)
