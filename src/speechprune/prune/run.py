"""``speechprune prune``: choose decoder layers (by hand or from a scan), cut them out through the one
pruning path (:func:`~speechprune.prune.apply.prune_model`, which the sweep takes too), and export the
same kind of directory that came in, checked before it is moved into place.

Input: a SpeechLLM directory (``speechllm.json`` and a ``decoder/`` subfolder holding a standard
Hugging Face causal LM; everything else is copied as it is, only ``decoder/`` is pruned) or a plain
Hugging Face causal-LM directory (weights, config and tokenizer files).
Output: the pruned directory, plus ``pruning.json`` (what was removed and why) and
``mergekit.yaml`` (a mergekit passthrough recipe that rebuilds the pruned decoder from the original).
A GGUF input can also be written as a GGUF file, still quantized (``prune/gguf_export.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from speechprune.config import save_config
from speechprune.console import show, table
from speechprune.errors import UserError
from speechprune.files import claims_output, read_json, staged_dir, write_json, write_text
from speechprune.model.device import DTYPES, as_run, resolve_device
from speechprune.model.layout import LAYOUT_REGIONS
from speechprune.options.prune import PruneConfig
from speechprune.prune.apply import Measurement, Selection, parse_drop, prune_model, read_scan  # noqa: F401  (parse_drop: re-exported)
from speechprune.prune.verify import probe_ids, reference_logits, verify_export


def _selection(config: PruneConfig) -> Selection:
    if config.drop:
        return Selection(drop=config.drop)
    return Selection(strategy=config.strategy, count=config.remove, fraction=config.fraction,
                     scan=read_scan(config.scan) if config.scan else None, scan_path=config.scan,
                     input=config.input, region=config.region)


def _measurement(config: PruneConfig, model: Any, rescan: Callable | None,
                 score: Callable | None) -> Callable[[], Measurement]:
    """The measurement of --strategy iterative / greedy-score: ``rescan`` / ``score`` as given, else
    built on --data (encoded once, on --device)."""

    def measurement() -> Measurement:
        given = rescan if config.strategy == "iterative" else score
        if given is not None:
            return Measurement(given)
        if not config.data:
            raise UserError(f"--strategy {config.strategy} measures the model on a calibration set: give --data MANIFEST")
        from speechprune.prune.calibration import calibration_batches, loss_score, scan_rescan

        input_name = config.input if config.input != "auto" else ("speech" if "speech" in model.sources else "text")
        layout = model.resolve_layout(config.layout)
        if config.strategy == "iterative" and config.region not in LAYOUT_REGIONS[layout]:
            raise UserError(f"--region {config.region}: the {layout} layout has only {', '.join(LAYOUT_REGIONS[layout])}")
        model.module.to(resolve_device(config.device))
        batches = calibration_batches(model, config.data, input_name, config.batch_size, config.max_utterances,
                                      layout, config.text_column, config.split)
        data_path = Path(config.data)
        record = {"data": str(data_path.resolve()) if data_path.exists() else config.data, "input": input_name,
                  "layout": layout, "utterances": sum(int(b.attention_mask.shape[0]) for b in batches)}
        if config.strategy == "iterative":
            return Measurement(scan_rescan(batches, input_name, [config.region]), {**record, "region": config.region})
        return Measurement(loss_score(batches), {**record, "score": "next-token cross-entropy" if layout == "plain"
                                                 else "target cross-entropy"})

    return measurement


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
    from speechprune.model.interface import load_model

    out = Path(config.out)
    root = Path(config.model)
    if root.exists() and (out.resolve() == root.resolve() or root.resolve() in out.resolve().parents):
        raise UserError(f"--out {config.out} must not be --model or lie inside it")
    selection = _selection(config)
    resolve_device(config.device)  # a device this machine lacks: one line, before any work
    if config.writes_gguf:
        from speechprune.prune import gguf_export

        gguf_plan = gguf_export.plan(config.model)  # refuses what it cannot rewrite, before any work
    model = load_model(config.model, dtype=config.dtype, loading=config.loading)
    probe = probe_ids(model)
    reference = None

    def take_reference(removed: list[int]) -> None:
        nonlocal reference
        model.module.to("cpu")  # the export and its check run on CPU (--data may have run elsewhere)
        if config.verify:
            reference = reference_logits(model.causal_lm, removed, probe)

    pruning = prune_model(model, selection, _measurement(config, model, rescan, score), take_reference)
    ranges, dtype = pruning["kept_ranges"], pruning["dtype"]
    config = as_run(config, dtype=dtype if dtype in DTYPES else None)  # what ran: the device and dtype resolved
    pruning["config"] = asdict(config)
    previous = root / "pruning.json"
    if previous.is_file():
        pruning["previous_pruning"] = read_json(previous)
    if config.writes_gguf:
        pruning.update(gguf_export.export(gguf_plan, model, pruning["removed"], pruning, out, reference, probe))
        show(summary(pruning, out))
        return pruning

    with staged_dir(out) as stage:
        checkpoint = model.save_pruned(stage)
        if getattr(model, "not_copied", None) is not None:
            pruning["not_copied"] = model.not_copied
        source_checkpoint, note, reload = model.source_checkpoint(), model.mergekit_note, model.reload_causal_lm
        if reference is not None:
            model.release()  # the original's weights are not needed while the export is reloaded
            pruning["verification"] = verify_export(reload, checkpoint, pruning["num_layers"], reference, probe)
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
