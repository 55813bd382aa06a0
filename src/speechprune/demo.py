"""The whole chain on the offline corpus, on a real pretrained LLM:

    data synth -> train -> eval -> scan (speech and text; the base LLM on text) -> compare
      -> sweep (prune, heal, eval; the base LLM alone by its perplexity on the test text) -> report

By default the SpeechLLM is built on SmolLM2-135M (30 layers, from its GGUF wheel) with LoRA
adapters, as the paper builds its SpeechLLMs on Llama and Qwen, by the recipe of
``configs/train-on-smollm2.yaml`` (:func:`speechprune.train.base_llm_stages`); the base LLM is
scanned on the same text beside the SpeechLLM. ``--base-llm`` takes any other causal LM (a path,
hub id, ``.gguf`` file or GGUF short name, or a base LLM made by ``speechprune base-llm``).

The encoder is pretrained Whisper tiny.en (``--encoder`` takes ``whisper-base``, a CTranslate2 folder
or a Hugging Face encoder instead), kept frozen as the paper keeps it: no CTC warm-up, its states
computed once per utterance and cached by the training loop
(:func:`speechprune.train.frozen_encoder_stages`), and the projector's stack set by its frame rate
so that a decoder position spans 160 ms of speech. ``--encoder scratch`` (and ``--tiny``) train a
Whisper-style encoder from scratch instead, warmed up on CTC first.

``--tiny`` is the quick look: an 8-layer decoder trained from scratch with the speech task,
about 8 minutes, with no base LLM (and nothing to spare: docs/offline-default.md).

Every step writes its own directory under OUT and is skipped when that directory is complete,
so an interrupted demo continues where it stopped. Each step is the same Python function the
CLI calls; nothing here is demo-only logic.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

from speechprune.config import save_config
from speechprune.console import StepTimes, stderr
from speechprune.data.synth import SynthConfig, synthesize
from speechprune.evaluate import EvalConfig, evaluate
from speechprune.files import claims_output
from speechprune.model.speechllm import DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig
from speechprune.options.demo import DemoConfig
from speechprune.train import (LoopConfig, LoraConfig, StageConfig, TrainConfig, base_llm_stages, default_stages,
                               frozen_encoder_stages, train)

POSITION_MS = 160.0  # speech per decoder position with a pretrained --encoder (the from-scratch encoder's 40 ms x 4)


def _optional(module: str, config: str, function: str):
    """Later stages are looked up when the demo reaches them (lower stages never import them)."""
    loaded = importlib.import_module(module)
    return getattr(loaded, config), getattr(loaded, function)


def training_plan(config: DemoConfig) -> tuple[dict[str, StageConfig], ModelConfig]:
    """The stages and model config the demo trains its SpeechLLM with (nothing is opened here)."""
    recipe = config.recipe()
    if config.tiny:
        stages = default_stages()
        stages["ctc"].steps, stages["joint"].steps = recipe.ctc_steps, recipe.joint_steps
        model = ModelConfig()
    else:
        stages = base_llm_stages(config.decoder, recipe.ctc_steps, recipe.copy_steps, recipe.joint_steps,
                                 proj_steps=recipe.proj_steps, token_ctc_vocabulary=recipe.token_ctc_vocabulary)
        model = ModelConfig(decoder=DecoderConfig(pretrained=config.base_llm), projector=ProjectorConfig(stack=4))
    encoder = config.pretrained_encoder()
    if encoder:  # frozen and cached, no CTC on it; a decoder position spans as much speech as with the
        # from-scratch encoder (its 40 ms frames by 4): a pretrained Whisper's 20 ms frames by 8, wav2vec2's likewise
        stages = frozen_encoder_stages(stages)
        model = replace(model, encoder=EncoderConfig(pretrained=encoder), ctc=False,
                        projector=replace(model.projector, position_ms=POSITION_MS))
    return stages, model


@claims_output("demo", resumable=True, reusable=True)
def demo(config: DemoConfig) -> Path:
    """Synthesise the corpus, train the SpeechLLM (on the base LLM, or from scratch with ``tiny``),
    evaluate it, scan its decoder with speech and text input (and the base LLM with text), compare
    the scans, sweep prune -> heal -> evaluate, and write the report."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")  # the report's "Made by" reads it back
    corpus, model_dir = out / "corpus", out / "model"
    timer = StepTimes(out / "demo.json")
    recipe = config.recipe()
    train_manifest = str(corpus / "asr-en.train.jsonl")
    tests = [str(corpus / "asr-en.test.jsonl"), str(corpus / "asr-en.test-ood.jsonl")]

    timer.run("data synth", corpus / "corpus.json", lambda: synthesize(SynthConfig(
        out=str(corpus), languages=config.languages, st_pairs=config.st_pairs,
        train_sentences=config.train_sentences, test_sentences=config.test_sentences)))
    stages, model = training_plan(config)
    placed = {"dtype": config.dtype, "device": config.device}  # every step that reads or heals a model
    timer.run("train", model_dir / "speechllm.json", lambda: train(TrainConfig(
        train=[train_manifest], out=str(model_dir), stages=stages, model=model, device=config.device,
        loop=LoopConfig(lora=LoraConfig(rank=16, alpha=32), mixed_precision=recipe.mixed_precision))))
    timer.run("eval", out / "eval" / "metrics.json",
              lambda: evaluate(EvalConfig(model=str(model_dir), data=tests, out=str(out / "eval"), **placed)))
    ScanConfig, scan = _optional("speechprune.scan.run", "ScanConfig", "scan")
    dev = str(corpus / "asr-en.dev.jsonl")
    timer.run("scan", out / "scan" / "scan.json", lambda: scan(ScanConfig(
        model=str(model_dir), data=dev, input="both", layout="task", out=str(out / "scan"), **placed)))
    scans, labels = [str(out / "scan")], ["speechllm/speech", "speechllm/text"]
    if not config.tiny:  # the base LLM reads the same sequences (task layout), for what it passes on
        timer.run("scan base LLM", out / "scan-base" / "scan.json", lambda: scan(ScanConfig(
            model=config.base_llm, data=dev, input="text", layout="task", out=str(out / "scan-base"), **placed)))
        scans, labels = [str(out / "scan-base"), *scans], ["base/text", *labels]
    CompareConfig, compare = _optional("speechprune.scan.compare", "CompareConfig", "compare")
    timer.run("compare", out / "compare" / "compare.json",
              lambda: compare(CompareConfig(scans=scans, labels=labels, out=str(out / "compare"))))
    SweepConfig, sweep = _optional("speechprune.sweep", "SweepConfig", "sweep")
    timer.run("sweep", out / "sweep" / "summary.json", lambda: sweep(SweepConfig(
        model=str(model_dir), scan=str(out / "scan"), train=[train_manifest], test=tests[:1],
        fractions=list(recipe.fractions), strategies=config.strategies, heal=config.heal,
        heal_steps=recipe.heal_steps, heal_mixed_precision=recipe.mixed_precision, prefill_only=config.prefill_only,
        max_test_utterances=config.test_utterances, looks=config.looks, out=str(out / "sweep"), **placed)))
    if not config.tiny:  # what PruneMe and ShortGPT users do: the base LLM alone, pruned, perplexity on text.
        # Unhealed: healing on the corpus's own sentences teaches the LLM their grammar, which is not recovery
        # (measured: 3 layers removed and 40 steps took perplexity from the unpruned 1,004 to 333)
        timer.run("sweep base LLM", out / "sweep-base" / "summary.json", lambda: sweep(SweepConfig(
            model=config.base_llm, scan=str(out / "scan-base"), train=[train_manifest], test=tests[:1],
            metric="perplexity", fractions=list(recipe.fractions), strategies=config.strategies, heal=["none"],
            looks=config.looks, out=str(out / "sweep-base"), **placed)))
    timer.save()  # also when every step was reused: marks a demo run
    ReportConfig, report = _optional("speechprune.report", "ReportConfig", "report")
    stderr().rule("[bold]report")  # always rebuilt: it is fast and reflects every step above
    report_path = report(ReportConfig(run=[str(out)]))
    seconds = timer.seconds
    stderr().print(f"[bold green]demo finished[/]: {out}  (steps: "
                  + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
                  + f"; {sum(seconds.values()) / 60:.1f} min measured over the steps run)")
    stderr().print(f"report: {report_path}")
    return report_path
