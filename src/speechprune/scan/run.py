"""``speechprune scan``: load a model of any kind (``model.load_model``), stream data (a manifest, a
text file or a text dataset) through it once, and write ``OUT/scan.json`` and figures. Owns the
configuration, sharding over processes, checkpoint/resume and the output layout; the per-batch work
is :class:`~speechprune.scan.scanner.Scanner`.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Iterator

import torch

from speechprune.config import require
from speechprune.console import Progress, show, table
from speechprune.errors import UserError
from speechprune.files import claims_output
from speechprune.model.layout import LAYOUT_REGIONS
from speechprune.scan.blocks import INDEX_CONVENTION, best_blocks, block_influence
from speechprune.scan.result import SCAN_FILE, RegionResult, ScanResult
from speechprune.options.scan import INPUTS, ScanConfig  # noqa: F401  (re-exported)
from speechprune.scan.scanner import ScanBatch, Scanner

CHECKPOINT_DIR = ".checkpoint"


# loading ---------------------------------------------------------------------------------------
def _load(config: ScanConfig, device: torch.device):
    from speechprune.model.interface import load_model

    return load_model(config.model, dtype=config.dtype, device=device, device_map=config.device_map,
                      loading=config.loading)


def _resolve_device(config: ScanConfig):
    from accelerate import PartialState

    from speechprune.model.device import resolve_device

    device = resolve_device(config.device)  # a device this machine lacks: one line, before any work
    state = PartialState(cpu=config.device == "cpu")
    if state.num_processes > 1:
        require(not config.device_map, "--device-map auto is for one process; do not combine it with accelerate launch")
        return state, state.device
    if config.device_map:
        return state, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "auto":
        return state, state.device
    return state, device


def _inputs_for(config: ScanConfig, model, utterances: list) -> list[str]:
    """Every input the model takes for auto / both (auto leaves speech out on text-only data or
    the plain layout), else the one asked for; speech input on text-only data is refused."""
    from speechprune.data.sources import require_audio

    if config.input in ("auto", "both"):
        inputs = [name for name in INPUTS if name in model.sources]
        if config.input == "auto" and (config.layout == "plain" or any(u.audio is None for u in utterances)):
            inputs = [name for name in inputs if name != "speech"]
    else:
        model.check_source(config.input)
        inputs = [config.input]
    if "speech" in inputs:
        require_audio(utterances, config.data, f"--input {config.input}")
    return inputs


def _layout_and_regions(config: ScanConfig, model, inputs: list[str]) -> tuple[str, list[str]]:
    """The text input's layout (the model's default for auto) and the regions scanned."""
    layout = model.resolve_layout(config.layout)
    if layout == "plain" and "speech" in inputs:
        raise UserError("--layout plain is a text layout; speech input has the model's own: add --input text")
    regions = list(config.regions) or list(LAYOUT_REGIONS[layout])
    bad = [r for r in regions if r not in LAYOUT_REGIONS[layout]]
    if bad:
        raise UserError(f"--regions {bad[0]}: the plain layout (the text alone) has only the regions last and all; "
                        f"speech, prompt and target exist in --layout task")
    bad = [r for r in config.stability_regions if r not in regions]
    if bad:
        raise UserError(f"--stability-regions: {bad[0]!r} is not among the scanned regions ({', '.join(regions)})")
    return layout, regions


# data ------------------------------------------------------------------------------------------
def _chunks(total: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """Contiguous batches of manifest order; process ``rank`` takes every ``world``-th batch."""
    everything = [list(range(s, min(total, s + batch_size))) for s in range(0, total, batch_size)]
    return everything[rank::world]


def _batches(model, utterances: list, chunks: list[list[int]], inputs: list[str], layout: str) -> Iterator[ScanBatch]:
    for chunk in chunks:
        members = [utterances[i] for i in chunk]
        decoder_inputs = {name: model.decoder_inputs(members, source=name, layout=layout) for name in inputs}
        yield ScanBatch(decoder_inputs, _rows(chunk, utterances, next(iter(decoder_inputs.values()))))


def _rows(chunk: list[int], utterances: list, decoder_inputs) -> list[int]:
    """The global index of each row: by utterance id when the inputs carry ids, else chunk order."""
    ids = list(getattr(decoder_inputs, "utterance_ids", None) or [])
    if len(ids) != len(chunk):
        if ids:
            raise RuntimeError(f"a batch of {len(ids)} rows for {len(chunk)} utterances: batching is not contiguous")
        return list(chunk)
    position = {utterances[i].id: i for i in chunk}
    if set(ids) != set(position):
        raise RuntimeError("the batches do not follow manifest order (utterance ids differ from the expected chunk)")
    return [position[i] for i in ids]


def _dir_signature(path: str) -> list:
    """Names, sizes and modification times of a local model's files (a changed model is not resumed)."""
    root = Path(path)
    if not root.is_dir():
        return []
    return sorted([str(p.relative_to(root)), p.stat().st_size, int(p.stat().st_mtime)]
                  for p in root.rglob("*") if p.is_file())


