"""Whole-process benchmark of ``speechprune scan`` on the plain layout (not a test): the scan command
against a plain no-grad forward over the same texts, each a whole process from start to exit
(interpreter start, imports, model load, tokenization, the work, outputs), same batch size:

  scan          speechprune scan --model M --data texts.txt --out OUT --batch-size B   (every default:
                plain layout, regions all and last, bootstrap, figures)
  forward-lm    this script's ``--forward lm``: load the causal LM and its tokenizer, tokenize the
                texts batch by batch (right padding), ``model(**batch)`` under ``torch.no_grad()``:
                what a user would call
  forward-base  the same with ``model.model(**batch)``: the base model, no LM head (the scan does
                not run the LM head either, so this is the strict baseline)

The commands run in turn (the order rotated every round so no command always follows the same
one), ``--rounds`` rounds after ``--warmup`` rounds; per round the ratios scan / forward-* are
taken pair by pair (the machine may be shared: a slow spell hits neighbouring runs alike) and the
median of the per-round ratios is reported with the medians of the times. Wall time: a monotonic
clock around each child; CPU time and peak memory: the kernel's accounting of that child
(``os.wait4``). Peak memory is the child's own maximum resident set (weights included).

Setup (built once in --workdir): a random Llama with SmolLM2-135M's shape (30 layers, hidden 576,
MLP 1536, 9 heads / 3 KV heads, vocabulary 49152, tied embeddings; 135 M parameters, float32), a
byte-level BPE trained on the grammar's English whose post-processor puts ``<bos>`` before every
text (as Llama's tokenizers do), and ``--texts`` lines of ``--sentences-per-line`` sentences of
the offline corpus's grammar (seeded).

    .venv/bin/python bench/bench_scan_plain.py [--texts 400 --batch-size 8 --rounds 3 --threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("scan", "forward-lm", "forward-base")


def build(args) -> tuple[Path, Path]:
    """The model folder (weights and tokenizer) and the text file, made once in ``--workdir``."""
    workdir = Path(args.workdir)
    model_dir, texts = workdir / "model", workdir / "texts.txt"
    if (model_dir / "config.json").is_file() and texts.is_file():
        return model_dir, texts
    import torch
    import transformers as tf
    from tokenizers import processors

    from speechprune.data.grammar import render, sample_meanings
    from speechprune.model.tokenizer import train_bpe_tokenizer

    per_line = args.sentences_per_line
    meanings = sample_meanings(args.texts * per_line + 4000, seed=0, languages=("en",))
    sentences = [render(m, "en") for m in meanings]
    lines = [" ".join(sentences[i * per_line: (i + 1) * per_line]) for i in range(args.texts)]
    tokenizer = train_bpe_tokenizer(sentences[args.texts * per_line:], vocab_size=args.bpe_vocab)
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)])
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                            num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                            tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    tf.LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    texts.write_text("".join(line + "\n" for line in lines))
    return model_dir, texts


def forward(args) -> None:
    """The baseline process: a plain no-grad forward over the texts, in the scan's batches."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    run = model if args.forward == "lm" else model.model
    texts = [line.strip() for line in Path(args.texts_file).read_text().splitlines() if line.strip()]
    positions = 0
    with torch.no_grad():
        for start in range(0, len(texts), args.batch_size):
            batch = tokenizer(texts[start: start + args.batch_size], return_tensors="pt", padding=True)
            run(**batch, use_cache=False)
            positions += int(batch["attention_mask"].sum())
    print(f"forward-{args.forward}: {len(texts)} texts, {positions} positions", file=sys.stderr)


def command_line(name: str, args, model_dir: Path, texts: Path, out: Path) -> list[str]:
    if name == "scan":
        return [str(Path(sys.executable).with_name("speechprune")), "scan", "--model", str(model_dir),
                "--data", str(texts), "--out", str(out), "--batch-size", str(args.batch_size)]
    return [sys.executable, __file__, "--forward", name.removeprefix("forward-"), "--model-dir", str(model_dir),
            "--texts-file", str(texts), "--batch-size", str(args.batch_size)]


