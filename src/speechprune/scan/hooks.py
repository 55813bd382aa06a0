"""Forward hooks that capture the residual stream x_0 .. x_L of a decoder, selected positions only.

x_0 is the input of layer 0 (after any embedding scaling the base model applies, as Gemma's),
x_i (i >= 1) the output of layer i-1; x_L is the last layer's output BEFORE the final norm. The
states of the selected (non-pad) positions are copied into one buffer ``[L+1, N, H]`` that is
allocated once per batch and dropped after it: nothing is kept across batches.
"""

from __future__ import annotations

import torch
from torch import nn

from speechprune.model.decoder import decoder_layers


def _hidden(output):
    """A decoder layer returns a tensor (transformers 5.x) or a tuple whose [0] is the states."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "hidden_states", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"cannot find the hidden states in a decoder layer's output ({type(output).__name__})")


class StopForward(Exception):
    """Raised after the last layer's output is captured: the final norm and LM head are not needed."""


class LayerCapture:
    """Registers the hooks on enter, removes them on exit.

    Per batch: ``arm(flat_index)`` with the flat indices (into ``B*T``) of the positions to keep,
    run the forward, then ``take()`` returns the filled ``[L+1, N, H]`` buffer (model dtype, on
    ``device``, by default the device of layer 0's input). With ``stop=True`` the last layer's hook
    raises :class:`StopForward`, so the caller skips the final norm (and anything after it).
    """

    def __init__(self, causal_lm: nn.Module, device: torch.device | str | None = None, stop: bool = False):
        self.stop = stop
        self.layers = decoder_layers(causal_lm)
        self.num_layers = len(self.layers)
        self.device = torch.device(device) if device is not None else None
        self._handles: list = []
        self._index: torch.Tensor | None = None
        self._index_on: dict[torch.device, torch.Tensor] = {}
        self._buffer: torch.Tensor | None = None
        self._filled: list[bool] = []

    def __enter__(self) -> "LayerCapture":
        self._handles.append(self.layers[0].register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(self._make_hook(i + 1)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._buffer = None
        self._index = None

    def arm(self, flat_index: torch.Tensor) -> None:
        self._index = flat_index
        self._index_on = {}
        self._buffer = None
        self._filled = [False] * (self.num_layers + 1)

    def take(self) -> torch.Tensor:
        if self._buffer is None or not all(self._filled):
            missing = [i for i, done in enumerate(self._filled) if not done]
            raise RuntimeError(f"the forward did not pass through every decoder layer (no x_i for i in {missing})")
        buffer, self._buffer, self._index = self._buffer, None, None
        return buffer

    # hooks -------------------------------------------------------------------------------------
    def _pre_hook(self, module, args, kwargs):
        states = args[0] if args else kwargs["hidden_states"]
        self._store(0, states)

    def _make_hook(self, slot: int):
        def hook(module, args, output):
            self._store(slot, _hidden(output))
            if self.stop and slot == self.num_layers and self._index is not None:
                raise StopForward


        return hook

    def _store(self, slot: int, states: torch.Tensor) -> None:
        if self._index is None:
            return  # not armed: a forward that is not a scan step
        flat = states.reshape(-1, states.shape[-1])
        index = self._index_on.get(flat.device)
        if index is None:
            index = self._index_on[flat.device] = self._index.to(flat.device)
        if self._buffer is None:
            device = self.device if self.device is not None else flat.device
            self._buffer = torch.empty(self.num_layers + 1, index.numel(), flat.shape[-1],
                                       dtype=flat.dtype, device=device)
        target = self._buffer[slot]
        if target.device == flat.device and target.dtype == flat.dtype:
            torch.index_select(flat, 0, index, out=target)  # one pass, no temporary
        else:  # a layer on another device (device_map="auto")
            target.copy_(flat.index_select(0, index))
        self._filled[slot] = True
