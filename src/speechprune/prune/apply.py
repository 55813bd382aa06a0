"""The one pruning path: refuse what cannot be pruned, choose the layers, cut them out with the one
surgery, and return the record of it (:func:`prune_model`). ``speechprune prune`` exports what it
returns as ``pruning.json``; every sweep cell prunes its model with it, so a sweep cell is exactly
the model that ``prune`` makes from the same scan, with the same refusals.

A request is a :class:`Selection`: an explicit ``drop`` list, or ``count`` / ``fraction`` layers chosen
by a strategy. Scan-based strategies read the scan dict it carries; model-based ones (iterative,
greedy-score) measure the model with a :class:`Measurement` that the caller prepares (``prune``
builds it from ``--data``, or takes Python callables).

Refusals, in this order: an architecture whose layers cannot be removed safely; a ``drop`` that is
out of range or would remove every layer; a scan made on another model; a count out of range or
a strategy the scan cannot serve (from :mod:`~speechprune.prune.strategies`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechprune.config import require
from speechprune.console import Progress
from speechprune.errors import UserError
from speechprune.model.decoder import decoder_layers, text_config
from speechprune.options.prune import drop_layers
from speechprune.prune import strategies
from speechprune.prune.surgery import (
    INDEX_CONVENTION,
    kept_ranges,
    receiving_layers,
    remove_layers,
    validate_indices,
)
from speechprune.scan.result import SCAN_FILE, ScanResult

DROP = "drop"  # the strategy recorded for an explicit --drop list


@dataclass(frozen=True)
class Selection:
    """Which decoder layers to remove: ``drop`` (0-based, end-exclusive ``START:END`` blocks, e.g.
    ``"10:14,20:22"``), or exactly one of ``count`` / ``fraction`` (n = floor(fraction*L + 0.5), at
    most L-1) chosen by ``strategy``. ``scan`` is the scan result (or the dict of ``scan.json``) and ``scan_path`` where it
    came from (the directory or the file, as the user named it); a given scan is always checked
    against the model, and angular and bi choose from it by ``input`` and ``region``."""

    strategy: str = "angular"
    drop: str = ""
    count: int | None = None
    fraction: float | None = None
    scan: ScanResult | dict | None = None
    scan_path: str = ""
    input: str = strategies.DEFAULT_INPUT
    region: str = strategies.DEFAULT_REGION

    def __post_init__(self) -> None:
        require(not self.drop or (self.count is None and self.fraction is None),
                "a selection takes drop, or count / fraction with a strategy; not both")
        if not self.drop:
            require((self.count is None) != (self.fraction is None),
                    "a selection takes drop, or exactly one of count / fraction with a strategy")
            require(self.strategy in strategies.STRATEGIES,
                    f"strategy {self.strategy!r} is not one of {', '.join(strategies.STRATEGIES)}")
            require(self.scan is not None or self.strategy not in ("angular", "bi"),
                    f"strategy {self.strategy} chooses from a scan: give its scan")


@dataclass
class Measurement:
    """How a model-based strategy measures the model: ``measure(causal_lm)`` returns a scan dict of
    the model as it is (iterative) or a score, lower is better (greedy-score); ``record`` says what it
    was measured on (it goes into the pruning record)."""

    measure: Callable[[Any], Any]
    record: dict[str, Any] = field(default_factory=dict)


def scan_file(scan: str | Path) -> Path:
    """``scan.json`` of a scan directory, or the file itself."""
    path = Path(scan)
    return path / SCAN_FILE if path.is_dir() else path


def read_scan(scan: str) -> ScanResult:
    """The scan result in the directory ``scan`` (or that scan.json); UserError if absent or invalid."""
    if not scan_file(scan).is_file():
        raise UserError(f"--scan {scan}: no scan.json there")
    return ScanResult.load(scan)


def parse_drop(drop: str, num_layers: int | None = None) -> list[int]:
    """``"10:14,20:22"`` -> [10, 11, 12, 13, 20, 21]; 0-based, end-exclusive blocks. Checks the
    syntax, START < END, no overlap (:func:`~speechprune.options.prune.drop_layers`) and (given
    ``num_layers``) the range."""
    removed = drop_layers(drop)
    if num_layers is not None:
        if max(removed) >= num_layers:
            raise UserError(f"--drop {drop!r}: layer {max(removed)} is out of range; the decoder has layers 0..{num_layers - 1}")
        validate_indices(removed, num_layers, f"--drop {drop!r}")
    return removed


def prune_model(model: Any, selection: Selection, measurement: Callable[[], Measurement] | None = None,
                before_surgery: Callable[[list[int]], None] | None = None) -> dict[str, Any]:
    """Remove the layers ``selection`` asks for from ``model`` (a loaded model) in place, after the
    refusals (module doc); return the pruning record: what was removed and kept (0-based indices of
    the original decoder), how it was chosen, the parameter counts before and after.

    ``measurement()`` is called only for a model-based strategy, once the request has passed every
    other check. ``before_surgery(removed)`` runs while the model is still whole (``prune`` takes its
    export check's reference there)."""
    removed, how = choose_layers(model, selection, measurement)
    if before_surgery is not None:
        before_surgery(removed)
    num_layers = len(decoder_layers(model.causal_lm))
    parameters_before = sum(p.numel() for p in model.decoder_parameters())
    kept = remove_layers(model.causal_lm, removed)
    root = Path(model.path)
    return {
        "index_convention": INDEX_CONVENTION + " Only receiving_layers index the pruned decoder.",
        "model": str(root.resolve()) if root.exists() else model.path,
        "kind": model.kind,
        "class": type(model.module).__name__,
        "original_num_layers": num_layers,
        "num_layers": len(kept),
        "removed": removed,
        "kept": kept,
        "kept_ranges": kept_ranges(kept),
        "removed_blocks": kept_ranges(removed),
        # indices in the PRUNED model: the layer now fed by each removed block (heal's receiving-mlp)
        "receiving_layers": receiving_layers(kept, num_layers),
        "decoder_parameters": {"before": parameters_before,
                               "after": sum(p.numel() for p in model.decoder_parameters())},
        **how,
        "dtype": str(next(model.causal_lm.parameters()).dtype).removeprefix("torch."),
    }


def choose_layers(model: Any, selection: Selection,
                  measurement: Callable[[], Measurement] | None = None) -> tuple[list[int], dict[str, Any]]:
    """The refusals and the choice of :func:`prune_model` without the surgery: the layers to remove
    (sorted, 0-based) and how they were chosen. The model is unchanged on return."""
    reason = model.pruning_refusal()
    if reason:
        raise UserError(f"--model {model.path}: {reason}")
    num_layers = len(decoder_layers(model.causal_lm))
    if selection.drop:
        return parse_drop(selection.drop, num_layers), {"strategy": DROP, "drop": selection.drop}
    if selection.scan is not None:
        scanned_layers = strategies.scan_num_layers(selection.scan)
        if scanned_layers != num_layers:
            raise UserError(f"--scan {selection.scan_path}: scanned a {scanned_layers}-layer decoder, "
                            f"--model has {num_layers} layers")
        strategies.check_scan_fits(selection.scan, text_config(model.causal_lm), selection.scan_path)
    strategy = selection.strategy
    n = (strategies.layers_for_fraction(selection.fraction, num_layers) if selection.fraction is not None
         else selection.count)
    how: dict[str, Any] = {"strategy": strategy, "n": n, "fraction": selection.fraction}
    if strategy == "last":
        return strategies.last(num_layers, n), how
    if strategy in strategies.SCAN_STRATEGIES:
        scan = selection.scan
        how.update(scan=str(scan_file(selection.scan_path).resolve()),
                   input=strategies.resolve_input(scan, selection.input), region=selection.region)
        removed = strategies.choose_from_scan(strategy, scan, n, selection.input, selection.region)
        if strategy == "angular" and n:
            distance = strategies.scan_matrix(scan, "angular", selection.input, selection.region)
            how["block_distance"] = distance[removed[0]][removed[0] + n]
        return removed, how
    return _measured_choice(model, strategy, n, num_layers, selection, measurement, how)


def _measured_choice(model: Any, strategy: str, n: int, num_layers: int, selection: Selection,
                     measurement: Callable[[], Measurement] | None, how: dict[str, Any]) -> tuple[list[int], dict]:
    """iterative / greedy-score: measured on the model itself."""
    if measurement is None:
        raise UserError(f"--strategy {strategy} measures the model: it needs a re-scan (iterative) or a score "
                        "(greedy-score)")
    measured = measurement()
    how.update(measured.record)
    trace: list[dict] = []
    # iterative: one re-scan per removed layer; greedy-score: every remaining layer scored per round
    total = n if strategy == "iterative" else sum(num_layers - k for k in range(n))
    with Progress(f"prune {strategy}", total, "scans" if strategy == "iterative" else "candidates") as shown:
        counted = _Counted(measured.measure, shown)
        if strategy == "iterative":
            removed = strategies.iterative(model.causal_lm, n, counted, selection.input, selection.region, trace=trace)
        else:
            removed = strategies.greedy_score(model.causal_lm, n, counted, trace=trace)
    how["steps"] = trace
    return removed, how


class _Counted:
    """``measure`` (a re-scan or a score) that advances ``progress`` by one per model measured; a
    score's prefix-reusing ``removal_scores`` stays available and advances by its candidates."""

    def __init__(self, measure: Callable[[Any], Any], progress: Progress):
        self.measure, self.progress = measure, progress
        if hasattr(measure, "removal_scores"):
            self.removal_scores = self._removal_scores

    def __call__(self, causal_lm: Any) -> Any:
        result = self.measure(causal_lm)
        self.progress.advance()
        return result

    def _removal_scores(self, causal_lm: Any, removed: list[int], candidates: list[int]) -> dict[int, float]:
        result = self.measure.removal_scores(causal_lm, removed, candidates)
        self.progress.advance(len(candidates))
        return result
