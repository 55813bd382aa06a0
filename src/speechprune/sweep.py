"""The pruning sweep: for every (strategy, fraction removed, healing) prune -> heal -> evaluate,
with model size against the unpruned model, and the largest acceptable fraction per strategy
and healing (decode speed is left to bench/: see ``SPEED_NOTE``).

Acceptability (per test set):
- ASR: WER <= max(baseline WER x (1 + ``wer_rise``), baseline WER + ``wer_floor``). The relative
  rule is Moumen et al.'s (2026, +25%); the absolute floor keeps a near-zero baseline (0.5% WER) from
  failing every pruning level over one extra word.
- ST: BLEU >= baseline BLEU x (1 - ``bleu_drop``) (default: at most 25% relative loss, the same
  budget as for WER).
- A plain LLM (``--metric perplexity``, its default): perplexity on the test texts <= baseline
  perplexity x (1 + ``perplexity_rise``).
Each rule is judged with a paired bootstrap over the test utterances (:mod:`speechprune.bootstrap`),
in looks: a cell reads the first 100 test utterances of a set, then 200, 400, 800 (``--looks``) while
its verdict is undecided, and stops at the first look that decides; the baseline is scored as far as
any cell needed, and every look pairs the two on the same utterances. At each of K looks a cell is
``acceptable`` when the whole interval (level 1 - 2 alpha / K) of its margin to the limit is inside it,
``not acceptable`` when the whole interval is outside, and ``undecided`` otherwise; undecided after
the last look is the final word of that test size (docs/verdicts.md). The
largest acceptable fraction of a line is the largest level that it and every smaller one are
decided acceptable at; the largest not ruled out (acceptable or undecided) is its upper end.
Both end below a set's first not-acceptable cell, so ``--stop-line`` may leave a line's larger
fractions unrun once they cannot change them (:func:`_line_stops`).

Every cell prunes its model through the one pruning path (:func:`~speechprune.prune.apply.prune_model`):
it is the model that ``prune`` makes from the same scan, and what ``prune`` refuses (an architecture
whose layers cannot be removed safely, a scan of another model) the sweep refuses at its first cell.

Every cell writes ``cells/<name>.json`` as it finishes; a rerun skips finished cells. A cell is its
model with some layers removed, measured on the test utterances: one that removes the same layers as
a finished cell of this sweep (two strategies choosing one block) or of a ``--reuse`` sweep of the same
model, test sets, decoding and healing is that cell's copy (``reused_from`` names it), not a new run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from speechprune.config import save_config
from speechprune.console import counts, plural, show, table
from speechprune.data.sources import load_data
from speechprune.bootstrap import Looks, SequentialVerdict, Verdict, sequential
from speechprune.bootstrap import verdict as bootstrap_verdict
from speechprune.evaluate import measure, metric_statistics, rescore, resolve_metric, test_set_name
from speechprune.files import atomic_path, claims_output, read_json, write_json, write_text
from speechprune.heal import heal_model, healing_layers, lora_targets, merge_lora
from speechprune.model.decoder import decoder_layers
from speechprune.model.interface import LoadedModel, load_model
from speechprune.options.sweep import SweepConfig
from speechprune.prune.apply import Selection, choose_layers, prune_model, read_scan
from speechprune.prune.strategies import choose_from_scan, layers_for_fraction
from speechprune.prune.prefill import prefill_skip

PREFILL_ONLY = "prefill-only"  # a sweep column beside the healing settings: layers skipped in the prefix only


def _cell_name(strategy: str, removed: int, heal: str) -> str:
    return "baseline" if removed == 0 else f"{strategy}-remove{removed}-{heal}"


def _model_bytes(model: LoadedModel) -> dict:
    decoder = sum(p.numel() * p.element_size() for p in model.decoder_parameters())
    return {"decoder_bytes": decoder, "model_bytes": sum(p.numel() * p.element_size() for p in model.module.parameters())}


def decoding_limit(model: LoadedModel, test_sets: dict, config: SweepConfig) -> int:
    """Tokens a cell may generate per utterance: ``--max-new-tokens``, else twice the longest
    reference of the test sets in the model's tokens, plus 16. A pruned model that has lost its
    way otherwise writes to the evaluation's limit on every utterance (measured: a SmolLM2
    SpeechLLM with 6 of 30 layers removed decoded 200 utterances in 383 s, the unpruned one in
    37 s); a hypothesis twice as long as any reference is already far past every acceptability rule."""
    if config.max_new_tokens is not None:
        return config.max_new_tokens
    longest = max(len(model.tokenizer(u.target, add_special_tokens=False).input_ids)
                  for utterances in test_sets.values() for u in utterances)
    return 2 * longest + 16


def _score_more(model: LoadedModel, cell: dict, set_name: str, utterances: list, upto: int, batch_size: int,
                metric: str, max_new_tokens: int | None) -> None:
    """Decode (or score the perplexity of) a test set's utterances ``len(rows)..upto`` and add them
    to ``cell``: its rows of the set, in test order, and the set's metrics over all of them."""
    have = cell["rows"].setdefault(set_name, [])
    if upto <= len(have):
        return
    decoding = {"max_new_tokens": max_new_tokens} if max_new_tokens is not None else {}
    more = measure(model, utterances[len(have):upto], metric, batch_size, **decoding)
    have += more.rows
    seconds = cell["sets"].get(set_name, {}).get("decode_seconds", 0.0) + more.metrics["decode_seconds"]
    cell["sets"][set_name] = {**rescore(metric, have, more.metrics), "decode_seconds": seconds}


