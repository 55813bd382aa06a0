"""``speechprune study``: the paper's experiment in one command, one YAML, one output directory.

Every model starts from a base LLM pretrained on text alone (:mod:`speechprune.base_llm`), as
the paper's SpeechLLMs start from Llama and Qwen. Conditions vary one axis at a time from a
reference (decoder, encoder, task, training mode): the decoder (family x size), the encoder,
the task (ASR, speech translation), the ASR language, the training mode (LoRA or frozen decoder),
and one multi-task model trained on every task and language together. For every condition the
study trains the SpeechLLM, evaluates it, scans its decoder with speech and text input; the base
LLM of every decoder is scanned on the same utterances (``task`` text layout, so both read the
same sequences); then it compares, sweeps and builds a consensus backbone:

    OUT/corpus/                         the synthetic corpus (or the one named by --corpus)
    OUT/base/{decoder}/                 base LLM (Hugging Face checkpoint) and its text scan
    OUT/encoders/{encoder}-{langs}/     one warmed-up (CTC) encoder per encoder and language set
    OUT/conditions/{condition}/         model/ eval/ scan/ compare-base/ [sweep/]
    OUT/agreement/{axis}/               compare across the conditions of one axis (speech input)
    OUT/consensus/                      consensus scan, multi-task sweep with it and with its own scan
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
from speechprune.claims import claims_markdown, print_claims, smallest_largest, study_claims
from speechprune.console import step_needed
from speechprune.config import require, save_config
from speechprune.data.manifest import load_manifests, write_manifest
from speechprune.data.synth import SynthConfig, synthesize
from speechprune.evaluate import EvalConfig, evaluate
from speechprune.files import claims_output, read_json, write_json, write_text
from speechprune.model.speechllm import DecoderConfig, EncoderConfig, ModelConfig, SpeechLLM
from speechprune.scan.compare import CompareConfig, compare
from speechprune.scan.consensus import Consensus, agreement_matrices, consensus, find_pair, pair_metrics
from speechprune.scan.result import SCAN_FILE, ScanResult
from speechprune.scan.run import ScanConfig, scan
from speechprune.sweep import SweepConfig, sweep
from speechprune.options.study import Condition, NamedConfig, StudyConfig, llama_config
from speechprune.train import LoopConfig, StageConfig, TrainConfig, base_llm_stages, ctc_greedy_cer, train

console = Console(stderr=True)
REGION = "all"  # the region every agreement and consensus is computed on


# ----------------------------------------------------------------------------- conditions
def reference_decoder(config: StudyConfig) -> str:
    if config.reference_decoder:
        return config.reference_decoder
    depth = lambda d: int(d.config.get("num_hidden_layers", 0))  # noqa: E731
    return max(config.decoders, key=depth).name  # max keeps the first of equals


def conditions(config: StudyConfig) -> list[Condition]:
    """The reference and every one-axis variation of it (each condition once, with all its axes)."""
    ref_decoder = reference_decoder(config)
    ref = dict(decoder=ref_decoder, encoder=config.encoders[0].name, tasks=(f"asr-{config.languages[0]}",),
               mode=config.modes[0])
    variations = [("decoder", {"decoder": d.name}) for d in config.decoders]
    variations += [("encoder", {"encoder": e.name}) for e in config.encoders]
    variations += [("task", {"tasks": (t,)}) for t in config.tasks if t == ref["tasks"][0] or t.startswith("st-")]
    variations += [("language", {"tasks": (t,)}) for t in config.tasks if t.startswith("asr-")]
    variations += [("mode", {"mode": m}) for m in config.modes]
    if config.multitask:
        variations.append(("multitask", {"tasks": tuple(config.tasks)}))
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


def _corpus(config: StudyConfig, out: Path) -> Path:
    if config.corpus.path:
        corpus = Path(config.corpus.path)
        missing = [t for t in config.tasks if not _manifest(corpus, t, "train").exists()]
        require(not missing, f"corpus {corpus} has no train manifest for {missing}")
        return corpus
    corpus = out / "corpus"
    pairs = sorted({"-".join(t.split("-")[1:]) for t in config.tasks if t.startswith("st-")})
    if step_needed("corpus", corpus / "corpus.json"):
        synthesize(SynthConfig(out=str(corpus), seed=config.corpus.seed, languages=list(config.languages),
                               st_pairs=pairs, train_sentences=config.corpus.train_sentences,
                               dev_sentences=config.corpus.dev_sentences, test_sentences=config.corpus.test_sentences,
                               test_ood_sentences=0, overwrite=True))
    return corpus


def _base_llm(config: StudyConfig, out: Path, corpus: Path, decoder: NamedConfig) -> Path:
    path = out / "base" / decoder.name / "model"
    if step_needed(f"base LLM {decoder.name}", path / "curve.json"):
        held_out = [str(_manifest(corpus, t, s)) for t in config.tasks for s in ("dev", "test")]
        b = config.base
        pretrain_base_llm(BaseLLMConfig(out=str(path), languages=list(config.languages), sentences=b.sentences,
                                        dev_sentences=b.dev_sentences, exclude=held_out,
                                        decoder=DecoderConfig(config=dict(decoder.config)), steps=b.steps, lr=b.lr,
                                        batch_size=b.batch_size, eval_every=b.eval_every, loop=_loop(config)))
    return path


def _loop(config: StudyConfig) -> LoopConfig:
    return dataclasses.replace(config.loop, lora=dataclasses.replace(config.loop.lora))


def _warm_encoder(config: StudyConfig, out: Path, corpus: Path, encoder: NamedConfig, languages: tuple[str, ...]) -> Path:
    path = out / "encoders" / f"{encoder.name}-{'+'.join(languages)}"
    if step_needed(f"encoder warm-up {path.name}", path / "speechllm.json"):
        s = config.speechllm
        stages = {"ctc": StageConfig(steps=s.warmup_steps, lm_weight=0.0, ctc_weight=1.0, projector="frozen",
                                     decoder="frozen", lr=s.warmup_lr, batch_size=s.warmup_batch_size)}
        # the decoder here is never trained: a one-layer stand-in keeps the warm-up cheap
        stand_in = {**llama_config(1), "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                    "num_key_value_heads": 2}
        train(TrainConfig(train=[str(_manifest(corpus, f"asr-{lang}", "train")) for lang in languages],
                          out=str(path), stages=stages, loop=_loop(config),
                          model=ModelConfig(encoder=EncoderConfig(config=dict(encoder.config)),
                                            decoder=DecoderConfig(config=stand_in))))
    if not (path / "ctc_cer.json").exists():  # how well the warmed-up encoder hears, alone
        dev = load_manifests([str(_manifest(corpus, f"asr-{lang}", "dev")) for lang in languages])
        dev = dev[: config.evaluation.scan_utterances]
        write_json(path / "ctc_cer.json", {"cer": ctc_greedy_cer(SpeechLLM.load(path), dev), "utterances": len(dev)})
    return path


def _speechllm(config: StudyConfig, out: Path, corpus: Path, condition: Condition, base: Path, warm: Path) -> Path:
    path = out / "conditions" / condition.name / "model"
    if step_needed(f"SpeechLLM {condition.name}", path / "speechllm.json"):
        s = config.speechllm
        loop = _loop(config)
        loop.batch_size = s.batch_size
        stages = base_llm_stages(condition.mode, ctc_steps=0, copy_steps=s.copy_steps, joint_steps=s.joint_steps,
                                 lr=s.lr, projector_lr=s.projector_lr, ctc_weight=s.ctc_weight)
        train(TrainConfig(train=[str(_manifest(corpus, t, "train")) for t in condition.tasks], out=str(path),
                          encoder_from=str(warm), stages=stages, loop=loop,
                          model=ModelConfig(decoder=DecoderConfig(pretrained=str(base)), projector=s.projector)))
    return path


def _evaluate(config: StudyConfig, corpus: Path, condition: Condition, model: Path) -> Path:
    path = model.parent / "eval"
    if step_needed(f"eval {condition.name}", path / "metrics.json"):
        evaluate(EvalConfig(model=str(model), data=[str(_manifest(corpus, t, "test")) for t in condition.tasks],
                            out=str(path), max_utterances=config.evaluation.test_utterances,
                            max_new_tokens=config.evaluation.max_new_tokens))
    return path


def _scan(model: Path, data: Path, path: Path, input: str, utterances: int, label: str, plots: bool) -> Path:
    if step_needed(f"scan {label}", path / "scan.json"):
        settings = dict(model=str(model), data=str(data), out=str(path), input=input, max_utterances=utterances,
                        bootstrap=0, regions=["all", "last"], plots=plots)
        if "layout" in {f.name for f in dataclasses.fields(ScanConfig)}:
            settings["layout"] = "task"  # the SpeechLLM's own sequences, so base and SpeechLLM read the same
        scan(ScanConfig(**settings))
    return path


def _compare(scans: list[Path], path: Path, labels: list[str], plots: bool, input: str = "") -> dict:
    if step_needed(f"compare {path.name}", path / "compare.json"):
        compare(CompareConfig(scans=[str(s) for s in scans], out=str(path), labels=labels, input=input,
                              regions=[REGION, "last"], plots=plots))
    return read_json(path / "compare.json")


def _sweep(config: StudyConfig, corpus: Path, model: Path, scan_dir: Path, path: Path, tasks: tuple[str, ...],
           heal: list[str], train_manifest: list[str]) -> dict:
    if step_needed(f"sweep {path.parent.name}/{path.name}", path / "summary.json"):
        e = config.evaluation
        sweep(SweepConfig(model=str(model), scan=str(scan_dir), train=train_manifest,
                          test=[str(_manifest(corpus, t, "test")) for t in tasks], out=str(path),
                          fractions=list(e.fractions), strategies=["angular"], heal=heal, heal_steps=e.heal_steps,
                          input="speech", region=REGION, max_test_utterances=e.test_utterances,
                          wer_rise=e.wer_rise, wer_floor=e.wer_floor, bleu_drop=e.bleu_drop))
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
    corpus = _corpus(config, out)
    e = config.evaluation
    decoders = {d.name: d for d in config.decoders}
    encoders = {x.name: x for x in config.encoders}
    plan = conditions(config)
    console.print(f"study: {len(plan)} conditions: " + ", ".join(c.name for c in plan))

    records: dict[str, dict] = {}
    base_scans: dict[tuple[str, tuple], Path] = {}
    for condition in plan:
        base = _base_llm(config, out, corpus, decoders[condition.decoder])
        warm = _warm_encoder(config, out, corpus, encoders[condition.encoder], condition.source_languages())
        model = _speechllm(config, out, corpus, condition, base, warm)
        folder = model.parent
        metrics = read_json(_evaluate(config, corpus, condition, model) / "metrics.json")
        data = _mixed_manifest(out, corpus, condition.tasks, "dev",
                               None if len(condition.tasks) == 1 else max(1, e.scan_utterances // len(condition.tasks)))
        scan_dir = _scan(model, data, folder / "scan", "both", e.scan_utterances, condition.name, config.plots)
        key = (condition.decoder, condition.tasks)
        if key not in base_scans:
            base_scans[key] = _scan(base, data, out / "base" / condition.decoder / f"scan-{'+'.join(condition.tasks)}",
                                    "text", e.scan_utterances, f"base {condition.decoder} on text", config.plots)
        scanned = ScanResult.load(scan_dir)
        labels = [f"base/{input}" for input in ScanResult.load(base_scans[key]).inputs]
        labels += [f"speechllm/{input}" for input in scanned.inputs]
        base_compare = _compare([base_scans[key], scan_dir], folder / "compare-base", labels, config.plots)
        records[condition.name] = {
            "condition": condition, "model": model, "scan": scan_dir, "metrics": metrics,
            "encoder_ctc_cer": read_json(warm / "ctc_cer.json")["cer"],
            "num_layers": scanned.num_layers,
            "inherited": find_pair(base_compare, "base/text", "speechllm/speech", REGION),
            "text_speech": find_pair(base_compare, "speechllm/speech", "speechllm/text", REGION),
        }
        if "decoder" in condition.axes:
            train_manifest = [str(_manifest(corpus, t, "train")) for t in condition.tasks]
            records[condition.name]["sweep"] = _sweep(config, corpus, model, scan_dir, folder / "sweep",
                                                      condition.tasks, ["none", "receiving-mlp"], train_manifest)
            records[condition.name]["sweep_dir"] = folder / "sweep"

    # agreement over the conditions a one-axis change separates (same depth: the reference decoder's)
    reference = next(r for r in records.values() if r["condition"].axes and "decoder" in r["condition"].axes
                     and r["condition"].decoder == reference_decoder(config))
    comparable = {name: r for name, r in records.items() if r["num_layers"] == reference["num_layers"]
                  and r["condition"].decoder == reference["condition"].decoder}
    angulars = {name: ScanResult.load(r["scan"]).matrix("speech", REGION) for name, r in comparable.items()}
    axes = {}
    for axis in ("encoder", "task", "language", "mode"):
        members = [name for name, r in comparable.items() if axis in r["condition"].axes]
        if len(members) >= 2:
            payload = _compare([comparable[m]["scan"] for m in members], out / "agreement" / axis, members,
                               config.plots, "speech")
            axes[axis] = {"conditions": members, "compare": f"agreement/{axis}", **pair_metrics(payload, REGION)}
    single_task = {n: a for n, a in angulars.items() if len(comparable[n]["condition"].tasks) == 1}
    backbone = consensus(single_task or angulars, "speech", REGION)

    # claim 5: the multi-task model pruned with the consensus block, healed once on the mixed tasks
    multitask = next((r for r in comparable.values() if "multitask" in r["condition"].axes), None)
    backbone_result = None
    if multitask is not None:
        consensus_scan = out / "consensus" / "scan"
        if not (consensus_scan / SCAN_FILE).exists():
            backbone.scan.save(consensus_scan)
        tasks = multitask["condition"].tasks
        train_manifest = [str(_manifest(corpus, t, "train")) for t in tasks]
        with_consensus = _sweep(config, corpus, multitask["model"], consensus_scan, out / "consensus" / "sweep",
                                tasks, ["none", "receiving-mlp"], train_manifest)
        with_own = _sweep(config, corpus, multitask["model"], multitask["scan"], out / "consensus" / "sweep-own",
                          tasks, ["none"], train_manifest)
        sets = [f"{t}.test" for t in tasks]
        largest = {"consensus_healed": smallest_largest(with_consensus, "angular", "receiving-mlp"),
                   "consensus_unhealed": smallest_largest(with_consensus, "angular", "none"),
                   "own_unhealed": smallest_largest(with_own, "angular", "none")}
        backbone_result = {"condition": multitask["condition"].name, "sets": sets,
                           **{key: entry["fraction"] for key, entry in largest.items()}, "largest": largest,
                           "sweeps": ["consensus/sweep", "consensus/sweep-own"]}

    payload = _payload(config, out, records, axes, agreement_matrices(angulars), backbone, backbone_result,
                       time.perf_counter() - started)
    write_json(out / "study.json", payload)
    write_text(out / "claims.md", claims_markdown(payload["claims"]))
    print_claims(payload["claims"])
    console.print(f"[bold green]study finished[/] in {payload['seconds']:.0f} s: {out / 'study.json'}")
    return payload


def _payload(config: StudyConfig, out: Path, records: dict, axes: dict, matrices: dict, backbone: Consensus,
             backbone_result: dict | None, seconds: float) -> dict:
    rel = lambda p: str(Path(p).relative_to(out)) if Path(p).is_relative_to(out) else str(p)  # noqa: E731
    claims = study_claims(records, axes, backbone_result, rel)
    conditions_out = {}
    for name, r in records.items():
        c = r["condition"]
        conditions_out[name] = {"decoder": c.decoder, "encoder": c.encoder, "tasks": list(c.tasks), "mode": c.mode,
                                "axes": list(c.axes), "num_layers": r["num_layers"], "model": rel(r["model"]),
                                "scan": rel(r["scan"]), "metrics": r["metrics"]["sets"],
                                "encoder_ctc_cer": r["encoder_ctc_cer"],
                                "inherited": {k: r["inherited"][k] for k in ("spearman", "same_best_start", "mean_abs_delta_start")},
                                "text_speech": {k: r["text_speech"][k] for k in ("spearman", "same_best_start", "mean_abs_delta_start")}}
    return {
        "index_convention": "0-based layers; block [l, l+n) end-exclusive; l*(n) = best start for block size n",
        "region": REGION,
        "claims": claims,
        "agreement": matrices,
        "axes": axes,
        "consensus": {"rows": backbone.rows, "backbone": backbone_result},
        "conditions": conditions_out,
        "sweeps": {name: rel(r["sweep_dir"]) for name, r in records.items() if "sweep_dir" in r}
                  | ({"consensus": "consensus/sweep", "consensus-own": "consensus/sweep-own"} if backbone_result else {}),
        "seconds": seconds,
    }
