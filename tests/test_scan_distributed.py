"""A scan under ``accelerate launch`` with two CPU processes (gloo) equals the one-process scan:
each process scans its shard of batches and the sums are all-reduced once at the end.

Both scans run as subprocesses with one thread each: float32 matrix products round differently
with another thread count (on some CPUs by up to 5e-11 in the angular means), so only like with
like can be held to float64 summation-order tolerance."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speechprune.data.manifest import load_manifest
from tests.helpers import build_tiny_speechllm, write_tiny_manifest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_scan_equals_one_process_scan(tmp_path):
    manifest = write_tiny_manifest(tmp_path / "data")
    utterances = load_manifest(manifest)
    torch.manual_seed(0)
    model = build_tiny_speechllm(utterances, layers=3)
    model.save(tmp_path / "slm")
    args = ["--model", str(tmp_path / "slm"), "--data", str(manifest), "--batch-size", "2", "--bootstrap", "200",
            "--device", "cpu", "--plots=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one_process = [sys.executable, "-m", "speechprune.cli", "scan", "--out", str(tmp_path / "one")] + args
    accelerate = Path(sys.executable).parent / "accelerate"
    two_processes = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                     "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                     "-m", "speechprune.cli", "scan", "--out", str(tmp_path / "two")] + args
    for command in (one_process, two_processes):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    single = json.loads((tmp_path / "one" / "scan.json").read_text())
    double = json.loads((tmp_path / "two" / "scan.json").read_text())
    assert double["settings"]["processes"] == 2 and single["settings"]["processes"] == 1
    for name, data in single["inputs"].items():
        for region, entry in data["regions"].items():
            other = double["inputs"][name]["regions"][region]
            assert other["count"] == entry["count"]
            # same batches, same thread count: identical float32 states; only the order in which the
            # float64 per-token sums are added differs (~1e-16 relative), far inside 1e-12
            np.testing.assert_allclose(other["angular"], entry["angular"], rtol=0, atol=1e-12)
            np.testing.assert_allclose(other["cosine"], entry["cosine"], rtol=0, atol=1e-12)
            assert [b["start"] for b in other["best_blocks"]] == [b["start"] for b in entry["best_blocks"]]
            if "stability" in entry:  # per-utterance sums gathered in utterance order: same bootstrap
                for a, b in zip(entry["stability"], other["stability"]):
                    assert a["change_rate"] == b["change_rate"] and a["start"] == b["start"]
                    np.testing.assert_allclose(a["distance_ci95"], b["distance_ci95"], rtol=0, atol=1e-9)
