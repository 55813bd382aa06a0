"""Builders the test files share: tiny manifests and SpeechLLM configs, tiny Hugging Face causal LMs
of every decoder family, hand-built decoder inputs and the naive scan reference, tiny speech-LLM
checkpoints, tiny GGUF files, synthetic scans, and small training, base-LLM and study configs. A
plain module: no tests and no fixtures (those are in conftest.py), and test files import from
here, never from each other."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import soundfile as sf
import torch
import transformers
import yaml
from gguf import GGMLQuantizationType as Q
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    WhisperFeatureExtractor,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from speechprune.base_llm import BaseLLMConfig
from speechprune.config import build_config
from speechprune.data.manifest import Utterance, load_manifest
from speechprune.model.decoder import base_model
from speechprune.model.layout import REGIONS, DecoderInputs, Segment, assemble
from speechprune.model.speechllm import (DEFAULT_PROMPTS, DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig,
                                        SpeechLLM, decoder_texts)
from speechprune.model.tokenizer import train_bpe_tokenizer
from speechprune.study import StudyConfig
from speechprune.train import LoopConfig, StageConfig, TrainConfig

# ----------------------------------------------------------------------------- manifests
SENTENCES = [("the red cat sleeps.", "le chat rouge dort."), ("two dogs run.", "deux chiens courent."),
             ("a big bird sings.", "un grand oiseau chante."), ("the cat sees a dog.", "le chat voit un chien."),
             ("three birds fly.", "trois oiseaux volent."), ("the dog eats.", "le chien mange.")]


def write_tiny_manifest(folder: Path, name: str = "tiny.jsonl", with_st: bool = True, seed: int = 0) -> Path:
    """A manifest of short tone-and-noise clips; lengths differ so that batches need padding."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (en, fr) in enumerate(SENTENCES):
        seconds = 0.6 + 0.15 * i
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(t.shape)
        sf.write(folder / f"u{i}.wav", wave.astype(np.float32), 16000)
        lines.append({"id": f"asr-{i}", "audio": f"u{i}.wav", "text": en, "task": "asr", "src_lang": "en",
                      "tgt_lang": "en", "target": en, "duration": seconds})
        if with_st:
            lines.append({"id": f"st-{i}", "audio": f"u{i}.wav", "text": en, "task": "st", "src_lang": "en",
                          "tgt_lang": "fr", "target": fr, "duration": seconds})
    path = folder / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# ----------------------------------------------------------------------------- this toolkit's SpeechLLM
