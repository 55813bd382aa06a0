"""Benchmark (not a test): one joint training step of a SpeechLLM on a real decoder (SmolLM2-135M and
Gemma-3-270M from their GGUF wheels), in float32 and under bf16 autocast, interleaved in one
process, against the step's FLOP count.

The step is the recipe's joint stage (``configs/train-on-smollm2.yaml``): encoder and projector
trained in full, the decoder frozen with LoRA adapters (rank 16), next-token loss on the target
positions only, token CTC and character CTC. The FLOPs are counted by PyTorch's
``FlopCounterMode`` (matrix products and attention, forward and backward) on the same batch.
The losses of the two precisions come from the same weights and batch, so their difference is
what bf16 changes, nothing else.

    .venv/bin/python bench/bench_train_step.py --data runs/demo/corpus/asr-en.train.jsonl \
        [--decoders smollm2-135m gemma3-270m --batch 8 --rounds 3 --threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from speechprune.data.manifest import load_manifest
from speechprune.model.speechllm import DecoderConfig, ModelConfig, ProjectorConfig, SpeechLLM, decoder_texts
from speechprune.train import LoopConfig, LoraConfig, SpeechLLMTraining, StageConfig


def timed_step(training: SpeechLLMTraining, batch, stage: StageConfig, bf16: bool) -> tuple[float, dict]:
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses = training.losses(training.module, batch, stage)
    losses["total"].backward()
    seconds = time.perf_counter() - started
    training.module.zero_grad(set_to_none=True)
    return seconds, {name: float(value.detach()) for name, value in losses.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a training manifest of the offline corpus")
    parser.add_argument("--decoders", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stack", type=int, default=4)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="bf16 autocast is emulated (several times slower) on a CPU without AVX512-BF16 or AMX")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    utterances = load_manifest(args.data)[: args.batch]
    stage = StageConfig(steps=1, ctc_weight=0.3, token_ctc_weight=1.0, decoder="lora")
    loop = LoopConfig(batch_size=args.batch, lora=LoraConfig(rank=16, alpha=32))
    print(f"joint step, batch {args.batch}, projector stack {args.stack}, {args.threads} threads, "
          f"{args.rounds} rounds interleaved; median seconds per forward + backward")
    print(f"{'decoder':<14} {'GFLOP':>7} {'fp32 s':>7} {'bf16 s':>7} {'bf16/fp32':>9} "
          f"{'fp32 GFLOP/s':>12} {'bf16 GFLOP/s':>12} {'loss fp32':>10} {'loss bf16':>10} {'rel. diff':>9}")
    for name in args.decoders:
        torch.manual_seed(0)
        config = ModelConfig(decoder=DecoderConfig(pretrained=name), projector=ProjectorConfig(stack=args.stack))
        model = SpeechLLM.build(config, decoder_texts(config.prompts, utterances), [u.text for u in utterances])
        training = SpeechLLMTraining(model, utterances, loop)
        training.set_trainable(stage, loop.lora)
        model.train()
        batch = model.collate([training.speech_data[i] for i in range(len(utterances))])
        with FlopCounterMode(display=False) as counter:
            timed_step(training, batch, stage, bf16=False)
        gflop = counter.get_total_flops() / 1e9
        precisions = [precision == "bf16" for precision in args.precisions]
        seconds: dict[bool, list[float]] = {bf16: [] for bf16 in precisions}
        losses: dict[bool, dict] = {}
        for bf16 in precisions:  # warm-up
            timed_step(training, batch, stage, bf16)
        for _ in range(args.rounds):
            for bf16 in precisions:
                step, losses[bf16] = timed_step(training, batch, stage, bf16)
                seconds[bf16].append(step)
        median = {bf16: statistics.median(values) for bf16, values in seconds.items()}
        cells = [f"{median[bf16]:7.2f}" if bf16 in median else f"{'-':>7}" for bf16 in (False, True)]
        ratio = f"{median[True] / median[False]:9.2f}" if len(median) == 2 else f"{'-':>9}"
        rates = [f"{gflop / median[bf16]:12.1f}" if bf16 in median else f"{'-':>12}" for bf16 in (False, True)]
        loss = [f"{losses[bf16]['total']:10.4f}" if bf16 in losses else f"{'-':>10}" for bf16 in (False, True)]
        difference = (f"{abs(losses[True]['total'] - losses[False]['total']) / losses[False]['total']:9.1e}"
                      if len(losses) == 2 else f"{'-':>9}")
        print(f"{name:<14} {gflop:7.1f} {' '.join(cells)} {ratio} {' '.join(rates)} {' '.join(loss)} {difference}")
        print("  " + ", ".join(f"{key} " + " / ".join(f"{losses[bf16][key]:.4f}" for bf16 in losses)
                               for key in losses[precisions[0]] if key != "total"))


if __name__ == "__main__":
    main()