def _data_digest(source: str, utterances: list) -> str:
    """SHA-256 of the data file, or of the texts and ids of a dataset (a folder or hub id)."""
    digest = hashlib.sha256()
    if Path(source).is_file():
        with open(source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        for utterance in utterances:
            digest.update(f"{utterance.id}\t{utterance.text}\n".encode())
    return digest.hexdigest()


# checkpoint ------------------------------------------------------------------------------------
def _checkpoint_path(out: Path, rank: int, world: int) -> Path:
    return out / CHECKPOINT_DIR / f"rank{rank}-of-{world}.pt"


def _save_checkpoint(path: Path, fingerprint: dict, batches_done: int, scanner: Scanner) -> None:
    from speechprune.files import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"fingerprint": fingerprint, "batches_done": batches_done, "stats": scanner.state_dict()}, tmp)


def _load_checkpoint(path: Path, fingerprint: dict) -> dict | None:
    if not path.is_file():
        return None
    try:  # tensors, numbers, strings, lists and dicts only: a checkpoint cannot run code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is the same user problem
        raise UserError(f"{path}: not a scan checkpoint this version can read safely ({type(error).__name__}); "
                        "rerun with --fresh") from None
    if state.get("fingerprint") != fingerprint:
        old = state.get("fingerprint") or {}
        differs = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        raise UserError(f"{path} was left by a different scan (differs in: {', '.join(differs)}); "
                        f"rerun with --fresh to start over")
    return state


# the command -----------------------------------------------------------------------------------
@claims_output("scan", resumable=True)
def scan(config: ScanConfig) -> dict:
    """Angular distance and cosine between every pair of decoder layers, per input and region,
    from one streaming pass over the data; every block [l, l+n) and l*(n) follow from it.
    Writes OUT/scan.json (a :class:`ScanResult`) and figures, and returns scan.json's content as a
    dict, as every command returns its JSON; resumes from OUT/.checkpoint after an interruption."""
    from speechprune.data.sources import load_data

    out = Path(config.out)
    state, device = _resolve_device(config)
    rank, world = state.process_index, state.num_processes
    data_path = Path(config.data)
    utterances = load_data(config.data, config.text_column, config.split, skip_bad=config.skip_bad)
    if config.max_utterances:
        utterances = utterances[: config.max_utterances]
    if not utterances:
        raise UserError(f"--data: {config.data} holds no utterances")

    model = _load(config, device)
    inputs = _inputs_for(config, model, utterances)
    layout, regions = _layout_and_regions(config, model, inputs)
    chunks = _chunks(len(utterances), config.batch_size, rank, world)
    fingerprint = {
        "model": str(Path(config.model).resolve()) if Path(config.model).exists() else config.model,
        "model_files": _dir_signature(config.model),
        "data": str(data_path.resolve()) if data_path.exists() else config.data,
        "data_sha256": _data_digest(config.data, utterances), "layout": layout,
        "inputs": inputs, "regions": regions, "stability_regions": list(config.stability_regions),
        "batch_size": config.batch_size, "utterances": len(utterances), "dtype": config.dtype,
        "rank": rank, "processes": world,
    }
    checkpoint = _checkpoint_path(out, rank, world)
    scanner = Scanner(model.causal_lm, inputs, regions, config.stability_regions,
                      device=None if config.device_map else device)
    done = 0
    if not config.fresh:
        saved = _load_checkpoint(checkpoint, fingerprint)
        if saved is not None:
            scanner.load_state_dict(saved["stats"])
            done = saved["batches_done"]
            _say(state, f"resuming from {checkpoint}: {done} of {len(chunks)} batches done")

    started = time.perf_counter()
    with torch.no_grad(), scanner, Progress("scan", len(chunks), "batches", enabled=state.is_main_process) as shown:
        shown.advance(done)
        for k, batch in enumerate(_batches(model, utterances, chunks[done:], inputs, layout), start=done):
            scanner.step(batch)
            shown.advance()
            if config.checkpoint_every and (k + 1) % config.checkpoint_every == 0 and k + 1 < len(chunks):
                _save_checkpoint(checkpoint, fingerprint, k + 1, scanner)
                _say(state, f"{k + 1}/{len(chunks)} batches", main_only=False)
    if config.checkpoint_every and len(chunks) > done:
        _save_checkpoint(checkpoint, fingerprint, len(chunks), scanner)
    seconds = time.perf_counter() - started
    scanner.all_reduce()
    if not state.is_main_process:
        return {}

    settings = {
        "inputs": inputs, "layout": layout, "regions": regions, "batch_size": config.batch_size,
        "max_utterances": config.max_utterances, "dtype": config.dtype, "device": str(device),
        "device_map": config.device_map or None, "processes": world, "accumulation": "float64",
        "stability_regions": list(config.stability_regions), "bootstrap": config.bootstrap, "seed": config.seed,
    }
    data_info = {"manifest": str(data_path), "sha256": fingerprint["data_sha256"], "utterances": len(utterances),
                 "text_only": any(u.audio is None for u in utterances)}
    result = build_result(scanner, model=model.describe(), data=data_info, settings=settings,
                          bootstrap=config.bootstrap, seed=config.seed)
    result.seconds = round(seconds, 3)
    write_outputs(result, out, plots=config.plots, config=config)
    show(*summary(result, out))
    return result.to_dict()


