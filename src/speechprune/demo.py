"""The whole chain on the offline corpus, sized to run in 12 minutes on a 2-core CPU:

    data synth -> train -> eval -> scan (speech and text) -> compare -> sweep (prune, heal, eval) -> report

Every step writes its own directory under OUT and is skipped when that directory is complete,
so an interrupted demo continues where it stopped. Each step is the same Python function the
CLI calls; nothing here is demo-only logic. The demo is a reduced study (English ASR only, one
decoder trained from scratch, angular distance, 1-3 of 8 layers removed, a short heal);
``speechprune sweep`` and ``speechprune study`` run the full grids.

``--base-steps N`` runs the paper's setting instead: a base LLM pretrained on text first
(``base-llm``), the SpeechLLM trained on it (``--decoder lora|frozen|full``, the stages of
:func:`speechprune.train.base_llm_stages`), and the base LLM scanned on text beside the SpeechLLM.
A base LLM needs about 800 steps before it can read its context, which with the SpeechLLM on top
does not fit the 12 minutes (docs/study.md, recipes).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path


from speechprune.base_llm import BaseLLMConfig, pretrain_base_llm
from speechprune.console import stderr, step_needed
from speechprune.config import option, require, require_choice, save_config
from speechprune.data.synth import SynthConfig, synthesize
from speechprune.evaluate import EvalConfig, evaluate
from speechprune.files import claims_output, read_json, write_json
from speechprune.model.speechllm import DecoderConfig, ModelConfig, ProjectorConfig
from speechprune.train import MODES, LoopConfig, LoraConfig, TrainConfig, base_llm_stages, default_stages, train



@dataclass
class DemoConfig:
    out: str = option("runs/demo", help="where every step writes its directory")
    languages: list[str] = option(["en"], help="languages of the synthetic corpus")
    st_pairs: list[str] = option([], help="speech-translation pairs")
    train_sentences: int = option(3000, help="distinct meanings in the training split of the corpus")
    base_steps: int = option(0, help="text-only pretraining steps of the base LLM, the paper's setting (0: none, the "
                                     "decoder is trained from scratch with the speech task; what each costs: "
                                     "BENCHMARKS.md, measured defaults)")
    base_sentences: int = option(10000, help="meanings the base LLM reads (the corpus's dev and test texts excluded)")
    decoder: str = option("lora", help="how the SpeechLLM adapts the base LLM: lora (the paper) | frozen | full")
    ctc_steps: int = option(150, help="encoder warm-up steps (CTC)")
    copy_steps: int = option(200, help="steps of the copy stage (source text in the speech slot; base LLM only)")
    joint_steps: int = option(950, help="joint training steps (from scratch; the WER each reaches: BENCHMARKS.md, "
                                        "measured defaults)")
    fractions: list[float] = option([0.0, 0.125, 0.25, 0.375], help="sweep: fractions of decoder layers removed")
    strategies: list[str] = option(["angular"], help="sweep: pruning strategies")
    heal: list[str] = option(["none", "receiving-mlp"], help="sweep: healing settings")
    heal_steps: int = option(80, help="LoRA healing steps per sweep cell")
    prefill_only: bool = option(False, help="sweep also skips the chosen layers in the prefix only")
    test_utterances: int | None = option(None, help="in-domain test utterances per sweep cell (empty: all, the "
                                                    "evaluation's: the sweep's baseline is then the evaluated one)")
    overwrite: bool = option(False, help="replace an existing --out (else this demo's own work is resumed or reused)")

    def __post_init__(self):
        require_choice(self.decoder, MODES, "--decoder")
        require(self.base_steps >= 0, "--base-steps must be >= 0")




def _optional(module: str, config: str, function: str):
    """Later stages are looked up when the demo reaches them (lower stages never import them)."""
    loaded = importlib.import_module(module)
    return getattr(loaded, config), getattr(loaded, function)


class _Timer:
    """Seconds per step, kept in OUT/demo.json across reruns (a reused step keeps its first time)."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = read_json(path).get("seconds", {}) if path.exists() else {}

    def run(self, name: str, marker: Path, work) -> None:
        if not step_needed(name, marker):
            return
        started = time.perf_counter()
        work()
        self.seconds[name] = round(time.perf_counter() - started, 1)
        write_json(self.path, {"seconds": self.seconds})


