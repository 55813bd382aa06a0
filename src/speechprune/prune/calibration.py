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
