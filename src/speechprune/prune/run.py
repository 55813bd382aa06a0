"""``speechprune prune``: choose decoder layers (by hand or from a scan), cut them out with the one
surgery, and export the same kind of directory that came in, checked before it is moved into place.

Input: a SpeechLLM directory (``speechllm.json`` and a ``decoder/`` subfolder holding a standard
Hugging Face causal LM; everything else is copied as it is, only ``decoder/`` is pruned) or a plain
Hugging Face causal-LM directory (weights, config and tokenizer files).
Output: the pruned directory, plus ``pruning.json`` (what was removed and why) and
``mergekit.yaml`` (a mergekit passthrough recipe that rebuilds the pruned decoder from the original).
A GGUF input can also be written as a GGUF file, still quantized (``prune/gguf_export.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from speechprune.config import option, require, save_config
from speechprune.console import Progress, show, table
from speechprune.errors import UserError
from speechprune.files import claims_output, read_json, staged_dir, write_json, write_text
from speechprune.model.layout import LAYOUT_REGIONS, LAYOUTS
from speechprune.prune import strategies
from speechprune.prune.surgery import (
    INDEX_CONVENTION,
    kept_ranges,
    receiving_layers,
    remove_layers,
    validate_indices,
)

@dataclass
class PruneConfig:
    model: str = option(help="SpeechLLM directory (speechllm.json + decoder/), Hugging Face speech-LLM or causal LM "
                             "(directory or hub id), or a GGUF causal LM (a .gguf file, or smollm2-135m / gemma3-270m)")
    out: str = option(help="output directory, of the same kind as --model; or, for a GGUF --model, a .gguf file")
    drop: str = option("", help="layers to remove: 0-based, end-exclusive START:END blocks, e.g. 10:14,20:22")
    remove: int | None = option(None, help="number of layers to remove, chosen by --strategy")
    fraction: float | None = option(None, help="fraction of layers to remove, chosen by --strategy: "
                                               "n = floor(fraction*L + 0.5), at most L-1")
    strategy: str = option("angular", help="angular | bi (from --scan) | last | iterative | greedy-score (on --data)")
    scan: str = option("", help="scan directory (holding scan.json) for --strategy angular or bi")
    input: str = option(strategies.DEFAULT_INPUT, help="input to choose by: speech | text | auto (speech when the "
                                                       "scan / model has it, else text)")
    region: str = option(strategies.DEFAULT_REGION, help="scan region to choose by: speech | prompt | target | last | all")
    data: str = option("", help="calibration data for --strategy iterative (re-scanned after every removal) and "
                                "greedy-score (loss): a manifest, or for text input a .txt file or text dataset; "
                                "encoded once and cached")
    layout: str = option("auto", help="layout of text calibration input: plain (the text alone) | task (the model's "
                                      "own sequence with the source text) | auto (plain for a plain causal LM, task "
                                      "for a speech model)")
    text_column: str | None = option(None, help="text column of a Hugging Face dataset --data (default: text, "
                                                "sentence, content or transcription, the first it has)")
    split: str | None = option(None, help="split of a Hugging Face dataset --data (default: its only split)")
    max_utterances: int = option(0, help="use only the first N utterances of --data (0 = all)")
    batch_size: int = option(8, help="utterances per forward on --data")
    device: str = option("auto", help="where --data is run: auto | cpu | cuda | cuda:N (the export itself is on CPU)")
    verify: bool = option(True, help="reload the export and check it reproduces the original with the layers "
                                     "skipped (logits, cached decoding)")
    overwrite: bool = option(False, help="replace an existing --out")
    format: str = option("auto", help="hf (a Hugging Face checkpoint directory) | gguf (a GGUF --model pruned into a "
                                      "GGUF file: kept blocks copied in their own quantization) | auto (gguf when "
                                      "--out ends in .gguf)")

    def __post_init__(self) -> None:
        require(bool(self.model), "--model is empty")
        require(bool(self.out), "--out is empty")
        require(self.format in ("auto", "hf", "gguf"), f"--format must be hf, gguf or auto, not {self.format!r}")
        require(self.format != "hf" or not self.out.lower().endswith(".gguf"),
                f"--format hf writes a directory; --out {self.out} ends in .gguf")
        require(self.format != "gguf" or self.out.lower().endswith(".gguf"),
                f"--format gguf writes a file: give an --out ending in .gguf, not {self.out}")
        self.drop = _normalise_drop(self.drop)
        if self.drop:
            require(self.remove is None and self.fraction is None and not self.scan and not self.data,
                    "--remove/--fraction/--scan/--data choose layers by --strategy; not with --drop")
            parse_drop(self.drop)  # syntax now; ranges once the decoder's size is known
        else:
            require((self.remove is None) != (self.fraction is None),
                    "give --drop START:END[,...], or exactly one of --remove N / --fraction F with --strategy")
            require(self.strategy in strategies.STRATEGIES,
                    f"--strategy {self.strategy!r} is not one of {', '.join(strategies.STRATEGIES)}")
            require(self.remove is None or self.remove >= 0, f"--remove must be >= 0, not {self.remove}")
            require(self.fraction is None or 0 <= self.fraction < 1, f"--fraction must be in [0, 1), not {self.fraction}")
            require(bool(self.scan) or self.strategy not in ("angular", "bi"),
                    f"--strategy {self.strategy} chooses from a scan: give --scan SCAN_DIR")
        require(self.input in ("auto", "speech", "text"), f"--input must be speech, text or auto, not {self.input!r}")
        require(self.layout in ("auto",) + LAYOUTS, f"--layout must be plain, task or auto, not {self.layout!r}")
        require(self.max_utterances >= 0, f"--max-utterances must be 0 or more, not {self.max_utterances}")
        require(self.batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}")

    @property
    def writes_gguf(self) -> bool:
        return self.format == "gguf" or (self.format == "auto" and self.out.lower().endswith(".gguf"))


def _normalise_drop(drop: Any) -> str:
    """The ``--drop`` text. A YAML 1.1 reader (the option parser's) turns a lone ``10:14`` into the
    base-60 integer 614; a bare integer is no valid --drop, so such a value is read back as START:END."""
    text = str(drop).strip() if drop is not None else ""
    if re.fullmatch(r"\d+", text) and int(text) >= 60:
        start, end = divmod(int(text), 60)
        return f"{start}:{end}"
    return text


def parse_drop(drop: str, num_layers: int | None = None) -> list[int]:
    """``"10:14,20:22"`` -> [10, 11, 12, 13, 20, 21]; 0-based, end-exclusive blocks. Checks the
    syntax, START < END, no overlap, and (given ``num_layers``) the range."""
    removed: list[int] = []
    for block in drop.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", block)
        if not match:
            raise UserError(f"--drop {drop!r}: {block.strip()!r} is not a START:END block (0-based, end-exclusive, "
                            "e.g. 10:14 removes layers 10..13)")
        start, end = int(match[1]), int(match[2])
        if start >= end:
            raise UserError(f"--drop {drop!r}: block {start}:{end} is empty (END is exclusive and must exceed START)")
        removed.extend(range(start, end))
    if len(set(removed)) != len(removed):
        raise UserError(f"--drop {drop!r}: blocks overlap")
    if num_layers is not None:
        if max(removed) >= num_layers:
            raise UserError(f"--drop {drop!r}: layer {max(removed)} is out of range; the decoder has layers 0..{num_layers - 1}")
        validate_indices(removed, num_layers, f"--drop {drop!r}")
    return sorted(removed)


def _refuse_unsafe(model: Any) -> None:
    reason = model.pruning_refusal()
    if reason:
        raise UserError(f"--model {model.path}: {reason}")


def _read_scan(scan: str) -> tuple[dict, Path]:
    path = Path(scan)
    if path.is_dir():
        path = path / "scan.json"
    if not path.is_file():
        raise UserError(f"--scan {scan}: no scan.json there")
    try:
        return read_json(path), path
    except ValueError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return str(torch.device(name))
    except RuntimeError:
        raise UserError(f"--device: not a device: {name!r}") from None


def _select(config: PruneConfig, model: Any, num_layers: int, rescan: Callable | None,
            score: Callable | None) -> tuple[list[int], dict[str, Any]]:
    """The layers to remove and how they were chosen (recorded in pruning.json)."""
    if config.drop:
        return parse_drop(config.drop, num_layers), {"strategy": "drop", "drop": config.drop}
    if config.fraction is not None:
        n = strategies.layers_for_fraction(config.fraction, num_layers)
    else:
        n = config.remove
    record: dict[str, Any] = {"strategy": config.strategy, "n": n, "fraction": config.fraction}
    if config.strategy == "last":
        return strategies.last(num_layers, n), record
    if config.strategy in strategies.SCAN_STRATEGIES:
        scan, scan_path = _read_scan(config.scan)
        scanned_layers = strategies.scan_num_layers(scan)
        if scanned_layers != num_layers:
            raise UserError(f"--scan {config.scan}: scanned a {scanned_layers}-layer decoder, --model has {num_layers} layers")
        from speechprune.model.decoder import text_config

        strategies.check_scan_fits(scan, text_config(model.causal_lm), config.scan)
        record.update(scan=str(scan_path.resolve()), input=strategies.resolve_input(scan, config.input),
                      region=config.region)
        removed = strategies.choose_from_scan(config.strategy, scan, n, config.input, config.region)
        if config.strategy == "angular" and n:
            distance = strategies.scan_matrix(scan, "angular", config.input, config.region)
            record["block_distance"] = distance[removed[0]][removed[0] + n]
        return removed, record

    # iterative / greedy-score: measured on the model itself
    needed = rescan if config.strategy == "iterative" else score
    if needed is None:
        if not config.data:
            raise UserError(f"--strategy {config.strategy} measures the model on a calibration set: give --data MANIFEST")
        from speechprune.prune.calibration import calibration_batches, loss_score, scan_rescan

        input_name = config.input if config.input != "auto" else ("speech" if "speech" in model.sources else "text")
        layout = model.resolve_layout(config.layout)
        if config.strategy == "iterative" and config.region not in LAYOUT_REGIONS[layout]:
            raise UserError(f"--region {config.region}: the {layout} layout has only {', '.join(LAYOUT_REGIONS[layout])}")
        model.module.to(_device(config.device))
        batches = calibration_batches(model, config.data, input_name, config.batch_size, config.max_utterances,
                                      layout, config.text_column, config.split)
        data_path = Path(config.data)
        record.update(data=str(data_path.resolve()) if data_path.exists() else config.data, input=input_name,
                      layout=layout, utterances=sum(int(b.attention_mask.shape[0]) for b in batches))
        if config.strategy == "iterative":
            rescan = scan_rescan(batches, input_name, [config.region])
            record["region"] = config.region
        else:
            score = loss_score(batches)
            record["score"] = "next-token cross-entropy" if layout == "plain" else "target cross-entropy"
    trace: list[dict] = []
    measure = rescan if config.strategy == "iterative" else score
    # iterative: one re-scan per removed layer; greedy-score: every remaining layer scored per round
    total = n if config.strategy == "iterative" else sum(num_layers - k for k in range(n))
    with Progress(f"prune {config.strategy}", total, "scans" if config.strategy == "iterative" else "candidates") \
            as shown:
        measured = _Counted(measure, shown)
        if config.strategy == "iterative":
            removed = strategies.iterative(model.causal_lm, n, measured, config.input, config.region, trace=trace)
        else:
            removed = strategies.greedy_score(model.causal_lm, n, measured, trace=trace)
    model.module.to("cpu")  # the export and its check run on CPU
    record["steps"] = trace
    return removed, record


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


def mergekit_yaml(model_path: str | Path, ranges: list[list[int]], dtype: str, note: str = "") -> str:
    """A mergekit passthrough recipe that slices the kept ranges out of the original decoder."""
    lines = [
        "# mergekit passthrough: the kept decoder layers of the original model.",
        "# layer_range is [start, end): 0-based, end-exclusive.",
        *([f"# mergekit {note}."] if note else []),
        "slices:",
    ]
    for start, end in ranges:
        lines += ["  - sources:", f"      - model: {_yaml_string(str(model_path))}", f"        layer_range: [{start}, {end}]"]
    lines += ["merge_method: passthrough", f"dtype: {dtype}", ""]
    return "\n".join(lines)


def _yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _probe_ids(model: Any) -> torch.Tensor:
    """Random token ids for the export check, avoiding the speech placeholder (whose embedding a
    speech-LLM replaces by audio features)."""
    from speechprune.model.decoder import text_config

    causal_lm = model.causal_lm
    vocab = int(getattr(text_config(causal_lm), "vocab_size", 0) or causal_lm.get_input_embeddings().num_embeddings)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 16), generator=generator)
    reserved = getattr(model, "speech_token_id", None)
    return ids if reserved is None else torch.where(ids == reserved, (ids + 1) % vocab, ids)


@torch.no_grad()
def reference_logits(causal_lm: Any, skip: list[int], input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the untouched model with the layers ``skip`` made identities by forward hooks (a
    different mechanism from the surgery, so it checks it)."""
    from speechprune.model.decoder import decoder_layers

    def identity(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    layers = decoder_layers(causal_lm)
    handles = [layers[i].register_forward_hook(identity, with_kwargs=True) for i in skip]
    try:
        device = next(causal_lm.parameters()).device
        return causal_lm(input_ids.to(device), use_cache=False).logits.float().cpu()
    finally:
        for handle in handles:
            handle.remove()


def _tolerance(reference: torch.Tensor, dtype: torch.dtype) -> float:
    scale = max(1.0, float(reference.abs().max()))
    return scale * (1e-5 if dtype in (torch.float32, torch.float64) else 2e-2)


@torch.no_grad()
def verify_export(reload: Callable[[Path], tuple[Any, dict]], path: Path, num_layers: int, reference: torch.Tensor,
                  input_ids: torch.Tensor) -> dict[str, Any]:
    """Reload ``path`` with ``reload`` (``from_pretrained`` of the original's class) and check: no
    weight missing or newly initialised, ``num_layers`` layers, logits equal ``reference`` and cached
    decoding equals uncached. UserError if not."""
    from speechprune.model.decoder import decoder_layers

    model, info = reload(path)
    model.eval()
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise UserError(f"export check: {path} reloads with {problems}; refusing to write it")
    if len(decoder_layers(model)) != num_layers:
        raise UserError(f"export check: {path} reloads with {len(decoder_layers(model))} layers, not {num_layers}")
    dtype = next(model.parameters()).dtype
    tolerance = _tolerance(reference, dtype)
    logits = model(input_ids, use_cache=False).logits.float()
    logits_error = float((logits - reference).abs().max())
    if not logits_error <= tolerance:
        raise UserError(f"export check: the pruned {type(model).__name__} differs from the original with the layers "
                        f"skipped by {logits_error:.3g} (tolerance {tolerance:.3g}); this architecture is not supported")
    prefix = model(input_ids[:, :-1], use_cache=True)
    step = model(input_ids[:, -1:], cache=prefix.cache, use_cache=True).logits[:, -1].float()
    cache_error = float((step - logits[:, -1]).abs().max())
    if not cache_error <= tolerance:
        raise UserError(f"export check: cached decoding of the pruned {type(model).__name__} differs from uncached "
                        f"by {cache_error:.3g} (tolerance {tolerance:.3g})")
    return {"logits_max_abs_error": logits_error, "cached_max_abs_error": cache_error, "tolerance": tolerance}


@claims_output("prune", directory=lambda config: not config.writes_gguf)
def prune(config: PruneConfig, rescan: Callable[[Any], dict] | None = None,
          score: Callable[[Any], float] | None = None) -> dict[str, Any]:
    """Remove decoder layers and export a standard checkpoint of the same kind as the input (from a
    GGUF model, also a GGUF file in its own quantization: --format gguf or an --out ending in .gguf).

    Layers come from --drop, or --remove/--fraction with --strategy: angular and bi choose from
    --scan, last needs nothing, iterative and greedy-score measure the model on --data (encoded once).
    From Python, ``rescan(model) -> scan dict`` (iterative) and ``score(model) -> float`` (greedy-score,
    lower is better) replace --data. Returns what pruning.json records.
    """
    from speechprune.model.decoder import decoder_layers
    from speechprune.model.interface import load_model

    out = Path(config.out)
    root = Path(config.model)
    if root.exists() and (out.resolve() == root.resolve() or root.resolve() in out.resolve().parents):
        raise UserError(f"--out {config.out} must not be --model or lie inside it")
    if config.writes_gguf:
        from speechprune.prune import gguf_export

        gguf_plan = gguf_export.plan(config.model)  # refuses what it cannot rewrite, before any work
    model = load_model(config.model)
    _refuse_unsafe(model)
    num_layers = len(decoder_layers(model.causal_lm))

    removed, record = _select(config, model, num_layers, rescan, score)
    probe = _probe_ids(model)
    reference = reference_logits(model.causal_lm, removed, probe) if config.verify else None
    parameters_before = sum(p.numel() for p in model.decoder_parameters())
    kept = remove_layers(model.causal_lm, removed)
    dtype = str(next(model.causal_lm.parameters()).dtype).removeprefix("torch.")
    ranges = kept_ranges(kept)
    previous = root / "pruning.json"
    pruning = {
        "index_convention": INDEX_CONVENTION + " Only receiving_layers index the pruned decoder.",
        "model": str(Path(model.path).resolve()) if Path(model.path).exists() else config.model,
        "kind": model.kind,
        "class": type(model.module).__name__,
        "original_num_layers": num_layers,
        "num_layers": len(kept),
        "removed": removed,
        "kept": kept,
        "kept_ranges": ranges,
        "removed_blocks": kept_ranges(removed),
        # indices in the PRUNED model: the layer now fed by each removed block (heal's receiving-mlp)
        "receiving_layers": receiving_layers(kept, num_layers),
        "decoder_parameters": {"before": parameters_before,
                               "after": sum(p.numel() for p in model.decoder_parameters())},
        **record,
        "dtype": dtype,
        "config": asdict(config),
    }
    if previous.is_file():
        pruning["previous_pruning"] = read_json(previous)
    if config.writes_gguf:
        pruning.update(gguf_export.export(gguf_plan, model, removed, pruning, out, reference, probe))
        show(summary(pruning, out))
        return pruning

    with staged_dir(out) as stage:
        checkpoint = model.save_pruned(stage)
        if getattr(model, "not_copied", None) is not None:
            pruning["not_copied"] = model.not_copied
        source_checkpoint, note, reload = model.source_checkpoint(), model.mergekit_note, model.reload_causal_lm
        if reference is not None:
            model.release()  # the original's weights are not needed while the export is reloaded
            pruning["verification"] = verify_export(reload, checkpoint, len(kept), reference, probe)
        if source_checkpoint is not None:
            write_text(stage / "mergekit.yaml", mergekit_yaml(source_checkpoint.resolve(), ranges, dtype, note))
        else:
            pruning["mergekit"] = f"no mergekit.yaml: mergekit {note}"
        write_json(stage / "pruning.json", pruning)
        save_config(config, stage / "config.yaml")
    show(summary(pruning, out))
    return pruning


def summary(pruning: dict[str, Any], out: Path) -> Any:
    """The terminal's account of a prune: what went, what is left, and whether the export checks out."""
    blocks = ", ".join(f"[{start}, {end})" for start, end in pruning["removed_blocks"]) or "none"
    params = pruning["decoder_parameters"]
    check = pruning.get("verification")
    verified = (f"passed: max |logit difference| to the original with those layers skipped "
                f"{check['logits_max_abs_error']:.2g} (tolerance {check['tolerance']:.2g})" if check
                else "not run (--verify false)")
    how = pruning["strategy"] + "".join(f", {key} {pruning[key]}" for key in ("input", "region") if key in pruning)
    sizes = []
    if pruning.get("format") == "gguf":
        from speechprune.prune.gguf_export import summary_rows

        sizes = summary_rows(pruning)
    return table(f"prune: {pruning['original_num_layers']} -> {pruning['num_layers']} decoder layers -> {out}",
                 ("", ""), [
                     ("removed layers (0-based)", f"{' '.join(map(str, pruning['removed'])) or 'none'}  blocks {blocks}"),
                     ("chosen by", how),
                     ("decoder parameters", f"{params['before']:,} -> {params['after']:,} "
                                            f"({params['after'] / params['before']:.1%})"),
                     *sizes,
                     ("reload check", verified),
                 ], header=False)