def tiny_model_config(layers: int = 4, decoder_type: str = "llama", encoder_type: str = "whisper") -> ModelConfig:
    encoders = {
        "whisper": {"model_type": "whisper", "num_mel_bins": 80, "d_model": 32, "encoder_layers": 2,
                    "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "max_source_positions": 400},
        "wav2vec2": {"model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64, "conv_dim": [16, 16, 16], "conv_stride": [5, 4, 4],
                     "conv_kernel": [10, 4, 4], "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
                     "feat_extract_norm": "layer", "do_stable_layer_norm": True},
    }
    return ModelConfig(
        encoder=EncoderConfig(config=encoders[encoder_type]),
        projector=ProjectorConfig(stack=2, hidden_dim=48),
        decoder=DecoderConfig(config={"model_type": decoder_type, "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": layers, "num_attention_heads": 4,
                                      "num_key_value_heads": 2, "max_position_embeddings": 256,
                                      "head_dim": 8},
                              bpe_vocab_size=300),
    )


def build_tiny_speechllm(utterances: list[Utterance], **config) -> SpeechLLM:
    """A tiny SpeechLLM built as ``train`` builds one: BPE on the texts the decoder reads, the
    CTC alphabet from the transcripts; ``config`` goes to :func:`tiny_model_config`."""
    model_config = tiny_model_config(**config)
    return SpeechLLM.build(model_config, decoder_texts(model_config.prompts, utterances),
                           [u.text for u in utterances])


def tiny_train_config(manifest: Path, out: Path, **loop) -> TrainConfig:
    """Three short stages (text LM, CTC, joint) on ``manifest``; ``loop`` goes to LoopConfig."""
    stages = {
        "text-lm": StageConfig(steps=3, input="lm", encoder="frozen", projector="frozen", lr=3e-3),
        "ctc": StageConfig(steps=3, lm_weight=0.0, ctc_weight=1.0, projector="frozen", decoder="frozen", lr=3e-3),
        "joint": StageConfig(steps=4, ctc_weight=0.3, lr=3e-3),
    }
    return TrainConfig(train=[str(manifest)], out=str(out), model=tiny_model_config(), stages=stages,
                       loop=LoopConfig(batch_size=4, log_every=1, **loop))


def tiny_base_llm_config(out: Path, checkpoint_every: int = 100) -> BaseLLMConfig:
    """Two languages, 40 meanings, a 2-layer decoder, 4 steps with the dev perplexity every 2."""
    decoder = DecoderConfig(config={**tiny_model_config().decoder.config, "num_hidden_layers": 2})
    return BaseLLMConfig(out=str(out), languages=["en", "es"], sentences=40, dev_sentences=4, steps=4, eval_every=2,
                         batch_size=8, decoder=decoder, loop=LoopConfig(log_every=1, checkpoint_every=checkpoint_every))


# Greedy decodes of one model through two float32 computations (cached vs uncached, batched vs single,
# a reference implementation) are promised to agree token for token on any CPU, thread count or BLAS
# only where no step's top two logits lie within rounding of each other. Such tests assert this
# margin on their own inputs first, so a failure says "pick another input", not "the code is wrong".
GREEDY_MARGIN = 1e-4  # ten times the 1e-5 logit tolerance the suite holds two such paths to


def assert_clear_greedy_path(logits, margin: float = GREEDY_MARGIN) -> None:
    """Every step of ``logits`` ([..., vocab]) has its best token ahead of the next by ``margin``."""
    top_two = logits.float().topk(2, dim=-1).values
    gap = float((top_two[..., 0] - top_two[..., 1]).min())
    assert gap > margin, f"greedy path is near a tie (top-2 gap {gap:.2e}): not comparable across machines"


# ----------------------------------------------------------------------------- Hugging Face causal LMs
SLIDING, FULL = "sliding_attention", "full_attention"


def alternating_layers(num_layers: int) -> list[str]:
    """Sliding, full, sliding, ...: a mix of both attention kinds for any depth."""
    return [FULL if i % 2 else SLIDING for i in range(num_layers)]


def _head_dim(common: dict) -> int:
    return common["hidden_size"] // common["num_attention_heads"]  # Gemma and Qwen3 default to a fixed, larger one


# family -> its config from the sizes in ``common``, the per-layer attention ``mix`` of the families
# that take a list (Gemma 3, Qwen3) and Qwen2's ``max_window_layers`` (the layers from there up
# slide); Gemma 2 alternates by itself. Every sliding window is 4 tokens, shorter than the prompts.
DECODER_FAMILIES: dict[str, Callable[[dict, list[str] | None, int], PretrainedConfig]] = {
    "llama": lambda common, mix, window_from: LlamaConfig(**common),
    "qwen2": lambda common, mix, window_from: Qwen2Config(**common, use_sliding_window=True, sliding_window=4,
                                                          max_window_layers=window_from),
    "mistral": lambda common, mix, window_from: MistralConfig(**common, sliding_window=4),
    "gemma": lambda common, mix, window_from: GemmaConfig(**common, head_dim=_head_dim(common)),
    "gemma2": lambda common, mix, window_from: Gemma2Config(**common, head_dim=_head_dim(common), sliding_window=4),
    "gemma3": lambda common, mix, window_from: Gemma3TextConfig(**common, head_dim=_head_dim(common),
                                                                sliding_window=4, layer_types=mix),
    "qwen3": lambda common, mix, window_from: Qwen3Config(**common, head_dim=_head_dim(common), use_sliding_window=True,
                                                          sliding_window=4, layer_types=mix),
}


def tiny_causal_lm(family: str, seed: int = 0, mix: list[str] | None = None, max_window_layers: int = 3,
                   **common) -> torch.nn.Module:
    """A randomly initialised ``family`` causal LM in eval mode; see :data:`DECODER_FAMILIES`."""
    config = DECODER_FAMILIES[family](common, None if mix is None else list(mix), max_window_layers)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


WORD_VOCAB_SIZE = 61  # save_word_tokenizer's: w0 .. w57, <unk>, <s>, </s>


def save_word_tokenizer(folder: Path) -> None:
    """A whitespace word-level tokenizer of the words w0 .. w57 with <unk>, <s> and </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    size = WORD_VOCAB_SIZE
    vocab = {f"w{i}": i for i in range(size - 3)} | {"<unk>": size - 3, "<s>": size - 2, "</s>": size - 1}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


# ----------------------------------------------------------------------------- hand-built decoder inputs
def tiny_decoder(family: str = "llama", layers: int = 5, seed: int = 0) -> nn.Module:
    """A randomly initialised causal LM of the given family, small enough for the naive scan reference."""
    return tiny_causal_lm(family, seed, mix=alternating_layers(layers), max_window_layers=2, vocab_size=64,
                          hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256)


def utterance_segments(model: nn.Module, rng: torch.Generator, speech: int, prompt: int, target: int) -> list[Segment]:
    """<a> speech </a> prompt <bos> target <eos>, speech as random vectors, the rest as token embeddings."""
    embed = model.get_input_embeddings()

    def tokens(n: int, region):
        ids = torch.randint(4, 64, (n,), generator=rng)
        return Segment(embed(ids).detach(), region, ids)

    return [
        Segment(embed(torch.tensor([1])).detach(), None, torch.tensor([1])),
        Segment(torch.randn(speech, embed.weight.shape[1], generator=rng) * 0.05, "speech"),
        Segment(embed(torch.tensor([2])).detach(), None, torch.tensor([2])),
        tokens(prompt, "prompt"),
        Segment(embed(torch.tensor([3])).detach(), None, torch.tensor([3])),
        tokens(target, "target"),
    ]


def corpus(model: nn.Module, count: int = 7, seed: int = 0) -> list[list[Segment]]:
    """Utterances of different lengths (so that batches need padding)."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        lengths = torch.randint(2, 9, (3,), generator=rng).tolist()
        out.append(utterance_segments(model, rng, *lengths))
    return out


def batches(utterances: list[list[Segment]], batch_size: int, padding_side: str = "right"):
    """(global indices, DecoderInputs) in manifest order."""
    for start in range(0, len(utterances), batch_size):
        chunk = list(range(start, min(len(utterances), start + batch_size)))
        yield chunk, assemble([utterances[i] for i in chunk], padding_side=padding_side,
                              utterance_ids=[f"u{i}" for i in chunk])


@torch.no_grad()
def reference_states(model: nn.Module, inputs: DecoderInputs) -> list[torch.Tensor]:
    """x_0..x_L the naive way: output_hidden_states keeps all of them, but its last entry comes after
    the final norm (transformers 5.x), so x_L is taken from a forward with the norm removed."""
    out = model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids, output_hidden_states=True, use_cache=False)
    hidden = list(out.hidden_states)
    base = base_model(model)
    norm, base.norm = base.norm, nn.Identity()
    try:
        last = base(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                    position_ids=inputs.position_ids, use_cache=False).last_hidden_state
    finally:
        base.norm = norm
    assert torch.allclose(norm(last), hidden[-1], atol=1e-5)  # hidden[-1] is the normed x_L
    return hidden[:-1] + [last]


