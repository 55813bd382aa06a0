"""Scores for greedy-score pruning computed on cached decoder inputs.

The speech encoder and projector are never touched by layer removal, so their outputs (already
assembled into :class:`~speechprune.model.layout.DecoderInputs`) are computed once and reused for
every candidate: no re-encoding of audio.

Within a greedy round the residual stream entering kept layer i is the same for every candidate
removed after it, so :meth:`LossScore.removal_scores` computes the current model's states once per
batch and scores the candidate that removes kept layer i by running only the kept layers after i
from x_i (through the model's own forward: the same masks, positions, final norm, LM head and
loss as a full forward). The round's first forward is itself a candidate's full forward: the
current model without its last kept layer, whose layer inputs are the states x_0 .. x_{L'-2}. With
L' layers kept, a round costs (L'-1) + (L'-1)L'/2 layer forwards instead of L'(L'-1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from speechprune.model.decoder import decoder_layers
from speechprune.model.layout import IGNORE_INDEX, DecoderInputs
from speechprune.prune.surgery import skip_layers
from speechprune.scan.result import ScanResult


def _layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder layer receives (first positional argument or ``hidden_states``)."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise TypeError("cannot find the hidden states among a decoder layer's inputs")
    return hidden


def _batch_loss(causal_lm: Any, batch: DecoderInputs) -> tuple[torch.Tensor, int]:
    """Float64 sum (on CPU) and count of the target cross-entropy of one batch, one causal-LM forward."""
    logits = causal_lm(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).logits
    labelled = batch.labels != IGNORE_INDEX
    losses = F.cross_entropy(logits[labelled].float(), batch.labels[labelled], reduction="none")
    return losses.double().sum().cpu(), int(labelled.sum())


class LossScore:
    """The token-weighted mean cross-entropy of the labelled (target) positions over all ``batches``
    (float64 sum and count, reduced once). Lower is better.

    - ``score(causal_lm) -> float``: the model as it is, full forwards (the reference);
    - ``score.removal_scores(causal_lm, removed, candidates) -> {candidate: float}``: for each
      candidate c, the score of the model without ``removed`` and c (original indices), with the
      prefix reused; the same batches, reduction and summation order as the full forward.
    """

    def __init__(self, batches: Sequence[DecoderInputs]):
        self.batches = list(batches)
        if not self.batches:
            raise ValueError("loss_score needs at least one calibration batch")

    @staticmethod
    def _mean(total: torch.Tensor, count: int) -> float:
        if count == 0:
            raise ValueError("loss_score: the calibration batches have no labelled position")
        return float(total / count)

    @torch.no_grad()
    def __call__(self, causal_lm: Any) -> float:
        device = next(causal_lm.parameters()).device
        total = torch.zeros((), dtype=torch.float64)
        count = 0
        for batch in self.batches:
            part, n = _batch_loss(causal_lm, batch.to(device))
            total += part
            count += n
        return self._mean(total, count)

    @torch.no_grad()
    def removal_scores(self, causal_lm: Any, removed: Sequence[int], candidates: Sequence[int]) -> dict[int, float]:
        num_layers = len(decoder_layers(causal_lm))
        gone = set(removed)
        kept = [i for i in range(num_layers) if i not in gone]
        if set(candidates) - set(kept):
            raise ValueError(f"candidates {sorted(set(candidates) - set(kept))} are not kept layers")
        if len(kept) < 2:
            raise ValueError("removal_scores needs at least two kept layers (one must stay)")
        position = {layer: i for i, layer in enumerate(kept)}
        device = next(causal_lm.parameters()).device
        totals = {c: torch.zeros((), dtype=torch.float64) for c in candidates}
        counts = {c: 0 for c in candidates}
        for batch in self.batches:
            batch = batch.to(device)
            for candidate, (part, n) in self._batch_removals(causal_lm, kept, position, candidates, batch).items():
                totals[candidate] += part
                counts[candidate] += n
        return {c: self._mean(totals[c], counts[c]) for c in candidates}

    def _batch_removals(self, causal_lm: Any, kept: list[int], position: dict[int, int],
                        candidates: Sequence[int], batch: DecoderInputs) -> dict[int, tuple[torch.Tensor, int]]:
        """One batch: the full forward without the last kept layer (a candidate's own score, and the
        inputs x_0 .. x_{L'-2} of the other kept layers), then each other candidate's tail."""
        last = kept[-1]
        states: list[torch.Tensor] = []
        with skip_layers(causal_lm, [i for i in range(len(decoder_layers(causal_lm))) if i not in kept] + [last]):
            handles = [layer.register_forward_pre_hook(
                lambda module, args, kwargs: states.append(_layer_input(args, kwargs)), with_kwargs=True)
                for layer in decoder_layers(causal_lm)]
            try:
                without_last = _batch_loss(causal_lm, batch)
            finally:
                for handle in handles:
                    handle.remove()
        if len(states) != len(kept) - 1:
            raise RuntimeError(f"the forward passed through {len(states)} of {len(kept) - 1} decoder layers")
        out = {}
        for candidate in candidates:
            if candidate == last:
                out[candidate] = without_last
            else:
                out[candidate] = _tail_loss(causal_lm, kept, position[candidate], states[position[candidate]], batch)
        return out


def _tail_loss(causal_lm: Any, kept: list[int], index: int, state: torch.Tensor,
               batch: DecoderInputs) -> tuple[torch.Tensor, int]:
    """The batch loss of the model keeping only ``kept[index + 1:]``, entered with ``state`` (the
    stream that enters kept layer ``index``) in place of the embeddings' path through the prefix."""
    tail = kept[index + 1:]
    skip = [i for i in range(len(decoder_layers(causal_lm))) if i not in set(tail)]

    def enter(module, args, kwargs):
        if _layer_input(args, kwargs).shape != state.shape:
            raise RuntimeError("the tail's first layer received states of an unexpected shape")
        if args:
            return (state, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": state}

    with skip_layers(causal_lm, skip):
        handle = decoder_layers(causal_lm)[0].register_forward_pre_hook(enter, with_kwargs=True)
        try:
            return _batch_loss(causal_lm, batch)
        finally:
            handle.remove()


def loss_score(batches: Sequence[DecoderInputs]) -> LossScore:
    """A :class:`LossScore` over ``batches``: ``score(causal_lm) -> float``, lower is better."""
    return LossScore(batches)


def scan_rescan(batches: Sequence[DecoderInputs], input_name: str, regions: Sequence[str] = ("all",)
                ) -> Callable[[Any], ScanResult]:
    """A ``rescan(causal_lm) -> ScanResult`` for the iterative strategy: one scan pass
    (:class:`~speechprune.scan.scanner.Scanner`) over the cached ``batches`` of the model as it is
    now (pruned so far), reported under ``inputs.<input_name>``."""
    from speechprune.scan.run import build_result
    from speechprune.scan.scanner import ScanBatch, Scanner

    batches = list(batches)

    def rescan(causal_lm: Any) -> ScanResult:
        with Scanner(causal_lm, inputs=[input_name], regions=list(regions), per_utterance=()) as scanner:
            for batch in batches:
                scanner.step(ScanBatch({input_name: batch}))
        return build_result(scanner, model={}, data={}, settings={"regions": list(regions)}, bootstrap=0)

    return rescan


@torch.no_grad()
def calibration_batches(model: Any, data: str, input_name: str, batch_size: int = 8, max_utterances: int = 0,
                        layout: str = "auto", text_column: str | None = None, split: str | None = None
                        ) -> list[DecoderInputs]:
    """``data`` (a manifest, or for text input a .txt file or a text dataset) as decoder inputs of
    ``model`` (a :class:`~speechprune.model.interface.LoadedModel`), computed once: a speech encoder
    runs here and never again. Text input is laid out as ``layout`` (auto: the model's default,
    plain for a plain causal LM, task for a speech model)."""
    from speechprune.data.sources import load_data, require_audio
    from speechprune.errors import UserError

    utterances = load_data(data, text_column, split)
    if max_utterances:
        utterances = utterances[:max_utterances]
    if not utterances:
        raise UserError(f"--data {data}: no utterances")
    model.check_source(input_name)
    layout = model.resolve_layout(layout)
    if input_name == "speech":
        require_audio(utterances, data, "--input speech")
        if layout == "plain":
            raise UserError("--layout plain is a text layout; speech input has the model's own: use --input text")
    return [model.decoder_inputs(utterances[start: start + batch_size], source=input_name, layout=layout)
            for start in range(0, len(utterances), batch_size)]


def cached_decoder_inputs(model_dir: str, data: str, input_name: str, batch_size: int = 8,
                          max_utterances: int = 0, device: str = "cpu", layout: str = "auto"
                          ) -> tuple[Any, list[DecoderInputs]]:
    """Load ``model_dir`` (any kind :func:`~speechprune.model.interface.load_model` opens) and turn
    ``data`` into decoder inputs once (see :func:`calibration_batches`). Returns the causal LM and
    the cached batches."""
    from speechprune.model.interface import load_model

    model = load_model(model_dir, device=device)
    return model.causal_lm, calibration_batches(model, data, input_name, batch_size, max_utterances, layout)
