"""A small writer of CTranslate2 Whisper folders (faster-whisper's layout) for the tests: a tiny random
``WhisperForConditionalGeneration`` written as ``model.bin`` (format version 6, ``WhisperSpec``
revision 3), with ``config.json``, ``vocabulary.txt`` and a byte-level ``tokenizer.json``.

The mapping here is written from Hugging Face's side (module by module), independently of the
converter's table in ``speechprune.model.ctranslate2``, so a round trip checks one against the other.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>")
TIMESTAMPS = 12  # tokens past the tokenizer's, as the real vocabularies' timestamp tokens
DTYPE_CODES = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
               np.dtype("float16"): 4}


def byte_tokens() -> list[str]:
    """GPT-2's byte-to-character table: the 256 byte-level tokens, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tiny_whisper(seed: int = 0, d_model: int = 32, layers: int = 2, mel: int = 16,
                 source_positions: int = 50) -> WhisperForConditionalGeneration:
    """A random Whisper whose vocabulary is the 256 bytes, :data:`SPECIALS` and some timestamps,
    its weights rounded to float16 (what a float16 model.bin holds exactly)."""
    torch.manual_seed(seed)
    vocab = 256 + len(SPECIALS) + TIMESTAMPS
    end, start = 256, 257
    config = WhisperConfig(vocab_size=vocab, num_mel_bins=mel, d_model=d_model, encoder_layers=layers,
                           decoder_layers=layers, encoder_attention_heads=4, decoder_attention_heads=4,
                           encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
                           max_source_positions=source_positions, max_target_positions=24,
                           bos_token_id=end, eos_token_id=end, pad_token_id=end, decoder_start_token_id=start)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)  # biases and norms away from 0 and 1
            parameter.copy_(parameter.half().float())
    return model


def _linear(state: dict, prefix: str) -> dict[str, np.ndarray]:
    return {"weight": state[f"{prefix}.weight"], "bias": state[f"{prefix}.bias"]}


def _fused(state: dict, prefix: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Projections stacked along the output axis; a key projection's missing bias written as zeros."""
    weights = [state[f"{prefix}.{n}.weight"] for n in names]
    biases = [state.get(f"{prefix}.{n}.bias", np.zeros(w.shape[0], np.float32)) for n, w in zip(names, weights)]
    return {"weight": np.concatenate(weights), "bias": np.concatenate(biases)}


def _norm(state: dict, prefix: str) -> dict[str, np.ndarray]:
    return {"gamma": state[f"{prefix}.weight"], "beta": state[f"{prefix}.bias"]}


def _put(variables: dict, prefix: str, values: dict[str, np.ndarray]) -> None:
    variables.update({f"{prefix}/{key}": value for key, value in values.items()})


def ct2_variables(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """The variables of CTranslate2's ``WhisperSpec`` for ``model``, float32 weights and its settings."""
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    config, variables = model.config, {}
    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        variables[f"{side}/position_encodings/encodings"] = state[f"{hf}.embed_positions.weight"]
        _put(variables, f"{side}/layer_norm", _norm(state, f"{hf}.layer_norm"))
        for index in range(config.encoder_layers if side == "encoder" else config.decoder_layers):
            layer, ct2 = f"{hf}.layers.{index}", f"{side}/layer_{index}"
            _put(variables, f"{ct2}/self_attention/layer_norm", _norm(state, f"{layer}.self_attn_layer_norm"))
            _put(variables, f"{ct2}/self_attention/linear_0",
                 _fused(state, f"{layer}.self_attn", ("q_proj", "k_proj", "v_proj")))
            _put(variables, f"{ct2}/self_attention/linear_1", _linear(state, f"{layer}.self_attn.out_proj"))
            if side == "decoder":
                _put(variables, f"{ct2}/attention/layer_norm", _norm(state, f"{layer}.encoder_attn_layer_norm"))
                _put(variables, f"{ct2}/attention/linear_0", _linear(state, f"{layer}.encoder_attn.q_proj"))
                _put(variables, f"{ct2}/attention/linear_1",
                     _fused(state, f"{layer}.encoder_attn", ("k_proj", "v_proj")))
                _put(variables, f"{ct2}/attention/linear_2", _linear(state, f"{layer}.encoder_attn.out_proj"))
            _put(variables, f"{ct2}/ffn/layer_norm", _norm(state, f"{layer}.final_layer_norm"))
            _put(variables, f"{ct2}/ffn/linear_0", _linear(state, f"{layer}.fc1"))
            _put(variables, f"{ct2}/ffn/linear_1", _linear(state, f"{layer}.fc2"))
    for conv in ("conv1", "conv2"):
        _put(variables, f"encoder/{conv}", _linear(state, f"model.encoder.{conv}"))
    variables["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    variables["encoder/num_heads"] = np.array(config.encoder_attention_heads, np.int16)
    variables["decoder/num_heads"] = np.array(config.decoder_attention_heads, np.int16)
    variables.update({"decoder/activation": np.array(3, np.int8), "decoder/alibi": np.array(0, np.int8),
                      "decoder/alignment_heads": np.array(1, np.int16),
                      "decoder/alignment_layer": np.array(-1, np.int16),
                      "decoder/pre_norm": np.array(1, np.int8), "decoder/scale_embeddings": np.array(0, np.int8),
                      "decoder/start_from_zero_embedding": np.array(0, np.int8)})
    return variables


def _string(text: str) -> bytes:
    encoded = text.encode() + b"\0"
    return struct.pack("<H", len(encoded)) + encoded


def model_bin(variables: dict[str, np.ndarray], spec: str = "WhisperSpec", revision: int = 3,
              aliases: dict[str, str] | None = None, weight_dtype: str = "float16") -> bytes:
    """``variables`` (sorted by name, floating ones cast to ``weight_dtype``) as a model.bin."""
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"} if aliases is None else aliases
    out = [struct.pack("<I", 6), _string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name in sorted(variables):
        value = variables[name]
        if value.dtype.kind == "f":
            value = value.astype(weight_dtype)
        data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
        out += [_string(name), struct.pack("<B", value.ndim), struct.pack(f"<{value.ndim}I", *value.shape),
                struct.pack("<B", DTYPE_CODES[value.dtype]), struct.pack("<I", len(data)), data]
    out.append(struct.pack("<I", len(aliases)))
    out += [_string(alias) + _string(target) for alias, target in aliases.items()]
    return b"".join(out)


def tokenizer_json() -> dict:
    """A byte-level BPE with no merges (every byte a token) and :data:`SPECIALS` after the bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(byte_tokens())}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIALS))
    return json.loads(tokenizer.to_str())


def write_folder(folder: Path, model: WhisperForConditionalGeneration, data: bytes | None = None,
                 tokenizer: bool = True) -> Path:
    """A faster-whisper folder for ``model`` (``data``: another model.bin instead of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(model_bin(ct2_variables(model)) if data is None else data)
    tokens = byte_tokens() + list(SPECIALS) + [f"<|{0.02 * i:.2f}|>" for i in range(TIMESTAMPS)]
    (folder / "vocabulary.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    special = {t: 256 + i for i, t in enumerate(SPECIALS)}
    (folder / "config.json").write_text(json.dumps({
        "alignment_heads": [[1, 0]], "lang_ids": [special["<|en|>"], special["<|fr|>"]],
        "suppress_ids": [1, 2], "suppress_ids_begin": [32, 256]}), encoding="utf-8")
    if tokenizer:
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json()), encoding="utf-8")
    return folder
