"""Benchmark of the redundancy scan (not a test): on one random decoder and one data set, side by side

  forward-lm    plain no-grad forward of the causal LM (logits included), both inputs
  forward-base  plain no-grad forward of the base model (no LM head), both inputs
  scan          the full scan: both inputs' statistics, all five regions, per-utterance sums for
                the stability regions (all, last), matrices and l*(n) at the end
  pruneme       the PruneMe way: one forward with output_hidden_states per block size n, the
                distance of every block of that size on the last token

Time (the machine may be shared, so measurements are paired): one process loads the model once,
warms up, then ``--repeats`` times runs, batch by batch, forward-base, forward-lm and the scan step
on the same batch back to back; per method and batch the fastest repeat is kept and the batches
are summed (the scan's end-of-pass work, means and l*(n), is timed each round, fastest added).
PruneMe runs in the first timed round only, right after the others on each batch (all L block
sizes, or ``--pruneme-sizes K`` of them, extrapolated linearly to L). Both wall-clock and process
CPU time are kept; on a machine shared with other jobs, CPU time with ``--threads 1`` is the
steadier measure of the work each method does.
Peak memory (CPU): every method runs once over all batches in its own process (PruneMe: one block size,
since every one of its passes peaks alike) started with
MALLOC_MMAP_THRESHOLD_=65536, so freed tensors go back to the system and the resident set follows
the live tensors; after loading and the warm-up the kernel's high-water mark is reset
(``echo 5 > /proc/self/clear_refs``) and VmHWM is read after the run. "peak" is the whole process
(weights included, the analogue of peak GPU memory); "extra" is peak minus the resident set just
before the run (what the method itself adds).

    .venv/bin/python bench/bench_scan.py [--layers 16 --hidden 1024 --utterances 8 --batch-size 4]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

METHODS = ("forward-lm", "forward-base", "scan", "pruneme")


def build_model(args) -> Path:
    import transformers as tf

    folder = Path(args.workdir) / "model"
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                            num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                            num_key_value_heads=args.hidden // 64, vocab_size=args.vocab,
                            max_position_embeddings=2048)
    model = tf.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return folder


def make_data(model, args) -> list[dict]:
    """Both inputs' decoder inputs, batch by batch: <a> speech </a> prompt <bos> target <eos> and the
    same with source-text tokens in place of the speech frames (as a SpeechLLM's text input)."""
    from speechprune.model.layout import Segment, assemble

    rng = torch.Generator().manual_seed(1)
    embed = model.get_input_embeddings()
    hidden = embed.embedding_dim
    std = float(embed.weight.std())

    def tokens(n, region):
        ids = torch.randint(10, args.vocab, (n,), generator=rng)
        return Segment(embed(ids).detach(), region, ids)

    speech_utts, text_utts = [], []
    for _ in range(args.utterances):
        frames = int(torch.randint(args.speech_frames // 2, args.speech_frames + 1, (1,), generator=rng))
        words = max(4, frames // 4)
        prompt, target = tokens(8, "prompt"), tokens(int(torch.randint(10, 30, (1,), generator=rng)), "target")
        marker_a, marker_b, bos = tokens(1, None), tokens(1, None), tokens(1, None)
        speech = Segment(torch.randn(frames, hidden, generator=rng) * std, "speech")
        speech_utts.append([marker_a, speech, marker_b, prompt, bos, target])
        text_utts.append([marker_a, tokens(words, "speech"), marker_b, prompt, bos, target])
    batches = []
    for start in range(0, args.utterances, args.batch_size):
        rows = list(range(start, min(args.utterances, start + args.batch_size)))
        batches.append({"rows": rows,
                        "speech": assemble([speech_utts[i] for i in rows]),
                        "text": assemble([text_utts[i] for i in rows])})
    return batches


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def setup(args):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        batches = make_data(model, args)
    return model, batches


def run_batch(model, method: str, batch: dict, scanner=None, sizes=()) -> None:
    """One batch (both inputs) the way ``method`` processes it."""
    from speechprune.scan import ScanBatch

    num_layers = model.config.num_hidden_layers

    def kwargs(inputs):
        return dict(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                    position_ids=inputs.position_ids, use_cache=False)

    if method == "scan":
        scanner.step(ScanBatch({"speech": batch["speech"], "text": batch["text"]}, batch["rows"]))
    elif method in ("forward-base", "forward-lm"):
        forward = model.model if method == "forward-base" else model
        for name in ("speech", "text"):
            forward(**kwargs(batch[name]))
    elif method == "pruneme":
        for n in sizes:  # one pass per block size, as PruneMe does (its sums would go on across batches)
            for name in ("speech", "text"):
                inputs = batch[name]
                hidden = model(**kwargs(inputs), output_hidden_states=True).hidden_states
                last = inputs.attention_mask.sum(1) - 1
                rows = torch.arange(len(last))
                distances = torch.zeros(num_layers - n + 1, dtype=torch.float64)
                for l in range(num_layers - n + 1):
                    a, b = hidden[l][rows, last].double(), hidden[l + n][rows, last].double()
                    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1)
                    distances[l] += (torch.arccos(cos) / math.pi).sum()
                del hidden


def finish_scan(scanner) -> None:
    for stats in scanner.stats.values():
        for region in stats.regions:
            stats.matrices(region)


def paired_times(args) -> dict:
    """Paired timing of every method, batch by batch, in this process."""
    from speechprune.scan import Scanner

    model, batches = setup(args)
    sizes = list(range(1, args.layers + 1))[: args.pruneme_sizes or None]
    best = {m: [math.inf] * len(batches) for m in METHODS}
    best_cpu = {m: [math.inf] * len(batches) for m in METHODS}
    finish = finish_cpu = math.inf
    with torch.no_grad():
        for rep in range(args.repeats + 1):  # the first round is the warm-up
            scanner = Scanner(model, inputs=("speech", "text"), per_utterance=("all", "last"))
            with scanner:
                for k, batch in enumerate(batches):
                    for method in METHODS:
                        if method == "pruneme" and rep != 1:
                            continue  # PruneMe takes L forwards: timed in one round only
                        start, cpu = time.perf_counter(), time.process_time()
                        run_batch(model, method, batch, scanner, sizes)
                        if rep:
                            best[method][k] = min(best[method][k], time.perf_counter() - start)
                            best_cpu[method][k] = min(best_cpu[method][k], time.process_time() - cpu)
            start, cpu = time.perf_counter(), time.process_time()
            finish_scan(scanner)
            if rep:
                finish = min(finish, time.perf_counter() - start)
                finish_cpu = min(finish_cpu, time.process_time() - cpu)
            print(f"  round {rep}: " + ", ".join(f"{m} {sum(best[m]):.2f} s" for m in METHODS), file=sys.stderr,
                  flush=True)
    seconds = {m: sum(best[m]) for m in METHODS}
    cpu_seconds = {m: sum(best_cpu[m]) for m in METHODS}
    seconds["scan"] += finish
    cpu_seconds["scan"] += finish_cpu
    seconds["pruneme"] *= args.layers / len(sizes)
    cpu_seconds["pruneme"] *= args.layers / len(sizes)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "per_batch": best, "per_batch_cpu": best_cpu,
            "finish": finish, "pruneme_sizes": len(sizes)}


def child(args) -> dict:
    """Peak memory of one method over all batches, in this (fresh) process."""
    from speechprune.scan import Scanner

    model, batches = setup(args)
    method = args.child
    scanner = Scanner(model, inputs=("speech", "text"), per_utterance=("all", "last"))
    with torch.no_grad(), scanner:
        run_batch(model, method, batches[0], scanner, [1])  # warm-up
        scanner = Scanner(model, inputs=("speech", "text"), per_utterance=("all", "last"))
    with torch.no_grad(), scanner:
        Path("/proc/self/clear_refs").write_text("5")
        before = rss_kib()
        for batch in batches:
            run_batch(model, method, batch, scanner, [1])  # one block size: every PruneMe pass peaks alike
        if method == "scan":
            finish_scan(scanner)
        peak = rss_kib("VmHWM")
    tokens = sum(int(b[name].attention_mask.sum()) for b in batches for name in ("speech", "text"))
    return {"method": method, "peak_mib": peak / 1024, "before_mib": before / 1024,
            "extra_mib": (peak - before) / 1024, "tokens": tokens}


def measure(args, method: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--child", method, "--model-dir", str(args.model_dir)]
    for name in ("layers", "hidden", "intermediate", "vocab", "utterances", "batch_size", "speech_frames",
                 "threads", "pruneme_sizes", "repeats"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=None if method == "paired" else
                          subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--utterances", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--speech-frames", type=int, default=120, help="longest speech segment (frames)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2, help="paired timing rounds after the warm-up (fastest kept per batch)")
    parser.add_argument("--pruneme-sizes", type=int, default=0,
                        help="time PruneMe on the first K block sizes only and extrapolate to all L (0 = all)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", choices=METHODS + ("paired",), default=None)
    parser.add_argument("--model-dir", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(paired_times(args) if args.child == "paired" else child(args)))
        return

    with tempfile.TemporaryDirectory(prefix="bench_scan_") as tmp:
        args.workdir = args.workdir or tmp
        args.model_dir = build_model(args)
        memory = {}
        for method in METHODS:
            memory[method] = measure(args, method)
            print(f"  memory {method:<13} peak {memory[method]['peak_mib']:8.1f} MiB", file=sys.stderr, flush=True)
        timing = measure(args, "paired")

    seconds, cpu_seconds = timing["seconds"], timing["cpu_seconds"]
    peak = {m: memory[m]["peak_mib"] for m in METHODS}
    extra = {m: memory[m]["extra_mib"] for m in METHODS}
    tokens = memory["scan"]["tokens"]
    print()
    print(f"decoder: random Llama, {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
          f"vocab {args.vocab}, float32; data: {args.utterances} utterances x 2 inputs (speech, text), "
          f"batch {args.batch_size}, {tokens} positions")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{args.threads}, torch {torch.__version__}; {datetime.date.today().isoformat()}")
    print()
    print(f"{'method':<14}{'wall s':>9}{'cpu s':>9}{'peak MiB':>10}{'extra MiB':>11}{'wall/base':>11}"
          f"{'wall/lm':>9}{'cpu/base':>10}{'cpu/lm':>8}{'peak/base':>11}{'peak/lm':>9}")
    for method in METHODS:
        print(f"{method:<14}{seconds[method]:>9.2f}{cpu_seconds[method]:>9.2f}{peak[method]:>10.1f}"
              f"{extra[method]:>11.1f}{seconds[method] / seconds['forward-base']:>11.3f}"
              f"{seconds[method] / seconds['forward-lm']:>9.3f}"
              f"{cpu_seconds[method] / cpu_seconds['forward-base']:>10.3f}"
              f"{cpu_seconds[method] / cpu_seconds['forward-lm']:>8.3f}"
              f"{peak[method] / peak['forward-base']:>11.3f}{peak[method] / peak['forward-lm']:>9.3f}")
    if timing["pruneme_sizes"] != args.layers:
        print(f"(pruneme timed on {timing['pruneme_sizes']} of {args.layers} block sizes, extrapolated linearly)")
    print(f"scan vs pruneme: {seconds['pruneme'] / seconds['scan']:.1f}x faster")
    results = {"seconds": seconds, "memory": memory, "paired": timing}
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                               "runs": results}, indent=2))


if __name__ == "__main__":
    main()
