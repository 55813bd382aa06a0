"""Benchmark of one sweep cell (not a test): what a cell of ``speechprune sweep`` spends its time on,
part by part, and what sharing the test set's speech between cells cuts, side by side in one process.

A cell loads the model, prunes it (``prune.apply.prune_model``), heals it (LoRA, optional), decodes
the test utterances batch by batch, longest first (``evaluate.measure``), and scores them. Parts:

  load      ``load_model`` of the SpeechLLM folder
  prune     ``prune_model``: the last ``--remove`` layers (strategy ``last``), or the angular block
            of ``--scan``; the surgery
  heal      ``heal_model`` + ``merge_lora``: ``--heal-steps`` LoRA steps on the receiving MLPs (0: none)
  features  the batches' audio read and turned into encoder features (log-mel), token ids collated
  encoder   speech encoder + projector forwards
  prefill   the decoder's forward over each batch's prefix (markers, speech, prompt, separator)
  decode    the rest of decoding: the decoder input assembled, ``generate``'s one-position steps,
            greedy choice and stopping checks, detokenising
  scoring   WER with its bootstrap interval (``evaluate.decode``'s own, then ``evaluate.rescore`` as
            the sweep calls it) and the paired bootstrap verdict against a baseline's rows
            (``bootstrap.verdict``, one look; the baseline is the first variant's rows)

Variants, each a whole cell (load to scoring) of the same pruned model on the same utterances:

  encodes       the cell as it ran before shared speech: every cell reads and encodes the audio
  fills-shared  a cell with an empty shared dict (``LoadedModel.share_speech``): what the sweep's
                first cell, the baseline, pays to fill it
  reads-shared  a later cell that reads the shared dict: every other unhealed, prefill-only, or
                healed-without-projector cell of a sweep
  drops-finished  reads-shared with each row taken out of its batch at its <eos>
                (``generate_text(drop_finished=True)``, ``model/greedy.py``); the other variants
                decode with transformers' ``generate``, which keeps a finished row in its batch
                until the batch ends

The first three must write the same hypotheses (checked); drops-finished's may differ only where
the smaller batches' rounding flips a near-tie (counted). Decoding splits by a forward hook on the decoder
(a forward over more than one position is the prefill) and by timing the model's own pieces
(``SpeechLLMModel._speech_batch``, the encoder and projector modules); ``decode`` is what remains of
``evaluate.decode``'s own wall time. ``row-steps``: the decoder's one-position forwards times the rows in
each, counted by the hook. Dropping finished rows, every row-step is one a row needs (its next
token), so the share of reads-shared's row-steps spent on finished rows is 1 - drops-finished's
count over reads-shared's. (A decoder may end a row with a special token other than <eos>, or repeat one to the
limit: the hypothesis' text does not show how long a row ran.)

Model: ``--model`` (a SpeechLLM folder, e.g. a demo's ``runs/demo/model``; decoding stops at the
sweep's limit, twice the longest reference plus 16 tokens, unless ``--max-new-tokens``), or
``--base-llm smollm2-135m | gemma3-270m``: a SpeechLLM assembled untrained on that LLM as the demo
assembles one (the default Whisper-style encoder, projector stacking 4 frames), saved once under
``--workdir``. An untrained model does not know when to stop, so every utterance is made to generate
exactly ``--max-new-tokens`` (default 32) tokens (``min_new_tokens``): decoding costs the same in
every variant, and the row-steps say nothing there. ``--tiny``: a tiny SpeechLLM built from
configs, to check that the script runs.

Timing: torch threads fixed (``--threads``); one untimed warm-up (load, one batch decoded); then
``--repeats`` rounds of the three variants (order reversed every other round; the first round runs
them in the order above, since reads-shared needs a filled dict); medians per part.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sweep_cell.py --base-llm smollm2-135m --utterances 32
    .venv/bin/python bench/bench_sweep_cell.py --model runs/demo/model --data runs/demo/data/test.jsonl
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sweep_cell.py --tiny        # checks the script runs
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

PARTS = ("load", "prune", "heal", "features", "encoder", "prefill", "decode", "scoring")
VARIANTS = ("encodes", "fills-shared", "reads-shared", "drops-finished")
SAME_HYPOTHESES = VARIANTS[:3]
WORDS = "the a red blue cat dog bird sees runs sleeps two three big small house tree river".split()


# ----------------------------------------------------------------------------- data and models
def write_clips(folder: Path, count: int, seed: int = 0) -> Path:
    """Tone-and-noise clips of 2-6 s and an ASR manifest for them (what is said does not matter to
    an untrained model, only how long it is)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        seconds = float(rng.uniform(2.0, 6.0))
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (150 + 7 * i) * t) + 0.05 * rng.standard_normal(t.shape)
        sf.write(folder / f"c{i}.wav", wave.astype(np.float32), 16000)
        text = " ".join(rng.choice(WORDS, size=max(3, int(2.5 * seconds))))
        lines.append({"id": f"c{i}", "audio": f"c{i}.wav", "text": text, "task": "asr", "src_lang": "en",
                      "tgt_lang": "en", "target": text, "duration": seconds})
    path = folder / "clips.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def assemble(args, utterances: list) -> Path:
    """A SpeechLLM saved under ``--workdir``: on ``--base-llm`` as the demo builds one (untrained), or
    (``--tiny``) from small configs. Built once; a later run reuses it."""
    from speechprune.model.speechllm import DecoderConfig, ModelConfig, ProjectorConfig, SpeechLLM, decoder_texts

    name = "tiny" if args.tiny else args.base_llm
    folder = Path(args.workdir) / f"speechllm-{name}"
    if (folder / "speechllm.json").exists():
        return folder
    torch.manual_seed(0)
    if args.tiny:
        decoder = DecoderConfig(config={"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                                        "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
                                        "max_position_embeddings": 512, "tie_word_embeddings": True})
    else:
        decoder = DecoderConfig(pretrained=args.base_llm)
    config = ModelConfig(decoder=decoder, projector=ProjectorConfig(stack=4))
    started = time.perf_counter()
    SpeechLLM.build(config, decoder_texts(config.prompts, utterances), [u.text for u in utterances]).save(folder)
    print(f"assembled {folder} in {time.perf_counter() - started:.0f} s (once; not part of a cell)", file=sys.stderr)
    return folder


