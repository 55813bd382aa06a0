"""Decoding and scoring: batched greedy (or beam) decoding with the KV cache, WER for ASR with
jiwer, BLEU and chrF for speech translation with sacrebleu (signatures recorded); or, without
decoding, the model's perplexity on the references (``--metric perplexity``: what a plain LLM is
measured by). Every metric carries its bootstrap interval over utterances.

WER normaliser (applied to hypothesis and reference alike): lower-case, strip punctuation
(Unicode category P, so "l'homme" -> "lhomme" on both sides), collapse whitespace. Scores are
corpus-level per condition (task, source language, target language) and over all ASR / all ST.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import numpy as np
import torch

from speechprune.bootstrap import Interval, interval, sacrebleu_statistics, utterance_statistics
from speechprune.config import save_config
from speechprune.console import Progress, show, table
from speechprune.data.manifest import Utterance
from speechprune.data.sources import load_data, require_audio
from speechprune.files import claims_output, staged_dir, write_json, write_text
from speechprune.model.decoder import sequence_log_losses
from speechprune.model.device import resolve_device
from speechprune.model.interface import LoadedModel, load_model
from speechprune.options.evaluate import METRICS, EvalConfig  # noqa: F401  (re-exported)

WER_NORMALISER = jiwer.Compose([
    jiwer.ToLowerCase(),
    jiwer.RemovePunctuation(),
    jiwer.RemoveMultipleSpaces(),
    jiwer.Strip(),
    jiwer.ReduceToListOfListOfWords(),
])


@dataclass
class EvalResult:
    metrics: dict
    rows: list[dict] = field(default_factory=list)


def _normalised(text: str) -> str:
    return " ".join(WER_NORMALISER(text)[0]) if text.strip() else ""


def word_errors(references: list[str], hypotheses: list[str]) -> list[dict]:
    """Per utterance, after the normaliser: reference words and substitutions, deletions and
    insertions (an empty normalised reference counts its hypothesis words as insertions, since
    jiwer refuses empty references)."""
    refs, hyps = [_normalised(r) for r in references], [_normalised(h) for h in hypotheses]
    counts = [{"words": 0, "substitutions": 0, "deletions": 0, "insertions": len(h.split()) if not r else 0}
              for r, h in zip(refs, hyps)]
    scored = [i for i, r in enumerate(refs) if r]
    if scored:
        output = jiwer.process_words([refs[i] for i in scored], [hyps[i] for i in scored])
        for index, chunks in zip(scored, output.alignments):
            entry = counts[index]
            entry["words"] = len(refs[index].split())
            for chunk in chunks:
                if chunk.type == "substitute":
                    entry["substitutions"] += chunk.ref_end_idx - chunk.ref_start_idx
                elif chunk.type == "delete":
                    entry["deletions"] += chunk.ref_end_idx - chunk.ref_start_idx
                elif chunk.type == "insert":
                    entry["insertions"] += chunk.hyp_end_idx - chunk.hyp_start_idx
    return counts


def _wer_pairs(counts: list[dict]) -> list[tuple[int, int]]:
    return [(c["substitutions"] + c["deletions"] + c["insertions"], c["words"]) for c in counts]


def word_error_rate(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus WER after the normaliser, with its bootstrap interval over utterances
    (:mod:`speechprune.bootstrap`) and the counts it rests on."""
    counts = word_errors(references, hypotheses)
    totals = {key: sum(c[key] for c in counts) for key in ("words", "substitutions", "deletions", "insertions")}
    wer = interval("wer", utterance_statistics("wer", references, hypotheses, _wer_pairs(counts)))
    return {"wer": wer.value, **totals, "wer_interval": [wer.low, wer.high], **_interval_settings(wer)}


def translation_scores(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu, signatures recorded), each with its bootstrap interval."""
    scores = {}
    for name in ("bleu", "chrf"):
        rows, signature = sacrebleu_statistics(name, references, hypotheses)
        estimate = interval(name, rows)
        scores.update({name: estimate.value, f"{name}_interval": [estimate.low, estimate.high],
                       f"{name}_signature": signature, **_interval_settings(estimate)})
    return {**scores, "words": sum(len(r.split()) for r in references)}


def _interval_settings(estimate: Interval) -> dict:
    return {"interval_level": estimate.level, "bootstrap_samples": estimate.samples}


def metric_statistics(task: str, rows: list[dict]) -> dict[str, np.ndarray]:
    """The per-utterance statistics of each metric of ``task`` (``asr``, ``st``, or ``lm`` for a
    perplexity) for ``rows`` (as :func:`decode` or :func:`perplexity` give them): what a paired
    bootstrap against another model's rows needs."""
    if task == "lm":
        return {"perplexity": utterance_statistics("perplexity", [], [], [(r["nll"], r["tokens"]) for r in rows])}
    refs, hyps = [r["reference"] for r in rows], [r["hypothesis"] for r in rows]
    if task == "asr":
        return {"wer": utterance_statistics("wer", refs, hyps, _wer_pairs(word_errors(refs, hyps)))}
    return {name: utterance_statistics(name, refs, hyps) for name in ("bleu", "chrf")}


