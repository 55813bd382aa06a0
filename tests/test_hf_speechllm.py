"""Hugging Face speech-LLM families: tiny random instances built from their configs (helpers.py; no
download), with a tiny tokenizer, chat template and processor saved beside them; each is scanned,
pruned, reloaded in its own class and compared with the original with the layers skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig

from speechprune.cli import main
from speechprune.data.audio import load_audio
from speechprune.data.manifest import load_manifest
from speechprune.errors import UserError
from speechprune.model.decoder import decoder_layers, text_config
from speechprune.model.interface import load_model
from speechprune.model.tokenizer import train_bpe_tokenizer
from speechprune.prune.run import PruneConfig, prune
from speechprune.scan.run import ScanConfig, scan
from tests.helpers import (SPEECH_FAMILIES, SPEECH_LAYERS, SPEECH_MODEL_CLASSES, save_speech_family,
                           write_tiny_manifest)

@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_tiny_manifest(tmp_path_factory.mktemp("hfdata"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, manifest) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {family: save_speech_family(root / family, family, manifest) for family in SPEECH_FAMILIES}


def skip_hooks(causal_lm, skip):
    def identity(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return [decoder_layers(causal_lm)[i].register_forward_hook(identity, with_kwargs=True) for i in skip]


@pytest.mark.parametrize("family", list(SPEECH_FAMILIES))
def test_scan_prune_reload_compare(family, checkpoints, manifest, tmp_path):
    source = checkpoints[family]
    model = load_model(str(source))
    input_name = model.sources[0]
    assert input_name == ("speech" if SPEECH_FAMILIES[family][2] else "text")

    payload = scan(ScanConfig(model=str(source), data=str(manifest), out=str(tmp_path / "scan"), bootstrap=0,
                              plots=False, max_utterances=4, batch_size=2))
    assert payload["num_layers"] == SPEECH_LAYERS and payload["model"]["kind"] == "hf-speech-llm"
    regions = payload["inputs"][input_name]["regions"]
    assert all(regions[r]["count"] > 0 for r in ("speech", "prompt", "target", "last", "all"))

    record = prune(PruneConfig(model=str(source), out=str(tmp_path / "pruned"), drop="1:3"))
    assert record["kind"] == "hf-speech-llm" and record["verification"]["logits_max_abs_error"] <= 1e-5
    assert type(model.causal_lm).__name__ == SPEECH_MODEL_CLASSES[family]
    pruned, info = getattr(transformers, SPEECH_MODEL_CLASSES[family]).from_pretrained(tmp_path / "pruned", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert len(decoder_layers(pruned)) == text_config(pruned).num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in decoder_layers(pruned)] == [0, 1]
    for name in (p.name for p in source.iterdir() if p.suffix != ".safetensors"):
        assert (tmp_path / "pruned" / name).is_file(), name  # tokenizer, processor, chat template, ...

    # the pruned model on real decoder inputs (speech merged by the family's own code) equals the
    # original with layers 1 and 2 made identities
    utterances = load_manifest(manifest)[:3]
    inputs = model.decoder_inputs(utterances, source=input_name)
    handles = skip_hooks(model.causal_lm, [1, 2])
    with torch.no_grad():
        expected = model.causal_lm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                   position_ids=inputs.position_ids, use_cache=False).logits
        got = pruned.eval()(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                            position_ids=inputs.position_ids, use_cache=False).logits
    for handle in handles:
        handle.remove()
    real = inputs.attention_mask.bool()
    # same kernels on the same inputs; the tolerance covers only reassociation in a smaller graph
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    reloaded = load_model(str(tmp_path / "pruned"))
    assert len(reloaded.generate(utterances[:2], max_new_tokens=3)) == 2


def test_regions_follow_the_chat(checkpoints, manifest):
    """Speech = the expanded placeholders; prompt = the instruction; target = the answer + <|im_end|>."""
    model = load_model(str(checkpoints["qwen2_audio"]))
    utterances = [u for u in load_manifest(manifest) if u.task == "st"][:2]
    inputs = model.decoder_inputs(utterances, source="speech")
    tokenizer = model.tokenizer
    audio_id = model.speech_token_id
    for row, utt in enumerate(utterances):
        processed = model.processor(text=[model.render(utt, "speech", True)[0]], audio=[load_audio(utt.audio)],
                                    sampling_rate=16000, return_tensors="pt")
        assert int(inputs.regions["speech"][row].sum()) == int((processed["input_ids"] == audio_id).sum()) > 10
        labels = inputs.labels[row][inputs.labels[row] != -100]
        assert tokenizer.decode(labels) == utt.target + "<|im_end|>"
        prompt_ids = processed["input_ids"][0][inputs.regions["prompt"][row][inputs.attention_mask[row].bool()]]
        assert tokenizer.decode(prompt_ids) == "Translate the speech into French."
    # with text input the speech region holds the source transcript's tokens
    text = model.decoder_inputs(utterances[:1], source="text")
    ids = torch.tensor(tokenizer(model.render(utterances[0], "text", True)[0])["input_ids"])
    assert tokenizer.decode(ids[text.regions["speech"][0]]) == utterances[0].text

    # a template that rewrites the texts leaves no span to find: one clear error, not empty regions
    model.processor.chat_template = model.processor.chat_template.replace("{{ c.text }}", "{{ c.text | upper }}")
    with pytest.raises(UserError, match="does not render its prompt text verbatim"):
        model.decoder_inputs(utterances[:1], source="speech")


def test_heal_and_eval_keep_the_original_class(checkpoints, manifest, tmp_path):
    from speechprune.evaluate import EvalConfig, evaluate
    from speechprune.heal import HealConfig, heal

    source = checkpoints["qwen2_audio"]
    prune(PruneConfig(model=str(source), out=str(tmp_path / "pruned"), drop="1:2"))
    before = load_model(str(tmp_path / "pruned")).causal_lm.state_dict()
    out = heal(HealConfig(model=str(tmp_path / "pruned"), data=[str(manifest)], out=str(tmp_path / "healed"),
                          steps=2, lr=1e-2, batch_size=2))
    healed, info = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    after = healed.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".layers.1.mlp." in name for name in changed), changed
    assert (out / "adapters" / "decoder" / "adapter_config.json").is_file()
    assert json.loads((out / "heal.json").read_text())["receiving_layers"] == [1]
    non_weights = {p.name for p in source.iterdir() if p.suffix != ".safetensors"}
    assert non_weights <= {p.name for p in out.iterdir()} and (out / "pruning.json").is_file()

    results = evaluate(EvalConfig(model=str(out), data=[str(manifest)], out=str(tmp_path / "eval"),
                                  max_new_tokens=3, max_utterances=4, batch_size=2))
    assert set(results["tiny"].metrics) >= {"asr", "st"}


def test_moe_decoder_is_refused_with_one_line(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    config = Qwen2MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            shared_expert_intermediate_size=16, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=2, num_experts=4, num_experts_per_tok=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "moe")
    tokenizer = train_bpe_tokenizer(["a b c"], vocab_size=40)
    tokenizer.save_pretrained(tmp_path / "moe")
    assert main(["prune", "--model", str(tmp_path / "moe"), "--out", str(tmp_path / "out"), "--drop", "1:2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mixture-of-experts" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_gemma3n_is_refused_on_load(tmp_path):
    config = AutoConfig.for_model("gemma3n")
    config.save_pretrained(tmp_path / "g3n")
    with pytest.raises(UserError, match="per-layer embedding"):
        load_model(str(tmp_path / "g3n"))


def test_sweep_on_a_speech_llm(checkpoints, manifest, tmp_path):
    from speechprune.sweep import SweepConfig, sweep

    source = checkpoints["glmasr"]
    scan(ScanConfig(model=str(source), data=str(manifest), out=str(tmp_path / "scan"), bootstrap=0, plots=False,
                    max_utterances=4))
    summary = sweep(SweepConfig(model=str(source), scan=str(tmp_path / "scan"), train=[str(manifest)],
                                test=[str(manifest)], out=str(tmp_path / "sweep"), fractions=[0.0, 0.25],
                                strategies=["angular"], heal=["none", "receiving-mlp"], heal_steps=1,
                                max_test_utterances=2, batch_size=2, input="speech"))
    cells = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "sweep" / "cells").iterdir()}
    assert set(cells) == {"baseline", "angular-remove1-none", "angular-remove1-receiving-mlp"}
    assert cells["angular-remove1-none"]["kept_layers"] == SPEECH_LAYERS - 1
    assert cells["angular-remove1-none"]["decoder_bytes"] < cells["baseline"]["decoder_bytes"]
    assert "angular/none/tiny" in summary["largest_acceptable"]


def test_greedy_score_measures_the_speech_llm_on_cached_speech_inputs(checkpoints, manifest, tmp_path):
    record = prune(PruneConfig(model=str(checkpoints["audioflamingo3"]), out=str(tmp_path / "pruned"), remove=1,
                               strategy="greedy-score", data=str(manifest), max_utterances=2, batch_size=2))
    assert record["input"] == "speech" and record["utterances"] == 2 and len(record["removed"]) == 1
    # each step scored every remaining layer; the chosen one has the lowest target loss
    step = record["steps"][0]
    assert len(step["scores"]) == SPEECH_LAYERS
    assert record["removed"][0] == int(min(step["scores"], key=step["scores"].get)) == step["removed"]


@pytest.mark.parametrize("family", list(SPEECH_FAMILIES))
def test_plain_layout_is_the_text_alone_through_the_family_tokenizer(family, checkpoints, manifest, tmp_path):
    """--layout plain on a speech-LLM: each transcript as the family's tokenizer frames it, no chat,
    embedded by the decoder's own table; task stays the default."""
    model = load_model(str(checkpoints[family]))
    assert model.resolve_layout("auto") == "task"
    utterances = load_manifest(manifest)[:3]
    inputs = model.decoder_inputs(utterances, source="text", layout="plain")
    assert set(inputs.regions) == {"last", "all"} and inputs.utterance_ids == [u.id for u in utterances]
    embeddings = model.causal_lm.get_input_embeddings()
    for row, utt in enumerate(utterances):
        ids = model.tokenizer(utt.text)["input_ids"]
        real = inputs.attention_mask[row].bool()
        assert real.tolist() == [True] * len(ids) + [False] * (len(real) - len(ids))  # right padding
        assert "<|im_start|>" not in model.tokenizer.decode(ids)
        assert inputs.labels[row][: len(ids) - 1].tolist() == ids[1:]  # every next token, nothing else
        assert (inputs.labels[row][len(ids) - 1:] == -100).all()
        with torch.no_grad():  # an embedding lookup: the same rows, bit for bit
            torch.testing.assert_close(inputs.inputs_embeds[row][real], embeddings(torch.tensor(ids)), rtol=0, atol=0)
    if "speech" in model.sources:
        with pytest.raises(UserError, match="--layout plain is a text layout"):
            model.decoder_inputs(utterances, source="speech", layout="plain")
    payload = scan(ScanConfig(model=str(checkpoints[family]), data=str(manifest), out=str(tmp_path / "scan"),
                              layout="plain", bootstrap=0, plots=False, max_utterances=4, batch_size=2))
    assert payload["settings"]["layout"] == "plain" and list(payload["inputs"]) == ["text"]
    assert payload["inputs"]["text"]["regions"]["all"]["count"] == sum(
        len(model.tokenizer(u.text)["input_ids"]) for u in load_manifest(manifest)[:4])


def test_a_manifest_prompt_replaces_the_instruction(checkpoints, manifest):
    """A manifest line's own prompt (data hf --prompt) is the instruction in the chat and the prompt region."""
    import dataclasses

    model = load_model(str(checkpoints["qwen2_audio"]))
    utt = next(u for u in load_manifest(manifest) if u.task == "st")
    asked = dataclasses.replace(utt, extra={**utt.extra, "prompt": "Say it in {target_language}, please."})
    inputs = model.decoder_inputs([asked], source="speech")
    assert "Say it in French, please." in model.render(asked, "speech", True)[0]
    ids = model.tokenized([model.render(asked, "speech", True)[0]], [load_audio(asked.audio)])["input_ids"][0]
    prompt = ids[inputs.regions["prompt"][0][inputs.attention_mask[0].bool()]]
    assert model.tokenizer.decode(prompt) == "Say it in French, please."
