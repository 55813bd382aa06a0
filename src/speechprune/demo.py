"""The whole chain on the offline default, one step after another:

    data synth -> train -> eval -> scan (speech and text) -> compare -> sweep (prune, heal, eval)

Every step writes its own directory under OUT and is skipped when that directory is complete,
so an interrupted demo continues where it stopped. Each step is the same Python function the
CLI calls; nothing here is demo-only logic.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from speechprune.config import option
from speechprune.data.synth import SynthConfig, synthesize
from speechprune.evaluate import EvalConfig, evaluate
from speechprune.train import TrainConfig, train

console = Console(stderr=True)


@dataclass
class DemoConfig:
    out: str = option("runs/demo", help="where every step writes its directory")
    languages: list[str] = option(["en", "fr", "de", "es"], help="languages of the synthetic corpus")
    st_pairs: list[str] = option(["en-fr", "en-de", "fr-en", "de-en"], help="speech-translation pairs")
    train_sentences: int = option(3000)
    fractions: list[float] = option([0.0, 0.125, 0.25, 0.375, 0.5], help="sweep: fractions of decoder layers removed")
    strategies: list[str] = option(["angular", "bi", "last"], help="sweep: pruning strategies")
    heal: list[str] = option(["none", "receiving-mlp"], help="sweep: healing settings")
    heal_steps: int = option(150, help="LoRA healing steps per sweep cell")
    prefill_only: bool = option(True, help="sweep also skips the chosen layers in the prefix only")
    test_utterances: int = option(100, help="utterances per test set in the sweep")


def _step(name: str, done_marker: Path) -> bool:
    if done_marker.exists():
        console.print(f"[green]✓[/] {name} (already done: {done_marker.parent})")
        return False
    console.rule(f"[bold]{name}")
    return True


def _optional(module: str, config: str, function: str):
    """Later stages are looked up when the demo reaches them (lower stages never import them)."""
    loaded = importlib.import_module(module)
    return getattr(loaded, config), getattr(loaded, function)


def demo(config: DemoConfig) -> Path:
    """Synthesise the corpus, train the tiny SpeechLLM, evaluate it, scan its decoder with speech
    and text input, compare the two scans, and sweep prune -> heal -> evaluate."""
    out = Path(config.out)
    corpus, model_dir = out / "corpus", out / "model"
    if _step("data synth", corpus / "corpus.json"):
        synthesize(SynthConfig(out=str(corpus), languages=config.languages, st_pairs=config.st_pairs,
                               train_sentences=config.train_sentences))
    if _step("train", model_dir / "speechllm.json"):
        train(TrainConfig(train=[str(corpus / "asr-en.train.jsonl")], out=str(model_dir)))
    tests = [str(corpus / "asr-en.test.jsonl"), str(corpus / "asr-en.test-ood.jsonl")]
    if _step("eval", out / "eval" / "metrics.json"):
        evaluate(EvalConfig(model=str(model_dir), data=tests, out=str(out / "eval")))
    ScanConfig, scan = _optional("speechprune.scan.run", "ScanConfig", "scan")
    if _step("scan", out / "scan" / "scan.json"):
        scan(ScanConfig(model=str(model_dir), data=str(corpus / "asr-en.dev.jsonl"), input="both",
                        out=str(out / "scan")))
    CompareConfig, compare = _optional("speechprune.scan.compare", "CompareConfig", "compare")
    if _step("compare speech vs text", out / "compare" / "compare.json"):
        compare(CompareConfig(scans=[str(out / "scan")], out=str(out / "compare")))
    SweepConfig, sweep = _optional("speechprune.sweep", "SweepConfig", "sweep")
    if _step("sweep", out / "sweep" / "summary.json"):
        sweep(SweepConfig(model=str(model_dir), scan=str(out / "scan"), train=[str(corpus / "asr-en.train.jsonl")],
                          test=tests, fractions=config.fractions, strategies=config.strategies, heal=config.heal,
                          heal_steps=config.heal_steps, prefill_only=config.prefill_only,
                          max_test_utterances=config.test_utterances,
                          out=str(out / "sweep")))
    console.print(f"[bold green]demo finished[/]: {out}")
    return out
