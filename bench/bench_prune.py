"""Benchmark of pruning (not a test): what removing 40% of the decoder layers buys, side by side.

  decoder   cached greedy generation of a fixed number of tokens from a prompt, random Llama-shaped
            decoder whose layers dominate the cost; unpruned vs 40% of layers removed (goal: speed-up
            >= 0.9 * L / L_kept), and prefill-only skipping of the same layers for reference
  e2e       end-to-end ASR decoding (``evaluate.decode``: features, Whisper-style encoder,
            projector, cached greedy decoding) of a SpeechLLM whose decoder holds > 90% of the
            parameters, on generated audio clips of LibriSpeech-like length: unpruned, 40% removed
            (goal >= 1.35x), prefill-only skipping of the same layers (``prune.prefill``, keys/values
            only or attention sublayer), with time split into encoder, decoder prefill, decoder steps
  memory    the same decoding, one fresh process per model: parameter bytes and peak resident memory
  greedy    greedy-score (SLEB / Moslem, target loss) as the toolkit runs it (calibration audio
            encoded once, layers switched off in place, each round's prefix reused: a candidate runs
            only the layers after it), the same with one full decoder forward per candidate (the
            reference scorer), and the naive way (every candidate re-reads and re-encodes the audio
            through encoder + projector and deep-copies the model to delete the layers), same model,
            same calibration set; all must choose the same layers. Each variant's FLOPs are counted
            once (``torch.utils.flop_counter``) and give the ideal ratio naive / variant, printed
            beside the measured one (goal: prefix >= 2x naive and >= 90% of its ideal).
            Two models: the e2e one (dynamic Whisper window: a cheap encoder) and one with a
            Whisper encoder on its native 30 s window, sized like Whisper-large-v3 + a 1B decoder
            relative to each other (the encoder costs ~10x the decoder per utterance)

Timing (the machine may be shared): one process, torch threads fixed (``--threads``), every
variant warmed up once (not greedy-score: minutes per run), then ``--repeats`` rounds that run all
variants back to back, the order reversed every other round; reported: the median time per variant
and the ratio of medians (reference / variant; > 1 = faster), plus the median of the per-round
ratios. Generation is forced to a fixed length (``min_new_tokens = max_new_tokens``; checked by
counting decoder forwards), so every variant decodes exactly the same number of tokens. Random
weights: the words do not matter.

Peak memory on CPU (``tracemalloc`` does not see torch's allocations): each model decodes in its
own fresh process started with ``MALLOC_MMAP_THRESHOLD_=65536`` (freed tensors go back to the
system, so the resident set follows the live tensors). ``peak`` = the kernel's high-water mark
VmHWM during the measured decode (reset after loading and a one-batch warm-up with
``echo 5 > /proc/self/clear_refs``) minus VmRSS before the model was loaded (interpreter, torch,
libraries): weights + activations + KV cache, the analogue of ``torch.cuda.max_memory_allocated``.

GPU (``--gpu-8b``, needs CUDA): a random Llama-3.1-8B-shaped decoder in bf16, 40% of layers removed
(13 of 32), cached generation speed, and ``torch.cuda.max_memory_allocated`` before / after real
removal (the paper: 15.72 -> 10.37 GiB, about 35% faster).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_prune.py [--repeats 5] [--only decoder,e2e,memory,greedy]
    .venv/bin/python bench/bench_prune.py --gpu-8b        # on a CUDA machine
    .venv/bin/python bench/bench_prune.py --quick         # tiny shapes: checks the script runs
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

FRACTION = 0.4
SECTIONS = ("decoder", "e2e", "memory", "greedy")


# ----------------------------------------------------------------------------- timing helpers
def skip_variants(model, remove, generate) -> dict:
    """The same generation unpruned, with ``remove`` skipped throughout, and skipped in the prefix only."""
    from speechprune.prune.prefill import prefill_skip
    from speechprune.prune.surgery import skip_layers

    def pruned():
        with skip_layers(model, remove):
            generate()

    def prefill_only():
        with prefill_skip(model, remove):
            generate()

    return {"unpruned": generate, "pruned": pruned, "prefill-only": prefill_only}


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warm_up: bool = True
                ) -> dict[str, list[float]]:
    """Warm every variant up once (unless ``warm_up`` is false), then ``repeats`` rounds running all
    of them back to back (order reversed every other round). Returns seconds per variant per round."""
    if warm_up:
        for run in variants.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(repeats):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            gc.collect()
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def summarise(times: dict[str, list[float]], base: str) -> dict[str, dict]:
    out = {}
    for name, values in times.items():
        paired = [b / v for b, v in zip(times[base], values)]
        out[name] = {"median_s": statistics.median(values), "times_s": values,
                     "speedup": statistics.median(times[base]) / statistics.median(values),
                     "speedup_paired_median": statistics.median(paired)}
    return out


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def param_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


class ForwardCounter:
    """Counts a causal LM's forwards and splits their time into prefill (more than one position)
    and steps (one position)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.prefill_s = 0.0
        self.step_s = 0.0
        self._start = 0.0
        self._positions = 0
        self._handles = [module.register_forward_pre_hook(self._pre, with_kwargs=True),
                         module.register_forward_hook(self._post)]

    def _pre(self, module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        x = kwargs.get("input_ids") if x is None else x
        x = args[0] if x is None and args else x
        self._positions = int(x.shape[1])
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        elapsed = time.perf_counter() - self._start
        self.calls += 1
        if self._positions > 1:
            self.prefill_s += elapsed
        else:
            self.step_s += elapsed

    def reset(self):
        self.calls, self.prefill_s, self.step_s = 0, 0.0, 0.0

    def remove(self):
        for handle in self._handles:
            handle.remove()


class Stopwatch:
    """Accumulated wall time of a module's forwards."""

    def __init__(self, module: torch.nn.Module):
        self.seconds = 0.0
        self._start = 0.0
        self._handles = [module.register_forward_pre_hook(lambda *a: setattr(self, "_start", time.perf_counter())),
                         module.register_forward_hook(lambda *a: setattr(
                             self, "seconds", self.seconds + time.perf_counter() - self._start))]

    def remove(self):
        for handle in self._handles:
            handle.remove()


# ----------------------------------------------------------------------------- models and data
def llama_dict(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int,
               max_positions: int = 2048) -> dict:
    return {"model_type": "llama", "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "max_position_embeddings": max_positions, "tie_word_embeddings": True}


def write_clips(folder: Path, durations: list[float], seed: int = 0, name: str = "clips.jsonl") -> Path:
    """Tone-and-noise clips of the given lengths and an ASR manifest for them (random-weight
    models: what is said does not matter, only how long it is)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = "the a red blue cat dog bird sees runs sleeps two three big small house tree river".split()
    lines = []
    for i, seconds in enumerate(durations):
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (150 + 30 * i) * t) + 0.05 * rng.standard_normal(t.shape)
        sf.write(folder / f"c{i}.wav", wave.astype(np.float32), 16000)
        text = " ".join(rng.choice(words, size=max(3, int(2.5 * seconds))))
        lines.append({"id": f"c{i}", "audio": f"c{i}.wav", "text": text, "task": "asr", "src_lang": "en",
                      "tgt_lang": "en", "target": text, "duration": seconds})
    path = folder / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def build_speechllm(out: Path, manifest: Path, encoder: dict, decoder: dict, window: str, stack: int,
                    projector_hidden: int, seed: int = 0) -> Path:
    from speechprune.data.manifest import load_manifest
    from speechprune.model.speechllm import DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig, SpeechLLM

    torch.manual_seed(seed)
    texts = [u.target for u in load_manifest(manifest)]
    config = ModelConfig(encoder=EncoderConfig(config=encoder, window=window, hop_length=160),
                         projector=ProjectorConfig(stack=stack, hidden_dim=projector_hidden),
                         decoder=DecoderConfig(config=decoder, bpe_vocab_size=1000), ctc=False)
    SpeechLLM.build(config, texts * 20).save(out)
    return out


def fixed_length(causal_lm, tokens: int) -> None:
    """Every generate() call on ``causal_lm`` yields exactly ``tokens`` new tokens (no early <eos>)."""
    causal_lm.generation_config.min_new_tokens = tokens
    causal_lm.generation_config.max_new_tokens = tokens


def removed_layers(num_layers: int) -> list[int]:
    """40% of the layers, the deepest ones before the last (Gromov's ``last`` choice; for speed
    and memory only the count matters)."""
    from speechprune.prune.strategies import last, layers_for_fraction

    return last(num_layers, layers_for_fraction(FRACTION, num_layers))


# ----------------------------------------------------------------------------- (a) decoder generation
@torch.no_grad()
def bench_decoder(args) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(args.decoder_shape)
    model_type = shape.pop("model_type")
    shape.pop("tie_word_embeddings", None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        model_type, **shape, vocab_size=args.vocab, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=None, pad_token_id=0)).eval()
    L = model.config.num_hidden_layers
    remove = removed_layers(L)
    ids = torch.randint(1, args.vocab, (args.gen_batch, args.gen_prompt), generator=torch.Generator().manual_seed(1))
    counter = ForwardCounter(model)

    def generate():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.gen_tokens,
                             min_new_tokens=args.gen_tokens, do_sample=False, pad_token_id=0)
        assert out.shape[1] == ids.shape[1] + args.gen_tokens

    times = interleaved(skip_variants(model, remove, generate), args.repeats)
    counter.remove()
    result = summarise(times, "unpruned")
    kept = L - len(remove)
    return {"layers": L, "removed": remove, "kept": kept, "ideal": L / kept, "goal": 0.9 * L / kept,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "batch": args.gen_batch,
            "prompt": args.gen_prompt, "new_tokens": args.gen_tokens, "variants": result}


# ----------------------------------------------------------------------------- (b) end-to-end ASR decoding
@torch.no_grad()
def bench_e2e(args, full_dir: Path, manifest: Path) -> dict:
    from speechprune.data.manifest import load_manifest
    from speechprune.evaluate import decode
    from speechprune.model.kinds import SpeechLLMModel
    from speechprune.model.speechllm import SpeechLLM
    from speechprune.prune.prefill import prefill_skip
    from speechprune.prune.surgery import skip_layers

    model = SpeechLLM.load(full_dir)
    utterances = load_manifest(manifest)
    fixed_length(model.decoder, args.e2e_tokens)
    L = model.decoder.config.num_hidden_layers
    remove = removed_layers(L)
    batches = -(-len(utterances) // args.e2e_batch)
    counter, encoder_clock = ForwardCounter(model.decoder), Stopwatch(model.encoder)
    parts: dict[str, list[dict]] = {}

    def run(name: str, context: Callable[[], contextlib.AbstractContextManager]):
        def go():
            counter.reset()
            encoder_clock.seconds = 0.0
            with context():
                decode(SpeechLLMModel(str(full_dir), model), utterances, batch_size=args.e2e_batch, max_new_tokens=args.e2e_tokens)
            assert counter.calls == batches * args.e2e_tokens, (counter.calls, batches, args.e2e_tokens)
            parts.setdefault(name, []).append({"encoder_s": encoder_clock.seconds, "prefill_s": counter.prefill_s,
                                               "steps_s": counter.step_s})
        return go

    variants = {"unpruned": run("unpruned", contextlib.nullcontext),
                "pruned": run("pruned", lambda: skip_layers(model.decoder, remove)),
                "prefill-only kv": run("prefill-only kv", lambda: prefill_skip(model.decoder, remove, fill="kv")),
                "prefill-only attention": run("prefill-only attention",
                                              lambda: prefill_skip(model.decoder, remove, fill="attention"))}
    times = interleaved(variants, args.repeats)
    counter.remove()
    encoder_clock.remove()
    result = summarise(times, "unpruned")
    for name, runs in parts.items():
        runs = runs[1:]  # the warm-up is not reported
        result[name].update({key: statistics.median(r[key] for r in runs) for key in runs[0]})
    decoder_bytes, total_bytes = param_bytes(model.decoder), param_bytes(model)
    speech_positions = sum(int((u.duration or 0) * args.positions_per_second) for u in utterances)
    full_gain = result["unpruned"]["median_s"] - result["pruned"]["median_s"]
    for name in ("prefill-only kv", "prefill-only attention"):
        gain = result["unpruned"]["median_s"] - result[name]["median_s"]
        result[name]["share_of_full_pruning_saving"] = gain / full_gain if full_gain > 0 else None
    return {"layers": L, "removed": remove, "kept": L - len(remove), "goal": 1.35,
            "utterances": len(utterances), "audio_s": sum(u.duration or 0 for u in utterances),
            "speech_positions_approx": speech_positions, "batch": args.e2e_batch, "new_tokens": args.e2e_tokens,
            "decoder_share_of_params": decoder_bytes / total_bytes, "params_M": total_bytes / 4e6,
            "variants": result}


# ----------------------------------------------------------------------------- memory (one process per model)
def memory_child(args) -> dict:
    """Runs in a fresh process: load the model, warm up on one batch, reset the high-water mark,
    decode the whole manifest once, report resident-memory figures (KiB) and parameter bytes."""
    from speechprune.data.manifest import load_manifest
    from speechprune.evaluate import decode
    from speechprune.model.kinds import SpeechLLMModel
    from speechprune.model.speechllm import SpeechLLM
    from speechprune.prune.prefill import prefill_skip

    torch.set_num_threads(args.threads)
    gc.collect()
    before_load = rss_kib()
    with torch.no_grad():
        model = SpeechLLM.load(args.child_model)
        fixed_length(model.decoder, args.e2e_tokens)
        utterances = load_manifest(args.child_manifest)
        skip = [int(i) for i in args.child_prefill_skip.split(",") if i]
        context = (lambda: prefill_skip(model.decoder, skip)) if skip else contextlib.nullcontext
        with context():
            decode(SpeechLLMModel(args.child_model, model), utterances[: args.e2e_batch], batch_size=args.e2e_batch, max_new_tokens=args.e2e_tokens)
        gc.collect()
        before_run = rss_kib()
        Path("/proc/self/clear_refs").write_text("5")
        with context():
            decode(SpeechLLMModel(args.child_model, model), utterances, batch_size=args.e2e_batch, max_new_tokens=args.e2e_tokens)
        peak = rss_kib("VmHWM")
    return {"params_bytes": param_bytes(model), "decoder_params_bytes": param_bytes(model.decoder),
            "rss_before_load_kib": before_load, "rss_before_run_kib": before_run, "vmhwm_kib": peak,
            "peak_kib": peak - before_load, "run_extra_kib": peak - before_run}


def bench_memory(args, dirs: dict[str, tuple[Path, str]], manifest: Path) -> dict:
    out = {}
    for name, (model_dir, skip) in dirs.items():
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads))
        command = [sys.executable, __file__, "--child-memory", "--child-model", str(model_dir), "--child-manifest",
                   str(manifest), "--child-prefill-skip", skip, "--threads", str(args.threads),
                   "--e2e-batch", str(args.e2e_batch), "--e2e-tokens", str(args.e2e_tokens)]
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = out["unpruned"]
    for name, entry in out.items():
        entry["params_ratio"] = entry["params_bytes"] / base["params_bytes"]
        entry["peak_ratio"] = entry["peak_kib"] / base["peak_kib"]
    return out


# ----------------------------------------------------------------------------- (c) greedy-score
def naive_greedy(model_dir: Path, manifest: Path, n: int, batch_size: int, clock: dict) -> list[int]:
    """SLEB / Moslem done naively: every candidate deep-copies the model, deletes the layers from the
    copy, re-reads and re-encodes the calibration audio and scores the target loss (token-weighted,
    float64 sum and count, as ``loss_score``)."""
    import torch.nn.functional as F

    from speechprune.data.manifest import load_manifest
    from speechprune.model.layout import IGNORE_INDEX
    from speechprune.model.speechllm import SpeechLLM
    from speechprune.prune.surgery import remove_layers

    model = SpeechLLM.load(model_dir)
    utterances = load_manifest(manifest)
    num_layers = model.decoder.config.num_hidden_layers
    removed: list[int] = []
    for _ in range(n):
        results = []
        for candidate in range(num_layers):
            if candidate in removed:
                continue
            start = time.perf_counter()
            trial = copy.deepcopy(model)
            remove_layers(trial.decoder, [*removed, candidate])
            clock["copy_s"] += time.perf_counter() - start
            total, count = torch.zeros((), dtype=torch.float64), 0
            for batch in trial.batches(utterances, batch_size=batch_size):  # re-reads and featurizes the audio
                start = time.perf_counter()
                inputs = trial.decoder_inputs(batch)  # re-encodes: encoder + projector
                clock["encode_s"] += time.perf_counter() - start
                start = time.perf_counter()
                logits = trial.decoder(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                       position_ids=inputs.position_ids, use_cache=False).logits
                labelled = inputs.labels != IGNORE_INDEX
                losses = F.cross_entropy(logits[labelled].float(), inputs.labels[labelled], reduction="none")
                total += losses.double().sum()
                count += int(labelled.sum())
                clock["decoder_s"] += time.perf_counter() - start
            results.append((float(total / count), candidate))
            del trial
        _, best = min(results, key=lambda r: (r[0], r[1]))
        removed = sorted([*removed, best])
    return removed


def cached_greedy(model_dir: Path, manifest: Path, n: int, batch_size: int, clock: dict, method: str) -> list[int]:
    """The toolkit's greedy-score (what ``speechprune prune --strategy greedy-score --data`` runs:
    ``method="prefix"``, the default), or with one full decoder forward per candidate (``"full"``)."""
    from speechprune.prune.calibration import cached_decoder_inputs, loss_score
    from speechprune.prune.strategies import greedy_score

    start = time.perf_counter()
    decoder, batches = cached_decoder_inputs(str(model_dir), str(manifest), "speech", batch_size)
    clock["load_and_encode_once_s"] += time.perf_counter() - start
    start = time.perf_counter()
    chosen = greedy_score(decoder, n, loss_score(batches), method=method)
    clock["decoder_s"] += time.perf_counter() - start
    return chosen


def counted_flops(run: Callable[[], object]) -> int:
    """FLOPs of one run as ``torch.utils.flop_counter`` counts them (matrix products: linear layers,
    attention products, convolutions; not elementwise work)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


@torch.no_grad()
def bench_greedy(args, name: str, model_dir: Path, manifest: Path, n: int, batch_size: int) -> dict:
    """Naive, cached with a full forward per candidate, and cached with the prefix reused: FLOPs
    counted once per variant, then timed in interleaved rounds; all must choose the same layers."""
    chosen: dict[str, list[list[int]]] = {"naive": [], "cached full": [], "cached prefix": []}
    clocks = {"naive": {"copy_s": 0.0, "encode_s": 0.0, "decoder_s": 0.0},
              "cached full": {"load_and_encode_once_s": 0.0, "decoder_s": 0.0},
              "cached prefix": {"load_and_encode_once_s": 0.0, "decoder_s": 0.0}}
    variants = {
        "naive": lambda: chosen["naive"].append(naive_greedy(model_dir, manifest, n, batch_size, clocks["naive"])),
        "cached full": lambda: chosen["cached full"].append(
            cached_greedy(model_dir, manifest, n, batch_size, clocks["cached full"], "full")),
        "cached prefix": lambda: chosen["cached prefix"].append(
            cached_greedy(model_dir, manifest, n, batch_size, clocks["cached prefix"], "prefix")),
    }
    flops = {variant: counted_flops(run) for variant, run in variants.items()}
    for clock in clocks.values():
        clock.update({key: 0.0 for key in clock})
    times = interleaved(variants, args.greedy_repeats, warm_up=False)  # minutes per run: no warm-up round
    picks = {tuple(c) for runs in chosen.values() for c in runs}
    assert len(picks) == 1, f"greedy-score: the ways chose different layers: {chosen}"
    result = summarise(times, "naive")
    runs = args.greedy_repeats
    for variant, clock in clocks.items():
        result[variant].update({key: value / runs for key, value in clock.items()})
        result[variant]["gflops"] = flops[variant] / 1e9
        result[variant]["ideal"] = flops["naive"] / flops[variant]
    prefix = result["cached prefix"]
    prefix["speedup_vs_cached_full"] = result["cached full"]["median_s"] / prefix["median_s"]
    prefix["ideal_vs_cached_full"] = flops["cached full"] / flops["cached prefix"]
    prefix["share_of_ideal"] = prefix["speedup"] / prefix["ideal"]
    from speechprune.model.speechllm import SpeechLLM

    model = SpeechLLM.load(model_dir)
    L = model.decoder.config.num_hidden_layers
    kept = [L - i for i in range(n)]
    return {"model": name, "layers": L, "n": n, "candidates_scored": sum(kept),
            "layer_forwards_per_batch": {"full": sum(k * (k - 1) for k in kept),
                                         "prefix": sum((k - 1) + (k - 1) * k // 2 for k in kept)},
            "chosen": list(picks.pop()), "goal": "prefix >= 2 x naive and >= 0.9 x its FLOP ideal",
            "encoder_window": model.encoder.window,
            "decoder_share_of_params": param_bytes(model.decoder) / param_bytes(model),
            "calibration_utterances": len(open(manifest).read().splitlines()), "variants": result}


# ----------------------------------------------------------------------------- (d) GPU, Llama-3.1-8B shape
LLAMA_31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                   rms_norm_eps=1e-5, tie_word_embeddings=False)


@torch.no_grad()
def bench_gpu_8b(args, shape: dict = LLAMA_31_8B, device: str = "cuda") -> dict:
    """Random Llama-3.1-8B-shaped decoder in bf16: cached generation of a fixed number of tokens
    from a speech-length prefix of embeddings, unpruned / 40% removed / prefill-only (interleaved,
    via the in-place surgery), then peak memory with the layers really removed."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from speechprune.prune.surgery import remove_layers

    cuda = device.startswith("cuda")
    config = LlamaConfig(**shape, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    L = config.num_hidden_layers
    remove = removed_layers(L)
    embeds = torch.randn(args.gpu_batch, args.gpu_prefix, config.hidden_size, device=device,
                         dtype=torch.bfloat16) * 0.02
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)

    def generate():
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=args.gpu_tokens,
                             min_new_tokens=args.gpu_tokens, do_sample=False, pad_token_id=0)
        assert out.shape[1] == args.gpu_tokens
        if cuda:
            torch.cuda.synchronize()

    variants = skip_variants(model, remove, generate)
    times = interleaved(variants, args.repeats)
    result = summarise(times, "unpruned")

    def peak(run) -> float | None:
        if not cuda:
            return None
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        run()
        return torch.cuda.max_memory_allocated() / 2**30

    result["unpruned"]["peak_gib"] = peak(generate)
    result["prefill-only"]["peak_gib"] = peak(variants["prefill-only"])
    remove_layers(model, remove)  # for real: the removed layers' weights are freed
    result["pruned"]["peak_gib"] = peak(generate)
    result["pruned"]["params_gib"] = param_bytes(model) / 2**30
    return {"device": torch.cuda.get_device_name() if cuda else device, "shape": "Llama-3.1-8B" if shape is LLAMA_31_8B
            else shape, "dtype": "bfloat16", "layers": L, "removed": remove, "batch": args.gpu_batch,
            "prefix": args.gpu_prefix, "new_tokens": args.gpu_tokens, "variants": result,
            "paper": {"peak_gib": [15.72, 10.37], "speedup": "about 35% faster"}}


# ----------------------------------------------------------------------------- report
def fmt_table(results: dict) -> str:
    lines = ["| benchmark | variant | median s | speed-up (ratio of medians) | median of paired ratios | goal |",
             "|---|---|---|---|---|---|"]
    goals = {"decoder": lambda r: f">= {r['goal']:.2f} (0.9 x {r['layers']}/{r['kept']})", "e2e": lambda r: ">= 1.35",
             "gpu_8b": lambda r: "paper ~1.35"}
    for key, entry in results.items():
        if key in ("machine", "memory") or not isinstance(entry, dict) or "variants" not in entry:
            continue
        base = next(iter(entry["variants"]))
        for variant, v in entry["variants"].items():
            goal = ""
            if variant == "pruned":
                goal = goals[key](entry)
            if "ideal" in v and variant != base:  # greedy-score: the FLOP-count ideal beside the measured ratio
                goal = f"FLOP ideal {v['ideal']:.2f} (measured {v['speedup'] / v['ideal']:.0%} of it)"
                if variant == "cached prefix":
                    goal += f"; goal >= 2 and >= {0.9 * v['ideal']:.2f}"
            speed = "1 (reference)" if variant == base else f"{v['speedup']:.2f}"
            lines.append(f"| {key} | {variant} | {v['median_s']:.2f} | {speed} "
                         f"| {v['speedup_paired_median']:.2f} | {goal} |")
    if "memory" in results:
        lines += ["", "| memory (fresh process each) | params MB | params ratio | peak MB | peak ratio |",
                  "|---|---|---|---|---|"]
        for name, m in results["memory"].items():
            lines.append(f"| {name} | {m['params_bytes'] / 1e6:.0f} | {m['params_ratio']:.3f} | "
                         f"{m['peak_kib'] / 1024:.0f} | {m['peak_ratio']:.3f} |")
    return "\n".join(lines)


def machine() -> dict:
    return {"date": datetime.date.today().isoformat(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--greedy-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: checks that the script runs")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--workdir", default="", help="where models and clips go (default: a temporary folder)")
    parser.add_argument("--gpu-8b", action="store_true", help="only the Llama-3.1-8B-shaped bf16 run on CUDA")
    parser.add_argument("--gpu-batch", type=int, default=8)
    parser.add_argument("--gpu-prefix", type=int, default=120, help="prefix positions (speech + prompt)")
    parser.add_argument("--gpu-tokens", type=int, default=64)
    # the --gpu-8b code path on a tiny CPU model
    parser.add_argument("--gpu-smoke", action="store_true", help=argparse.SUPPRESS)
    # memory child (internal)
    parser.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child-manifest", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child-prefill-skip", default="", help=argparse.SUPPRESS)
    parser.add_argument("--e2e-batch", type=int, default=4)
    parser.add_argument("--e2e-tokens", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.child_memory:
        print(json.dumps(memory_child(args)))
        return

    quick = args.quick
    if quick:
        args.repeats, args.greedy_repeats = 1, 1
    args.vocab = 512
    args.decoder_shape = (llama_dict(128, 5, 256, 4, 2) if quick else llama_dict(1024, 16, 2816, 16, 4))
    args.gen_batch, args.gen_prompt, args.gen_tokens = 1, (16 if quick else 64), (4 if quick else 32)
    args.positions_per_second = 10  # Whisper 50 positions/s, projector stacks 5
    if quick:
        args.e2e_tokens = 4

    results: dict = {"machine": machine()}
    if args.gpu_8b or args.gpu_smoke:
        if args.gpu_smoke:
            shape = dict(LLAMA_31_8B, hidden_size=64, intermediate_size=128, num_hidden_layers=5,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
            args.gpu_batch, args.gpu_prefix, args.gpu_tokens, args.repeats = 2, 12, 3, 1
            results["gpu_8b"] = bench_gpu_8b(args, shape, "cpu")
        else:
            if not torch.cuda.is_available():
                sys.exit("--gpu-8b needs a CUDA device")
            results["gpu_8b"] = bench_gpu_8b(args)
        report(results, args)
        return

    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        sys.exit(f"--only: unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    with contextlib.ExitStack() as stack:
        work = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if "decoder" in sections:
            print("decoder generation ...", file=sys.stderr, flush=True)
            results["decoder"] = bench_decoder(args)
        if {"e2e", "memory", "greedy"} & set(sections):
            # LibriSpeech-like lengths (test-clean averages ~7 s)
            durations = [2.0, 3.0] if quick else [4.0, 5.0, 6.0, 7.0, 7.5, 8.5, 9.0, 10.0]
            manifest = write_clips(work / "clips", durations)
            whisper = ({"model_type": "whisper", "num_mel_bins": 80, "d_model": 64, "encoder_layers": 2,
                        "encoder_attention_heads": 2, "encoder_ffn_dim": 128, "max_source_positions": 1500}
                       if quick else  # Whisper-tiny's encoder shape
                       {"model_type": "whisper", "num_mel_bins": 80, "d_model": 384, "encoder_layers": 4,
                        "encoder_attention_heads": 6, "encoder_ffn_dim": 1536, "max_source_positions": 1500})
            full = work / "e2e-full"
            if not (full / "speechllm.json").exists():
                build_speechllm(full, manifest, whisper, args.decoder_shape, "dynamic", 5, 256 if quick else 2048)
        if "e2e" in sections:
            print("end-to-end decoding ...", file=sys.stderr, flush=True)
            results["e2e"] = bench_e2e(args, full, manifest)
        if "memory" in sections:
            print("peak memory ...", file=sys.stderr, flush=True)
            from speechprune.prune.run import PruneConfig, prune

            L = args.decoder_shape["num_hidden_layers"]
            remove = removed_layers(L)
            pruned = work / "e2e-pruned"
            if not (pruned / "speechllm.json").exists():
                prune(PruneConfig(model=str(full), out=str(pruned), drop=f"{remove[0]}:{remove[-1] + 1}"))
            results["memory"] = bench_memory(args, {"unpruned": (full, ""), "pruned": (pruned, ""),
                                                    "prefill-only": (full, ",".join(map(str, remove)))}, manifest)
        if "greedy" in sections:
            print("greedy-score ...", file=sys.stderr, flush=True)
            calibration = write_clips(work / "calibration", [2.0, 3.0] if quick else [3.0, 4.0, 5.0, 6.0],
                                      seed=5, name="calibration.jsonl")
            small = work / "greedy-e2e"
            if not (small / "speechllm.json").exists():
                build_speechllm(small, calibration, whisper, args.decoder_shape, "dynamic", 5,
                                256 if quick else 2048, seed=1)
            results["greedy"] = bench_greedy(args, "e2e shape, dynamic window", small, calibration, 1 if quick else 2,
                                             batch_size=4)
            # Whisper-large-v3 encoder (32 x 1280, 30 s = 1500 positions) : Llama-3.2-1B (16 x 2048)
            # ~ 10 : 1 in compute per utterance; the same proportion, scaled down
            heavy = work / "greedy-whisper30"
            if not (heavy / "speechllm.json").exists():
                encoder = ({"model_type": "whisper", "num_mel_bins": 80, "d_model": 64, "encoder_layers": 2,
                            "encoder_attention_heads": 2, "encoder_ffn_dim": 128, "max_source_positions": 1500}
                           if quick else
                           {"model_type": "whisper", "num_mel_bins": 80, "d_model": 256, "encoder_layers": 4,
                            "encoder_attention_heads": 4, "encoder_ffn_dim": 1024, "max_source_positions": 1500})
                decoder = llama_dict(64, 4, 128, 4, 2) if quick else llama_dict(384, 6, 1024, 6, 2)
                build_speechllm(heavy, calibration, encoder, decoder, "full", 5, 256 if quick else 1024, seed=2)
            results["greedy_whisper30"] = bench_greedy(args, "Whisper 30 s window, encoder-heavy", heavy,
                                                       calibration, 1 if quick else 2, batch_size=4)
    report(results, args)


def report(results: dict, args) -> None:
    print(json.dumps(results, indent=2, default=str))
    print()
    print(fmt_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