def summary(result: ScanResult, out: Path, sizes: int = 6) -> list:
    """What the terminal shows at the end: l*(n) for the first block sizes per input and region,
    and how far speech and text input agree."""
    from speechprune.scan.compare import agreement

    num_layers = result.num_layers
    ns = list(range(1, min(sizes, num_layers - 1) + 1))
    rows = []
    for input_name, regions in result.inputs.items():
        for region, entry in regions.items():
            best = {b["n"]: b for b in entry.best_blocks}
            rows.append((f"{input_name}/{region}", entry.count,
                         *(f"{best[n]['start']} ({best[n]['distance']:.3f})" if n in best else "-" for n in ns)))
    lines = [table(f"scan: {result.model['path']} on {result.data['manifest']} "
                   f"({result.data['utterances']} utterances, {num_layers} layers) -> {out}",
                   ("input/region", "positions", *(f"l*({n}) (d)" for n in ns)), rows,
                   caption="l*(n): 0-based start of the most redundant block [l, l+n); d: its angular distance")]
    inputs = result.inputs
    if "speech" in inputs and "text" in inputs:
        both = [r for r, entry in inputs["speech"].items() if entry.counted and r in inputs["text"]
                and inputs["text"][r].counted]
        pairs = [(r, agreement(inputs["speech"][r].angular, inputs["text"][r].angular, [])) for r in both]
        lines.append(table("speech vs text input", ("region", "Spearman of block distances", "same l*(n)",
                                                    "mean |l*_speech - l*_text|"),
                           [(r, f"{a['spearman']:.3f}", f"{a['same_best_start']:.2f}", f"{a['mean_abs_delta_start']:.2f}")
                            for r, a in pairs]))
    return lines


def build_result(scanner: Scanner, model: dict, data: dict, settings: dict, bootstrap: int = 1000,
                 seed: int = 0) -> ScanResult:
    """The scan result from a (reduced) scanner's statistics."""
    from speechprune.scan.stability import bootstrap_blocks

    result_inputs = {}
    for name, stats in scanner.stats.items():
        regions = {}
        for region in stats.regions:
            mats = stats.matrices(region)
            entry = RegionResult(angular=None, cosine=None, count=mats["count"], best_blocks=[], block_influence=[])
            if mats["angular"] is not None:
                entry.angular = mats["angular"].tolist()
                entry.cosine = mats["cosine"].tolist()
                entry.best_blocks = best_blocks(mats["angular"])
                entry.block_influence = block_influence(mats["cosine"])
                if region in stats.per_utterance and bootstrap > 0:
                    _, utt_angular, utt_count = stats.utterance_sums(region)
                    entry.stability = bootstrap_blocks(utt_angular, utt_count, stats.num_layers,
                                                       resamples=bootstrap, seed=seed, angular=mats["angular"])
            regions[region] = entry
        result_inputs[name] = regions
    return ScanResult(num_layers=scanner.num_layers, inputs=result_inputs, index_convention=INDEX_CONVENTION,
                      model=model, data=data, settings=settings)


def write_outputs(result: ScanResult, out: Path, plots: bool = True, config: ScanConfig | None = None) -> None:
    """scan.json, config.yaml and figures, staged and moved into place (the checkpoint goes with the old OUT)."""
    from speechprune.config import save_config
    from speechprune.files import staged_dir

    with staged_dir(out) as staging:
        if config is not None:
            save_config(config, staging / "config.yaml")
        if plots:
            from speechprune.scan.plots import scan_figures

            result.figures = scan_figures(result, staging)
        result.save(staging / SCAN_FILE)


def _say(state, message: str, main_only: bool = True) -> None:
    if main_only and not state.is_main_process:
        return
    prefix = f"[{state.process_index}] " if state.num_processes > 1 else ""
    print(f"scan: {prefix}{message}", file=sys.stderr, flush=True)