def score(rows: list[dict]) -> dict:
    """Metrics pooled per task (``asr``, ``st``, each naming its ``conditions``) and, where a task
    has more than one condition ``task:src-tgt``, per condition as well: no entry repeats another."""
    by_task: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_task[row["task"]][f"{row['src_lang']}-{row['tgt_lang']}"].append(row)
    metrics = {}
    for task, conditions in sorted(by_task.items()):
        metrics[task] = {"conditions": sorted(conditions), **_scores(task, [r for c in conditions.values() for r in c])}
        if len(conditions) > 1:
            for condition, members in sorted(conditions.items()):
                metrics[f"{task}:{condition}"] = _scores(task, members)
    return metrics


def _scores(task: str, members: list[dict]) -> dict:
    refs, hyps = [m["reference"] for m in members], [m["hypothesis"] for m in members]
    return {"utterances": len(members),
            **(word_error_rate(refs, hyps) if task == "asr" else translation_scores(refs, hyps))}


@torch.no_grad()
def decode(model: LoadedModel, utterances: list[Utterance], batch_size: int = 16, max_new_tokens: int = 160,
           num_beams: int = 1, progress: str = "") -> EvalResult:
    """Decode ``utterances`` (longest first, to waste little padding) and score them.
    ``metrics["decode_seconds"]`` is the wall time of feature extraction, encoding and decoding.
    ``progress``: the name to show a progress bar under (none when empty)."""
    model.eval()
    order = sorted(range(len(utterances)), key=lambda i: -(utterances[i].duration or 0.0))
    hypotheses: dict[int, str] = {}
    started = time.perf_counter()
    ordered = [utterances[i] for i in order]
    starts = range(0, len(ordered), batch_size)
    with Progress(progress, len(starts), "batches", enabled=bool(progress)) as shown:
        for start in starts:
            texts = model.generate(ordered[start: start + batch_size], max_new_tokens=max_new_tokens,
                                   num_beams=num_beams)
            for offset, text in enumerate(texts):
                hypotheses[order[start + offset]] = text
            shown.advance()
    seconds = time.perf_counter() - started
    rows = [{"id": u.id, "task": u.task, "src_lang": u.src_lang, "tgt_lang": u.tgt_lang,
             "reference": u.target, "hypothesis": hypotheses[i]} for i, u in enumerate(utterances)]
    metrics = score(rows)
    metrics["decode_seconds"] = seconds
    metrics["utterances_per_second"] = len(utterances) / seconds if seconds > 0 else None
    audio_seconds = sum(u.duration or 0.0 for u in utterances)
    metrics["real_time_factor"] = seconds / audio_seconds if audio_seconds > 0 else None
    return EvalResult(metrics, rows)


def resolve_metric(metric: str, model: LoadedModel) -> str:
    """``auto`` -> perplexity for a model that takes text only (a plain causal LM), else decode."""
    if metric != "auto":
        return metric
    return "perplexity" if "speech" not in model.sources else "decode"


@torch.no_grad()
def perplexity(model: LoadedModel, utterances: list[Utterance], batch_size: int = 16, progress: str = "") -> EvalResult:
    """The model's perplexity on ``utterances`` without decoding: its own sequence (the plain layout
    of a plain LLM: every next token of the text; a speech model's target given the speech),
    ``exp(summed negative log-likelihood / tokens)`` over the whole set, with its bootstrap interval
    over utterances. ``rows`` give each utterance's summed loss (nats) and token count."""
    model.eval()
    source = "speech" if "speech" in model.sources else "text"
    layout = model.resolve_layout("auto")
    rows = []
    started = time.perf_counter()
    starts = range(0, len(utterances), batch_size)
    with Progress(progress, len(starts), "batches", enabled=bool(progress)) as shown:
        for start in starts:
            batch = utterances[start: start + batch_size]
            inputs = model.decoder_inputs(batch, source=source, layout=layout).to(model.device)
            losses, tokens = sequence_log_losses(model.causal_lm, inputs)
            rows += [{"id": u.id, "nll": float(loss), "tokens": int(count)}
                     for u, loss, count in zip(batch, losses, tokens)]
            shown.advance()
    return EvalResult({"lm": perplexity_scores(rows, layout, source), "decode_seconds": time.perf_counter() - started},
                      rows)


def perplexity_scores(rows: list[dict], layout: str, source: str) -> dict:
    """The ``lm`` entry of :func:`perplexity`'s metrics from its rows (each utterance's summed loss
    and tokens): corpus perplexity with its bootstrap interval and counts."""
    statistics = utterance_statistics("perplexity", [], [], [(r["nll"], r["tokens"]) for r in rows])
    estimate = interval("perplexity", statistics)
    tokens = int(statistics[:, 1].sum())
    return {"utterances": len(rows), "tokens": tokens, "perplexity": estimate.value,
            "perplexity_interval": [estimate.low, estimate.high],
            "nll_per_token": float(statistics[:, 0].sum()) / tokens if tokens else float("nan"),
            "layout": layout, "source": source, **_interval_settings(estimate)}


