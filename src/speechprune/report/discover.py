"""What a run directory holds: every scan, compare, sweep, evaluation, study, demo, base LLM and
pruned (or pruned and healed) model the toolkit writes, found by their marker files anywhere below the directory. Reading only; nothing
here knows how the outputs were made.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from speechprune.errors import UserError
from speechprune.files import read_json
from speechprune.scan.result import SCAN_FILE, ScanResult

SAMPLE_TRANSCRIPTS = 5  # per test set: enough to see what the model writes, short enough to read


@dataclass
class Found:
    """One output directory of one kind, with what was read from it."""

    kind: str
    path: Path
    data: Any  # what the marker file holds: a ScanResult for a scan, else the JSON object
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@dataclass
class Run:
    root: Path
    scans: list[Found] = field(default_factory=list)
    compares: list[Found] = field(default_factory=list)
    sweeps: list[Found] = field(default_factory=list)
    evals: list[Found] = field(default_factory=list)
    studies: list[Found] = field(default_factory=list)
    demos: list[Found] = field(default_factory=list)
    bases: list[Found] = field(default_factory=list)
    models: list[Found] = field(default_factory=list)  # pruned (and healed) models: their pruning.json
    unreadable: list[str] = field(default_factory=list)

    def relative(self, path: Path) -> str:
        if path.resolve() == self.root.resolve():
            return path.resolve().name  # a report on one output names it, not "."
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def is_empty(self) -> bool:
        return not any((self.scans, self.compares, self.sweeps, self.evals, self.studies, self.demos, self.bases,
                        self.models))


def _config(folder: Path) -> dict:
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _read_scan(folder: Path) -> Found | None:
    data = read_json(folder / SCAN_FILE)
    if not isinstance(data, dict) or "inputs" not in data or "num_layers" not in data:
        return None  # another tool's scan.json
    return Found("scan", folder, ScanResult.from_dict(data, source=str(folder / SCAN_FILE)))


def _read_compare(folder: Path) -> Found | None:
    data = read_json(folder / "compare.json")
    return Found("compare", folder, data) if "pairs" in data else None


def unpruned_decoder(folder: Path, config: dict) -> dict:
    """The unpruned decoder a sweep measured, from its baseline cell: ``parameters`` (its bytes over
    the element size of the sweep's ``dtype``) and ``layers``; empty where the cell does not say."""
    path = folder / "cells" / "baseline.json"
    cell = read_json(path) if path.is_file() else {}
    dtype = getattr(torch, str(config.get("dtype", "float32")), None)
    if not isinstance(cell.get("decoder_bytes"), int) or not isinstance(dtype, torch.dtype):
        return {}
    return {"parameters": cell["decoder_bytes"] // dtype.itemsize, "layers": cell.get("original_layers")}


def _read_sweep(folder: Path) -> Found | None:
    summary = read_json(folder / "summary.json")
    if "largest_acceptable" not in summary or not (folder / "results.json").is_file():
        return None
    config = _config(folder)
    return Found("sweep", folder, summary, config, {"rows": read_json(folder / "results.json"),
                                                    "decoder": unpruned_decoder(folder, config)})


def _read_eval(folder: Path) -> Found | None:
    data = read_json(folder / "metrics.json")
    if "sets" not in data:
        return None
    samples = {}
    for name in data["sets"]:
        path = folder / f"{name}.hypotheses.jsonl"
        if path.is_file():
            with open(path, encoding="utf-8") as handle:
                lines = [line for _, line in zip(range(SAMPLE_TRANSCRIPTS), handle)]
            samples[name] = [json.loads(line) for line in lines if line.strip()]
    return Found("eval", folder, data, _config(folder), {"samples": samples})


def _read_study(folder: Path) -> Found | None:
    return Found("study", folder, read_json(folder / "study.json"), _config(folder))


def _read_demo(folder: Path) -> Found | None:
    return Found("demo", folder, read_json(folder / "demo.json"), _config(folder))


def _read_base(folder: Path) -> Found | None:
    data = read_json(folder / "curve.json")
    return Found("base", folder, data, _config(folder)) if data.get("curve") else None


def read_pruned(folder: Path) -> Found | None:
    """A model made by prune (pruning.json) and, where heal.json is beside it, healed."""
    data = read_json(folder / "pruning.json")
    if not isinstance(data, dict) or "removed" not in data:
        return None
    heal = read_json(folder / "heal.json") if (folder / "heal.json").is_file() else None
    return Found("model", folder, data, _config(folder), {"heal": heal})


MARKERS = {SCAN_FILE: ("scans", _read_scan), "compare.json": ("compares", _read_compare),
           "summary.json": ("sweeps", _read_sweep), "metrics.json": ("evals", _read_eval),
           "study.json": ("studies", _read_study), "demo.json": ("demos", _read_demo),
           "curve.json": ("bases", _read_base), "pruning.json": ("models", read_pruned)}


def discover(root: str | Path) -> Run:
    """Every output found below ``root`` (hidden and staging folders are skipped), parents before subfolders."""
    root = Path(root)
    run = Run(root)
    paths: dict[str, list[Path]] = {marker: [] for marker in MARKERS}
    for folder, subfolders, files in os.walk(root):  # one walk: a corpus folder can hold thousands of files
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for marker in MARKERS.keys() & set(files):
            paths[marker].append(Path(folder) / marker)
    for marker, (attribute, reader) in MARKERS.items():
        for path in paths[marker]:
            try:
                found = reader(path.parent)
            except UserError as error:  # says what is wrong with which file already
                run.unreadable.append(str(error))
                continue
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                run.unreadable.append(f"{run.relative(path)}: {type(error).__name__}: {error}")
                continue
            if found is not None:
                getattr(run, attribute).append(found)
    return run
