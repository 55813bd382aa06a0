"""Only `data synth` and `demo` need espeak-ng (a system package that `pip install` cannot bring):
without it they stop in one line that says what is missing and how to install it, and `data synth`
leaves nothing behind. Every other command runs without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the venv's bin/: speechprune, and no espeak-ng


def run_without_espeak(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    assert not (BIN / "espeak-ng").exists()
    env = {**os.environ, "PATH": str(BIN), "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / "speechprune"), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("speechprune: error:")]


def test_data_synth_without_espeak_says_so_in_one_line(tmp_path):
    result = run_without_espeak(tmp_path, "data", "synth", "--out", "corpus")
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == ["speechprune: error: espeak-ng not found: 'data synth' and 'demo' speak their "
                                   "corpus with it; install it (e.g. 'apt-get install espeak-ng', or 'make setup', "
                                   "which does)"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "corpus").exists()


@pytest.mark.slow  # imports the whole chain (about 10 s)
def test_demo_without_espeak_says_so_in_one_line(tmp_path):
    result = run_without_espeak(tmp_path, "demo", "--tiny", "--out", "demo")
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1 and "espeak-ng not found" in error_lines(result)[0]
    assert "Traceback" not in result.stderr