def run_once(command: list[str], env: dict) -> dict:
    """One whole process: wall seconds, CPU seconds (user + system) and peak resident MiB."""
    started = time.monotonic()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr.decode()[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=400, help="lines of text scanned")
    parser.add_argument("--sentences-per-line", type=int, default=2)
    parser.add_argument("--bpe-vocab", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up rounds")
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of every child (0 = torch's default)")
    parser.add_argument("--workdir", default="bench-scan-plain", help="model, texts and scan outputs (kept)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--build-only", action="store_true", help="only build the model and texts in --workdir")
    parser.add_argument("--forward", choices=("lm", "base"), default=None)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--texts-file", default=None)
    args = parser.parse_args()
    if args.forward:
        forward(args)
        return

    if args.build_only:
        build(args)
        return
    # built in a child: a forked child's peak resident set starts from its parent's, so the
    # parent must never hold the model
    subprocess.run([sys.executable, __file__, "--build-only", "--workdir", args.workdir, "--texts", str(args.texts),
                    "--sentences-per-line", str(args.sentences_per_line), "--bpe-vocab", str(args.bpe_vocab)],
                   check=True)
    model_dir, texts = Path(args.workdir) / "model", Path(args.workdir) / "texts.txt"
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    out = Path(args.workdir) / "scan"
    runs: dict[str, list[dict]] = {name: [] for name in COMMANDS}
    for round_index in range(args.warmup + args.rounds):  # warm-up first: page cache, lazy initialisation
        shift = round_index % len(COMMANDS)
        order = COMMANDS[shift:] + COMMANDS[:shift]
        for name in order:
            result = run_once(command_line(name, args, model_dir, texts, out), env)
            if round_index >= args.warmup:
                runs[name].append(result)
        if round_index >= args.warmup:
            print(f"  round {round_index - args.warmup + 1}: " + ", ".join(
                f"{n} {runs[n][-1]['wall']:.1f} s wall {runs[n][-1]['cpu']:.1f} s cpu" for n in COMMANDS),
                file=sys.stderr, flush=True)
    payload = json.loads((out / "scan.json").read_text())
    positions = payload["inputs"]["text"]["regions"]["all"]["count"]

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def paired(name: str, key: str, baseline: str) -> float:
        return statistics.median(a[key] / b[key] for a, b in zip(runs[name], runs[baseline]))

    print()
    print(f"model: random Llama, SmolLM2-135M shape (30 layers, hidden 576, vocab 49152), float32; data: "
          f"{args.texts} lines, {positions} positions (plain layout, <bos> included), batch {args.batch_size}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS "
          f"{env.get('OMP_NUM_THREADS', 'default')}; {datetime.date.today().isoformat()}; {args.rounds} rounds, "
          f"medians; ratios are medians of the per-round ratios")
    print()
    print(f"{'command':<14}{'wall s':>9}{'cpu s':>9}{'peak MiB':>10}{'wall/lm':>9}{'wall/base':>11}{'cpu/lm':>8}"
          f"{'cpu/base':>10}{'peak/lm':>9}{'peak/base':>11}")
    for name in COMMANDS:
        print(f"{name:<14}{median(name, 'wall'):>9.2f}{median(name, 'cpu'):>9.2f}{median(name, 'peak_mib'):>10.0f}"
              + "".join(f"{paired(name, key, base):>{width}.3f}" for key, base, width in
                        (("wall", "forward-lm", 9), ("wall", "forward-base", 11), ("cpu", "forward-lm", 8),
                         ("cpu", "forward-base", 10), ("peak_mib", "forward-lm", 9),
                         ("peak_mib", "forward-base", 11))))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "positions": positions}, indent=2))
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
