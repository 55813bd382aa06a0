"""The one type of a scan result, ``scan.json``: ``speechprune scan`` and the study write it through
:class:`ScanResult`; compare, the figures, the pruning strategies, the study and the report read it
through :class:`ScanResult`, never as raw dictionary keys.

Two kinds, told apart by a field, not by missing keys:
- a measured scan (``speechprune scan``): per input and region, the position count, the mean angular
  distance and cosine matrices, l*(n), Block Influence and, where bootstrapped, the stability of l*(n);
- a consensus (``consensus_of`` names the conditions it averages; written by the study): the mean of
  several scans' angular matrices and its l*(n), with no count, cosine or bootstrap, since it is not
  a measurement. Any angular strategy reads it like a scan.

The JSON form is fixed: a file written by either writer loads and saves back to the same bytes.
``best_blocks`` and ``block_influence`` follow from the matrices, so a file made by hand or by
another tool may leave them out: they are computed on load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speechprune.errors import UserError
from speechprune.scan.blocks import best_blocks, block_influence

SCAN_FILE = "scan.json"
CONSENSUS = "consensus"  # the JSON "kind" of a consensus; a measured scan has no "kind"

Matrix = list[list[float]]


class _Invalid(Exception):
    """What is wrong, as ``key.path: problem``; the caller adds the file's name."""


