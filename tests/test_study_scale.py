"""The scale study (configs/study-scale.yaml): two sizes of one real family, planned without a model
file; a GGUF decoder's family and depth read from its header (Qwen2 and Qwen2.5 sizes are all
qwen2); claim (3) compares the sizes of a family only where the sweeps' verdicts separate them."""

from __future__ import annotations

import dataclasses
import re
from importlib.resources import files

import pytest

import speechprune.study as study_module
from speechprune.claims import _families, _size_caveat, _size_trend
from speechprune.config import build_config
from speechprune.options.study import Condition, NamedConfig
from speechprune.study import StudyConfig, conditions, decoder_shape
from tests.helpers import write_tiny_gguf

SHIPPED = files("speechprune") / "configs" / "study-scale.yaml"


def _no_model_file(monkeypatch):
    def opened(path, *args):
        raise AssertionError(f"planning opened {path}")

    for name in ("decoder_checkpoint", "gguf_path", "read_header"):
        monkeypatch.setattr(study_module, name, opened)


def test_the_scale_config_plans_two_sizes_of_one_family_without_a_model_file(monkeypatch):
    _no_model_file(monkeypatch)
    config = build_config(StudyConfig, [], str(SHIPPED))
    assert [(d.name, d.pretrained) for d in config.decoders] == [("qwen05", "qwen2.5-coder-0.5b"),
                                                                ("qwen15", "qwen2.5-coder-1.5b")]
    # the reference recipe of study-real: LoRA, English ASR, its reference encoder (pretrained Whisper base)
    real = build_config(StudyConfig, [], str(files("speechprune") / "configs" / "study-real.yaml"))
    assert config.encoders == real.encoders[:1]
    assert config.speechllm == dataclasses.replace(real.speechllm, multitask_joint_steps=0)  # no multi-task model
    assert config.loop.lora == real.loop.lora
    assert (config.modes, config.tasks, config.multitask) == (["lora"], ["asr-en"], False)
    plan = {c.name: set(c.axes) for c in conditions(config)}
    assert plan == {"qwen15.whisper.asr-en.lora": {"decoder", "encoder", "task", "language", "mode"},
                    "qwen05.whisper.asr-en.lora": {"decoder"}}  # both swept: the decoder axis
    e = config.evaluation
    assert e.fractions == [0.0, 0.1, 0.2, 0.3, 0.4] and e.stop_line == "any-set"
    assert e.looks[-1] <= config.corpus.test_sentences  # the last look has its test utterances
    assert config.loop.mixed_precision == "auto" and config.dtype == "float32"


@pytest.mark.parametrize("name", ["study-scale", "study-real"])
def test_a_real_study_config_states_its_measured_time_within_the_target(name):
    shipped = files("speechprune") / "configs" / f"{name}.yaml"
    header = "".join(line for line in shipped.read_text().splitlines(keepends=True) if line.startswith("#"))
    total = re.search(r"Time, measured: ([\d.]+) minutes wall clock", header)
    assert total and float(total.group(1)) <= 150, "a real study runs within 150 minutes on a 2-core CPU"


def test_a_gguf_decoder_family_is_its_architecture_read_from_the_header(tmp_path, monkeypatch):
    def dequantised(path):
        raise AssertionError(f"dequantised {path}")

    monkeypatch.setattr(study_module, "decoder_checkpoint", dequantised)
    small = write_tiny_gguf(tmp_path / "small.gguf", "qwen2", layers=2)
    large = write_tiny_gguf(tmp_path / "large.gguf", "qwen2", layers=3, seed=1)
    llama = write_tiny_gguf(tmp_path / "llama.gguf", "llama", layers=4)
    sizes = {name: decoder_shape(NamedConfig(name, pretrained=str(path)))
             for name, path in (("small", small), ("large", large), ("llama", llama))}
    assert sizes == {"small": ("qwen2", 2), "large": ("qwen2", 3), "llama": ("llama", 4)}
    assert _families(sizes, sizes) == {"qwen2": {2, 3}, "llama": {4}}
    assert _size_caveat({}, sizes).startswith("not evidence: fewer than two sizes")  # nothing swept yet
    assert decoder_shape(NamedConfig("built", config={"model_type": "qwen2", "num_hidden_layers": 5})) == ("qwen2", 5)


def _entry(fraction: float, upper: float) -> dict:
    return {"fraction": fraction, "removed_count": 0, "removed": [], "fraction_not_ruled_out": upper,
            "removed_count_not_ruled_out": 0, "utterances": 100, "words": 700}


def _record(decoder: str, unhealed: tuple[float, float], healed: tuple[float, float]) -> dict:
    summary = {"largest_acceptable": {"angular/none/asr-en.test": _entry(*unhealed),
                                      "angular/receiving-mlp/asr-en.test": _entry(*healed)}}
    return {"condition": Condition(decoder, "whisper", ("asr-en",), "lora", ("decoder",)), "sweep": summary}


def test_claim_3_compares_the_sizes_of_a_family_only_where_the_verdicts_separate_them():
    sizes = {"qwen05": ("qwen2", 24), "qwen15": ("qwen2", 28), "smollm2": ("llama", 30)}
    evidence = {"b": _record("qwen15", (0.21, 0.29), (0.11, 0.21)), "a": _record("qwen05", (0.08, 0.17), (0.12, 0.25)),
                "c": _record("smollm2", (0.1, 0.1), (0.1, 0.1))}
    assert _size_caveat(evidence, sizes) == ""
    text = _size_trend(evidence, sizes)
    assert text == ("by family (largest acceptable fraction by depth): "
                    "qwen2, unhealed: 24 layers 0.08 (not ruled out: 0.17) -> 28 layers 0.21 (not ruled out: 0.29): "
                    "the larger keeps more; "
                    "qwen2, healed: 24 layers 0.12 (not ruled out: 0.25) -> 28 layers 0.11 (not ruled out: 0.21): "
                    "no difference shown at this test size. Per decoder: ")
    evidence["b"] = _record("qwen15", (0.0, 0.04), (0.0, 0.0))
    assert "unhealed: 24 layers 0.08 (not ruled out: 0.17) -> 28 layers 0.00 (not ruled out: 0.04): the larger " \
           "keeps less" in _size_trend(evidence, sizes)
    assert _size_trend({"a": evidence["a"], "c": evidence["c"]}, sizes) == ""  # one size a family: no trend


@pytest.mark.parametrize("value", ["every-set", "sometimes"])
def test_the_study_stop_line_is_never_or_any_set(tmp_path, value):
    from speechprune.errors import UserError

    path = tmp_path / "study.yaml"
    path.write_text(f"evaluation: {{stop_line: {value}}}\n")
    with pytest.raises(UserError, match="evaluation.stop_line must be one of never, any-set"):
        build_config(StudyConfig, [], str(path))
