"""Training: stages, LoRA export, exact resume after an interruption, two-process agreement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import speechprune.train as train_module
from speechprune.config import to_yaml
from speechprune.model.speechllm import SpeechLLM
from speechprune.train import StageConfig, TrainConfig, train
from tests.helpers import build_tiny_speechllm, tiny_train_config


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return SpeechLLM.load(directory).state_dict()


def test_training_runs_stages_and_writes_a_speechllm(tiny_manifest, tmp_path):
    out = train(tiny_train_config(tiny_manifest, tmp_path / "run"))
    log = json.loads((out / "train_log.json").read_text())
    assert [s["name"] for s in log["stages"]] == ["text-lm", "ctc", "joint"]
    assert [s["steps"] for s in log["stages"]] == [3, 3, 4]
    joint = [h for h in log["stages"][2]["history"]]
    assert {"lm", "ctc"} <= set(joint[0]) and len(joint) == 4
    assert (out / "speechllm.json").exists() and (out / "config.yaml").exists()
    assert not (out / "checkpoints").exists()
    model = SpeechLLM.load(out)
    assert model.decoder.config.num_hidden_layers == 4


def test_frozen_components_do_not_move(tiny_manifest, tmp_path):
    """The ctc stage trains only the encoder and CTC head: the decoder must stay bit-identical."""
    config = tiny_train_config(tiny_manifest, tmp_path / "a")
    config.stages = {"text-lm": config.stages["text-lm"]}
    first = weights(train(config))
    config2 = tiny_train_config(tiny_manifest, tmp_path / "b")
    config2.init = str(tmp_path / "a")
    config2.stages = {"ctc": config2.stages["ctc"]}
    second = weights(train(config2))
    for name, tensor in first.items():
        if name.startswith("decoder.") or name.startswith("projector."):
            assert torch.equal(tensor, second[name]), name
    assert any(not torch.equal(first[n], second[n]) for n in first if n.startswith("encoder."))


def test_lora_stage_exports_merged_decoder_and_adapter(tiny_manifest, tmp_path):
    config = tiny_train_config(tiny_manifest, tmp_path / "lora")
    config.stages = {"joint": StageConfig(steps=3, decoder="lora", encoder="frozen", lr=1e-2)}
    out = train(config)
    assert (out / "adapters" / "decoder" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(out / "decoder")
    assert not any("lora" in name for name in plain.state_dict())


def test_resume_after_interruption_gives_the_same_model(tiny_manifest, tmp_path, monkeypatch):
    reference = weights(train(tiny_train_config(tiny_manifest, tmp_path / "straight", checkpoint_every=2)))

    real_save = train_module._save_checkpoint

    def save_then_die(directory, accelerator, model, optimizer, scheduler, stage_index, step, *rest):
        real_save(directory, accelerator, model, optimizer, scheduler, stage_index, step, *rest)
        if stage_index == 2 and step == 2:  # mid-way through the joint stage
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_die)
    config = tiny_train_config(tiny_manifest, tmp_path / "resumed", checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert not (tmp_path / "resumed" / "speechllm.json").exists(), "an interrupted run must not look finished"
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    resumed = weights(train(config))
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_two_process_training_replicas_agree(tiny_manifest, tmp_path):
    config = tiny_train_config(tiny_manifest, tmp_path / "ddp")
    config.stages = {"joint": StageConfig(steps=3, ctc_weight=0.3, lr=3e-3)}
    config.loop.batch_size = 2
    config_file = tmp_path / "train.yaml"
    config_file.write_text(to_yaml(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "speechprune.cli", "train", "--config", str(config_file), "loop.cpu=true"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((tmp_path / "ddp" / "train_log.json").read_text())
    assert log["num_processes"] == 2
    assert len(log["replica_fingerprints"]) == 2
    assert log["replica_fingerprints"][0] == log["replica_fingerprints"][1]


def test_stage_order_and_text_input_stage(tiny_manifest, tmp_path):
    """A YAML-added stage runs where stage_order puts it; a text-input stage reads no audio and
    trains the decoder on the source transcript in the speech slot."""
    config = tiny_train_config(tiny_manifest, tmp_path / "ordered")
    config.stages["text-task"] = StageConfig(steps=2, input="text", encoder="frozen", lr=3e-3)
    config.stage_order = ["text-lm", "text-task", "joint"]
    log = json.loads((train(config) / "train_log.json").read_text())
    assert [s["name"] for s in log["stages"]] == ["text-lm", "text-task", "joint"]
    with pytest.raises(Exception, match="unknown stage"):
        TrainConfig(train=["x"], out="y", stage_order=["nope"])


def test_token_ctc_pulls_speech_towards_the_spoken_tokens(tiny_manifest):
    from speechprune.data.manifest import load_manifest

    utterances = [u for u in load_manifest(tiny_manifest) if u.task == "asr"]
    torch.manual_seed(0)
    model = build_tiny_speechllm(utterances)
    batch = next(model.batches(utterances, batch_size=6))
    optimizer = torch.optim.Adam(model.projector.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(batch, lm_weight=0.0, token_ctc_weight=1.0)["token_ctc"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is None for p in model.decoder.parameters()), "the decoder's embeddings stay untouched"


def test_the_shipped_base_llm_recipe_config_equals_base_llm_stages():
    from importlib.resources import files

    from speechprune.config import build_config
    from speechprune.train import base_llm_stages

    path = str(files("speechprune") / "configs" / "train-on-base-llm.yaml")
    config = build_config(TrainConfig, ["train=[x.jsonl]", "out=o"], path)
    assert config.ordered_stages() == base_llm_stages("lora")
    assert config.model.projector.stack == 2 and (config.loop.lora.rank, config.loop.lora.alpha) == (16, 32)


def test_a_frozen_encoder_is_run_once_per_utterance_and_gives_the_same_losses(tiny_manifest):
    from speechprune.data.manifest import load_manifest

    utterances = [u for u in load_manifest(tiny_manifest) if u.task == "asr"]
    torch.manual_seed(0)
    model = build_tiny_speechllm(utterances)
    batch = next(model.batches(utterances, batch_size=5))
    plain = model(batch, lm_weight=1.0, token_ctc_weight=1.0, ctc_weight=0.5)
    model.encoder_cache = {}
    first = model(batch, lm_weight=1.0, token_ctc_weight=1.0, ctc_weight=0.5)  # fills the cache
    assert set(model.encoder_cache) == {u.audio for u in utterances[:5]}  # keyed by recording
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    again = model(batch, lm_weight=1.0, token_ctc_weight=1.0, ctc_weight=0.5)
    assert calls == [], "a cached batch must not run the encoder"
    for name in ("lm", "token_ctc", "ctc", "total"):
        assert torch.allclose(plain[name], first[name], rtol=1e-5, atol=1e-6), name
        assert torch.allclose(plain[name], again[name], rtol=1e-5, atol=1e-6), name


def test_training_caches_encoder_states_only_while_the_encoder_is_frozen(tiny_manifest, tmp_path, monkeypatch):
    encoded: list[int] = []
    original = SpeechLLM.encode

    def counting(self, batch):
        if self.encoder_cache is None or any(key not in self.encoder_cache for key in batch.speech_keys):
            encoded.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(SpeechLLM, "encode", counting)
    config = tiny_train_config(tiny_manifest, tmp_path / "run")
    utterances = len(Path(tiny_manifest).read_text().splitlines())
    config.stages = {
        "proj": StageConfig(steps=6, lm_weight=0.0, token_ctc_weight=1.0, encoder="frozen", projector="full",
                            decoder="frozen", lr=3e-3),
        "joint": StageConfig(steps=2, ctc_weight=0.3, lr=3e-3),
    }
    train(config)
    batches_per_epoch, left_over = divmod(utterances, config.loop.batch_size)
    assert left_over == 0 and 6 > batches_per_epoch, "every epoch must see every utterance, and the frozen stage more than one"
    # the joint stage trains the encoder: it encodes every batch; the frozen stage encodes a batch only
    # while one of its recordings is new, so within its first epoch (ASR and ST lines share recordings)
    frozen, joint = encoded[:-2], encoded[-2:]
    assert joint == [config.loop.batch_size] * 2
    assert 0 < len(frozen) <= batches_per_epoch
    # the config.yaml it keeps, read back as a config file, trains the same stages again (not the defaults too)
    from speechprune.config import build_config

    again = build_config(TrainConfig, [], str(tmp_path / "run" / "config.yaml"))
    assert again.ordered_stages() == config.stages


@pytest.mark.parametrize("name", ["train-on-smollm2.yaml", "train-on-gemma3.yaml"])
def test_the_shipped_real_decoder_recipes_are_base_llm_stages_with_a_projector_warm_up(name):
    from importlib.resources import files

    from speechprune.config import build_config
    from speechprune.options.demo import RECIPES
    from speechprune.train import base_llm_stages

    path = str(files("speechprune") / "configs" / name)
    stages = build_config(TrainConfig, ["train=[x.jsonl]", "out=o"], path).ordered_stages()
    assert list(stages) == ["ctc", "proj", "copy", "joint"]
    steps = {f"{stage_name}_steps": stage.steps for stage_name, stage in stages.items()}
    assert stages == base_llm_stages("lora", **steps, token_ctc_vocabulary="corpus")
    assert list(base_llm_stages("frozen", **steps)) == ["ctc", "proj", "joint"]
    if name == "train-on-smollm2.yaml":  # the demo trains the shipped SmolLM2 recipe
        demo = RECIPES["base LLM"]
        assert {key: getattr(demo, key) for key in steps} == steps
        assert demo.token_ctc_vocabulary == "corpus"


def test_token_ctc_over_the_corpus_vocabulary(tiny_manifest):
    """Over every token it is the full token CTC; over the corpus's tokens alone it is never larger
    (each path's tokens are normalised over fewer competitors) and it refuses a batch it lacks."""
    from speechprune.data.manifest import load_manifest
    from speechprune.errors import UserError

    utterances = [u for u in load_manifest(tiny_manifest) if u.task == "asr"]
    torch.manual_seed(0)
    model = build_tiny_speechllm(utterances)
    batch = next(model.batches(utterances, batch_size=6))
    full = model(batch, lm_weight=0.0, token_ctc_weight=1.0)["token_ctc"]
    model.token_ctc_vocabulary = torch.arange(len(model.decoder.get_input_embeddings().weight))
    every = model(batch, lm_weight=0.0, token_ctc_weight=1.0)["token_ctc"]
    assert torch.allclose(every, full, rtol=1e-5, atol=1e-6)
    vocabulary = model.corpus_vocabulary(utterances)
    assert set(torch.cat(batch.source_ids).tolist()) | {model.tokenizer.pad_token_id} <= set(vocabulary.tolist())
    assert len(vocabulary) < len(model.decoder.get_input_embeddings().weight)
    model.token_ctc_vocabulary = vocabulary
    corpus = model(batch, lm_weight=0.0, token_ctc_weight=1.0)["token_ctc"]
    assert float(corpus) < float(full)
    corpus.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    model.token_ctc_vocabulary = vocabulary[vocabulary != int(batch.source_ids[0][0])]
    with pytest.raises(UserError, match="vocabulary lacks"):
        model(batch, lm_weight=0.0, token_ctc_weight=1.0)


def test_a_stage_trains_its_token_ctc_over_the_corpus_vocabulary(tiny_manifest, tmp_path, monkeypatch):
    seen: list[int | None] = []
    original = SpeechLLM.token_ctc_loss

    def recording(self, speech, batch, scale=16.0):
        seen.append(None if self.token_ctc_vocabulary is None else len(self.token_ctc_vocabulary))
        return original(self, speech, batch, scale)

    monkeypatch.setattr(SpeechLLM, "token_ctc_loss", recording)
    config = tiny_train_config(tiny_manifest, tmp_path / "run")
    config.stages = {
        "proj": StageConfig(steps=2, lm_weight=0.0, token_ctc_weight=1.0, encoder="frozen", projector="full",
                            decoder="frozen", lr=3e-3, token_ctc_vocabulary="corpus"),
        "joint": StageConfig(steps=2, token_ctc_weight=1.0, lr=3e-3),
    }
    trained = SpeechLLM.load(train(config))
    assert seen[:2] == [seen[0]] * 2 and seen[0] is not None and seen[2:] == [None, None]
    assert seen[0] < len(trained.tokenizer)
    with pytest.raises(Exception, match="token_ctc_vocabulary"):
        StageConfig(token_ctc_weight=1.0, token_ctc_vocabulary="words")
