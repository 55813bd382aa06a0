"""Benchmark (not a test): the token CTC over a decoder's whole vocabulary against the same loss
over the training corpus's tokens alone (``token_ctc_vocabulary: corpus``), on the real decoders'
own token embeddings (SmolLM2-135M: 49,152 x 576; Gemma-3-270M: 262,144 x 640), interleaved in
one process.

One call is the ``proj`` stage's work per step: the token CTC's forward and backward into the
projected speech (a batch of ``--batch`` utterances of the corpus, tokenised by the decoder's own
tokenizer, with ``--positions-per-token`` speech positions per token, as a stack-4 projector gives).

    .venv/bin/python bench/bench_token_ctc.py --data runs/demo/corpus/asr-en.train.jsonl \
        [--decoders smollm2-135m gemma3-270m --batch 16 --rounds 5 --threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from speechprune.data.manifest import load_manifests
from speechprune.model.gguf import decoder_checkpoint
from speechprune.model.speechllm import token_ctc


def token_embeddings(folder: Path) -> torch.Tensor:
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        name = next(key for key in weights.keys() if key.endswith("embed_tokens.weight"))
        return weights.get_tensor(name).float()


def timed(speech: list[torch.Tensor], *args) -> tuple[float, float]:
    started = time.perf_counter()
    loss = token_ctc(speech, *args)
    loss.backward()
    seconds = time.perf_counter() - started
    for s in speech:
        s.grad = None
    return seconds, float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="training manifest(s) of the offline corpus")
    parser.add_argument("--decoders", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--positions-per-token", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    utterances = load_manifests(args.data)
    print(f"token CTC forward + backward, batch {args.batch}, {args.positions_per_token} speech positions per "
          f"token, {args.threads} threads, {args.rounds} rounds interleaved; median seconds")
    print(f"{'decoder':<14} {'vocabulary':>10} {'corpus':>7} {'full s':>8} {'corpus s':>9} {'full/corpus':>11}")
    for name in args.decoders:
        folder = Path(decoder_checkpoint(name))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        embeddings = token_embeddings(folder)
        blank = tokenizer.pad_token_id
        sources = [torch.tensor(tokenizer(u.text, add_special_tokens=False)["input_ids"]) for u in utterances]
        vocabulary = torch.tensor(sorted({blank, *torch.cat(sources).tolist()}))
        batch = sources[: args.batch]
        generator = torch.Generator().manual_seed(0)
        speech = [torch.randn(int(len(ids) * args.positions_per_token) + 1, embeddings.shape[1], generator=generator,
                              requires_grad=True) for ids in batch]
        times: dict[str, list[float]] = {"full": [], "corpus": []}
        for _ in range(args.rounds):
            for kind, chosen in (("full", None), ("corpus", vocabulary)):
                times[kind].append(timed(speech, batch, embeddings, blank, chosen)[0])
        full, corpus = (statistics.median(times[k]) for k in ("full", "corpus"))
        print(f"{name:<14} {len(embeddings):>10,} {len(vocabulary):>7,} {full:>8.3f} {corpus:>9.3f} {full / corpus:>10.1f}x")


if __name__ == "__main__":
    main()