# ----------------------------------------------------------------------------- timing helpers
class Clock:
    """Accumulated wall time of ``run``'s calls, or of a module's forwards."""

    def __init__(self):
        self.seconds, self._start = 0.0, 0.0

    def wrap(self, run):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return run(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
        return timed

    def hook(self, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(lambda *a: setattr(self, "_start", time.perf_counter()))
        module.register_forward_hook(
            lambda *a: setattr(self, "seconds", self.seconds + time.perf_counter() - self._start))


class DecoderForwards:
    """Times the decoder's prefill forwards (more than one position) and counts the rows of its
    one-position steps."""

    def __init__(self, module: torch.nn.Module):
        self.prefill_s, self.row_steps, self._start, self._positions, self._rows = 0.0, 0, 0.0, 0, 0
        module.register_forward_pre_hook(self._pre, with_kwargs=True)
        module.register_forward_hook(self._post)

    def _pre(self, module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        x = kwargs.get("input_ids") if x is None else x
        x = args[0] if x is None and args else x
        self._rows, self._positions = int(x.shape[0]), int(x.shape[1])
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        if self._positions > 1:
            self.prefill_s += time.perf_counter() - self._start
        else:
            self.row_steps += self._rows


# ----------------------------------------------------------------------------- one cell
def run_cell(args, folder: Path, utterances: list, heal_utterances: list, shared: dict | None,
             baseline_rows: list | None, drop_finished: bool = False) -> dict:
    """One cell, timed part by part; ``shared``: the dict the model shares its speech through (None:
    not shared). ``baseline_rows``: what the verdict pairs with (None: the cell's own rows).
    ``drop_finished``: each row leaves its batch at its <eos> (else ``generate`` runs each batch to its end)."""
    import functools

    import speechprune.model.speechllm as speechllm_module
    from speechprune.bootstrap import verdict
    from speechprune.evaluate import measure, metric_statistics, rescore
    from speechprune.heal import heal_model, healing_layers, lora_targets, merge_lora
    from speechprune.model.interface import load_model
    from speechprune.prune.apply import Selection, prune_model, read_scan
    from speechprune.sweep import wer_limit

    times = dict.fromkeys(PARTS, 0.0)
    gc.collect()
    started = time.perf_counter()
    model = load_model(str(folder), dtype=args.dtype)
    times["load"] = time.perf_counter() - started

    started = time.perf_counter()
    selection = (Selection(strategy="angular", count=args.remove, scan=read_scan(args.scan), scan_path=args.scan)
                 if args.scan else Selection(strategy="last", count=args.remove))
    pruning = prune_model(model, selection)
    times["prune"] = time.perf_counter() - started

    started = time.perf_counter()
    if args.heal_steps:
        targets = lora_targets(model.causal_lm, "receiving-mlp",
                               healing_layers(pruning["kept"], pruning["original_num_layers"]))
        with tempfile.TemporaryDirectory() as checkpoints:
            heal_model(model, heal_utterances, targets, Path(checkpoints), args.heal_steps, args.heal_lr,
                       batch_size=args.batch_size, resume=False)
        merge_lora(model)
    times["heal"] = time.perf_counter() - started

    if args.fixed_length:  # an untrained model: every utterance generates exactly max_new_tokens
        model.causal_lm.generation_config.min_new_tokens = args.max_new_tokens
    if shared is not None:
        model.share_speech(shared)
    features, encoder = Clock(), Clock()
    model._speech_batch = features.wrap(model._speech_batch)  # audio read, features, token ids
    encoder.hook(model.speechllm.encoder)
    encoder.hook(model.speechllm.projector)
    decoder = DecoderForwards(model.causal_lm)
    batches = []  # rows per generate call
    generate = model.generate

    def recorded(batch, **kwargs):
        batches.append(len(batch))
        return generate(batch, **kwargs)

    model.generate = recorded
    plain = speechllm_module.generate_text
    speechllm_module.generate_text = functools.partial(plain, drop_finished=drop_finished)
    try:
        started = time.perf_counter()
        result = measure(model, utterances, "decode", args.batch_size, max_new_tokens=args.max_new_tokens)
        measured = time.perf_counter() - started
    finally:
        speechllm_module.generate_text = plain
    decoding = result.metrics["decode_seconds"]
    times["features"], times["encoder"], times["prefill"] = features.seconds, encoder.seconds, decoder.prefill_s
    times["decode"] = decoding - features.seconds - encoder.seconds - decoder.prefill_s

    started = time.perf_counter()
    rescore("decode", result.rows, result.metrics)  # what the sweep does with a look's rows
    asr = lambda rows: [r for r in rows if r["task"] == "asr"]  # noqa: E731  (the WER rule's rows)
    base = metric_statistics("asr", asr(baseline_rows if baseline_rows is not None else result.rows))["wer"]
    cell = metric_statistics("asr", asr(result.rows))["wer"]
    judged = verdict("wer", base, cell, lambda w: wer_limit(w, args.limits), higher_is_better=False)
    times["scoring"] = measured - decoding + time.perf_counter() - started

    out = {"times": times, "rows": result.rows, "hypotheses": [r["hypothesis"] for r in result.rows],
           "verdict": judged.verdict,
           "wer": result.metrics.get("asr", {}).get("wer"), "removed": pruning["removed"],
           "layers": [pruning["original_num_layers"], pruning["num_layers"]],
           "generate_calls": len(batches), "row_steps": decoder.row_steps,
           "shared_entries": len(shared) if shared is not None else None}
    model.release()
    del model
    gc.collect()
    return out


def warm_up(args, folder: Path, utterances: list) -> None:
    from speechprune.evaluate import measure
    from speechprune.model.interface import load_model

    model = load_model(str(folder), dtype=args.dtype)
    measure(model, utterances[: args.batch_size], "decode", args.batch_size, max_new_tokens=2)
    model.release()


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": [round(x, 1) for x in os.getloadavg()],
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "python": platform.python_version()}


# ----------------------------------------------------------------------------- report
def fmt_table(results: dict) -> str:
    m, s = results["machine"], results["setup"]
    medians = results["medians"]
    lines = [f"{m['date']}, {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, load average "
             f"{m['load_average']}, torch {m['torch']}",
             f"model {s['model']} ({s['decoder_layers']} decoder layers, {s['removed_count']} removed: {s['removed']}, "
             f"0-based); {s['utterances']} utterances ({s['audio_seconds']:.0f} s of audio), batch {s['batch_size']}, "
             f"max_new_tokens {s['max_new_tokens']}"
             f"{' (every utterance made to generate all of them)' if s['fixed_length'] else ''}, "
             f"heal steps {s['heal_steps']}, {s['repeats']} round(s), medians",
             "",
             "| part | " + " | ".join(f"{v} s | share" for v in VARIANTS) + " |",
             "|---|" + "---|---|" * len(VARIANTS)]
    totals = {v: sum(medians[v].values()) for v in VARIANTS}
    for part in PARTS:
        lines.append(f"| {part} | " + " | ".join(f"{medians[v][part]:.2f} | {medians[v][part] / totals[v]:.0%}"
                                               for v in VARIANTS) + " |")
    lines.append("| **total** | " + " | ".join(f"**{totals[v]:.2f}** | 100%" for v in VARIANTS) + " |")
    base = totals["encodes"]
    lines.append("")
    lines.append("cell total, encodes / variant: " + ", ".join(f"{v} {base / totals[v]:.2f}x" for v in VARIANTS[1:3])
                 + f"; hypotheses identical in {', '.join(SAME_HYPOTHESES)}: {results['identical']}")
    kept, dropped = medians["reads-shared"], medians["drops-finished"]
    lines.append(f"rows dropped at <eos>, reads-shared / drops-finished: cell {totals['reads-shared'] / totals['drops-finished']:.2f}x, "
                 f"decode {kept['decode'] / dropped['decode']:.2f}x; hypotheses differing: "
                 f"{results['drops_finished_differing']} of {s['utterances']}")
    run, needed = results["row_steps"]["reads-shared"], results["row_steps"]["drops-finished"]
    lines.append(f"decoder row-steps: reads-shared {run}, drops-finished {needed}"
                 + (" (every utterance made to generate max_new_tokens)" if s["fixed_length"] else
                    f": {1 - needed / run if run else 0.0:.0%} of reads-shared's on finished rows"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", default="", help="a SpeechLLM folder (e.g. runs/demo/model)")
    source.add_argument("--base-llm", default="", help="assemble an untrained SpeechLLM on this LLM "
                                                       "(smollm2-135m, gemma3-270m, or a local checkpoint)")
    source.add_argument("--tiny", action="store_true", help="a tiny SpeechLLM from configs: checks the script runs")
    parser.add_argument("--data", default="", help="test manifest (default: generated tone clips of 2-6 s)")
    parser.add_argument("--heal-data", default="", help="healing manifest (default: --data)")
    parser.add_argument("--utterances", type=int, default=32, help="the first N utterances of --data")
    parser.add_argument("--remove", type=int, default=0, help="decoder layers removed (default: a quarter)")
    parser.add_argument("--scan", default="", help="choose the angular block of this scan (default: the last layers)")
    parser.add_argument("--heal-steps", type=int, default=0)
    parser.add_argument("--heal-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16, help="as the sweep's --batch-size")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="default: the sweep's limit for --model, 32 for an assembled model")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default="",
                        help="where assembled models and clips go (default: a temporary folder)")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from speechprune.data.manifest import load_manifest
    from speechprune.model.decoder import decoder_layers
    from speechprune.options.sweep import SweepConfig

    with contextlib.ExitStack() as stack:
        if not args.workdir:
            args.workdir = stack.enter_context(tempfile.TemporaryDirectory())
        data = Path(args.data) if args.data else write_clips(Path(args.workdir) / "clips", args.utterances)
        utterances = load_manifest(data)[: args.utterances]
        heal_utterances = load_manifest(args.heal_data) if args.heal_data else utterances
        folder = Path(args.model) if args.model else assemble(args, utterances)
        args.fixed_length = not args.model
        from speechprune.model.interface import load_model
        from speechprune.sweep import decoding_limit

        probe = load_model(str(folder), dtype=args.dtype)
        if getattr(probe, "speechllm", None) is None:
            sys.exit(f"{folder} is {probe.description}: this bench times this toolkit's SpeechLLM folders")
        if args.max_new_tokens is None:  # the sweep's limit for a trained model; a fixed length for an untrained one
            args.max_new_tokens = (decoding_limit(probe, {"test": utterances}, argparse.Namespace(max_new_tokens=None))
                                   if args.model else 4 if args.tiny else 32)
        args.remove = args.remove or max(1, len(decoder_layers(probe.causal_lm)) // 4)
        probe.release()
        args.limits = SweepConfig(model=str(folder), scan="", train=[], test=[], out="")  # the sweep's WER rule

        print("warm-up ...", file=sys.stderr, flush=True)
        warm_up(args, folder, utterances)
        cells: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        shared: dict = {}
        for round_ in range(args.repeats):
            for variant in (VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]):
                print(f"round {round_ + 1}/{args.repeats}: {variant} ...", file=sys.stderr, flush=True)
                if variant == "fills-shared":
                    shared = {}
                baseline_rows = cells["encodes"][0]["rows"] if cells["encodes"] else None
                cells[variant].append(run_cell(args, folder, utterances, heal_utterances,
                                               None if variant == "encodes" else shared, baseline_rows,
                                               drop_finished=variant == "drops-finished"))
        reference = cells["encodes"][0]
        results = {
            "machine": machine(),
            "setup": {"model": args.model or "untrained SpeechLLM on " + (args.base_llm or "a tiny decoder"),
                      "data": str(data), "utterances": len(utterances),
                      "audio_seconds": sum(u.duration or 0.0 for u in utterances), "batch_size": args.batch_size,
                      "max_new_tokens": args.max_new_tokens, "fixed_length": args.fixed_length,
                      "heal_steps": args.heal_steps, "repeats": args.repeats, "decoder_layers": reference["layers"][0],
                      "removed_count": len(reference["removed"]), "removed": reference["removed"],
                      "scan": args.scan or None},
            "medians": {v: {part: statistics.median(c["times"][part] for c in cells[v]) for part in PARTS}
                        for v in VARIANTS},
            "identical": all(c["hypotheses"] == reference["hypotheses"] for v in SAME_HYPOTHESES for c in cells[v]),
            "drops_finished_differing": max(sum(a != b for a, b in zip(c["hypotheses"], reference["hypotheses"]))
                                            for c in cells["drops-finished"]),
            "wer": reference["wer"],
            "row_steps": {v: cells[v][0]["row_steps"] for v in VARIANTS},
            "cells": {v: [{k: c[k] for k in ("times", "verdict", "shared_entries", "generate_calls")} for c in cells[v]]
                      for v in VARIANTS},
        }
        print(json.dumps(results, indent=2, default=str))
        print()
        print(fmt_table(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        if not results["identical"]:
            sys.exit("the variants wrote different hypotheses")


if __name__ == "__main__":
    main()
