"""Benchmark (not a test): one training step (forward + backward) of the study's wav2vec2-style
encoder with its default convolutional front end against the front end with 128 channels in
every convolution, the same 16 utterances of 3 s, side by side in one process, interleaved.

Why it exists: with 128 channels throughout, the front end works on [16, 128, 9600] tensors after
its first convolution; the copies around its layer norms, the GELU backward and the convolution
backward on them made the study's wav2vec2 warm-up 25 times slower per step than Whisper's.

    .venv/bin/python bench/bench_encoder_frontend.py [--rounds 3 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoConfig, AutoModel

from speechprune.study import StudyConfig


def step_seconds(model: torch.nn.Module, audio: torch.Tensor) -> float:
    started = time.perf_counter()
    model(audio).last_hidden_state.sum().backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    default = next(e.config for e in StudyConfig().encoders if e.config["model_type"] == "wav2vec2")
    wide = {**default, "conv_dim": [128] * (len(default["conv_dim"]) - 1) + [default["conv_dim"][-1]]}
    models = {}
    for name, settings in (("default", default), ("128 channels", wide)):
        settings = dict(settings)
        models[name] = AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings)).train()
    audio = torch.randn(16, 48000)
    for model in models.values():
        step_seconds(model, audio)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(step_seconds(model, audio))
    for name in models:
        print(f"{name:>13}: conv_dim {'default' if name == 'default' else wide['conv_dim']}, "
              f"median {statistics.median(times[name]):.2f} s per step")
    ratios = [w / d for w, d in zip(times["128 channels"], times["default"])]
    print(f"128 channels / default: median of per-round ratios {statistics.median(ratios):.2f}x "
          f"(threads {args.threads}, rounds {args.rounds})")


if __name__ == "__main__":
    main()