def reference_scan(model: nn.Module, utterances: list[list[Segment]], batch_size: int = 3,
                   regions=REGIONS) -> dict[str, dict]:
    """Per region: (L+1)x(L+1) mean angular and cosine, by a loop over n and l, keeping all states."""
    per_region = {r: {"ang": None, "cos": None, "count": 0} for r in regions}
    for _, inputs in batches(utterances, batch_size):
        states = torch.stack(reference_states(model, inputs)).double()  # [L+1, B, T, H]
        num = states.shape[0]
        for region in regions:
            mask = inputs.regions[region] & inputs.attention_mask.bool()
            x = states[:, mask]  # [L+1, N, H]
            acc = per_region[region]
            if acc["ang"] is None:
                acc["ang"] = np.zeros((num, num))
                acc["cos"] = np.zeros((num, num))
            for n in range(1, num):
                for l in range(0, num - n):
                    c = torch.nn.functional.cosine_similarity(x[l], x[l + n], dim=-1, eps=1e-300).clamp(-1, 1)
                    acc["ang"][l, l + n] += (torch.arccos(c) / math.pi).sum().item()
                    acc["cos"][l, l + n] += c.sum().item()
            acc["count"] += int(mask.sum())
    result = {}
    for region, acc in per_region.items():
        ang = acc["ang"] / max(acc["count"], 1)
        cos = acc["cos"] / max(acc["count"], 1)
        ang = ang + ang.T
        cos = cos + cos.T
        np.fill_diagonal(cos, 1.0)
        result[region] = {"angular": ang, "cosine": cos, "count": acc["count"]}
    return result


