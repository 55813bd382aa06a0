"""``speechprune study``: the paper's experiment in one command, one YAML, one output directory.

Every model starts from a base LLM: a real pretrained one (``pretrained:``, e.g. SmolLM2 or
Gemma-3 from their GGUF wheels), or one the study pretrains on text alone
(:mod:`speechprune.base_llm`), as the paper's SpeechLLMs start from Llama and Qwen. Conditions
vary one axis at a time from a reference (decoder, encoder, task, training mode): the decoder
(family x size), the encoder, the task (ASR, speech translation), the ASR language, the training
mode (LoRA or frozen decoder), and one multi-task model trained on every task and language
together. The task, language and multi-task conditions use the multilingual decoder (default:
the reference one; SmolLM2 reads English only). For every condition the study trains the
SpeechLLM, evaluates it, scans its decoder with speech and text input; the base LLM of every
decoder is scanned on the same utterances (``task`` text layout, so both read the same
sequences); then it compares, sweeps and builds a consensus backbone. A condition whose SpeechLLM
misses the listening bar (``evaluation.wer_bar``, ``bleu_bar``) is not evidence: it is shown and
left out of every average, agreement and consensus.

    OUT/corpus/                         the synthetic corpus (or the one named by --corpus)
    OUT/base/{decoder}/                 base LLM (Hugging Face checkpoint; a pretrained one stays
                                        where it is) and its text scans
    OUT/encoders/{encoder}-{langs}/     one warmed-up (CTC) encoder per encoder and language set (none
                                        for a pretrained encoder: frozen in every stage, no CTC)
    OUT/conditions/{condition}/         model/ eval/ scan/ compare-base/ [sweep/]
    OUT/agreement/{axis}/               compare across the conditions of one axis (speech input)
    OUT/consensus/                      consensus scan; the multi-task model swept with it, with its
                                        own scan and with each single-task condition's (sweep-from-*)
    OUT/study.json  OUT/claims.md       every number, the commands' outputs it came from

The agreement and consensus of scans are :mod:`speechprune.scan.consensus`, the claims text is
:mod:`speechprune.claims`; this module is the recipe: configuration, plan of conditions, steps.

Each step writes its own directory and is skipped when that directory is complete, so a rerun
reuses every finished part and an interrupted study continues where it stopped. OUT holds one
study: a rerun with other settings is refused unless ``--overwrite`` (which starts it afresh).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from rich.console import Console

from speechprune.base_llm import BaseLLMConfig, pretrain_base_llm
from speechprune.claims import AXES, ListeningBar, claims_markdown, print_claims, smallest_largest, study_claims
from speechprune.console import StepTimes, show
from speechprune.config import require, save_config
from speechprune.data.manifest import load_manifests, write_manifest
from speechprune.data.synth import SynthConfig, synthesize
from speechprune.evaluate import EvalConfig, evaluate
from speechprune.files import claims_output, read_json, write_json, write_text
from speechprune.model.gguf import decoder_checkpoint, gguf_path, is_gguf, read_header
from speechprune.model.speechllm import DecoderConfig, EncoderConfig, ModelConfig, SpeechLLM
from speechprune.scan.compare import CompareConfig, compare
from speechprune.scan.consensus import Consensus, agreement_matrices, consensus, find_pair, pair_metrics
from speechprune.scan.result import SCAN_FILE, ScanResult
from speechprune.scan.run import ScanConfig, scan
from speechprune.sweep import SweepConfig, sweep
from speechprune.options.study import Condition, NamedConfig, StudyConfig, llama_config
from speechprune.train import (LoopConfig, StageConfig, TrainConfig, base_llm_stages, ctc_greedy_cer,
                               frozen_encoder_stages, train)

console = Console(stderr=True)
REGION = "all"  # the region every agreement and consensus is computed on


# ----------------------------------------------------------------------------- conditions
def decoder_shape(decoder: NamedConfig) -> tuple[str, int]:
    """(family, depth) of a study decoder: its config's; a GGUF model's ``general.architecture`` and
    block count, read from the file's header (not dequantised: qwen2 for every Qwen2 and Qwen2.5
    size, so that sizes of one family are compared in claim 3); or another pretrained one's
    checkpoint config."""
    config = decoder.config
    if decoder.pretrained and is_gguf(decoder.pretrained):
        _, header = read_header(gguf_path(decoder.pretrained))
        return header.architecture, header.block_count
    if decoder.pretrained:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(decoder_checkpoint(decoder.pretrained)).get_text_config(decoder=True)
        config = config.to_dict()
    return str(config.get("model_type", "llama")), int(config.get("num_hidden_layers", 0))


def reference_decoder(config: StudyConfig) -> str:
    if config.reference_decoder:
        return config.reference_decoder
    return max(config.decoders, key=lambda d: decoder_shape(d)[1]).name  # max keeps the first of equals


def multilingual_decoder(config: StudyConfig) -> str:
    return config.multilingual_decoder or reference_decoder(config)


def conditions(config: StudyConfig) -> list[Condition]:
    """The reference and every one-axis variation of it (each condition once, with all its axes).
    The task, language and multi-task conditions vary from the multilingual decoder's reference
    condition, so every axis compares conditions that share one decoder."""
    ref_decoder = reference_decoder(config)
    ref = dict(decoder=ref_decoder, encoder=config.encoders[0].name, tasks=(f"asr-{config.languages[0]}",),
               mode=config.modes[0])
    multilingual = {"decoder": multilingual_decoder(config)}
    variations = [("decoder", {"decoder": d.name}) for d in config.decoders]
    variations += [("encoder", {"encoder": e.name}) for e in config.encoders]
    variations += [("task", {**multilingual, "tasks": (t,)}) for t in config.tasks
                   if t == ref["tasks"][0] or t.startswith("st-")]
    variations += [("language", {**multilingual, "tasks": (t,)}) for t in config.tasks if t.startswith("asr-")]
    variations += [("mode", {"mode": m}) for m in config.modes]
    if config.multitask:
        variations.append(("multitask", {**multilingual, "tasks": tuple(config.tasks)}))
    found: dict[str, Condition] = {}
    for axis, change in variations:
        settings = {**ref, **change}
        key = Condition(**settings, axes=()).name
        previous = found.get(key)
        found[key] = Condition(**settings, axes=(previous.axes if previous else ()) + (axis,))
    return list(found.values())


# ----------------------------------------------------------------------------- steps


def _manifest(corpus: Path, task: str, split: str) -> Path:
    return corpus / f"{task}.{split}.jsonl"


def _mixed_manifest(out: Path, corpus: Path, tasks: tuple[str, ...], split: str, per_task: int | None) -> Path:
    """One manifest with the first ``per_task`` utterances of every task (ids made unique)."""
    if len(tasks) == 1 and per_task is None:
        return _manifest(corpus, tasks[0], split)
    path = out / "data" / f"{'+'.join(tasks)}.{split}.{per_task or 'all'}.jsonl"
    if not path.exists():
        utterances = []
        for task in tasks:
            for utt in load_manifests([_manifest(corpus, task, split)])[:per_task]:
                utterances.append(dataclasses.replace(utt, id=f"{task}/{utt.id}",
                                                      audio=str(Path(utt.audio).resolve())))
        write_manifest(path, utterances)
    return path


def _corpus(config: StudyConfig, out: Path, timer: StepTimes) -> Path:
    if config.corpus.path:
        corpus = Path(config.corpus.path)
        missing = [t for t in config.tasks if not _manifest(corpus, t, "train").exists()]
        require(not missing, f"corpus {corpus} has no train manifest for {missing}")
        return corpus
    corpus = out / "corpus"
    pairs = sorted({"-".join(t.split("-")[1:]) for t in config.tasks if t.startswith("st-")})
    timer.run("corpus", corpus / "corpus.json", lambda: synthesize(SynthConfig(
        out=str(corpus), seed=config.corpus.seed, languages=list(config.languages), st_pairs=pairs,
        train_sentences=config.corpus.train_sentences, dev_sentences=config.corpus.dev_sentences,
        test_sentences=config.corpus.test_sentences, test_ood_sentences=0, overwrite=True)), "corpus")
    return corpus


def _base_llm(config: StudyConfig, out: Path, corpus: Path, decoder: NamedConfig, timer: StepTimes) -> str:
    """The base LLM's checkpoint: a pretrained decoder's own (not text-pretrained again), else one
    pretrained here on the corpus languages' text."""
    if decoder.pretrained:
        started = time.perf_counter()
        checkpoint = decoder_checkpoint(decoder.pretrained)  # a GGUF file is dequantised on first use
        if time.perf_counter() - started > 1:  # a cached one opens at once
            timer.record(f"base LLM {decoder.name}", time.perf_counter() - started, "base LLMs")
        return checkpoint
    path = out / "base" / decoder.name / "model"
    held_out = [str(_manifest(corpus, t, s)) for t in config.tasks for s in ("dev", "test")]
    b = config.base
    timer.run(f"base LLM {decoder.name}", path / "curve.json", lambda: pretrain_base_llm(BaseLLMConfig(
        out=str(path), languages=list(config.languages), sentences=b.sentences, dev_sentences=b.dev_sentences,
        exclude=held_out, decoder=DecoderConfig(config=dict(decoder.config)), steps=b.steps, lr=b.lr,
        batch_size=b.batch_size, eval_every=b.eval_every, loop=_loop(config), device=config.device)), "base LLMs")
    return str(path)


