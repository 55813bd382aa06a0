"""The one layer surgery of any Hugging Face causal LM: remove decoder layers in place
(:func:`remove_layers`), or switch them off reversibly without copying anything (:func:`skip_layers`).

Both go through the same routine, which keeps a pruned model a standard checkpoint:
- the layer ``ModuleList`` is rebuilt from the kept layers (the same module objects, no copies);
- every ``layer_idx`` attribute inside a kept layer (the layer's own, its attention's, ...) is
  renumbered to the layer's new position; a stale one makes cached generation read and write the
  wrong KV-cache slot (IndexError once it exceeds the new layer count);
- in the decoder's config (``text_config`` of a multimodal wrapper alike): ``num_hidden_layers``
  (not updated, a reload silently re-creates the removed layers with random weights), every
  per-layer list (``layer_types`` and any other list with one entry per layer; not updated,
  ``save_pretrained`` raises), per-layer index lists (``mlp_only_layers``), per-layer thresholds
  (``max_window_layers``, ``first_k_dense_replace``: recomputed so that every kept layer keeps its
  kind), and heterogeneous ``per_layer_config`` overrides are renumbered.

Indices are 0-based and refer to the layers as they are when the function is called.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import nn

from speechprune.errors import UserError
from speechprune.model.decoder import base_model, decoder_layers, text_config

INDEX_CONVENTION = (
    "Layer indices are 0-based and refer to the original decoder; a block or kept range "
    "[start, end) is end-exclusive."
)

# Per-layer integer thresholds "layers with index < t are of one kind, the others of another".
THRESHOLDS = ("max_window_layers", "first_k_dense_replace")
# Lists of layer indices (not one entry per layer): kept entries are renumbered, removed ones dropped.
INDEX_LISTS = ("mlp_only_layers",)
# Config lists that may by chance have one entry per layer but are not per-layer.
_NOT_PER_LAYER = re.compile(r"token|architectures|suppress|label|_ids?$|^id2|vocab|task")


def validate_indices(remove: Sequence[int], num_layers: int, what: str = "layers to remove") -> list[int]:
    """The indices to remove, sorted; UserError on a non-integer, an out-of-range or repeated index,
    or when nothing would be left."""
    indices = []
    for index in remove:
        if isinstance(index, bool) or not isinstance(index, int):
            try:
                as_int = int(index)
            except (TypeError, ValueError):
                raise UserError(f"{what}: {index!r} is not a layer index") from None
            if as_int != index:
                raise UserError(f"{what}: {index!r} is not a layer index")
            index = as_int
        if not 0 <= index < num_layers:
            raise UserError(f"{what}: layer {index} is out of range; the decoder has layers 0..{num_layers - 1}")
        indices.append(index)
    duplicates = sorted({i for i in indices if indices.count(i) > 1})
    if duplicates:
        raise UserError(f"{what}: layer(s) {duplicates} named more than once")
    if len(indices) >= num_layers:
        raise UserError(f"{what}: cannot remove all {num_layers} decoder layers; at least one must stay")
    return sorted(indices)


def kept_ranges(kept: Sequence[int]) -> list[list[int]]:
    """Maximal runs of consecutive kept indices as [start, end) lists (end-exclusive)."""
    ranges: list[list[int]] = []
    for index in kept:
        if ranges and ranges[-1][1] == index:
            ranges[-1][1] = index + 1
        else:
            ranges.append([index, index + 1])
    return ranges


def receiving_layers(kept: Sequence[int], num_layers: int) -> list[int]:
    """For each removed block, the index IN THE PRUNED MODEL of the kept layer that now receives the
    block's input (the first kept layer after it; none for a block that ends the decoder)."""
    removed = [i for i in range(num_layers) if i not in set(kept)]
    position = {old: new for new, old in enumerate(kept)}
    return [position[end] for _, end in kept_ranges(removed) if end < num_layers]


def remove_layers(causal_lm: Any, remove: Sequence[int]) -> list[int]:
    """Remove the decoder layers ``remove`` in place; return the kept (pre-surgery) indices.

    The result is a standard model of its class: it saves with ``save_pretrained`` and reloads
    with plain ``AutoModelForCausalLM.from_pretrained``. An empty ``remove`` changes nothing.
    """
    kept = _kept(causal_lm, remove)
    if len(kept) < len(decoder_layers(causal_lm)):
        _apply(causal_lm, kept)
    return kept


