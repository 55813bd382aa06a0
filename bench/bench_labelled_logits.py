"""Benchmark (not a test): one forward + backward of the next-token loss with logits at every
position against logits at the labelled positions only (``model.decoder.next_token_loss``), on a
decoder with SmolLM2-135M's width and vocabulary (hidden 576, 49,152 tokens, tied head) and only
two layers, 16 sequences of 80 positions with the last 20 labelled (a task sequence: speech and
prompt predict nothing), interleaved in one process.

Why it exists: the LM head of a large vocabulary costs more than a small decoder's layers, and
most positions of a SpeechLLM's task sequence carry no label.

    .venv/bin/python bench/bench_labelled_logits.py [--rounds 3 --threads 1 --layers 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from speechprune.model.decoder import next_token_loss
from speechprune.model.layout import IGNORE_INDEX, DecoderInputs


def step_seconds(loss_of) -> tuple[float, float]:
    started = time.perf_counter()
    loss = loss_of()
    loss.backward()
    return time.perf_counter() - started, float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=args.layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=256,
                         tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config).train()
    batch, length, labelled = 16, 80, 20
    labels = torch.full((batch, length), IGNORE_INDEX)
    labels[:, length - labelled:] = torch.randint(0, config.vocab_size, (batch, labelled))
    attention = torch.ones(batch, length, dtype=torch.long)
    inputs = DecoderInputs(torch.randn(batch, length, config.hidden_size), attention,
                           torch.arange(length).expand(batch, length), {}, labels)

    def every_position() -> torch.Tensor:
        logits = model(inputs_embeds=inputs.inputs_embeds, attention_mask=attention,
                       position_ids=inputs.position_ids, use_cache=False).logits
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                                 ignore_index=IGNORE_INDEX)

    runs = {"every position": every_position, "labelled only": lambda: next_token_loss(model, inputs)}
    for loss_of in runs.values():
        step_seconds(loss_of)  # warm-up
        model.zero_grad()
    times: dict[str, list[float]] = {name: [] for name in runs}
    losses: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, loss_of in runs.items():
            seconds, losses[name] = step_seconds(loss_of)
            times[name].append(seconds)
            model.zero_grad()
    for name in runs:
        print(f"{name:>14}: median {statistics.median(times[name]):.2f} s per step, loss {losses[name]:.6f}")
    ratios = [a / b for a, b in zip(times["every position"], times["labelled only"])]
    print(f"every position / labelled only: median of per-round ratios {statistics.median(ratios):.2f}x "
          f"(threads {args.threads}, rounds {args.rounds}, layers {args.layers})")


if __name__ == "__main__":
    main()
