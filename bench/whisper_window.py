"""Benchmark (not a test): short utterances at their own length. Hugging Face's Whisper encoder wants
30 s of log-mel features; the corpus's utterances last 2-4 s, so padding costs about ten times the
encoder's work (and the decoder cross-attends to 1,500 positions instead of ~150). The toolkit runs
the encoder on the utterance's own length, its positional embeddings sliced (``--model.encoder.window
dynamic``, model/encoders.py). This measures the word error rate and the time of both windows, side by
side, on the same utterances in the same run:

- the pretrained Whisper transcribing by itself (``--model``: ``whisper-tiny.en``, ``whisper-base`` or
  a CTranslate2 folder, converted once; ``WhisperForConditionalGeneration``, greedy, as
  bench/whisper_baseline.py decodes it). ``full``: log-mel of the audio zero-padded to 30 s, as
  Whisper was trained; ``dynamic``: the toolkit's ``WhisperSpeechEncoder`` at the utterance's
  length. Both one utterance at a time (Whisper's decoder cross-attention takes no padding mask, so
  the dynamic window cannot batch utterances of different lengths); the two windows alternate
  utterance by utterance, which puts a shared CPU's changing load on both alike. The seconds are
  the log-mel, the encoder and the greedy decoding of each utterance (``encoder_seconds``: log-mel
  and encoder alone);
- with ``--speechllm DIR``, a SpeechLLM built on a Whisper encoder, its encoder window set to
  ``full`` and then to ``dynamic``, decoded by the toolkit's own ``evaluate.decode`` (batched,
  ``--batch-size``); the seconds are its ``decode_seconds``, ``encoder_seconds`` the encoder's
  forward calls alone. ``--model ''`` leaves the Whisper out. A SpeechLLM learned on the states of
  one window (``speechllm.json`` names it; the demo trains at ``dynamic``): the other is one it
  never saw, so its WER there says little about what that window could give. For both on equal terms,
  train one SpeechLLM at each (``speechprune train ... --model.encoder.window full``).

For each: WER with its 95 % bootstrap interval over utterances (``speechprune.evaluate``), and the
paired difference dynamic - full on the same resampled utterances. For the Whisper, also how many
hypotheses ran to ``--max-new-tokens`` without an end-of-text (``at_token_limit``): Whisper learned
to stop on 30 s windows, and one that does not stop repeats itself, which costs both WER and time.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/whisper_window.py --model whisper-tiny.en \\
        --test CORPUS/asr-en.test.jsonl --limit 100 [--speechllm RUN/model] [--out window.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from speechprune.bootstrap import paired_draws
from speechprune.data.audio import SAMPLE_RATE, load_audio
from speechprune.data.manifest import Utterance, load_manifest
from speechprune.errors import UserError
from speechprune.evaluate import word_error_rate, word_errors

WINDOWS = ("full", "dynamic")


def _baseline():
    """bench/whisper_baseline.py (prompt, suppression masks, cached greedy decoding), by its path."""
    spec = importlib.util.spec_from_file_location("whisper_baseline", Path(__file__).with_name("whisper_baseline.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pairs(references: list[str], hypotheses: list[str]) -> np.ndarray:
    counts = word_errors(references, hypotheses)
    return np.array([(c["substitutions"] + c["deletions"] + c["insertions"], c["words"]) for c in counts],
                    dtype=np.float64).reshape(-1, 2)


def paired_difference(references: list[str], full: list[str], dynamic: list[str]) -> dict:
    """WER(dynamic) - WER(full) and its 95 % percentile interval, both on the same resampled utterances."""
    base, other = _pairs(references, full), _pairs(references, dynamic)
    value = float(other[:, 0].sum() / max(other[:, 1].sum(), 1) - base[:, 0].sum() / max(base[:, 1].sum(), 1))
    if len(references) == 0:
        return {"wer_difference": value, "wer_difference_interval": [value, value]}
    base_draws, other_draws = paired_draws("wer", base, other)
    low, high = np.quantile(other_draws - base_draws, [0.025, 0.975])
    return {"wer_difference": value, "wer_difference_interval": [float(low), float(high)]}


# ----------------------------------------------------------------------------- the Whisper by itself
def whisper_both(model_name: str, utterances: list[Utterance], language: str, max_new: int) -> dict[str, dict]:
    """Each utterance transcribed with both windows, alternating which goes first; per window the
    hypotheses and the seconds (all, and log-mel plus encoder)."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    from speechprune.model.ctranslate2 import converted
    from speechprune.model.encoders import load_encoder

    bench = _baseline()
    path = converted(model_name)
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    tokenizer, extractor = WhisperTokenizer.from_pretrained(path), WhisperFeatureExtractor.from_pretrained(path)
    encoder = load_encoder(str(path), "dynamic").eval()
    generation = model.generation_config
    prompt, masks = bench.prompt_ids(generation, language), bench.suppression_masks(generation, model.config.vocab_size)

    def run(window: str, wave: np.ndarray) -> tuple[list[int], float, float]:
        started = time.perf_counter()
        hidden = bench.encode_full(model, extractor, [wave]) if window == "full" else bench.encode_dynamic(encoder, wave)
        encoded = time.perf_counter()
        ids = bench.greedy(model, hidden, prompt, masks, max_new)[0]
        return ids, time.perf_counter() - started, encoded - started

    results = {w: {"hypotheses": [], "seconds": 0.0, "encoder_seconds": 0.0, "at_token_limit": 0} for w in WINDOWS}
    waves = [load_audio(u.audio) for u in utterances]
    if waves:  # one untimed pass of each first: lazy initialisation is nobody's cost
        for window in WINDOWS:
            run(window, waves[0])
    for index, wave in enumerate(waves):
        for window in (WINDOWS if index % 2 == 0 else WINDOWS[::-1]):
            ids, seconds, encoder_seconds = run(window, wave)
            entry = results[window]
            entry["hypotheses"].append(tokenizer.decode(ids, skip_special_tokens=True).strip())
            entry["at_token_limit"] += len(ids) >= max_new  # no end-of-text: a repetition loop, as a rule
            entry["seconds"] += seconds
            entry["encoder_seconds"] += encoder_seconds
        print(f"  whisper {index + 1}/{len(waves)}", file=sys.stderr, flush=True)
    return results