# ----------------------------------------------------------------------------- Hugging Face speech-LLMs
SPEECH_LAYERS = 4
SPEECH_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=SPEECH_LAYERS, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, max_position_embeddings=2048)
WHISPER_LIKE = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    num_mel_bins=128)
# family -> (decoder model_type, config kwargs, processor class or None (no processor: text input only),
# audio token); the model class comes from transformers' own name for the family
SPEECH_FAMILIES = {
    "qwen2_audio": ("qwen2", dict(audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2,
                                                    encoder_ffn_dim=32, num_mel_bins=80, max_source_positions=1500)),
                    "Qwen2AudioProcessor", "<|AUDIO|>"),
    "audioflamingo3": ("qwen2", dict(audio_config=dict(WHISPER_LIKE, max_source_positions=1500)),
                       "AudioFlamingo3Processor", "<sound>"),
    "glmasr": ("llama", dict(audio_config=dict(WHISPER_LIKE, max_position_embeddings=1500)),
               "GlmAsrProcessor", "<|pad|>"),
    # their processors need mistral-common (Voxtral) or torchaudio (Granite Speech): text input here
    "voxtral": ("llama", dict(audio_config=dict(WHISPER_LIKE, max_source_positions=1500)), None, "<|AUDIO|>"),
    "granite_speech": ("granite", dict(encoder_config=dict(input_dim=160, num_layers=1, hidden_dim=32,
                                                           feedforward_mult=2, num_heads=2, dim_head=16,
                                                           output_dim=16),
                                       projector_config=dict(model_type="blip_2_qformer", hidden_size=32,
                                                             num_hidden_layers=1, num_attention_heads=2,
                                                             intermediate_size=32, encoder_hidden_size=32),
                                       downsample_rate=5, window_size=15), None, "<|audio|>"),
}
SPEECH_MODEL_CLASSES = {"qwen2_audio": "Qwen2AudioForConditionalGeneration",
                        "audioflamingo3": "AudioFlamingo3ForConditionalGeneration",
                        "glmasr": "GlmAsrForConditionalGeneration", "voxtral": "VoxtralForConditionalGeneration",
                        "granite_speech": "GraniteSpeechForConditionalGeneration"}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'audio' %}<|audio_bos|>AUDIO<|audio_eos|>{% else %}{{ c.text }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_speech_family(folder: Path, family: str, manifest: Path) -> Path:
    """A tiny random ``family`` checkpoint with tokenizer, chat template, processor, generation config."""
    decoder_type, extra, processor_name, audio = SPEECH_FAMILIES[family]
    texts = decoder_texts(DEFAULT_PROMPTS, load_manifest(manifest))
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|audio_bos|>",
                                                                "<|audio_eos|>", audio]})
    tokenizer.chat_template = CHAT_TEMPLATE.replace("AUDIO", audio)
    audio_id = tokenizer.convert_tokens_to_ids(audio)
    token_key = "audio_token_index" if family == "qwen2_audio" else "audio_token_id"
    config = AutoConfig.for_model(family, text_config={"model_type": decoder_type, "vocab_size": len(tokenizer),
                                                       **SPEECH_TEXT},
                                  **{token_key: audio_id}, **extra)
    torch.manual_seed(0)
    model = getattr(transformers, SPEECH_MODEL_CLASSES[family])(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    if processor_name is None:
        tokenizer.save_pretrained(folder)
    else:
        mels = extra["audio_config"]["num_mel_bins"]
        processor = getattr(transformers, processor_name)(WhisperFeatureExtractor(feature_size=mels), tokenizer,
                                                          chat_template=tokenizer.chat_template, audio_token=audio)
        processor.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- scans
def synthetic_scan(num_layers: int, redundant: tuple[int, int], step_cos: list[float] | None = None,
                   inputs=("speech", "text")) -> dict:
    """A scan.json payload whose stream moves by ``step`` radians per layer, except inside the
    ``redundant`` block [a, b), where it hardly moves: the best block of any size inside it starts
    at a. ``step_cos`` overrides the cosine of single steps."""
    a, b = redundant
    steps = [0.02 if a <= l < b else 0.3 + 0.01 * l for l in range(num_layers)]
    position = [0.0]
    for step in steps:
        position.append(position[-1] + step)
    size = num_layers + 1
    ang = [[abs(position[i] - position[j]) / math.pi for j in range(size)] for i in range(size)]
    cos = [[math.cos(abs(position[i] - position[j])) for j in range(size)] for i in range(size)]
    if step_cos is not None:
        for l, c in enumerate(step_cos):
            cos[l][l + 1] = cos[l + 1][l] = c
    region = {"angular": ang, "cosine": cos, "count": 100}
    return {"num_layers": num_layers,
            "inputs": {name: {"regions": {r: copy.deepcopy(region) for r in ("all", "last", "target")}} for name in inputs}}


def write_scan(folder: Path, payload: dict) -> Path:
    """``payload`` as ``folder``/scan.json, as a scan leaves it; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scan.json").write_text(json.dumps(payload))
    return folder


def fake_scan(tmp_path: Path, num_layers: int) -> Path:
    """A scan folder (``tmp_path``/scan) of speech input whose layers 2..3 are clearly the most redundant."""
    return write_scan(tmp_path / "scan", synthetic_scan(num_layers, (2, 4), inputs=("speech",)))


# ----------------------------------------------------------------------------- tiny GGUF files
# Tiny Llama and Gemma 3 decoders written with the gguf package's writer: tensors quantized to
# Q8_0, Q4_0 and Q4_1 by ``gguf.quants`` and a tokenizer in the metadata that transformers' GGUF
# loader builds (byte-level BPE for Llama, sentencepiece for Gemma, as the real files have).
GGUF_HIDDEN, GGUF_HEADS, GGUF_KV_HEADS, GGUF_FFN = 64, 4, 2, 128
GGUF_QUANTS = (Q.Q8_0, Q.Q4_0, Q.Q4_1)  # cycled over the blocks: every block type is copied in the tests


def _byte_level_vocabulary(writer, pre: str = "smollm") -> int:
    alphabet = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "i n", "a t", "Ġ c", "Ġc at", "Ġ h", "Ġh at"]
    tokens = ["<unk>", "<s>", "</s>"] + alphabet + [m.replace(" ", "") for m in merges]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    return len(tokens)


def _sentencepiece_vocabulary(writer) -> int:
    pieces = ["▁"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?") + ["▁t", "he", "▁the", "at", "▁c", "▁cat"]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + pieces
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([-1000.0] * 4 + [-float(i) for i in range(len(pieces))])
    writer.add_token_types([3, 3, 3, 2] + [1] * len(pieces))
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    return len(tokens)


def write_tiny_gguf(path: Path, arch: str = "llama", layers: int = 6, seed: int = 0,
                    extra: dict | None = None) -> Path:
    """A tiny decoder of architecture ``arch`` (llama, gemma3 or qwen2; any other name gets llama's
    layout). Qwen2 has biases on its query, key and value projections, ties its head to the embedding
    and splits text with Qwen's pre-tokenizer, as Qwen2.5's small files do."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"tiny {arch}")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(GGUF_HIDDEN)
    extra = dict(extra or {})
    for key, value in (("feed_forward_length", GGUF_FFN), ("attention.head_count", GGUF_HEADS),
                       ("attention.head_count_kv", GGUF_KV_HEADS)):
        if f"{arch}.{key}" not in extra:  # ``extra`` may give one as a per-layer array instead
            writer.add_uint32(f"{arch}.{key}", value)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    head_dim = GGUF_HIDDEN // GGUF_HEADS
    gemma = arch == "gemma3"
    qwen = arch == "qwen2"
    if gemma:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(4)  # shorter than the export check's probe: sliding and global differ
        writer.add_sliding_window_pattern([(i + 1) % 6 != 0 for i in range(layers)])
        vocab = _sentencepiece_vocabulary(writer)
    else:
        writer.add_rope_dimension_count(head_dim)
        vocab = _byte_level_vocabulary(writer, pre="qwen2" if qwen else "smollm")
    writer.add_vocab_size(vocab)
    for key, value in extra.items():
        writer.add_array(key, value) if isinstance(value, list) else writer.add_uint32(key, value)

    def tensor(name: str, shape: tuple[int, ...], kind: Q) -> None:
        data = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if kind == Q.F32:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)

    tensor("token_embd.weight", (vocab, GGUF_HIDDEN), Q.Q8_0)
    norms = ["attn_norm", "ffn_norm"] + (["post_attention_norm", "post_ffw_norm"] if gemma else [])
    for i in range(layers):
        kind = GGUF_QUANTS[i % len(GGUF_QUANTS)]
        for norm in norms:
            tensor(f"blk.{i}.{norm}.weight", (GGUF_HIDDEN,), Q.F32)
        if gemma:
            tensor(f"blk.{i}.attn_q_norm.weight", (head_dim,), Q.F32)
            tensor(f"blk.{i}.attn_k_norm.weight", (head_dim,), Q.F32)
        tensor(f"blk.{i}.attn_q.weight", (GGUF_HEADS * head_dim, GGUF_HIDDEN), kind)
        tensor(f"blk.{i}.attn_k.weight", (GGUF_KV_HEADS * head_dim, GGUF_HIDDEN), kind)
        tensor(f"blk.{i}.attn_v.weight", (GGUF_KV_HEADS * head_dim, GGUF_HIDDEN), kind)
        if qwen:
            tensor(f"blk.{i}.attn_q.bias", (GGUF_HEADS * head_dim,), Q.F32)
            tensor(f"blk.{i}.attn_k.bias", (GGUF_KV_HEADS * head_dim,), Q.F32)
            tensor(f"blk.{i}.attn_v.bias", (GGUF_KV_HEADS * head_dim,), Q.F32)
        tensor(f"blk.{i}.attn_output.weight", (GGUF_HIDDEN, GGUF_HEADS * head_dim), kind)
        tensor(f"blk.{i}.ffn_gate.weight", (GGUF_FFN, GGUF_HIDDEN), kind)
        tensor(f"blk.{i}.ffn_up.weight", (GGUF_FFN, GGUF_HIDDEN), kind)
        tensor(f"blk.{i}.ffn_down.weight", (GGUF_HIDDEN, GGUF_FFN), kind)
    tensor("output_norm.weight", (GGUF_HIDDEN,), Q.F32)
    if not gemma and not qwen:  # Gemma and the small Qwen2.5 tie their head to the embedding
        tensor("output.weight", (vocab, GGUF_HIDDEN), Q.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ----------------------------------------------------------------------------- a miniature study
STUDY_TASKS = {"asr-en": ("en", "en", 0), "asr-fr": ("fr", "fr", 1), "st-en-fr": ("en", "fr", 1)}


def write_study_corpus(folder: Path) -> Path:
    """The corpus layout the study reads: {task}.{split}.jsonl for every task, tone clips as audio."""
    source = write_tiny_manifest(folder, "all.jsonl", with_st=False)
    clips = [json.loads(line) for line in source.read_text().splitlines()]
    for task, (src, tgt, column) in STUDY_TASKS.items():
        kind = task.split("-")[0]
        for split in ("train", "dev", "test"):
            lines = []
            for i, clip in enumerate(clips):
                text = SENTENCES[i][0 if src == "en" else 1]
                target = SENTENCES[i][column]
                lines.append({**clip, "id": f"{task}-{split}-{i}", "text": text, "target": target, "task": kind,
                              "src_lang": src, "tgt_lang": tgt})
            (folder / f"{task}.{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def _tiny_study_settings(tmp_path: Path) -> dict:
    model = tiny_model_config()
    return {
        "out": str(tmp_path / "study"), "languages": ["en", "fr"], "tasks": ["asr-en", "st-en-fr", "asr-fr"],
        "decoders": [{"name": "llama-2", "config": {**model.decoder.config, "num_hidden_layers": 2}},
                     {"name": "qwen2-3", "config": {**model.decoder.config, "model_type": "qwen2",
                                                    "num_hidden_layers": 3}}],
        "encoders": [{"name": "whisper", "config": tiny_model_config(encoder_type="whisper").encoder.config},
                     {"name": "wav2vec2", "config": tiny_model_config(encoder_type="wav2vec2").encoder.config}],
        "modes": ["lora", "frozen"], "multitask": True, "plots": False,
        "corpus": {"path": str(write_study_corpus(tmp_path / "corpus"))},
        "base": {"sentences": 40, "dev_sentences": 5, "steps": 3, "eval_every": 3, "batch_size": 8},
        "speechllm": {"warmup_steps": 2, "joint_steps": 3, "batch_size": 4, "warmup_batch_size": 4,
                      "projector": {"stack": 2, "hidden_dim": 32}},
        # a WER bar no model misses: the miniature checks where numbers come from, not how good they are
        "evaluation": {"test_utterances": 3, "scan_utterances": 4, "fractions": [0.0, 0.5], "heal_steps": 2,
                       "max_new_tokens": 8, "wer_bar": 1000.0},
        "loop": {"log_every": 1, "checkpoint_every": 100, "lora": {"rank": 2, "alpha": 4}},
    }


def _study_config(tmp_path: Path, settings: dict) -> StudyConfig:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(settings))
    return build_config(StudyConfig, [], str(path))


def tiny_study_config(tmp_path: Path) -> StudyConfig:
    """A study YAML with tiny sizes and a few steps, read as the command reads one."""
    return _study_config(tmp_path, _tiny_study_settings(tmp_path))


def tiny_real_study_config(tmp_path: Path) -> StudyConfig:
    """The shape of configs/study-real.yaml at tiny sizes: two pretrained decoders given as GGUF
    files (a 4-layer Llama, the deeper and so the reference; a 3-layer Gemma 3, the multilingual
    one), the projector warm-up and the token CTC over the corpus. BLEU bar 100: no tiny model
    reaches it, so every condition with a translation test set is not evidence."""
    settings = _tiny_study_settings(tmp_path)
    folder = tmp_path / "gguf"
    settings["decoders"] = [
        {"name": "llama", "pretrained": str(write_tiny_gguf(folder / "tiny-llama.gguf", "llama", layers=4))},
        {"name": "gemma3", "pretrained": str(write_tiny_gguf(folder / "tiny-gemma3.gguf", "gemma3", layers=3))}]
    settings["multilingual_decoder"] = "gemma3"
    settings["speechllm"].update(proj_steps=2, copy_steps=2, token_ctc_vocabulary="corpus", warmup_languages="study",
                                 multitask_joint_steps=settings["speechllm"]["joint_steps"] + 2)
    settings["evaluation"]["bleu_bar"] = 100.0
    return _study_config(tmp_path, settings)


def noisy_angular(num_layers: int, seed: int, noise: float) -> np.ndarray:
    """A symmetric (L+1) x (L+1) angular-distance matrix: 0.1 per layer apart plus uniform noise."""
    rng = np.random.default_rng(seed)
    size = num_layers + 1
    angular = np.abs(np.subtract.outer(np.arange(size), np.arange(size))) * 0.1 + rng.uniform(0, noise, (size, size))
    angular = (angular + angular.T) / 2
    np.fill_diagonal(angular, 0)
    return angular
