"""One scan step over any Hugging Face causal LM: a no-grad forward of the base model (no LM head,
no final norm) on ``DecoderInputs``, hooks that capture x_0..x_L of the counted positions, and
the pairwise accumulator. The same code serves speech input, text input and plain LLMs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from speechprune.model.decoder import base_model, decoder_layers
from speechprune.model.layout import REGIONS, DecoderInputs
from speechprune.options.scan import INPUTS
from speechprune.scan.accumulate import PairwiseStats
from speechprune.scan.hooks import LayerCapture, StopForward


@dataclass
class ScanBatch:
    """One batch of utterances, as decoder inputs per input kind (rows = the same utterances)."""

    inputs: dict[str, DecoderInputs]
    utterances: list[int] = field(default_factory=list)  # global utterance index of each row


class Scanner:
    """Owns the hooks and one :class:`PairwiseStats` per input kind; use as a context manager.

    ``device``: where the captured states and the sums live (default: where layer 0's input is).
    """

    def __init__(self, causal_lm: torch.nn.Module, inputs: Sequence[str] = INPUTS,
                 regions: Sequence[str] = REGIONS, per_utterance: Sequence[str] = ("all", "last"),
                 device: torch.device | str | None = None, chunk_bytes: int = 16 << 20):
        self.model = causal_lm
        self.base = base_model(causal_lm)
        self.num_layers = len(decoder_layers(causal_lm))
        self.inputs = list(inputs)
        self.regions = list(regions)
        embeddings = causal_lm.get_input_embeddings().weight
        self.input_device, self.input_dtype = embeddings.device, embeddings.dtype
        self.stats = {name: PairwiseStats(self.num_layers, self.regions, per_utterance, chunk_bytes)
                      for name in self.inputs}
        self.capture = LayerCapture(causal_lm, device=device, stop=True)

    def __enter__(self) -> "Scanner":
        self.capture.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.capture.__exit__(*exc)

    @torch.no_grad()
    def step(self, batch: ScanBatch) -> None:
        for name, inputs in batch.inputs.items():
            if name not in self.stats:
                raise ValueError(f"this scanner accumulates inputs {self.inputs}, not {name!r}")
            self._forward(self.stats[name], inputs, batch.utterances)

    def _forward(self, stats: PairwiseStats, inputs: DecoderInputs, utterances: list[int]) -> None:
        batch, width = inputs.attention_mask.shape
        real = inputs.attention_mask.bool()
        masks = torch.stack([
            (inputs.regions[region].bool() & real) if region in inputs.regions
            else torch.zeros_like(real)
            for region in self.regions
        ]).reshape(len(self.regions), -1)  # [R, B*T]
        flat_index = masks.any(dim=0).nonzero().squeeze(1)
        if flat_index.numel() == 0:
            return
        self.capture.arm(flat_index)
        try:
            self.base(inputs_embeds=inputs.inputs_embeds.to(self.input_device, self.input_dtype),
                      attention_mask=inputs.attention_mask.to(self.input_device),
                      position_ids=inputs.position_ids.to(self.input_device),
                      use_cache=False)
        except StopForward:
            pass
        states = self.capture.take()
        rows = torch.div(flat_index, width, rounding_mode="floor")
        if utterances and len(utterances) != batch:
            raise ValueError(f"{len(utterances)} utterance indices for a batch of {batch} rows")
        index = torch.tensor(utterances if utterances else list(range(batch)), dtype=torch.int64)
        stats.add(states, masks[:, flat_index], rows, index)

    # checkpoint and reduction ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {name: stats.state_dict() for name, stats in self.stats.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, stats in self.stats.items():
            stats.load_state_dict(state[name])

    def all_reduce(self) -> None:
        for stats in self.stats.values():
            stats.all_reduce()