@contextlib.contextmanager
def skip_layers(causal_lm: Any, skip: Sequence[int]) -> Iterator[list[int]]:
    """Within the ``with`` block the model runs without the layers ``skip``: the same surgery as
    :func:`remove_layers`, on the same module objects (no copy, no weight moves), undone on exit
    even after an exception. Yields the kept indices."""
    kept = _kept(causal_lm, skip)
    undo = _apply(causal_lm, kept) if len(kept) < len(decoder_layers(causal_lm)) else (lambda: None)
    try:
        yield kept
    finally:
        undo()


def _kept(causal_lm: Any, remove: Sequence[int]) -> list[int]:
    num_layers = len(decoder_layers(causal_lm))
    declared = getattr(text_config(causal_lm), "num_hidden_layers", num_layers)
    if declared != num_layers:
        raise UserError(
            f"{type(causal_lm).__name__}: its config says {declared} layers but the decoder holds "
            f"{num_layers}; refusing to prune an inconsistent model"
        )
    removed = set(validate_indices(list(remove), num_layers))
    return [i for i in range(num_layers) if i not in removed]


def _apply(causal_lm: Any, kept: list[int]) -> Callable[[], None]:
    """Keep only the layers ``kept`` (sorted pre-surgery indices); return a function that undoes it."""
    base = base_model(causal_lm)
    old_layers = base.layers
    num_layers = len(old_layers)
    undo: list[Callable[[], None]] = []

    base.layers = nn.ModuleList([old_layers[i] for i in kept])
    undo.append(lambda: setattr(base, "layers", old_layers))

    for new_index, old_index in enumerate(kept):
        for module in old_layers[old_index].modules():
            value = module.__dict__.get("layer_idx")
            if isinstance(value, int) and not isinstance(value, bool):
                module.layer_idx = new_index
                undo.append(lambda module=module, value=value: setattr(module, "layer_idx", value))

    config = text_config(causal_lm)
    undo.extend(_update_config(config, kept, num_layers))

    # Model-level facts derived from the layer types at construction time.
    if isinstance(getattr(base, "has_sliding_layers", None), bool) and getattr(config, "layer_types", None) is not None:
        previous = base.has_sliding_layers
        base.has_sliding_layers = "sliding_attention" in config.layer_types
        undo.append(lambda: setattr(base, "has_sliding_layers", previous))

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


def _set(obj: Any, name: str, value: Any, undo: list[Callable[[], None]]) -> None:
    previous = getattr(obj, name)
    setattr(obj, name, value)
    undo.append(lambda: setattr(obj, name, previous))


def _update_config(config: Any, kept: list[int], num_layers: int) -> list[Callable[[], None]]:
    """Make ``config`` describe the kept layers; return the undo steps."""
    undo: list[Callable[[], None]] = []
    spec = config.__dict__.get("_heterogeneity_spec")
    per_layer_attrs = set(getattr(spec, "per_layer_attributes", ()) or ())
    for name, value in list(config.__dict__.items()):
        if name.startswith("_") or name in per_layer_attrs:
            continue
        if name in THRESHOLDS and isinstance(value, int) and not isinstance(value, bool):
            _set(config, name, sum(1 for i in kept if i < value), undo)
        elif name in INDEX_LISTS and isinstance(value, (list, tuple)):
            position = {old: new for new, old in enumerate(kept)}
            _set(config, name, type(value)(position[i] for i in value if i in position), undo)
        elif (isinstance(value, (list, tuple)) and len(value) == num_layers
              and not _NOT_PER_LAYER.search(name)):
            try:
                _set(config, name, type(value)(value[i] for i in kept), undo)
            except AttributeError:  # a read-only property derived from other fields
                pass
    if spec is not None:
        position = {old: new for new, old in enumerate(kept)}
        overrides = spec.per_layer_overrides
        spec.per_layer_overrides = {position[i]: v for i, v in overrides.items() if i in position}
        undo.append(lambda: setattr(spec, "per_layer_overrides", overrides))
    _set(config, "num_hidden_layers", len(kept), undo)
    return undo