def _loop(config: StudyConfig) -> LoopConfig:
    return dataclasses.replace(config.loop, lora=dataclasses.replace(config.loop.lora))


def _placed(config: StudyConfig) -> dict:
    """--dtype and --device of every step that reads or heals a model (evaluations, scans, sweeps)."""
    return {"dtype": config.dtype, "device": config.device}


def _warm_encoder(config: StudyConfig, out: Path, corpus: Path, encoder: NamedConfig, languages: tuple[str, ...],
                  timer: StepTimes) -> Path | None:
    """The CTC warm-up of an encoder built from its config; none for a pretrained one (kept frozen)."""
    if encoder.pretrained:
        return None
    path = out / "encoders" / f"{encoder.name}-{'+'.join(languages)}"
    s = config.speechllm
    stages = {"ctc": StageConfig(steps=s.warmup_steps, lm_weight=0.0, ctc_weight=1.0, projector="frozen",
                                 decoder="frozen", lr=s.warmup_lr, batch_size=s.warmup_batch_size)}
    # the decoder here is never trained: a one-layer stand-in keeps the warm-up cheap
    stand_in = {**llama_config(1), "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                "num_key_value_heads": 2}
    timer.run(f"encoder warm-up {path.name}", path / "speechllm.json", lambda: train(TrainConfig(
        train=[str(_manifest(corpus, f"asr-{lang}", "train")) for lang in languages], out=str(path), stages=stages,
        loop=_loop(config), device=config.device, model=ModelConfig(encoder=EncoderConfig(config=dict(encoder.config)),
                                                                    decoder=DecoderConfig(config=stand_in)))),
        "encoder warm-ups")
    if not (path / "ctc_cer.json").exists():  # how well the warmed-up encoder hears, alone
        dev = load_manifests([str(_manifest(corpus, f"asr-{lang}", "dev")) for lang in languages])
        dev = dev[: config.evaluation.scan_utterances]
        write_json(path / "ctc_cer.json", {"cer": ctc_greedy_cer(SpeechLLM.load(path), dev), "utterances": len(dev)})
    return path


def speechllm_training(config: StudyConfig, out: Path, corpus: Path, condition: Condition, base: str,
                       warm: Path | None) -> TrainConfig:
    """How a condition's SpeechLLM trains: on its warmed-up encoder (``warm``), or on a pretrained
    encoder kept frozen in every stage, with no CTC on it (``warm`` is None); nothing is opened here."""
    s = config.speechllm
    loop = _loop(config)
    loop.batch_size = s.batch_size
    joint_steps = s.multitask_joint_steps if "multitask" in condition.axes and s.multitask_joint_steps else s.joint_steps
    stages = base_llm_stages(condition.mode, ctc_steps=0, copy_steps=s.copy_steps, joint_steps=joint_steps,
                             lr=s.lr, projector_lr=s.projector_lr, ctc_weight=s.ctc_weight,
                             proj_steps=s.proj_steps, token_ctc_vocabulary=s.token_ctc_vocabulary)
    model = ModelConfig(decoder=DecoderConfig(pretrained=base), projector=s.projector)
    encoder = next(e for e in config.encoders if e.name == condition.encoder)
    if encoder.pretrained:
        stages = frozen_encoder_stages(stages)
        model = dataclasses.replace(model, encoder=EncoderConfig(pretrained=encoder.pretrained), ctc=False)
    return TrainConfig(train=[str(_manifest(corpus, t, "train")) for t in condition.tasks],
                       out=str(out / "conditions" / condition.name / "model"),
                       encoder_from=None if warm is None else str(warm), stages=stages, loop=loop, model=model,
                       device=config.device)


def _speechllm(config: StudyConfig, out: Path, corpus: Path, condition: Condition, base: str, warm: Path | None,
               timer: StepTimes, encoder_states: dict | None) -> Path:
    """Train a condition's SpeechLLM. ``encoder_states``: its frozen pretrained encoder's states of
    every recording earlier conditions read (train's shared cache), so that each recording is
    encoded once in the study's process; None for an encoder trained here."""
    training = speechllm_training(config, out, corpus, condition, base, warm)
    path = Path(training.out)
    timer.run(f"SpeechLLM {condition.name}", path / "speechllm.json",
              lambda: train(training, encoder_states=encoder_states), "SpeechLLM training")
    return path


def _evaluate(config: StudyConfig, corpus: Path, condition: Condition, model: Path, timer: StepTimes) -> Path:
    path = model.parent / "eval"
    timer.run(f"eval {condition.name}", path / "metrics.json", lambda: evaluate(EvalConfig(
        model=str(model), data=[str(_manifest(corpus, t, "test")) for t in condition.tasks], out=str(path),
        max_utterances=config.evaluation.test_utterances, max_new_tokens=config.evaluation.max_new_tokens,
        **_placed(config))),
        "evaluations")
    return path


def _scan(model: Path | str, data: Path, path: Path, input: str, utterances: int, label: str, plots: bool,
          timer: StepTimes, placed: dict | None = None) -> Path:
    # layout task: the SpeechLLM's own sequences, so base and SpeechLLM read the same
    timer.run(f"scan {label}", path / "scan.json", lambda: scan(ScanConfig(
        model=str(model), data=str(data), out=str(path), input=input, max_utterances=utterances, bootstrap=0,
        regions=["all", "last"], plots=plots, layout="task", **(placed or {}))), "scans")
    return path


def _compare(scans: list[Path], path: Path, labels: list[str], plots: bool, timer: StepTimes, input: str = "") -> dict:
    timer.run(f"compare {path.parent.name}/{path.name}", path / "compare.json", lambda: compare(CompareConfig(
        scans=[str(s) for s in scans], out=str(path), labels=labels, input=input, regions=[REGION, "last"],
        plots=plots)), "compares")
    return read_json(path / "compare.json")


def _sweep(config: StudyConfig, corpus: Path, model: Path, scan_dir: Path, path: Path, tasks: tuple[str, ...],
           heal: list[str], train_manifest: list[str], timer: StepTimes, reuse: tuple[Path, ...] = (),
           stop_line: str = "never") -> dict:
    e = config.evaluation
    timer.run(f"sweep {path.parent.name}/{path.name}", path / "summary.json", lambda: sweep(SweepConfig(
        model=str(model), scan=str(scan_dir), train=train_manifest,
        test=[str(_manifest(corpus, t, "test")) for t in tasks], out=str(path), fractions=list(e.fractions),
        strategies=["angular"], heal=heal, heal_steps=e.heal_steps, heal_mixed_precision=e.heal_mixed_precision,
        input="speech", region=REGION,
        looks=list(e.looks), alpha=e.alpha, wer_rise=e.wer_rise, wer_floor=e.wer_floor, bleu_drop=e.bleu_drop,
        reuse=[str(p) for p in reuse], stop_line=stop_line, **_placed(config))),
        "sweeps")
    return read_json(path / "summary.json")


# ----------------------------------------------------------------------------- the command
@claims_output("study", resumable=True, reusable=True)
def study(config: StudyConfig) -> dict:
    """Train base LLMs and SpeechLLMs over every axis, scan them with text and speech, compare,
    sweep and build the consensus backbone; print the claims table and write study.json."""
    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    timer = StepTimes(out / "timing.json")
    corpus = _corpus(config, out, timer)
    e = config.evaluation
    bar = ListeningBar(e.wer_bar, e.bleu_bar)
    decoders = {d.name: d for d in config.decoders}
    encoders = {x.name: x for x in config.encoders}
    plan = conditions(config)
    console.print(f"study: {len(plan)} conditions: " + ", ".join(c.name for c in plan))

    records: dict[str, dict] = {}
    base_scans: dict[tuple[str, tuple], Path] = {}
    encoder_states: dict[str, dict] = {}  # pretrained encoder -> its states of each recording, shared by conditions
    for condition in plan:
        base = _base_llm(config, out, corpus, decoders[condition.decoder], timer)
        languages = (tuple(config.languages) if config.speechllm.warmup_languages == "study"
                     else condition.source_languages())
        warm = _warm_encoder(config, out, corpus, encoders[condition.encoder], languages, timer)
        model = _speechllm(config, out, corpus, condition, base, warm, timer,
                           None if warm else encoder_states.setdefault(condition.encoder, {}))
        folder = model.parent
        metrics = read_json(_evaluate(config, corpus, condition, model, timer) / "metrics.json")
        data = _mixed_manifest(out, corpus, condition.tasks, "dev",
                               None if len(condition.tasks) == 1 else max(1, e.scan_utterances // len(condition.tasks)))
        scan_dir = _scan(model, data, folder / "scan", "both", e.scan_utterances, condition.name, config.plots, timer,
                         _placed(config))
        key = (condition.decoder, condition.tasks)
        if key not in base_scans:
            base_scans[key] = _scan(base, data, out / "base" / condition.decoder / f"scan-{'+'.join(condition.tasks)}",
                                    "text", e.scan_utterances, f"base {condition.decoder} on text", config.plots,
                                    timer, _placed(config))
        scanned = ScanResult.load(scan_dir)
        labels = [f"base/{input}" for input in ScanResult.load(base_scans[key]).inputs]
        labels += [f"speechllm/{input}" for input in scanned.inputs]
        base_compare = _compare([base_scans[key], scan_dir], folder / "compare-base", labels, config.plots, timer)
        records[condition.name] = {
            "condition": condition, "model": model, "scan": scan_dir, "metrics": metrics,
            "misses": bar.misses(metrics),
            "encoder_ctc_cer": None if warm is None else read_json(warm / "ctc_cer.json")["cer"],  # None: pretrained
            "num_layers": scanned.num_layers,
            "inherited": find_pair(base_compare, "base/text", "speechllm/speech", REGION),
            "text_speech": find_pair(base_compare, "speechllm/speech", "speechllm/text", REGION),
        }
        if "decoder" in condition.axes:
            train_manifest = [str(_manifest(corpus, t, "train")) for t in condition.tasks]
            records[condition.name]["sweep"] = _sweep(config, corpus, model, scan_dir, folder / "sweep",
                                                      condition.tasks, ["none", "receiving-mlp"], train_manifest,
                                                      timer, stop_line=e.stop_line)
            records[condition.name]["sweep_dir"] = folder / "sweep"

    # agreement over the conditions that passed the listening bar: per axis (its conditions share a
    # decoder by construction) and, per decoder, every two of its conditions (same depth)
    evidence = {name: r for name, r in records.items() if not r["misses"]}
    angulars = {name: ScanResult.load(r["scan"]).matrix("speech", REGION) for name, r in evidence.items()}
    axes = {}
    for axis in AXES:
        members = [name for name, r in evidence.items() if axis in r["condition"].axes]
        if len(members) >= 2:
            payload = _compare([evidence[m]["scan"] for m in members], out / "agreement" / axis, members,
                               config.plots, timer, "speech")
            axes[axis] = {"conditions": members, "compare": f"agreement/{axis}", **pair_metrics(payload, REGION)}
    matrices = {}
    for decoder in decoders:
        members = {name: a for name, a in angulars.items() if evidence[name]["condition"].decoder == decoder}
        if len(members) >= 2:
            matrices[decoder] = agreement_matrices(members)

    # claim 5: the consensus of the multilingual decoder's single-task conditions; its multi-task model
    multilingual = multilingual_decoder(config)
    single_task = {name: r for name, r in records.items()
                   if r["condition"].decoder == multilingual and len(r["condition"].tasks) == 1}
    sources = {name: a for name, a in angulars.items() if name in single_task}
    backbone = consensus(sources, "speech", REGION) if sources else None
    multitask = next((r for r in records.values() if "multitask" in r["condition"].axes), None)
    backbone_result = (_backbone_sweeps(config, out, corpus, multitask, backbone, single_task, timer)
                       if multitask is not None else None)

    sizes = {name: decoder_shape(decoder) for name, decoder in decoders.items()}
    payload = _payload(config, out, records, axes, matrices, backbone, backbone_result, bar, sizes,
                       time.perf_counter() - started)
    by_kind = timer.by_kind()
    payload["time"] = {"seconds_by_kind": by_kind, "seconds_by_step": timer.seconds,
                       "seconds_measured": round(sum(by_kind.values()), 1),
                       "note": "each step timed in the run that made it; a reused step keeps that time"}
    write_json(out / "study.json", payload)
    write_text(out / "claims.md", claims_markdown(payload["claims"]))
    print_claims(payload["claims"])
    show("where the time went (each step timed in the run that made it): "
         + ", ".join(f"{kind} {seconds:,.0f} s" for kind, seconds in by_kind.items())
         + f"; {sum(by_kind.values()) / 60:.1f} min in all")
    console.print(f"[bold green]study finished[/] in {payload['seconds']:.0f} s: {out / 'study.json'}")
    return payload


def _backbone_sweeps(config: StudyConfig, out: Path, corpus: Path, multitask: dict, backbone: Consensus | None,
                     single_task: dict[str, dict], timer: StepTimes) -> dict:
    """The multi-task model pruned with the consensus block (healed once on the mixed tasks, and
    unhealed), with its own scan's blocks, and with each single-task condition's own blocks
    (unhealed): for each, the largest fraction at which every task and language stays acceptable.
    That is all claim 5 reads, so each line stops at its first fraction not acceptable on some test
    set (``stop_line="any-set"``): its larger fractions cannot change it."""
    tasks = multitask["condition"].tasks
    train_manifest = [str(_manifest(corpus, t, "train")) for t in tasks]
    folder = out / "consensus"
    result = {"condition": multitask["condition"].name, "sets": [f"{t}.test" for t in tasks],
              "misses": multitask["misses"], "largest": {}, "sweeps": []}

    # one model, one test set list: a block two sources agree on (and the unpruned baseline) is measured once
    names = ["sweep", "sweep-own", *(f"sweep-from-{name}" for name in single_task)]

    def swept(scan_dir: Path, name: str, heal: list[str]) -> dict:
        reuse = tuple(folder / other for other in names if other != name and (folder / other / "cells").is_dir())
        summary = _sweep(config, corpus, multitask["model"], scan_dir, folder / name, tasks, heal, train_manifest,
                         timer, reuse, stop_line="any-set")
        result["sweeps"].append(f"consensus/{name}")
        return summary

    if backbone is not None:
        consensus_scan = folder / "scan"
        if not (consensus_scan / SCAN_FILE).exists():
            backbone.scan.save(consensus_scan)
        summary = swept(consensus_scan, "sweep", ["none", "receiving-mlp"])
        result["consensus_of"] = list(backbone.scan.consensus_of)
        result["largest"]["consensus_healed"] = smallest_largest(summary, "angular", "receiving-mlp")
        result["largest"]["consensus_unhealed"] = smallest_largest(summary, "angular", "none")
    result["largest"]["own_unhealed"] = smallest_largest(swept(multitask["scan"], "sweep-own", ["none"]),
                                                         "angular", "none")
    result["single_task"] = {}
    for name, r in single_task.items():
        entry = smallest_largest(swept(r["scan"], f"sweep-from-{name}", ["none"]), "angular", "none")
        result["single_task"][name] = {"fraction": entry["fraction"], "largest": entry, "evidence": not r["misses"],
                                       "sweep": f"consensus/sweep-from-{name}"}
    result.update({key: entry["fraction"] for key, entry in result["largest"].items()})
    return result


def _payload(config: StudyConfig, out: Path, records: dict, axes: dict, matrices: dict, backbone: Consensus | None,
             backbone_result: dict | None, bar: ListeningBar, sizes: dict[str, tuple[str, int]],
             seconds: float) -> dict:
    rel = lambda p: str(Path(p).relative_to(out)) if Path(p).is_relative_to(out) else str(p)  # noqa: E731
    claims = study_claims(records, axes, backbone_result, rel, bar, sizes)
    conditions_out = {}
    for name, r in records.items():
        c = r["condition"]
        conditions_out[name] = {"decoder": c.decoder, "encoder": c.encoder, "tasks": list(c.tasks), "mode": c.mode,
                                "axes": list(c.axes), "num_layers": r["num_layers"], "model": rel(r["model"]),
                                "scan": rel(r["scan"]), "metrics": r["metrics"]["sets"],
                                "evidence": not r["misses"], "bar_misses": r["misses"],
                                "encoder_ctc_cer": r["encoder_ctc_cer"],
                                "inherited": {k: r["inherited"][k] for k in ("spearman", "same_best_start", "mean_abs_delta_start")},
                                "text_speech": {k: r["text_speech"][k] for k in ("spearman", "same_best_start", "mean_abs_delta_start")}}
    sweeps = {name: rel(r["sweep_dir"]) for name, r in records.items() if "sweep_dir" in r}
    if backbone_result:  # consensus/sweep -> consensus, consensus/sweep-own -> consensus-own, ...
        sweeps |= {f"consensus{path.removeprefix('consensus/sweep')}": path for path in backbone_result["sweeps"]}
    return {
        "index_convention": "0-based layers; block [l, l+n) end-exclusive; l*(n) = best start for block size n",
        "region": REGION,
        "listening_bar": {"wer": bar.wer, "bleu": bar.bleu, "rule": bar.describe()},
        "decoders": {d.name: {"family": sizes[d.name][0], "num_layers": sizes[d.name][1],
                              **({"pretrained": d.pretrained} if d.pretrained else {})} for d in config.decoders},
        "claims": claims,
        "agreement": matrices,
        "axes": axes,
        "consensus": {"rows": backbone.rows if backbone else [], "backbone": backbone_result},
        "conditions": conditions_out,
        "sweeps": sweeps,
        "seconds": seconds,
    }