# ----------------------------------------------------------------------------- a SpeechLLM on a Whisper encoder
def speechllm_both(directory: str, utterances: list[Utterance], batch_size: int, max_new: int) -> dict[str, dict]:
    """The SpeechLLM decoded with its encoder's window set to each in turn (the toolkit's decode)."""
    from speechprune.evaluate import decode
    from speechprune.model.encoders import WhisperSpeechEncoder
    from speechprune.model.interface import load_model
    from speechprune.model.kinds import SpeechLLMModel

    model = load_model(directory)
    if not isinstance(model, SpeechLLMModel) or not isinstance(model.speechllm.encoder, WhisperSpeechEncoder):
        raise UserError(f"--speechllm {directory}: not a SpeechLLM on a Whisper encoder (no window to change)")
    encoder = model.speechllm.encoder
    spent = [0.0]

    def started(module, args, kwargs):
        spent.append(time.perf_counter())

    def finished(module, args, kwargs, output):
        spent[0] += time.perf_counter() - spent.pop()

    encoder.register_forward_pre_hook(started, with_kwargs=True)
    encoder.register_forward_hook(finished, with_kwargs=True)
    results = {}
    for window in WINDOWS:
        encoder.window = window
        decode(model, utterances[:1], batch_size=1, max_new_tokens=2)  # untimed: lazy initialisation
        spent[0] = 0.0
        result = decode(model, utterances, batch_size=batch_size, max_new_tokens=max_new)
        by_id = {row["id"]: row["hypothesis"] for row in result.rows}
        results[window] = {"hypotheses": [by_id[u.id] for u in utterances],
                           "seconds": result.metrics["decode_seconds"], "encoder_seconds": spent[0]}
        print(f"  speechllm window {window}: {result.metrics['decode_seconds']:.1f} s", file=sys.stderr, flush=True)
    return results


