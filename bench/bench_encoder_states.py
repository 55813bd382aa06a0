"""Benchmark of the study's shared encoder states (not a test): how many recordings a study's
SpeechLLM trainings encode with their frozen pretrained encoder, three ways, and what that costs.

- per line: each training caches the states of each manifest line (an ASR and an ST line of one
  recording are encoded twice), in its own cache;
- per recording: each training caches each audio file once, in its own cache;
- shared (what the study does): one cache per encoder for the whole study's process, so each
  recording is encoded once for every condition that reads it.

The counts come from the study's plan (``study.conditions``) and its corpus's training manifests;
the seconds from timing the encoder (features and forward, batches of ``--batch-size``, without
gradient) on ``--sample`` of those recordings, each way multiplied out from that per-recording time.

    .venv/bin/python bench/bench_encoder_states.py --config study-real --corpus runs/study-real/corpus
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from speechprune.config import build_config, config_path
from speechprune.data.audio import load_audio
from speechprune.data.manifest import load_manifests
from speechprune.model.encoders import load_encoder
from speechprune.options.study import StudyConfig
from speechprune.options.train import LoopConfig
from speechprune.study import conditions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a study config (a file or a shipped name: study-real)")
    parser.add_argument("--corpus", required=True, help="that study's corpus folder (OUT/corpus)")
    parser.add_argument("--sample", type=int, default=256, help="recordings timed through the encoder")
    parser.add_argument("--batch-size", type=int, default=16, help="as the proj stage's batch")
    args = parser.parse_args()

    config = build_config(StudyConfig, [], str(config_path(args.config)))
    max_seconds = LoopConfig().max_seconds
    for encoder in [e for e in config.encoders if e.pretrained]:
        planned = [c for c in conditions(config) if c.encoder == encoder.name]
        lines_of, recordings_of = [], []  # each training's lines, and its recordings
        for condition in planned:
            lines = load_manifests([f"{args.corpus}/{task}.train.jsonl" for task in condition.tasks], check_audio=False)
            lines_of.append(len(lines))
            recordings_of.append({u.audio for u in lines})
        union = set().union(*recordings_of)
        model = load_encoder(encoder.pretrained).eval()
        sample = random.Random(0).sample(sorted(union), min(args.sample, len(union)))
        started, state_bytes = time.perf_counter(), 0
        with torch.no_grad():
            for start in range(0, len(sample), args.batch_size):
                features = [model.featurize(load_audio(path, max_seconds=max_seconds))
                            for path in sample[start: start + args.batch_size]]
                states, lengths = model(**model.collate(features))
                state_bytes += int(lengths.sum()) * states.shape[-1] * states.element_size()
        each = (time.perf_counter() - started) / len(sample)
        print(f"{encoder.name} ({encoder.pretrained}): {len(planned)} conditions; {each * 1000:.1f} ms a recording "
              f"(features and encoder, {len(sample)} timed, batches of {args.batch_size}, "
              f"{torch.get_num_threads()} threads); states {state_bytes / len(sample) / 1024:.0f} KB a recording")
        print("| cache | recordings encoded | seconds (estimated) | states held at most |")
        print("|---|---|---|---|")
        largest = max(map(len, recordings_of))
        for name, count, held in (("per line, one per training", sum(lines_of), max(lines_of)),
                                  ("per recording, one per training", sum(map(len, recordings_of)), largest),
                                  ("shared by the study's conditions", len(union), len(union))):
            print(f"| {name} | {count:,} | {count * each:,.0f} | {held * state_bytes / len(sample) / 2**30:.2f} GiB |")


if __name__ == "__main__":
    main()
