"""The decoder's input sequence and its region masks.

Two layouts. ``task``, the model's own task sequence; a SpeechLLM's is below (the speech segment
may be replaced by the source text's token embeddings when a scan asks for text input; a plain
causal LM's has no audio markers; a Hugging Face speech-LLM's is its rendered chat):

    <audio-start> speech <audio-end> prompt <bos> target <eos>

``plain`` (:func:`plain_layout`): the text alone, framed as its tokenizer frames it (e.g. with
``<bos>`` when the tokenizer adds one); what a user scanning an LLM on text expects. It has only
the regions ``all`` and ``last``; every position predicts the next token (a language model's loss).

Regions (boolean masks over positions; padding is in none of them):
- ``speech``: the projected encoder positions (or the source-text positions that stand in
  for them); encoder padding never reaches the decoder, it is cut by the real length first.
- ``prompt``: the instruction tokens.
- ``target``: the teacher-forced output tokens, ``<eos>`` included.
- ``last``: the final non-pad position.
- ``all``: every non-pad position (markers and ``<bos>`` included).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from speechprune.options.model import LAYOUT_REGIONS, LAYOUTS, REGIONS  # noqa: F401  (re-exported)

IGNORE_INDEX = -100


@dataclass
class Segment:
    """A run of positions: embeddings, the token ids behind them (None for speech), the region."""

    embeds: torch.Tensor  # [n, H]
    region: str | None  # one of "speech", "prompt", "target", or None (markers, <bos>)
    token_ids: torch.Tensor | None = None  # [n] long, for text segments


@dataclass
class DecoderInputs:
    """Everything a decoder forward (training, decoding, scanning) needs for one batch."""

    inputs_embeds: torch.Tensor  # [B, T, H]
    attention_mask: torch.Tensor  # [B, T] long, 1 = real position
    position_ids: torch.Tensor  # [B, T] long, counts real positions only (padding-side invariant)
    regions: dict[str, torch.Tensor]  # name -> [B, T] bool
    labels: torch.Tensor  # [B, T] long, next-token targets, IGNORE_INDEX where nothing is predicted
    utterance_ids: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "DecoderInputs":
        return DecoderInputs(
            self.inputs_embeds.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            {name: mask.to(device) for name, mask in self.regions.items()},
            self.labels.to(device),
            self.utterance_ids,
        )


def assemble(utterances: list[list[Segment]], padding_side: str = "right",
             utterance_ids: list[str] | None = None, layout: str = "task") -> DecoderInputs:
    """Concatenate each utterance's segments, pad the batch, and build masks and labels.

    Labels: position p predicts the token at p+1 when that token belongs to the ``target``
    region, so the loss covers the target tokens and ``<eos>``, and nothing else; in the ``plain``
    layout every token after the first is predicted. ``regions`` holds the layout's regions.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    lengths = [sum(seg.embeds.shape[0] for seg in segs) for segs in utterances]
    batch, width = len(utterances), max(lengths)
    first = utterances[0][0].embeds
    hidden = first.shape[-1]
    embeds = first.new_zeros(batch, width, hidden)
    attention = torch.zeros(batch, width, dtype=torch.long)
    regions = {name: torch.zeros(batch, width, dtype=torch.bool) for name in REGIONS}
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    for row, segs in enumerate(utterances):
        offset = width - lengths[row] if padding_side == "left" else 0
        ids = torch.full((lengths[row],), IGNORE_INDEX, dtype=torch.long)
        in_target = torch.zeros(lengths[row], dtype=torch.bool)
        cursor = 0
        for seg in segs:
            n = seg.embeds.shape[0]
            embeds[row, offset + cursor: offset + cursor + n] = seg.embeds
            if seg.region is not None:
                regions[seg.region][row, offset + cursor: offset + cursor + n] = True
            if seg.token_ids is not None:
                ids[cursor: cursor + n] = seg.token_ids
            if seg.region == "target" or layout == "plain":
                in_target[cursor: cursor + n] = True
            cursor += n
        attention[row, offset: offset + lengths[row]] = 1
        regions["all"][row, offset: offset + lengths[row]] = True
        regions["last"][row, offset + lengths[row] - 1] = True
        shifted = torch.where(in_target[1:], ids[1:], torch.full_like(ids[1:], IGNORE_INDEX))
        labels[row, offset: offset + lengths[row] - 1] = shifted
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
    regions = {name: regions[name] for name in LAYOUT_REGIONS[layout]}
    return DecoderInputs(embeds, attention, position_ids, regions, labels, list(utterance_ids or []))


def resolve_layout(layout: str, default: str) -> str:
    """``auto`` -> the model's ``default`` (``task`` for a speech model's own sequence, ``plain``
    for a plain causal LM); ``task`` and ``plain`` as they are."""
    if layout == "auto":
        layout = default
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be auto or one of {LAYOUTS}, not {layout!r}")
    return layout


def plain_layout(tokenizer, embeddings: torch.nn.Module, texts: list[str], padding_side: str = "right",
                 utterance_ids: list[str] | None = None) -> DecoderInputs:
    """The ``plain`` layout of a batch of texts: each tokenized as the tokenizer frames it
    (``tokenizer(text)``, special tokens included), embedded by the decoder's ``embeddings``."""
    token_ids = tokenizer(list(texts))["input_ids"]
    empty = [text for text, ids in zip(texts, token_ids) if not ids]
    if empty:
        raise ValueError(f"the tokenizer turns {empty[0]!r} into no tokens")
    device = embeddings.weight.device
    return assemble([[Segment(embeddings(torch.tensor(ids, device=device)), None, torch.tensor(ids))]
                     for ids in token_ids], padding_side, utterance_ids, layout="plain")