# ----------------------------------------------------------------------------- report
def scored(references: list[str], results: dict[str, dict]) -> dict:
    out = {"utterances": len(references)}
    for window, entry in results.items():
        wer = word_error_rate(references, entry["hypotheses"])
        out[window] = {"wer": wer["wer"], "wer_interval": wer["wer_interval"], "words": wer["words"],
                       "seconds": entry["seconds"], "encoder_seconds": entry["encoder_seconds"],
                       "at_token_limit": entry.get("at_token_limit")}
    out.update(paired_difference(references, results["full"]["hypotheses"], results["dynamic"]["hypotheses"]))
    out["time_ratio"] = (results["dynamic"]["seconds"] / results["full"]["seconds"]
                         if results["full"]["seconds"] > 0 else None)
    out["examples"] = [{"reference": r, **{w: results[w]["hypotheses"][i] for w in WINDOWS}}
                       for i, r in enumerate(references[:3])]
    return out


def lines(title: str, result: dict) -> list[str]:
    text = [f"{title}", f"  {'window':8} {'WER [95% CI]':26} {'seconds':>9} {'encoder s':>10}  stopped by the limit"]
    for window in WINDOWS:
        r = result[window]
        low, high = r["wer_interval"]
        wer = f"{100 * r['wer']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"
        limit = "n/a" if r["at_token_limit"] is None else f"{r['at_token_limit']}/{result['utterances']}"
        text.append(f"  {window:8} {wer:26} {r['seconds']:9.2f} {r['encoder_seconds']:10.2f}  {limit}")
    low, high = result["wer_difference_interval"]
    ratio = f"{result['time_ratio']:.2f}" if result["time_ratio"] is not None else "n/a"
    text.append(f"  dynamic - full: WER {100 * result['wer_difference']:+.1f} points [{100 * low:+.1f}, "
                f"{100 * high:+.1f}] (paired bootstrap); time x{ratio}")
    return text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en",
                        help="a CTranslate2 Whisper short name or folder ('': no Whisper by itself)")
    parser.add_argument("--speechllm", default="", help="also a SpeechLLM directory built on a Whisper encoder")
    parser.add_argument("--test", required=True, help="an ASR manifest (JSONL)")
    parser.add_argument("--limit", type=int, default=100, help="its first N ASR utterances (0: all)")
    parser.add_argument("--language", default="en", help="the speech's language (multilingual Whisper models)")
    parser.add_argument("--batch-size", type=int, default=8, help="the SpeechLLM's decoding batch")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", default="", help="also write the result (and every hypothesis) to this JSON file")
    args = parser.parse_args(argv)
    if not args.model and not args.speechllm:
        raise UserError("nothing to measure: give --model, --speechllm or both")
    utterances = [u for u in load_manifest(args.test) if u.task == "asr"][: args.limit or None]
    references = [u.text for u in utterances]
    audio = sum(len(load_audio(u.audio)) for u in utterances) / SAMPLE_RATE
    result = {"test": args.test, "utterances": len(utterances), "audio_seconds": round(audio, 1),
              "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    report, hypotheses = [], {}
    if args.model:
        started = time.perf_counter()
        both = whisper_both(args.model, utterances, args.language, args.max_new_tokens)
        result["whisper"] = {"model": args.model, **scored(references, both),
                             "wall_seconds": round(time.perf_counter() - started, 1)}
        hypotheses["whisper"] = {w: both[w]["hypotheses"] for w in WINDOWS}
        report += lines(f"Whisper {args.model} by itself, one utterance at a time", result["whisper"])
    if args.speechllm:
        both = speechllm_both(args.speechllm, utterances, args.batch_size, args.max_new_tokens)
        result["speechllm"] = {"model": args.speechllm, **scored(references, both)}
        hypotheses["speechllm"] = {w: both[w]["hypotheses"] for w in WINDOWS}
        report += lines(f"SpeechLLM {args.speechllm}, batches of {args.batch_size}", result["speechllm"])
    print(f"{len(utterances)} utterances, {audio:.1f} s of audio, {result['torch_threads']} torch thread(s)")
    print("\n".join(report))
    if args.out:
        Path(args.out).write_text(json.dumps({**result, "hypotheses": hypotheses}, indent=1, ensure_ascii=False))
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