def _new_cell(model: LoadedModel, test_sets: dict) -> dict:
    """The measurement part of a cell before any utterance is scored: sizes, and on CUDA peak memory."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return {"sets": {}, "rows": {}, "test_utterances": {name: len(u) for name, u in test_sets.items()},
            **_model_bytes(model)}


def _measure_in_looks(model: LoadedModel, cell: dict, test_sets: dict, config: SweepConfig, metric: str,
                      max_new_tokens: int | None, baseline: "Baseline | None") -> None:
    """Score each test set look by look (:class:`~speechprune.bootstrap.Looks`): the first look's
    utterances, then, while the cell's verdict against ``baseline`` on the set is undecided, up to
    the next look. The baseline itself (``baseline`` None) scores the first look only; it is
    extended when a cell needs more (:meth:`Baseline.extend`)."""
    looks = _looks(config)
    for set_name, utterances in test_sets.items():
        upto = looks.plan(len(utterances))[0]
        while upto is not None:
            _score_more(model, cell, set_name, utterances, upto, config.batch_size, metric, max_new_tokens)
            if baseline is None:
                break
            baseline.extend(set_name, upto)
            upto = set_verdict(cell, baseline.cell, set_name, config).next_look
    if torch.cuda.is_available():
        cell["peak_memory_bytes"] = torch.cuda.max_memory_allocated()


class Baseline:
    """The unpruned model's cell, scored over as many utterances of each set as any cell needs: it
    starts at the first look and is extended (the model loaded again, the missing utterances
    scored, the cell file rewritten) when a cell's look needs more of it."""

    def __init__(self, cell: dict, path: Path, config: SweepConfig, scan, test_sets: dict, speech: dict | None = None):
        self.cell, self.path, self.config, self.scan, self.test_sets = cell, path, config, scan, test_sets
        self.speech = speech

    def extend(self, set_name: str, upto: int) -> None:
        if len(self.cell["rows"].get(set_name, [])) >= upto:
            return
        print(f"sweep: baseline scored on {upto} utterances of {set_name} (a look needs them)", file=sys.stderr,
              flush=True)
        model, _ = pruned_model(self.config, self.scan, "last", 0.0)
        if self.speech is not None:
            model.share_speech(self.speech)
        metric = resolve_metric(self.config.metric, model)
        _score_more(model, self.cell, set_name, self.test_sets[set_name], upto, self.config.batch_size, metric,
                    self.cell.get("max_new_tokens"))
        write_json(self.path, self.cell)
        del model


def pruned_model(config: SweepConfig, scan: dict, strategy: str, fraction: float,
                 prefill_only: bool = False) -> tuple[LoadedModel, dict]:
    """The model of one cell and its pruning record, through the one pruning path that ``prune``
    takes (same choice, same surgery, same refusals). The baseline (fraction 0) removes nothing;
    ``prefill_only`` chooses the same layers but leaves the model whole (they are skipped while the
    prefix is read)."""
    model = load_model(config.model, dtype=config.dtype, device=config.device, device_map=config.device_map, loading=config.loading)
    # at fraction 0 every strategy removes nothing; "last" is the one that reads nothing from the scan
    selection = Selection(strategy=strategy if fraction else "last", fraction=fraction, scan=scan,
                          scan_path=config.scan, input=config.input, region=config.region)
    if not prefill_only:
        return model, prune_model(model, selection)
    removed, how = choose_layers(model, selection)
    num_layers = len(decoder_layers(model.causal_lm))
    return model, {**how, "removed": removed, "kept": [i for i in range(num_layers) if i not in removed],
                   "original_num_layers": num_layers}


def _source(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).exists() else path  # a file, else a hub id


