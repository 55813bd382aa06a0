"""Benchmark of healing's precision (not a test): one pruned SpeechLLM healed in float32 and under
bf16 autocast (``heal --mixed-precision``, ``sweep --heal-mixed-precision``), side by side in one
process: the healing's seconds, its final loss, and the healed model's WER on the same test
utterances with its interval, so that the time ratio comes with what the healing still does.

A round loads the model, removes ``--remove`` layers (the angular block of ``--scan``, as a sweep
cell does), heals LoRA on the receiving MLPs for ``--steps`` steps (``heal.heal_model``, batch
``--batch-size``, the same seed in both precisions) and merges it, then decodes ``--utterances``
test utterances. Rounds alternate the order of the two precisions; medians per precision.
The decoding runs in float32 in both (the weights stay float32; only healing's autocast differs).

    .venv/bin/python bench/bench_heal_precision.py \\
        --model runs/study-real/conditions/gemma3.whisper.asr-en.lora/model \\
        --scan runs/study-real/conditions/gemma3.whisper.asr-en.lora/scan --remove 2 \\
        --heal-data runs/study-real/corpus/asr-en.train.jsonl --test runs/study-real/corpus/asr-en.test.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from speechprune.data.manifest import load_manifest
from speechprune.evaluate import decode, with_interval
from speechprune.heal import heal_model, healing_layers, lora_targets, merge_lora
from speechprune.model.device import bf16_matmul_speedup
from speechprune.model.interface import load_model
from speechprune.prune.apply import Selection, prune_model, read_scan

PRECISIONS = ("no", "bf16")


def healed_round(args, precision: str, heal_utterances: list, test_utterances: list) -> dict:
    model = load_model(args.model)
    pruning = prune_model(model, Selection(strategy="angular", count=args.remove, scan=read_scan(args.scan),
                                           scan_path=args.scan))
    targets = lora_targets(model.causal_lm, "receiving-mlp",
                           healing_layers(pruning["kept"], pruning["original_num_layers"]))
    with tempfile.TemporaryDirectory() as checkpoints:
        started = time.perf_counter()
        stages = heal_model(model, heal_utterances, targets, Path(checkpoints), args.steps, args.lr,
                            batch_size=args.batch_size, resume=False, mixed_precision=precision)
        heal_seconds = time.perf_counter() - started
    merge_lora(model)
    result = decode(model, test_utterances, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    return {"precision": precision, "removed": pruning["removed"], "heal_seconds": heal_seconds,
            "final_loss": stages[-1]["final_loss"], "wer": result.metrics["asr"],
            "decode_seconds": result.metrics["decode_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a SpeechLLM folder")
    parser.add_argument("--scan", required=True, help="its scan folder (the angular block is chosen from it)")
    parser.add_argument("--remove", type=int, required=True, help="decoder layers removed")
    parser.add_argument("--heal-data", required=True, help="healing manifest")
    parser.add_argument("--test", required=True, help="test manifest (ASR)")
    parser.add_argument("--utterances", type=int, default=100, help="the first N test utterances")
    parser.add_argument("--steps", type=int, default=40, help="healing steps (study-real heals 40)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16, help="as the sweep's --batch-size")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of both precisions (order alternates)")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()

    heal_utterances = load_manifest(args.heal_data)
    test_utterances = load_manifest(args.test)[: args.utterances]
    rounds = []
    for repeat in range(args.repeats):
        for precision in PRECISIONS if repeat % 2 == 0 else PRECISIONS[::-1]:
            rounds.append(healed_round(args, precision, heal_utterances, test_utterances))
            last = rounds[-1]
            print(f"round {repeat + 1}, {precision}: heal {last['heal_seconds']:.1f} s, final loss "
                  f"{last['final_loss']:.4f}, WER {with_interval(last['wer'], 'wer')}", flush=True)

    def median(precision: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds if r["precision"] == precision)

    print(f"\n{Path(args.model)}: {rounds[0]['removed']} removed, {args.steps} healing steps of {args.batch_size}, "
          f"{torch.get_num_threads()} threads, bf16 matmul probe {bf16_matmul_speedup():.2f}x")
    print("| precision | heal s (median) | s a step | final loss | WER [95% CI] |")
    print("|---|---|---|---|---|")
    for precision in PRECISIONS:
        last = [r for r in rounds if r["precision"] == precision][-1]
        print(f"| {'float32' if precision == 'no' else 'bf16 autocast'} | {median(precision, 'heal_seconds'):.1f} | "
              f"{median(precision, 'heal_seconds') / args.steps:.2f} | {median(precision, 'final_loss'):.4f} | "
              f"{with_interval(last['wer'], 'wer')} ({last['wer']['words']} words) |")
    print(f"healing, float32 / bf16 autocast: {median('no', 'heal_seconds') / median('bf16', 'heal_seconds'):.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "args": vars(args), "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