@claims_output("demo", resumable=True, reusable=True)
def demo(config: DemoConfig) -> Path:
    """Synthesise the corpus, train the SpeechLLM (with ``base_steps``: on a base LLM pretrained
    on text first), evaluate it, scan its decoder with speech and text input (and the base LLM
    with text), compare the scans, sweep prune -> heal -> evaluate, and write the report."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")  # the report's "Made by" reads it back
    corpus, model_dir = out / "corpus", out / "model"
    timer = _Timer(out / "demo.json")
    train_manifest = str(corpus / "asr-en.train.jsonl")
    tests = [str(corpus / "asr-en.test.jsonl"), str(corpus / "asr-en.test-ood.jsonl")]

    timer.run("data synth", corpus / "corpus.json", lambda: synthesize(SynthConfig(
        out=str(corpus), languages=config.languages, st_pairs=config.st_pairs,
        train_sentences=config.train_sentences)))
    base = out / "base"
    if config.base_steps:
        held_out = [str(corpus / f"asr-en.{split}.jsonl") for split in ("dev", "test", "test-ood")]
        timer.run("base LLM", base / "curve.json", lambda: pretrain_base_llm(BaseLLMConfig(
            out=str(base), languages=config.languages, sentences=config.base_sentences, exclude=held_out,
            steps=config.base_steps, eval_every=max(1, config.base_steps // 8))))
        stages = base_llm_stages(config.decoder, config.ctc_steps, config.copy_steps, config.joint_steps)
        model = ModelConfig(decoder=DecoderConfig(pretrained=str(base)), projector=ProjectorConfig(stack=2))
    else:
        stages = default_stages()
        stages["ctc"].steps, stages["joint"].steps = config.ctc_steps, config.joint_steps
        model = ModelConfig()
    timer.run("train", model_dir / "speechllm.json", lambda: train(TrainConfig(
        train=[train_manifest], out=str(model_dir), stages=stages, model=model,
        loop=LoopConfig(lora=LoraConfig(rank=16, alpha=32)))))
    timer.run("eval", out / "eval" / "metrics.json",
              lambda: evaluate(EvalConfig(model=str(model_dir), data=tests, out=str(out / "eval"))))
    ScanConfig, scan = _optional("speechprune.scan.run", "ScanConfig", "scan")
    dev = str(corpus / "asr-en.dev.jsonl")
    timer.run("scan", out / "scan" / "scan.json", lambda: scan(ScanConfig(
        model=str(model_dir), data=dev, input="both", layout="task", out=str(out / "scan"))))
    scans, labels = [str(out / "scan")], ["speechllm/speech", "speechllm/text"]
    if config.base_steps:  # the base LLM reads the same sequences (task layout), for what it passes on
        timer.run("scan base LLM", out / "scan-base" / "scan.json", lambda: scan(ScanConfig(
            model=str(base), data=dev, input="text", layout="task", out=str(out / "scan-base"))))
        scans, labels = [str(out / "scan-base"), *scans], ["base/text", *labels]
    CompareConfig, compare = _optional("speechprune.scan.compare", "CompareConfig", "compare")
    timer.run("compare", out / "compare" / "compare.json",
              lambda: compare(CompareConfig(scans=scans, labels=labels, out=str(out / "compare"))))
    SweepConfig, sweep = _optional("speechprune.sweep", "SweepConfig", "sweep")
    timer.run("sweep", out / "sweep" / "summary.json", lambda: sweep(SweepConfig(
        model=str(model_dir), scan=str(out / "scan"), train=[train_manifest], test=tests[:1],
        fractions=config.fractions, strategies=config.strategies, heal=config.heal, heal_steps=config.heal_steps,
        prefill_only=config.prefill_only, max_test_utterances=config.test_utterances, out=str(out / "sweep"))))
    write_json(timer.path, {"seconds": timer.seconds})  # also when every step was reused: marks a demo run
    ReportConfig, report = _optional("speechprune.report", "ReportConfig", "report")
    stderr().rule("[bold]report")  # always rebuilt: it is fast and reflects every step above
    report_path = report(ReportConfig(run=[str(out)]))
    seconds = timer.seconds
    stderr().print(f"[bold green]demo finished[/]: {out}  (steps: "
                  + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
                  + f"; {sum(seconds.values()) / 60:.1f} min measured over the steps run)")
    stderr().print(f"report: {report_path}")
    return report_path
