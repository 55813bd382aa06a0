"""The bridge from encoder to decoder, as in SLAM-ASR: stack k consecutive encoder frames into
one vector, then Linear-ReLU-Linear (or a single Linear) into the decoder's embedding space.

It also owns the two learned marker embeddings ``<audio-start>`` and ``<audio-end>``, so that the
decoder's vocabulary and checkpoint stay untouched by speech.
"""

from __future__ import annotations

import torch
from torch import nn


class FrameStackProjector(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, stack: int = 5, kind: str = "mlp",
                 hidden_dim: int = 2048, marker_std: float = 0.02):
        super().__init__()
        if stack < 1:
            raise ValueError("stack must be >= 1")
        self.stack = stack
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(input_dim * stack, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, output_dim))
        elif kind == "linear":
            self.net = nn.Linear(input_dim * stack, output_dim)
        else:
            raise ValueError(f"projector kind must be 'mlp' or 'linear', not {kind!r}")
        self.markers = nn.Parameter(torch.randn(2, output_dim) * marker_std)  # <audio-start>, <audio-end>

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return (lengths + self.stack - 1) // self.stack

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, D] encoder states -> [B, ceil(T/k), H]; frames past each real length are zeroed
        first, so a stacked vector never mixes in padding beyond what the utterance's last
        partial stack is padded with (zeros, whatever the batch)."""
        batch, frames, dim = hidden.shape
        real = torch.arange(frames, device=hidden.device)[None, :] < lengths[:, None]
        hidden = hidden * real[..., None].to(hidden.dtype)
        pad = (-frames) % self.stack
        if pad:
            hidden = nn.functional.pad(hidden, (0, 0, 0, pad))
        stacked = hidden.reshape(batch, (frames + pad) // self.stack, dim * self.stack)
        return self.net(stacked), self.output_lengths(lengths)