@dataclass
class RegionResult:
    """The statistics of one input at one region (positions: speech, prompt, target, last, all)."""

    angular: Matrix | None  # (L+1)x(L+1) mean d(x_i, x_j) = arccos(cos) / pi; None when nothing was counted
    best_blocks: list[dict]  # for n = 1..L: {"n", "start" (l*(n), 0-based), "end" (exclusive), "distance"}
    cosine: Matrix | None = None  # (L+1)x(L+1) mean cosine; None when nothing was counted, and in a consensus
    count: int | None = None  # positions counted; None in a consensus (a mean of scans, not a measurement)
    block_influence: list[float] | None = None  # ShortGPT's BI_l for l = 0..L-1; None in a consensus
    stability: list[dict] | None = None  # bootstrap of l*(n) per n (scan.stability), where it was run

    @property
    def counted(self) -> bool:
        return self.angular is not None

    def to_dict(self, consensus: bool = False) -> dict:
        if consensus:  # stability stays as an explicit null, as the study has always written it
            return {"angular": self.angular, "best_blocks": self.best_blocks, "stability": self.stability}
        entry = {"angular": self.angular, "cosine": self.cosine, "count": self.count, "best_blocks": self.best_blocks,
                 "block_influence": self.block_influence}
        if self.stability is not None:
            entry["stability"] = self.stability
        return entry

    @classmethod
    def from_dict(cls, entry: Any, size: int, consensus: bool, where: str) -> RegionResult:
        if not isinstance(entry, Mapping):
            raise _Invalid(f"{where} is not an object")
        stability = entry.get("stability")
        if stability is not None and not isinstance(stability, list):
            raise _Invalid(f"{where}.stability is not a list")
        angular = _matrix(entry, "angular", size, where, required=consensus)
        if consensus:
            return cls(angular=angular, best_blocks=_best_blocks(entry, angular, where), stability=stability)
        cosine = _matrix(entry, "cosine", size, where, required=angular is not None)
        if "count" not in entry:
            raise _Invalid(f"{where}.count is missing")
        count = entry["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise _Invalid(f"{where}.count is {count!r}, not a count of positions")
        influence = entry.get("block_influence")
        if influence is None:
            influence = block_influence(np.asarray(cosine)) if cosine is not None else []
        elif not isinstance(influence, list) or len(influence) != (size - 1 if cosine is not None else 0):
            raise _Invalid(f"{where}.block_influence is not a list of {size - 1} numbers")
        return cls(angular=angular, cosine=cosine, count=count, best_blocks=_best_blocks(entry, angular, where),
                   block_influence=influence, stability=stability)


@dataclass
class ScanResult:
    """A scan result: per input (speech, text) and region, the pairwise statistics of x_0..x_L
    (x_i enters decoder layer i; 0-based; block [l, l+n) end-exclusive) and what follows from them."""

    num_layers: int
    inputs: dict[str, dict[str, RegionResult]]  # input -> region -> statistics
    index_convention: str | None = None  # the convention in words (a measured scan states it)
    model: dict | None = None  # the scanned model (LoadedModel.describe: path, kind, family, hidden_size, ...)
    data: dict | None = None  # manifest, sha256, utterances, text_only
    settings: dict | None = None  # inputs, layout, regions, batch size, dtype, bootstrap, ...
    seconds: float | None = None  # time of the scan pass
    figures: list[str] | None = None  # figure files written beside scan.json
    consensus_of: list[str] | None = None  # a consensus: the conditions whose scans it averages

    @property
    def is_consensus(self) -> bool:
        return self.consensus_of is not None

    # reading -------------------------------------------------------------------------------
    def resolve_input(self, input: str) -> str:
        """The input that ``input`` names: ``auto`` is speech when the scan has it, else text."""
        if input == "auto":
            return "speech" if "speech" in self.inputs else "text"
        return input

    def region(self, input: str, region: str) -> RegionResult:
        """One input's statistics at one region; refused when the scan lacks them or counted nothing."""
        input = self.resolve_input(input)
        if input not in self.inputs:
            raise UserError(f"the scan has no {input!r} input (it has: {', '.join(sorted(self.inputs)) or 'none'})")
        regions = self.inputs[input]
        if region not in regions:
            raise UserError(f"the scan's {input!r} input has no region {region!r} (it has: {', '.join(sorted(regions))})")
        entry = regions[region]
        if entry.count == 0 or not entry.counted:
            raise UserError(f"the scan's {input!r} input counted no position in region {region!r}")
        return entry

    def matrix(self, input: str, region: str, metric: str = "angular") -> np.ndarray:
        """The (L+1)x(L+1) ``metric`` ("angular" or "cosine") matrix of one input and region, float64."""
        values = getattr(self.region(input, region), metric)
        if values is None:
            raise UserError(f"the scan's {self.resolve_input(input)}/{region} has no {metric!r} matrix"
                            + (" (a consensus holds only angular distances)" if self.is_consensus else ""))
        return np.asarray(values, dtype=np.float64)

    def subject(self) -> str:
        """``model on data``, for titles."""
        model = Path(str((self.model or {}).get("path") or "model")).name
        data = Path(str((self.data or {}).get("manifest") or "data")).name
        return f"{model} on {data}"

    # the JSON form ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        payload: dict[str, Any] = {"num_layers": self.num_layers}
        if self.is_consensus:
            payload.update(kind=CONSENSUS, conditions=list(self.consensus_of))
        if self.index_convention is not None:
            payload["index_convention"] = self.index_convention
        payload["inputs"] = {name: {"regions": {region: entry.to_dict(self.is_consensus)
                                                for region, entry in regions.items()}}
                             for name, regions in self.inputs.items()}
        for key in ("model", "data", "settings", "seconds", "figures"):
            if getattr(self, key) is not None:
                payload[key] = getattr(self, key)
        return payload

    @classmethod
    def from_dict(cls, payload: Any, source: str = "the scan") -> ScanResult:
        """A checked scan result; a missing or malformed key is a one-line UserError naming ``source``."""
        try:
            return cls._from_dict(payload)
        except _Invalid as problem:
            raise UserError(f"{source}: not a valid scan result: {problem}") from None

    @classmethod
    def of(cls, scan: ScanResult | Mapping) -> ScanResult:
        """``scan`` itself, or the scan result a scan.json dictionary holds (Python callers may pass either)."""
        return scan if isinstance(scan, ScanResult) else cls.from_dict(scan)

    @classmethod
    def _from_dict(cls, payload: Any) -> ScanResult:
        if not isinstance(payload, Mapping):
            raise _Invalid("the file does not hold a JSON object")
        if "num_layers" not in payload:
            raise _Invalid("num_layers is missing")
        num_layers = payload["num_layers"]
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise _Invalid(f"num_layers is {num_layers!r}, not a positive integer")
        kind = payload.get("kind")
        if kind not in (None, CONSENSUS):
            raise _Invalid(f"kind is {kind!r}; a scan has none, a consensus has {CONSENSUS!r}")
        consensus_of = None
        if kind == CONSENSUS:
            consensus_of = payload.get("conditions")
            if not isinstance(consensus_of, list) or not all(isinstance(c, str) for c in consensus_of):
                raise _Invalid("conditions (the scans a consensus averages) is missing or not a list of names")
        inputs = payload.get("inputs")
        if not isinstance(inputs, Mapping) or not inputs:
            raise _Invalid("inputs is missing or empty")
        parsed: dict[str, dict[str, RegionResult]] = {}
        for name, data in inputs.items():
            regions = data.get("regions") if isinstance(data, Mapping) else None
            if not isinstance(regions, Mapping):
                raise _Invalid(f"inputs.{name}.regions is missing")
            parsed[name] = {region: RegionResult.from_dict(entry, num_layers + 1, kind == CONSENSUS,
                                                           f"inputs.{name}.regions.{region}")
                            for region, entry in regions.items()}
        for key, kinds in (("index_convention", str), ("model", dict), ("data", dict), ("settings", dict),
                           ("seconds", (int, float)), ("figures", list)):
            value = payload.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise _Invalid(f"{key} is {type(value).__name__}, not {getattr(kinds, '__name__', 'a number')}")
        return cls(num_layers=num_layers, inputs=parsed, consensus_of=consensus_of,
                   **{key: payload.get(key) for key in ("index_convention", "model", "data", "settings", "seconds",
                                                         "figures")})

    # files -----------------------------------------------------------------------------------
    @staticmethod
    def file(path: str | Path) -> Path:
        """The scan.json of a scan directory (or ``path`` itself when it names the file)."""
        path = Path(path)
        file = path / SCAN_FILE if path.is_dir() else path
        if not file.is_file():
            raise UserError(f"not a scan: {path} (no {SCAN_FILE})")
        return file

    @classmethod
    def load(cls, path: str | Path) -> ScanResult:
        """The scan result in a scan directory or its scan.json."""
        from speechprune.files import read_json

        file = cls.file(path)
        try:
            payload = read_json(file)
        except ValueError as error:
            raise UserError(f"{file}: not valid JSON ({error})") from None
        return cls.from_dict(payload, source=str(file))

    def save(self, path: str | Path) -> Path:
        """Write the result atomically to ``path``: a ``.json`` file, or else the directory to hold
        scan.json (made when missing). Returns the file written."""
        from speechprune.files import write_json

        path = Path(path)
        file = path if path.suffix == ".json" else path / SCAN_FILE
        write_json(file, self.to_dict())
        return file


def _matrix(entry: Mapping, key: str, size: int, where: str, required: bool) -> Matrix | None:
    if key not in entry:
        raise _Invalid(f"{where}.{key} is missing")
    matrix = entry[key]
    if matrix is None and not required:
        return None
    if (not isinstance(matrix, list) or len(matrix) != size
            or any(not isinstance(row, list) or len(row) != size for row in matrix)):
        raise _Invalid(f"{where}.{key} is not a {size}x{size} matrix")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for row in matrix for v in row):
        raise _Invalid(f"{where}.{key} holds a value that is not a number")
    return matrix


def _best_blocks(entry: Mapping, angular: Matrix | None, where: str) -> list[dict]:
    blocks = entry.get("best_blocks")
    if blocks is None:
        return best_blocks(np.asarray(angular)) if angular is not None else []
    size = len(angular) - 1 if angular is not None else 0
    if (not isinstance(blocks, list) or len(blocks) != size
            or any(not isinstance(b, Mapping) or not {"n", "start", "end", "distance"} <= set(b) for b in blocks)):
        raise _Invalid(f"{where}.best_blocks is not {size} blocks with n, start, end and distance")
    return blocks
