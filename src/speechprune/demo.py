"""The whole chain on the offline default, sized to run in about ten minutes on a 2-core CPU:

    data synth -> train -> eval -> scan (speech and text) -> compare -> sweep (prune, heal, eval) -> report

Every step writes its own directory under OUT and is skipped when that directory is complete,
so an interrupted demo continues where it stopped. Each step is the same Python function the
CLI calls; nothing here is demo-only logic. The demo is a reduced study (English ASR only, angular
distance, 1-3 of 8 layers removed, a short heal); ``speechprune sweep`` and ``speechprune study``
run the full grids.

TODO(base LLM): the paper's setting pretrains the decoder on text first and trains the SpeechLLM
on top of it (decoder frozen or under LoRA), then scans the base LLM on text beside the SpeechLLM.
That recipe does not yet reach a usable WER on this corpus (see DESIGN.md); until it does, the
demo trains today's default (decoder trained in full from scratch) and the report says that the
base-LLM scan is missing.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from speechprune.console import step_needed
from speechprune.config import option
from speechprune.data.synth import SynthConfig, synthesize
from speechprune.evaluate import EvalConfig, evaluate
from speechprune.files import claims_output, read_json, write_json
from speechprune.train import TrainConfig, default_stages, train

console = Console(stderr=True)


@dataclass
class DemoConfig:
    out: str = option("runs/demo", help="where every step writes its directory")
    languages: list[str] = option(["en"], help="languages of the synthetic corpus")
    st_pairs: list[str] = option([], help="speech-translation pairs")
    train_sentences: int = option(3000, help="distinct meanings in the training split of the corpus")
    joint_steps: int = option(950, help="joint training steps: the default recipe's 1100 reach WER 0.022 in-domain, "
                                        "950 reached 0.045 (README) and save about 30 s")
    fractions: list[float] = option([0.0, 0.125, 0.25, 0.375], help="sweep: fractions of decoder layers removed")
    strategies: list[str] = option(["angular"], help="sweep: pruning strategies")
    heal: list[str] = option(["none", "receiving-mlp"], help="sweep: healing settings")
    heal_steps: int = option(80, help="LoRA healing steps per sweep cell")
    prefill_only: bool = option(False, help="sweep also skips the chosen layers in the prefix only")
    test_utterances: int = option(80, help="in-domain test utterances per sweep cell")
    overwrite: bool = option(False, help="replace an existing --out (else only this demo's unfinished work is resumed)")




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


@claims_output("demo", resumable=True)
def demo(config: DemoConfig) -> Path:
    """Synthesise the corpus, train the tiny SpeechLLM, evaluate it, scan its decoder with speech
    and text input, compare the two scans, sweep prune -> heal -> evaluate, and write the report."""
    out = Path(config.out)
    corpus, model_dir = out / "corpus", out / "model"
    timer = _Timer(out / "demo.json")
    train_manifest = str(corpus / "asr-en.train.jsonl")
    tests = [str(corpus / "asr-en.test.jsonl"), str(corpus / "asr-en.test-ood.jsonl")]

    timer.run("data synth", corpus / "corpus.json", lambda: synthesize(SynthConfig(
        out=str(corpus), languages=config.languages, st_pairs=config.st_pairs,
        train_sentences=config.train_sentences)))
    stages = default_stages()
    stages["joint"].steps = config.joint_steps
    timer.run("train", model_dir / "speechllm.json",
              lambda: train(TrainConfig(train=[train_manifest], out=str(model_dir), stages=stages)))
    timer.run("eval", out / "eval" / "metrics.json",
              lambda: evaluate(EvalConfig(model=str(model_dir), data=tests, out=str(out / "eval"))))
    ScanConfig, scan = _optional("speechprune.scan.run", "ScanConfig", "scan")
    timer.run("scan", out / "scan" / "scan.json", lambda: scan(ScanConfig(
        model=str(model_dir), data=str(corpus / "asr-en.dev.jsonl"), input="both", out=str(out / "scan"))))
    CompareConfig, compare = _optional("speechprune.scan.compare", "CompareConfig", "compare")
    timer.run("compare speech vs text", out / "compare" / "compare.json",
              lambda: compare(CompareConfig(scans=[str(out / "scan")], out=str(out / "compare"))))
    SweepConfig, sweep = _optional("speechprune.sweep", "SweepConfig", "sweep")
    timer.run("sweep", out / "sweep" / "summary.json", lambda: sweep(SweepConfig(
        model=str(model_dir), scan=str(out / "scan"), train=[train_manifest], test=tests[:1],
        fractions=config.fractions, strategies=config.strategies, heal=config.heal, heal_steps=config.heal_steps,
        prefill_only=config.prefill_only, max_test_utterances=config.test_utterances, out=str(out / "sweep"))))
    write_json(timer.path, {"seconds": timer.seconds})  # also when every step was reused: marks a demo run
    ReportConfig, report = _optional("speechprune.report", "ReportConfig", "report")
    console.rule("[bold]report")  # always rebuilt: it is fast and reflects every step above
    report_path = report(ReportConfig(run=[str(out)]))
    seconds = timer.seconds
    console.print(f"[bold green]demo finished[/]: {out}  (steps: "
                  + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
                  + f"; {sum(seconds.values()) / 60:.1f} min measured over the steps run)")
    console.print(f"report: {report_path}")
    return report_path
