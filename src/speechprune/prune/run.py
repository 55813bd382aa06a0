"""``speechprune prune``: choose decoder layers (by hand or from a scan), cut them out with the one
surgery, and export the same kind of directory that came in, checked before it is moved into place.

Input: a SpeechLLM directory (``speechllm.json`` and a ``decoder/`` subfolder holding a standard
Hugging Face causal LM; everything else is copied as it is, only ``decoder/`` is pruned) or a plain
Hugging Face causal-LM directory (weights, config and tokenizer files).
Output: the pruned directory, plus ``pruning.json`` (what was removed and why) and
``mergekit.yaml`` (a mergekit passthrough recipe that rebuilds the pruned decoder from the original).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from speechprune.config import option, require, save_config
from speechprune.console import Progress, show, table
from speechprune.errors import UserError
from speechprune.files import read_json, staged_dir, write_json, write_text
from speechprune.prune import strategies
from speechprune.prune.surgery import (
    INDEX_CONVENTION,
    kept_ranges,
    receiving_layers,
    remove_layers,
    validate_indices,
)

SPEECHLLM_FILE = "speechllm.json"
DECODER_DIR = "decoder"
# Files that save_pretrained writes itself, or that describe the old weights: never copied over.
_NOT_COPIED = re.compile(
    r"(\.safetensors|\.bin|\.pt|\.pth|\.ckpt|\.gguf|\.index\.json)$|^(config\.json|generation_config\.json"
    r"|pruning\.json|mergekit\.yaml|config\.yaml)$"
)


@dataclass
class PruneConfig:
    model: str = option(help="SpeechLLM directory (speechllm.json + decoder/) or plain Hugging Face causal-LM directory")
    out: str = option(help="output directory, of the same kind as --model")
    drop: str = option("", help="layers to remove: 0-based, end-exclusive START:END blocks, e.g. 10:14,20:22")
    remove: int | None = option(None, help="number of layers to remove, chosen by --strategy")
    fraction: float | None = option(None, help="fraction of layers to remove, chosen by --strategy: "
                                               "n = floor(fraction*L + 0.5), at most L-1")
    strategy: str = option("angular", help="angular | bi (from --scan) | last | iterative | greedy-score (on --data)")
    scan: str = option("", help="scan directory (holding scan.json) for --strategy angular or bi")
    input: str = option(strategies.DEFAULT_INPUT, help="input to choose by: speech | text | auto (speech when the "
                                                       "scan / model has it, else text)")
    region: str = option(strategies.DEFAULT_REGION, help="scan region to choose by: speech | prompt | target | last | all")
    data: str = option("", help="calibration manifest for --strategy iterative (re-scanned after every removal) "
                                "and greedy-score (target loss); encoded once and cached")
    max_utterances: int = option(0, help="use only the first N utterances of --data (0 = all)")
    batch_size: int = option(8, help="utterances per forward on --data")
    device: str = option("auto", help="where --data is run: auto | cpu | cuda | cuda:N (the export itself is on CPU)")
    verify: bool = option(True, help="reload the export and check it reproduces the original with the layers "
                                     "skipped (logits, cached decoding)")

    def __post_init__(self) -> None:
        require(bool(self.model), "--model is empty")
        require(bool(self.out), "--out is empty")
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
        require(self.max_utterances >= 0, f"--max-utterances must be 0 or more, not {self.max_utterances}")
        require(self.batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}")


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


@dataclass
class _Source:
    root: Path  # what --model named
    decoder: Path  # the HF causal-LM directory inside it (root itself for a plain LM)
    kind: str  # "speechllm" or "causal-lm"


def _source(model: str) -> _Source:
    root = Path(model)
    if not root.is_dir():
        raise UserError(f"--model {model}: no such directory (a SpeechLLM or Hugging Face causal-LM directory)")
    if (root / SPEECHLLM_FILE).is_file():
        decoder = root / DECODER_DIR
        if not (decoder / "config.json").is_file():
            raise UserError(f"--model {model}: a SpeechLLM directory needs {DECODER_DIR}/config.json (a Hugging Face causal LM)")
        return _Source(root, decoder, "speechllm")
    if (root / "config.json").is_file():
        return _Source(root, root, "causal-lm")
    raise UserError(f"--model {model}: neither a SpeechLLM directory ({SPEECHLLM_FILE}) nor a Hugging Face model (config.json)")


def _num_layers(decoder: Path) -> int:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(decoder)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{decoder}/config.json: cannot be read as a Hugging Face config ({error})".splitlines()[0]) from None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(num_layers, int):
        raise UserError(f"{decoder}/config.json: no num_hidden_layers")
    return num_layers


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


def _select(config: PruneConfig, source: _Source, num_layers: int, rescan: Callable | None,
            score: Callable | None, load: Callable[[], Any]) -> tuple[list[int], dict[str, Any]]:
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
        record.update(scan=str(scan_path.resolve()), input=strategies.resolve_input(scan, config.input),
                      region=config.region)
        removed = strategies.choose_from_scan(config.strategy, scan, n, config.input, config.region)
        if config.strategy == "angular" and n:
            distance = strategies.scan_matrix(scan, "angular", config.input, config.region)
            record["block_distance"] = distance[removed[0]][removed[0] + n]
        return removed, record

    # iterative / greedy-score: measured on the model itself
    model = None
    needed = rescan if config.strategy == "iterative" else score
    if needed is None:
        if not config.data:
            raise UserError(f"--strategy {config.strategy} measures the model on a calibration set: give --data MANIFEST")
        from speechprune.prune.calibration import cached_decoder_inputs, loss_score, scan_rescan

        input_name = config.input if config.input != "auto" else ("speech" if source.kind == "speechllm" else "text")
        model, batches = cached_decoder_inputs(str(source.root), config.data, input_name, config.batch_size,
                                               config.max_utterances, _device(config.device))
        record.update(data=str(Path(config.data).resolve()), input=input_name,
                      utterances=sum(int(b.attention_mask.shape[0]) for b in batches))
        if config.strategy == "iterative":
            rescan = scan_rescan(batches, input_name, [config.region])
            record["region"] = config.region
        else:
            score = loss_score(batches)
            record["score"] = "target cross-entropy"
    model = model if model is not None else load()
    trace: list[dict] = []
    measure = rescan if config.strategy == "iterative" else score
    # iterative: one re-scan per removed layer; greedy-score: every remaining layer scored per round
    total = n if config.strategy == "iterative" else sum(num_layers - k for k in range(n))
    with Progress(f"prune {config.strategy}", total, "scans" if config.strategy == "iterative" else "candidates") \
            as shown:
        def measured(candidate_model: Any) -> Any:
            result = measure(candidate_model)
            shown.advance()
            return result

        if config.strategy == "iterative":
            removed = strategies.iterative(model, n, measured, config.input, config.region, trace=trace)
        else:
            removed = strategies.greedy_score(model, n, measured, trace=trace)
    record["steps"] = trace
    return removed, record


def mergekit_yaml(model_path: str | Path, ranges: list[list[int]], dtype: str) -> str:
    """A mergekit passthrough recipe that slices the kept ranges out of the original decoder."""
    lines = [
        "# mergekit passthrough: the kept decoder layers of the original model.",
        "# layer_range is [start, end): 0-based, end-exclusive.",
        "slices:",
    ]
    for start, end in ranges:
        lines += ["  - sources:", f"      - model: {_yaml_string(str(model_path))}", f"        layer_range: [{start}, {end}]"]
    lines += ["merge_method: passthrough", f"dtype: {dtype}", ""]
    return "\n".join(lines)


def _yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _copy_files(source: Path, target: Path, skip: Callable[[Path], bool]) -> list[str]:
    """Copy ``source``'s entries (recursively) except hidden ones and those ``skip`` names;
    return the relative paths skipped."""
    skipped: list[str] = []

    def ignore(folder: str, names: list[str]) -> list[str]:
        left_out = [n for n in names if n.startswith(".") or skip(Path(folder) / n)]
        skipped.extend(str((Path(folder) / n).relative_to(source)) for n in left_out if not n.startswith("."))
        return left_out

    for entry in sorted(source.iterdir()):
        if entry.name in ignore(str(source), [entry.name]):
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, ignore=ignore)
        else:
            shutil.copy2(entry, target / entry.name)
    return skipped


def _load(decoder: Path):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(decoder, dtype="auto").eval()
    except (OSError, ValueError) as error:
        raise UserError(f"{decoder}: cannot load as a Hugging Face causal LM ({str(error).splitlines()[0]})") from None


def _probe_ids(causal_lm: Any) -> torch.Tensor:
    from speechprune.model.decoder import text_config

    vocab = int(getattr(text_config(causal_lm), "vocab_size", 0) or causal_lm.get_input_embeddings().num_embeddings)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (2, 16), generator=generator)


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
def verify_export(path: Path, num_layers: int, reference: torch.Tensor, input_ids: torch.Tensor) -> dict[str, Any]:
    """Reload ``path`` with plain ``AutoModelForCausalLM.from_pretrained`` and check: no weight
    missing or newly initialised, ``num_layers`` layers, logits equal ``reference`` and cached
    decoding equals uncached. UserError if not."""
    from transformers import AutoModelForCausalLM

    from speechprune.model.decoder import decoder_layers

    model, info = AutoModelForCausalLM.from_pretrained(path, dtype="auto", output_loading_info=True)
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


def prune(config: PruneConfig, rescan: Callable[[Any], dict] | None = None,
          score: Callable[[Any], float] | None = None) -> dict[str, Any]:
    """Remove decoder layers and export a standard checkpoint of the same kind as the input.

    Layers come from --drop, or --remove/--fraction with --strategy: angular and bi choose from
    --scan, last needs nothing, iterative and greedy-score measure the model on --data (encoded once).
    From Python, ``rescan(model) -> scan dict`` (iterative) and ``score(model) -> float`` (greedy-score,
    lower is better) replace --data. Returns what pruning.json records.
    """
    source = _source(config.model)
    out = Path(config.out)
    if out.resolve() == source.root.resolve() or source.root.resolve() in out.resolve().parents:
        raise UserError(f"--out {config.out} must not be --model or lie inside it")
    num_layers = _num_layers(source.decoder)

    loaded: list[Any] = []

    def load() -> Any:
        if not loaded:
            loaded.append(_load(source.decoder))
        return loaded[0]

    removed, record = _select(config, source, num_layers, rescan, score, load)
    model = load()
    probe = _probe_ids(model)
    reference = reference_logits(model, removed, probe) if config.verify else None
    parameters_before = sum(p.numel() for p in model.parameters())
    kept = remove_layers(model, removed)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    ranges = kept_ranges(kept)
    previous = source.root / "pruning.json"
    pruning = {
        "index_convention": INDEX_CONVENTION + " Only receiving_layers index the pruned decoder.",
        "model": str(source.root.resolve()),
        "kind": source.kind,
        "original_num_layers": num_layers,
        "num_layers": len(kept),
        "removed": removed,
        "kept": kept,
        "kept_ranges": ranges,
        "removed_blocks": kept_ranges(removed),
        # indices in the PRUNED model: the layer now fed by each removed block (heal's receiving-mlp)
        "receiving_layers": receiving_layers(kept, num_layers),
        "decoder_parameters": {"before": parameters_before, "after": sum(p.numel() for p in model.parameters())},
        **record,
        "dtype": dtype,
        "config": asdict(config),
    }
    if previous.is_file():
        pruning["previous_pruning"] = read_json(previous)

    with staged_dir(out) as stage:
        if source.kind == "speechllm":
            # The decoder is written anew; the LoRA adapters of the unpruned decoder (already merged
            # into it) name layers that no longer exist, so they are left out.
            stale = {source.root / DECODER_DIR, source.root / "adapters" / DECODER_DIR,
                     source.root / "pruning.json", source.root / "mergekit.yaml",
                     source.root / "config.yaml"}  # the recipe of the unpruned model; this one's is written below
            skipped = _copy_files(source.root, stage, lambda p: p in stale)
            pruning["not_copied"] = [p for p in skipped if p != DECODER_DIR]
            target = stage / DECODER_DIR
        else:
            target = stage
        target.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(target)
        _copy_files(source.decoder, target, lambda p: p.is_dir() or _NOT_COPIED.search(p.name) is not None)
        if reference is not None:
            del model, loaded[:]
            pruning["verification"] = verify_export(target, len(kept), reference, probe)
        write_json(stage / "pruning.json", pruning)
        write_text(stage / "mergekit.yaml", mergekit_yaml(source.decoder.resolve(), ranges, dtype))
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
    return table(f"prune: {pruning['original_num_layers']} -> {pruning['num_layers']} decoder layers -> {out}",
                 ("", ""), [
                     ("removed layers (0-based)", f"{' '.join(map(str, pruning['removed'])) or 'none'}  blocks {blocks}"),
                     ("chosen by", how),
                     ("decoder parameters", f"{params['before']:,} -> {params['after']:,} "
                                            f"({params['after'] / params['before']:.1%})"),
                     ("reload check", verified),
                 ], header=False)
