"""Scores for greedy-score pruning computed on cached decoder inputs.

The speech encoder and projector are never touched by layer removal, so their outputs (already
assembled into :class:`~speechprune.model.layout.DecoderInputs`) are computed once and reused for
every candidate: a candidate costs one decoder forward per batch, no re-encoding of audio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from speechprune.model.layout import IGNORE_INDEX, DecoderInputs


def loss_score(batches: Sequence[DecoderInputs]) -> Callable[[Any], float]:
    """A ``score(causal_lm) -> float``: the token-weighted mean cross-entropy of the labelled
    (target) positions over all ``batches`` (float64 sum and count, reduced once). Lower is better."""
    batches = list(batches)
    if not batches:
        raise ValueError("loss_score needs at least one calibration batch")

    @torch.no_grad()
    def score(causal_lm: Any) -> float:
        device = next(causal_lm.parameters()).device
        total = torch.zeros((), dtype=torch.float64)
        count = 0
        for batch in batches:
            batch = batch.to(device)
            logits = causal_lm(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            ).logits
            labelled = batch.labels != IGNORE_INDEX
            losses = F.cross_entropy(logits[labelled].float(), batch.labels[labelled], reduction="none")
            total += losses.double().sum().cpu()
            count += int(labelled.sum())
        if count == 0:
            raise ValueError("loss_score: the calibration batches have no labelled position")
        return float(total / count)

    return score


def scan_rescan(batches: Sequence[DecoderInputs], input_name: str, regions: Sequence[str] = ("all",)
                ) -> Callable[[Any], dict]:
    """A ``rescan(causal_lm) -> scan dict`` for the iterative strategy: one scan pass
    (:class:`~speechprune.scan.scanner.Scanner`) over the cached ``batches`` of the model as it is
    now (pruned so far), reported under ``inputs.<input_name>``."""
    from speechprune.scan.run import build_payload
    from speechprune.scan.scanner import ScanBatch, Scanner

    batches = list(batches)

    def rescan(causal_lm: Any) -> dict:
        with Scanner(causal_lm, inputs=[input_name], regions=list(regions), per_utterance=()) as scanner:
            for batch in batches:
                scanner.step(ScanBatch({input_name: batch}))
        return build_payload(scanner, model={}, data={}, settings={"regions": list(regions)}, bootstrap=0)

    return rescan


@torch.no_grad()
def calibration_batches(model: Any, manifest: str, input_name: str, batch_size: int = 8,
                        max_utterances: int = 0) -> list[DecoderInputs]:
    """``manifest`` as decoder inputs of ``model`` (a :class:`~speechprune.model.interface.LoadedModel`),
    computed once: a speech encoder runs here and never again."""
    from speechprune.data.manifest import load_manifest
    from speechprune.errors import UserError

    utterances = list(load_manifest(manifest))
    if max_utterances:
        utterances = utterances[:max_utterances]
    if not utterances:
        raise UserError(f"--data {manifest}: no utterances")
    model.check_source(input_name)
    return [model.decoder_inputs(utterances[start: start + batch_size], source=input_name)
            for start in range(0, len(utterances), batch_size)]


def cached_decoder_inputs(model_dir: str, manifest: str, input_name: str, batch_size: int = 8,
                          max_utterances: int = 0, device: str = "cpu") -> tuple[Any, list[DecoderInputs]]:
    """Load ``model_dir`` (any kind :func:`~speechprune.model.interface.load_model` opens) and turn
    ``manifest`` into decoder inputs once. Returns the causal LM and the cached batches."""
    from speechprune.model.interface import load_model

    model = load_model(model_dir, device=device)
    return model.causal_lm, calibration_batches(model, manifest, input_name, batch_size, max_utterances)