def measured_on(config: SweepConfig, heal: str) -> dict:
    """What a cell's numbers depend on besides the layers it removes: with these equal, two cells that
    remove the same layers are one measurement, whichever sweep made it."""
    found = {"model": _source(config.model), "test": [_source(p) for p in config.test],
             "max_test_utterances": config.max_test_utterances, "looks": list(config.looks), "alpha": config.alpha,
             "metric": config.metric,
             "max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size, "heal": heal}
    if heal not in ("none", PREFILL_ONLY):
        found |= {"train": [_source(p) for p in config.train], "heal_steps": config.heal_steps,
                  "heal_lr": config.heal_lr, "heal_projector": config.heal_projector}
        if config.heal_mixed_precision != "no":  # absent when float32, as in cells measured before the option
            found["heal_mixed_precision"] = config.heal_mixed_precision
    return found


def reusable_cell(config: SweepConfig, scan, strategy: str, n: int, heal: str, out: Path) -> dict | None:
    """A finished cell of this sweep or of a ``--reuse`` sweep that removes the layers this one would
    (chosen from the scan alone: no model is loaded) under the same :func:`measured_on`, as this
    cell; None when there is none."""
    removed = choose_from_scan(strategy, scan, n, config.input, config.region) if n else []
    wanted = measured_on(config, heal)
    for folder in [out, *map(Path, config.reuse)]:
        for path in sorted((folder / "cells").glob("*.json")):
            cell = read_json(path)
            if cell.get("measured_on") == wanted and cell["removed"] == removed:
                return {**cell, "strategy": strategy if n else "none", "reused_from": cell.get("reused_from", str(path))}
    return None


def run_cell(config: SweepConfig, scan: dict, strategy: str, fraction: float, heal: str, test_sets: dict,
             train_utterances: list, out: Path, baseline: Baseline | None, speech: dict | None = None) -> dict:
    """One cell: prune, heal, then score the test sets look by look against ``baseline`` (None:
    this is the baseline). ``speech``: the test utterances' projected speech, shared by the cells
    (:meth:`~speechprune.model.loaded.LoadedModel.share_speech`) unless this one healed its projector."""
    prefill_only = heal == PREFILL_ONLY
    model, pruning = pruned_model(config, scan, strategy, fraction, prefill_only)
    removed, kept, num_layers, n = pruning["removed"], pruning["kept"], pruning["original_num_layers"], pruning["n"]
    record = {"strategy": strategy if n else "none", "fraction": fraction, "removed_count": n, "heal": heal,
              "removed": removed, "kept_layers": len(kept), "original_layers": num_layers,
              "measured_on": measured_on(config, heal)}
    started = time.perf_counter()
    if heal not in ("none", PREFILL_ONLY) and n:
        targets = lora_targets(model.causal_lm, heal, healing_layers(kept, num_layers))
        checkpoints = out / "healing" / _cell_name(strategy, n, heal)
        heal_model(model, train_utterances, targets, checkpoints, config.heal_steps, config.heal_lr,
                   projector=config.heal_projector, batch_size=config.batch_size, resume=False,
                   mixed_precision=config.heal_mixed_precision)
        shutil.rmtree(checkpoints, ignore_errors=True)  # a healed cell is re-run whole, never resumed
        with contextlib.suppress(OSError):
            checkpoints.parent.rmdir()  # healing/ holds only the running cell's checkpoints
        merge_lora(model)
    record["heal_seconds"] = time.perf_counter() - started
    if speech is not None and not (config.heal_projector and heal not in ("none", PREFILL_ONLY) and n):
        model.share_speech(speech)  # pruning and healing the decoder leave encoder and projector as loaded
    with prefill_skip(model.causal_lm, removed if prefill_only else []):
        metric = resolve_metric(config.metric, model)
        limit = decoding_limit(model, test_sets, config) if metric == "decode" else None
        record.update(_new_cell(model, test_sets), max_new_tokens=limit)
        _measure_in_looks(model, record, test_sets, config, metric, limit, baseline)
    return record


RULES = {"wer": ("asr", False), "bleu": ("st", True), "perplexity": ("lm", False)}  # metric -> (task, higher is better)
TASKS = ("asr", "st", "lm")


def _looks(config: SweepConfig) -> Looks:
    return Looks(tuple(config.looks), config.alpha)


def _rule_rows(cell: dict, set_name: str, task: str, metric: str, upto: int) -> np.ndarray:
    """Per-utterance statistics of ``metric`` over the first ``upto`` utterances of a set, its
    ``task``'s rows only: the same utterances for every cell, so that a cell pairs with the baseline."""
    rows = [r for r in cell["rows"][set_name][:upto] if r.get("task", "lm") == task]
    return metric_statistics(task, rows)[metric]


def _limits(config: SweepConfig) -> dict:
    return {"wer": lambda wer: wer_limit(wer, config), "bleu": lambda bleu: bleu_limit(bleu, config),
            "perplexity": lambda perplexity: perplexity_limit(perplexity, config)}


def _rules_at(cell: dict, baseline: dict, set_name: str, config: SweepConfig, upto: int, level: float,
              samples: int) -> dict:
    """Per rule metric of the set (``wer`` for ASR, ``bleu`` for ST, ``perplexity`` for a plain LLM),
    the paired bootstrap :class:`~speechprune.bootstrap.Verdict` on the first ``upto`` utterances."""
    found = {}
    tasks = {r.get("task", "lm") for r in baseline["rows"][set_name][:upto]}
    for metric, (task, higher_is_better) in RULES.items():
        if task in tasks:
            found[metric] = bootstrap_verdict(metric, _rule_rows(baseline, set_name, task, metric, upto),
                                              _rule_rows(cell, set_name, task, metric, upto),
                                              _limits(config)[metric], higher_is_better, samples, level)
    return found


def set_verdict(cell: dict, baseline: dict, set_name: str, config: SweepConfig) -> SequentialVerdict:
    """The sequential verdict of ``cell`` on one test set (:func:`~speechprune.bootstrap.sequential`):
    at each look its rules are judged on the same utterances of cell and baseline; one rule not
    acceptable makes the look not acceptable, every rule acceptable makes it acceptable. Its
    ``verdict.margin`` and ``verdict.change`` are those of the set's first rule metric."""
    def judge(upto: int, level: float, samples: int) -> Verdict:
        rules = _rules_at(cell, baseline, set_name, config, upto, level, samples)
        found = {v.verdict for v in rules.values()}
        combined = ("not acceptable" if "not acceptable" in found else "undecided" if "undecided" in found
                    else "acceptable")
        first = next(iter(rules.values()))
        return Verdict(combined, first.margin, first.change, rules)

    available = cell.get("test_utterances", {}).get(set_name) or len(baseline["rows"][set_name])
    return sequential(judge, _looks(config), available, len(cell["rows"][set_name]))


def judgements(cell: dict, baseline: dict, set_name: str, config: SweepConfig) -> dict:
    """Per rule metric of one test set, its :class:`~speechprune.bootstrap.Verdict` (as a dict) at
    the look that decided the cell's verdict on the set (or its last)."""
    return {metric: found.as_dict() for metric, found in set_verdict(cell, baseline, set_name, config).verdict.rules.items()}


def verdict(cell: dict, baseline: dict, set_name: str, config: SweepConfig) -> str:
    """acceptable | not acceptable | undecided: whether ``cell`` keeps the quality of ``baseline`` on
    one test set (rules in the module doc), after as many looks as decided it."""
    return set_verdict(cell, baseline, set_name, config).verdict.verdict


def acceptable(cell: dict, baseline: dict, set_name: str, config: SweepConfig) -> bool:
    """Whether ``cell`` is decided acceptable on one test set."""
    return verdict(cell, baseline, set_name, config) == "acceptable"


JUDGED_BY = ("paired bootstrap over utterances at each look (the first 100, 200, ... of a set, as --looks says), "
             "stopping at the first look that decides; with K looks each is judged by the interval of the margin to "
             "the limit at level 1 - 2 alpha / K (Bonferroni over looks)")


def summarise(cells: list[dict], config: SweepConfig) -> dict:
    """The baseline, the rules, and per strategy, healing and test set the largest acceptable
    fraction, the largest not ruled out, and the verdicts that decide them with the utterances each
    rests on (``verdicts``; ``utterances``/``words``: the most any of them needed)."""
    baseline = next(c for c in cells if c["removed_count"] == 0)
    summary = {"baseline": {name: {k: v for k, v in m.items() if k in TASKS} for name, m in baseline["sets"].items()},
               "rules": {"wer_rise": config.wer_rise, "wer_floor": config.wer_floor, "bleu_drop": config.bleu_drop,
                         "perplexity_rise": config.perplexity_rise, "looks": list(config.looks), "alpha": config.alpha,
                         "judged_by": JUDGED_BY},
               "largest_acceptable": {}}
    for strategy in config.strategies:
        for heal in [*config.heal, *([PREFILL_ONLY] if config.prefill_only else [])]:
            line = sorted((c for c in cells if c["strategy"] == strategy and c["heal"] == heal),
                          key=lambda c: c["removed_count"])
            for set_name in baseline["sets"]:
                best = {"fraction": 0.0, "removed_count": 0, "removed": []}
                upper = {"fraction_not_ruled_out": 0.0, "removed_count_not_ruled_out": 0}
                decided, trail = True, []
                for cell in line:  # the largest level such that it and every smaller one pass
                    judged = set_verdict(cell, baseline, set_name, config)
                    found = judged.verdict.verdict
                    trail.append({"removed_count": cell["removed_count"], "verdict": found,
                                  "utterances": judged.utterances, "words": _words(cell, set_name)})
                    if found == "not acceptable":
                        break
                    level = {"fraction": cell["removed_count"] / cell["original_layers"],
                             "removed_count": cell["removed_count"]}
                    upper = {"fraction_not_ruled_out": level["fraction"],
                             "removed_count_not_ruled_out": level["removed_count"],
                             "removed_not_ruled_out": cell["removed"]}
                    decided = decided and found == "acceptable"
                    if decided:
                        best = {**level, "removed": cell["removed"]}
                deciding = max(trail, key=lambda t: t["utterances"], default=None)
                summary["largest_acceptable"][f"{strategy}/{heal}/{set_name}"] = {
                    **best, **upper, "verdicts": trail,
                    "utterances": deciding["utterances"] if deciding else _utterances(baseline, set_name),
                    "words": deciding["words"] if deciding else _words(baseline, set_name)}
    return summary


def _utterances(cell: dict, set_name: str) -> int:
    return sum(m["utterances"] for task, m in cell["sets"][set_name].items() if task in TASKS)


def _words(cell: dict, set_name: str) -> int:
    """Words of the references (tokens for a perplexity)."""
    return sum(m.get("words", m.get("tokens", 0)) for task, m in cell["sets"][set_name].items() if task in TASKS)


def _table(cells: list[dict], baseline: dict, config: SweepConfig) -> list[dict]:
    rows = []
    for cell in cells:
        for set_name, metrics in cell["sets"].items():
            rows.append({
                "strategy": cell["strategy"], "heal": cell["heal"], "removed": cell["removed_count"],
                "fraction": round(cell["removed_count"] / cell["original_layers"], 4), "set": set_name,
                "wer": metrics.get("asr", {}).get("wer"), "bleu": metrics.get("st", {}).get("bleu"),
                "chrf": metrics.get("st", {}).get("chrf"), "perplexity": metrics.get("lm", {}).get("perplexity"),
                "utterances": _utterances(cell, set_name), "words": _words(cell, set_name),
                **_intervals(metrics), **_judged(cell, baseline, set_name, config),
                "decoder_size_ratio": cell["decoder_bytes"] / baseline["decoder_bytes"],
                "removed_layers": " ".join(map(str, cell["removed"])),
            })
    return rows


def _judged(cell: dict, baseline: dict, set_name: str, config: SweepConfig) -> dict:
    """A results row's verdict columns: the verdict, the utterances of the look that decided it
    (None for the baseline or while undecided), and the relative change of the rule metric on them."""
    if cell["removed_count"] == 0:
        return {"relative_change": None, "relative_change_low": None, "relative_change_high": None,
                "verdict": "acceptable", "acceptable": True, "decided_at": None, "looks": None}
    judged = set_verdict(cell, baseline, set_name, config)
    found = judged.verdict.verdict
    return {**_changes({m: v.as_dict() for m, v in judged.verdict.rules.items()}), "verdict": found,
            "acceptable": found == "acceptable", "decided_at": judged.utterances if found != "undecided" else None,
            "looks": " ".join(map(str, judged.looks))}


def _intervals(metrics: dict) -> dict:
    found = {}
    for task, metric in (("asr", "wer"), ("st", "bleu"), ("st", "chrf"), ("lm", "perplexity")):
        low_high = metrics.get(task, {}).get(f"{metric}_interval")
        found.update({f"{metric}_low": low_high[0], f"{metric}_high": low_high[1]} if low_high else
                     {f"{metric}_low": None, f"{metric}_high": None})
    return found


def _changes(found: dict) -> dict:
    """The relative change of the rule metric (WER for ASR, else BLEU, else perplexity) with its paired interval."""
    judged = found.get("wer") or found.get("bleu") or found.get("perplexity")
    change = judged["relative_change"] if judged else None
    return {"relative_change": change and change["value"], "relative_change_low": change and change["low"],
            "relative_change_high": change and change["high"]}


def wer_limit(baseline_wer: float, config: SweepConfig) -> float:
    """The largest acceptable WER for a baseline WER (rule in the module doc)."""
    return np.maximum(baseline_wer * (1 + config.wer_rise), baseline_wer + config.wer_floor)


def perplexity_limit(baseline_perplexity: float, config: SweepConfig) -> float:
    """The largest acceptable perplexity for a baseline perplexity (rule in the module doc)."""
    return baseline_perplexity * (1 + config.perplexity_rise)


def bleu_limit(baseline_bleu: float, config: SweepConfig) -> float:
    """The smallest acceptable BLEU for a baseline BLEU (rule in the module doc)."""
    return baseline_bleu * (1 - config.bleu_drop)


WER_AXIS_TOP = 1.2  # WER can exceed 1 (insertions); beyond this a curve says nothing more
PERPLEXITY_AXIS_TOP = 100.0  # x the baseline (log axis): a model this far gone says nothing more
LABELS = {"wer": "WER", "bleu": "BLEU", "perplexity": "perplexity"}


def _plot(rows: list[dict], out: Path, config: SweepConfig) -> list[str]:
    """One figure per test set, one panel per acceptability metric (WER, BLEU), each with its rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    model = Path(config.model).name or config.model
    for set_name in sorted({r["set"] for r in rows}):
        rows_of_set = [r for r in rows if r["set"] == set_name]
        metrics = [m for m in ("wer", "bleu", "perplexity") if any(r.get(m) is not None for r in rows_of_set)]
        baseline = next(r for r in rows_of_set if r["removed"] == 0)
        figure, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2), squeeze=False)
        for axis, metric in zip(axes[0], metrics):
            values = [r[metric] for r in rows_of_set if r[metric] is not None]
            if metric == "wer":
                limit = wer_limit(baseline["wer"], config)
                top = min(WER_AXIS_TOP, 1.1 * max(values + [limit]))
                rule = f"acceptable: WER <= {limit:.3f} (+{config.wer_rise:.0%} relative, at least +{config.wer_floor})"
            elif metric == "bleu":
                limit = bleu_limit(baseline["bleu"], config)
                top = 1.1 * max(values + [limit, 1.0])
                rule = f"acceptable: BLEU >= {limit:.1f} (-{config.bleu_drop:.0%} relative)"
            else:
                limit = perplexity_limit(baseline["perplexity"], config)
                top = min(PERPLEXITY_AXIS_TOP * baseline["perplexity"], 1.1 * max(values + [limit]))
                rule = f"acceptable: perplexity <= {limit:.2f} (+{config.perplexity_rise:.0%} relative)"
            keys = sorted({(r["strategy"], r["heal"]) for r in rows_of_set if r["removed"] > 0})
            for k, key in enumerate(keys):
                line = sorted([baseline] + [r for r in rows_of_set if (r["strategy"], r["heal"]) == key],
                              key=lambda r: r["fraction"])
                xs, ys = [r["fraction"] for r in line], [r[metric] for r in line]
                drawn = axis.plot(xs, [min(y, top) for y in ys], marker="osD^v<>"[k % 7], markersize=4,
                                  linewidth=1.2, alpha=0.85, label="/".join(key))
                off = [x for x, y in zip(xs, ys) if y > top]
                if off:  # a value beyond the axis sits on its edge as an arrow head
                    axis.plot(off, [top] * len(off), "^", markersize=8, color=drawn[0].get_color(), clip_on=False)
            notes = []
            if limit <= top:
                axis.axhline(limit, color="grey", linestyle="--", linewidth=1, label=rule)
            else:
                notes.append(rule + ": above the axis")
            if max(values) > top:
                notes.append(f"values above {top:.2f} drawn at the top edge (^)")
            for row, text in enumerate(notes):
                axis.text(0.02, 0.97 - 0.07 * row, text, transform=axis.transAxes, fontsize=7, va="top", color="dimgrey",
                          bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1})
            if metric == "perplexity":  # a pruned LLM's perplexity spans orders of magnitude
                axis.set_yscale("log")
                axis.set_ylim(0.8 * min(values + [limit]), top)
            else:
                axis.set_ylim(0, top)
            fractions = sorted({r["fraction"] for r in rows_of_set})
            axis.set_xticks(fractions, [f"{f:.3g}" for f in fractions])  # at the fractions run, no others
            axis.set_xlabel("fraction of decoder layers removed")
            axis.set_ylabel(LABELS[metric] + (" (higher is better)" if metric == "bleu" else " (lower is better)"))
            unit = "token" if metric == "perplexity" else "word"
            scored = {r.get("utterances") for r in rows_of_set} - {None}
            rests_on = ("" if "utterances" not in baseline else
                        f"\n{counts(baseline['utterances'], baseline.get('words'), unit)} per point" if len(scored) <= 1
                        else f"\nbaseline {baseline['utterances']} utterances; pruned: {min(scored)}-{max(scored)}, "
                             "as their verdicts needed")
            axis.set_title(f"{model} on {set_name}: {LABELS[metric]} against layers removed{rests_on}", fontsize=9)
            axis.legend(fontsize=7, loc="lower right" if metric == "perplexity" else "best")
        figure.tight_layout()
        name = f"curve_{set_name}.png"
        with atomic_path(out / name) as tmp:
            figure.savefig(tmp, dpi=120, format="png")
        plt.close(figure)
        names.append(name)
    return names


SPEED_NOTE = ("decode speed is not compared per cell: a sweep decodes too little for a stable ratio; "
              "bench/bench_prune.py measures the speed and memory of pruned models side by side")


MARKS = {"acceptable": "", "not acceptable": " x", "undecided": " ?"}


def largest_text(best: dict) -> str:
    """``0.250 (2 layers; not ruled out: 0.375, 3 layers)``: a line's largest acceptable fraction."""
    text = f"{best.get('fraction', 0):.3f} ({plural(best.get('removed_count', 0), 'layer')}"
    if best.get("removed_count_not_ruled_out", 0) > best.get("removed_count", 0):
        text += (f"; not ruled out: {best['fraction_not_ruled_out']:.3f}, "
                 f"{plural(best['removed_count_not_ruled_out'], 'layer')}")
    return text + ")"


def verdicts_text(best: dict) -> str:
    """``1 layer acceptable at 100 utterances; 2 not acceptable at 200``: the verdicts that decide a
    line's largest acceptable fraction, each with the test utterances it rests on."""
    parts = []
    for step in best.get("verdicts", []):
        at = "after" if step["verdict"] == "undecided" else "at"
        parts.append(f"{plural(step['removed_count'], 'layer')} {step['verdict']} {at} {step['utterances']}")
    return ("; ".join(parts) + " utterances") if parts else ""


def report(rows: list[dict], summary: dict, out: Path) -> list:
    """What the terminal shows: per test set the main metric of every cell (x: not acceptable,
    ?: undecided after the last look; @N: the test utterances the verdict rests on) and the largest
    acceptable fraction per strategy and healing."""
    lines = []
    for set_name in sorted({r["set"] for r in rows}):
        of_set = [r for r in rows if r["set"] == set_name]
        metric = next(m for m in ("wer", "bleu", "perplexity") if any(r.get(m) is not None for r in of_set))
        levels = sorted({(r["removed"], r["fraction"]) for r in of_set if r["removed"] > 0})
        baseline = next(r for r in of_set if r["removed"] == 0)
        table_rows = []
        for key in sorted({(r["strategy"], r["heal"]) for r in of_set if r["removed"] > 0}):
            by_level = {r["removed"]: r for r in of_set if (r["strategy"], r["heal"]) == key}
            best = summary["largest_acceptable"].get(f"{key[0]}/{key[1]}/{set_name}", {})
            table_rows.append(("/".join(key), *(
                f"{by_level[n][metric]:.3f}{MARKS[by_level[n]['verdict']]} @{by_level[n]['utterances']}"
                if n in by_level else "-" for n, _ in levels), largest_text(best)))
        lines.append(table(
            f"sweep {set_name}: {LABELS[metric]} (baseline {baseline[metric]:.3f} "
            f"[{baseline[metric + '_low']:.3f}, {baseline[metric + '_high']:.3f}], "
            f"{counts(baseline['utterances'], baseline['words'], 'token' if metric == 'perplexity' else 'word')}); "
            "x = not acceptable, ? = undecided after the last look, @N = the test utterances the verdict rests on "
            f"(paired bootstrap at looks of {', '.join(map(str, summary['rules']['looks']))} utterances; at most "
            f"{summary['rules']['alpha']:g} chance of calling a model at the limit acceptable)",
            ("strategy/healing", *(f"-{n} ({fraction:.0%})" for n, fraction in levels), "largest acceptable"),
            table_rows))
    if "stopped" in summary:
        lines.append(f"- = not run (--stop-line {summary['stopped']['rule']}): "
                     + "; ".join(f"{line} from {plural(n, 'layer')} removed on"
                                 for line, n in summary["stopped"]["lines"].items()))
    if summary.get("scoring_cost"):
        lines.append(cost_text(summary["scoring_cost"]))
    lines.append(f"{SPEED_NOTE}\nwrote {out}/results.csv, summary.json, curve_*.png")
    return lines


@claims_output("sweep", resumable=True)
def sweep(config: SweepConfig) -> dict:
    """Prune -> heal -> evaluate for every strategy, fraction and healing; tables, curves and the
    largest acceptable fraction per strategy, healing and test set."""
    out = Path(config.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    scan = read_scan(config.scan)
    read = lambda path: load_data(path, skip_bad=config.skip_bad)  # noqa: E731
    test_sets = {test_set_name(p): read(p)[: config.max_test_utterances] for p in config.test}
    train_utterances = [u for p in config.train for u in read(p)] if any(h != "none" for h in config.heal) else []
    num_layers = scan.num_layers
    plan = {("none", 0, "none")}
    for fraction in config.fractions:
        n = layers_for_fraction(fraction, num_layers)
        if n:
            plan |= {(s, n, h) for s in config.strategies for h in config.heal}
            if config.prefill_only:
                plan |= {(s, n, PREFILL_ONLY) for s in config.strategies}
    cells, baseline = [], None
    speech: dict = {}  # the test utterances' projected speech, computed once for the cells that share it
    failed: dict[str, set[str]] = {}  # line "strategy/heal" -> test sets a cell of it was not acceptable on
    stopped: dict[str, int] = {}  # line -> the layers removed from which it was not run
    # the plan runs by layers removed, baseline first: a line's smaller levels are judged before its larger ones
    for number, (strategy, n, heal) in enumerate(sorted(plan, key=lambda p: (p[1], p[0], p[2])), start=1):
        name, line = _cell_name(strategy, n, heal), f"{strategy}/{heal}"
        path = out / "cells" / f"{name}.json"
        if path.exists():
            cell = read_json(path)
        elif _line_stops(config.stop_line, failed.get(line, set()), set(test_sets)):
            stopped.setdefault(line, n)
            print(f"sweep cell {number}/{len(plan)}: {name} not run (--stop-line {config.stop_line}: a smaller "
                  f"fraction of {line} was not acceptable on {', '.join(sorted(failed[line]))})",
                  file=sys.stderr, flush=True)
            continue
        elif (cell := reusable_cell(config, scan, strategy, n, heal, out)) is not None:
            print(f"sweep cell {number}/{len(plan)}: {name} is {cell['reused_from']} (the same "
                  f"layers removed from the same model, on the same test utterances): reused", file=sys.stderr, flush=True)
            write_json(path, cell)
        else:
            print(f"sweep cell {number}/{len(plan)}: {name}", file=sys.stderr, flush=True)
            started = time.perf_counter()
            cell = run_cell(config, scan, strategy, n / num_layers, heal, test_sets, train_utterances, out, baseline,
                            speech)
            write_json(path, cell)
            print(f"sweep cell {number}/{len(plan)} done in {time.perf_counter() - started:.0f} s"
                  + (f" ({_decided_text(cell, baseline.cell, config)})" if baseline else ""), file=sys.stderr,
                  flush=True)
        if baseline is None:
            baseline = Baseline(cell, out / "cells" / f"{name}.json", config, scan, test_sets, speech)
        for set_name in test_sets:  # a cell taken from elsewhere may rest on more utterances than scored so far
            baseline.extend(set_name, len(cell["rows"][set_name]))
        cells.append(cell)
        if n and config.stop_line != "never":  # judged again for the table; only a stopping line needs it now
            failed.setdefault(line, set()).update(
                set_name for set_name in test_sets if verdict(cell, cells[0], set_name, config) == "not acceptable")
    baseline = next(c for c in cells if c["removed_count"] == 0)
    rows = _table(cells, baseline, config)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "results.csv", buffer.getvalue())
    write_json(out / "results.json", rows)
    _plot(rows, out, config)
    summary = summarise(cells, config)
    summary["scoring_cost"] = scoring_cost(cells, _looks(config))
    summary["speed"] = SPEED_NOTE
    if stopped:
        summary["stopped"] = {"rule": config.stop_line, "lines": stopped,
                              "note": "each line was not run from this many layers removed on, since a smaller "
                                      "fraction of it was not acceptable"}
    write_json(out / "summary.json", summary)
    show(*report(rows, summary, out))
    return summary


def scoring_cost(cells: list[dict], looks: Looks) -> dict:
    """Per test set, what the cells measured by this sweep (not those reused) scored: test utterances
    and decoding seconds, beside what a fixed test size would have cost, the first look's or the last
    look's for every cell (the seconds estimated from each cell's own measured seconds per utterance)."""
    measured = [c for c in cells if "reused_from" not in c]
    found = {}
    for set_name in (measured[0]["rows"] if measured else {}):
        plan = looks.plan(measured[0]["test_utterances"][set_name])
        rates = [c["sets"][set_name].get("decode_seconds", 0.0) / max(1, len(c["rows"][set_name])) for c in measured]
        found[set_name] = {
            "cells": len(measured), "utterances": sum(len(c["rows"][set_name]) for c in measured),
            "decode_seconds": sum(c["sets"][set_name].get("decode_seconds", 0.0) for c in measured),
            **{f"fixed_{which}": {"utterances_per_cell": n, "utterances": n * len(measured),
                                  "decode_seconds": n * sum(rates), "seconds_are": "estimated"}
               for which, n in (("first_look", plan[0]), ("last_look", plan[-1]))}}
    return found


def cost_text(cost: dict) -> str:
    """``asr-en.test: 1,300 test utterances scored, 250 s of decoding (a fixed 100 a cell: 700, ...``."""
    return "; ".join(
        f"{name}: {c['utterances']:,} test utterances scored over {plural(c['cells'], 'cell')}, "
        f"{c['decode_seconds']:.0f} s decoding (a fixed {c['fixed_first_look']['utterances_per_cell']} a cell: "
        f"{c['fixed_first_look']['utterances']:,}, about {c['fixed_first_look']['decode_seconds']:.0f} s; "
        f"a fixed {c['fixed_last_look']['utterances_per_cell']}: {c['fixed_last_look']['utterances']:,}, about "
        f"{c['fixed_last_look']['decode_seconds']:.0f} s)" for name, c in cost.items())


def _decided_text(cell: dict, baseline: dict, config: SweepConfig) -> str:
    """``asr-en.test acceptable at 100 utterances; ood undecided after 800``: a cell's verdicts."""
    parts = []
    for set_name in cell["rows"]:
        judged = set_verdict(cell, baseline, set_name, config)
        found = judged.verdict.verdict
        parts.append(f"{set_name} {found} " + (f"after {judged.utterances}" if found == "undecided"
                                                else f"at {judged.utterances}") + " utterances")
    return "; ".join(parts)


def _line_stops(rule: str, failed_sets: set[str], test_sets: set[str]) -> bool:
    """Whether a line's larger fractions are left out under ``--stop-line``. The largest acceptable
    fraction of a test set ends below its first not-acceptable cell, so with ``every-set`` nothing
    in the summary changes; with ``any-set`` the smallest of the sets' largest fractions (what a
    model that must keep every task needs) does not change, the other sets' may be cut short."""
    if rule == "any-set":
        return bool(failed_sets)
    return rule == "every-set" and failed_sets >= test_sets