def rescore(metric: str, rows: list[dict], scored: dict) -> dict:
    """The metrics of ``rows`` as :func:`measure` gives them (``scored``: metrics of any part of
    the same rows, for a perplexity's layout and source): what a set's metrics become when more of
    its utterances are scored."""
    if metric == "perplexity":
        return {"lm": perplexity_scores(rows, scored["lm"]["layout"], scored["lm"]["source"])}
    return score(rows)


def measure(model: LoadedModel, utterances: list[Utterance], metric: str, batch_size: int = 16,
            progress: str = "", **decoding) -> EvalResult:
    """:func:`perplexity` or :func:`decode` (``metric`` as :func:`resolve_metric` gives it)."""
    if metric == "perplexity":
        return perplexity(model, utterances, batch_size, progress)
    return decode(model, utterances, batch_size, progress=progress, **decoding)


@claims_output("eval")
def evaluate(config: EvalConfig) -> dict[str, EvalResult]:
    """Evaluate a model (any kind load_model opens) on each test set: decode it and score WER, BLEU
    and chrF, or (--metric perplexity, the default for a plain LLM) measure its perplexity on the
    references. Writes per test set the hypotheses and references (<manifest>.hypotheses.jsonl)
    or each utterance's loss and token count (<manifest>.losses.jsonl), and one metrics.json; every
    metric with its 95% bootstrap interval over utterances and its counts."""
    device = resolve_device(config.device)  # a device this machine lacks: one line, before any work
    test_sets = {}
    for path in config.data:
        utterances = load_data(path, check_audio=True, skip_bad=config.skip_bad)
        test_sets[test_set_name(path)] = utterances[: config.max_utterances]
    model = load_model(config.model, device=device, dtype=config.dtype, device_map=config.device_map,
                       loading=config.loading)
    metric = resolve_metric(config.metric, model)
    if "speech" in model.sources:  # a speech model listens, whether it decodes or is scored
        for path, utterances in zip(config.data, test_sets.values()):
            require_audio(utterances, path, "a speech model's evaluation")
    results = {name: measure(model, utterances, metric, config.batch_size, progress=f"eval {name}",
                             max_new_tokens=config.max_new_tokens, num_beams=config.num_beams)
               for name, utterances in test_sets.items()}
    metrics = {"model": str(Path(config.model).resolve()) if Path(config.model).exists() else config.model,
               "metric": metric, "sets": {name: result.metrics for name, result in results.items()}}
    if metric == "decode":
        metrics["wer_normaliser"] = "lower-case, remove punctuation (Unicode P), collapse whitespace"
    rows_file = "hypotheses" if metric == "decode" else "losses"
    with staged_dir(config.out) as staging:
        for name, result in results.items():
            write_text(staging / f"{name}.{rows_file}.jsonl",
                       "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.rows))
        write_json(staging / "metrics.json", metrics)
        save_config(config, staging / "config.yaml")
    show(summary(metrics, config.out))
    return results


def test_set_name(path: str) -> str:
    """A test set's name: its file name without .jsonl / .txt (a dataset folder's or hub id's last part)."""
    return Path(path).name.removesuffix(".jsonl").removesuffix(".txt")


def with_interval(entry: dict, metric: str, digits: int = 3) -> str | None:
    """``0.046 [0.031, 0.062]``: a metric of an eval entry with its bootstrap interval."""
    if entry.get(metric) is None:
        return None
    low_high = entry.get(f"{metric}_interval")
    value = f"{entry[metric]:.{digits}f}"
    return f"{value} [{low_high[0]:.{digits}f}, {low_high[1]:.{digits}f}]" if low_high else value


def summary(metrics: dict, out: str) -> object:
    """One row per test set and condition, each metric with its 95% bootstrap interval."""
    rows = []
    for set_name, entries in metrics["sets"].items():
        for condition, entry in entries.items():
            if isinstance(entry, dict) and "utterances" in entry:
                label = (condition if ":" in condition or "conditions" not in entry
                         else f"{condition} ({', '.join(entry['conditions'])})")
                rows.append((set_name, label, entry["utterances"], entry.get("words", entry.get("tokens")),
                             with_interval(entry, "wer"), with_interval(entry, "bleu", 1),
                             with_interval(entry, "chrf", 1), with_interval(entry, "perplexity", 2)))
    columns = ("test set", "condition", "utterances", "words", "WER [95% CI]", "BLEU [95% CI]", "chrF [95% CI]",
               "perplexity [95% CI]")
    shown = [i for i, _ in enumerate(columns) if i < 4 or any(row[i] is not None for row in rows)]
    if metrics.get("metric") == "perplexity":
        columns = (*columns[:3], "tokens", *columns[4:])
    return table(f"eval: {metrics['model']} -> {out}", [columns[i] for i in shown],
                 [[row[i] for i in shown] for row in rows])
