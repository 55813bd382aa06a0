"""The base LLM: a decoder pretrained as a language model on text alone, saved as a standard
Hugging Face checkpoint (``AutoModelForCausalLM`` and ``AutoTokenizer`` load it), which a
SpeechLLM then starts from (``model.decoder.pretrained=BASE``), as the paper's SpeechLLMs start
from Llama and Qwen.

Text is cheap: the corpus grammar (:mod:`speechprune.data.grammar`) renders many more sentences
than the speech corpus speaks, in every language asked for. The model reads them as short
documents (:func:`documents`), not one sentence at a time: real LLMs learn from long documents in
which phrases recur to read and copy from their context, and a SpeechLLM's decoder needs exactly
that to read its speech segment. Measured: a decoder pretrained on single sentences, then adapted
with LoRA, kept its text-only loss for 800 joint steps (WER 0.68); pretrained on documents, it
learned to copy a source segment within 75 steps (docs/study.md, recipes). Training is the ``text-lm`` stage of
:func:`speechprune.train.run_stages` (the one Accelerate loop), with the dev-set perplexity
measured at every logged step: ``OUT/curve.json`` and ``OUT/curve.png`` show it level off.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

import torch
from rich.console import Console

from speechprune.config import require, save_config
from speechprune.data import grammar
from speechprune.data.manifest import Utterance, load_manifests
from speechprune.files import claims_output, staged_dir, write_json
from speechprune.model.device import resolve_device
from speechprune.model.speechllm import LANGUAGE_NAMES, ModelConfig, SpeechLLM
from speechprune.model.text import text_batch
from speechprune.options.base_llm import BaseLLMConfig
from speechprune.train import StageConfig, make_accelerator, run_stages, seed_everything

console = Console(stderr=True)
CURVE_FILE = "curve.json"


def grammar_texts(count: int, seed: int, languages: list[str], exclude: set[str] = frozenset()) -> list[str]:
    """``count`` meanings rendered in every language (a sentence in ``exclude`` is skipped)."""
    meanings = grammar.sample_meanings(count, seed, tuple(languages))
    return [text for meaning in meanings for lang in languages
            if (text := grammar.render(meaning, lang)) not in exclude]


def documents(sentences: list[str], per_document: int, repeat_probability: float, seed: int) -> list[str]:
    """Consecutive sentences joined into documents of ``per_document`` sentences (one meaning's
    renderings in several languages sit side by side, like a text beside its translation); each
    sentence after a document's first is replaced, with ``repeat_probability``, by a copy of an
    earlier sentence of the same document."""
    rng = random.Random(seed)
    result = []
    for start in range(0, len(sentences), per_document):
        document: list[str] = []
        for sentence in sentences[start: start + per_document]:
            document.append(rng.choice(document) if document and rng.random() < repeat_probability else sentence)
        result.append(" ".join(document))
    return result


def _as_utterances(texts: list[str], tag: str) -> list[Utterance]:
    return [Utterance(id=f"{tag}-{i}", audio="", text=t, task="asr", src_lang="xx", tgt_lang="xx", target=t)
            for i, t in enumerate(texts)]


@torch.no_grad()
def text_perplexity(model: SpeechLLM, utterances: list[Utterance], batch_size: int = 64) -> float:
    """exp of the token-weighted mean next-token loss of ``<bos> text <eos>`` (the ``lm`` layout)."""
    total, count = 0.0, 0
    for start in range(0, len(utterances), batch_size):
        batch = text_batch(model.tokenizer, utterances[start: start + batch_size], prompts=model.prompts)
        inputs = model.text_lm_inputs(batch)
        logits = model.decoder(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                               position_ids=inputs.position_ids, use_cache=False).logits
        labels = inputs.labels.to(logits.device)
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                                         ignore_index=-100, reduction="sum"))
        count += int((labels != -100).sum())
    return math.exp(total / max(count, 1))


def levelled_off_at(curve: list[dict], window: int = 3, tolerance: float = 0.01) -> int | None:
    """The first step after which ``window`` successive measurements each improve the dev
    perplexity by less than ``tolerance`` (relative); None while it still falls faster."""
    for i in range(len(curve) - window):
        gains = [(curve[j]["dev_ppl"] - curve[j + 1]["dev_ppl"]) / curve[j]["dev_ppl"] for j in range(i, i + window)]
        if all(gain < tolerance for gain in gains):
            return int(curve[i]["step"])
    return None


def _plot(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.plot([c["step"] for c in curve], [c["dev_ppl"] for c in curve], marker="o", markersize=3)
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("dev perplexity")
    axis.set_yscale("log")
    axis.set_title("base LLM: text-only pretraining")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@claims_output("base-llm", resumable=True)
def pretrain_base_llm(config: BaseLLMConfig) -> Path:
    """Generate grammar text in every language, train a BPE and a decoder on it as a language
    model (the ``text-lm`` stage), and save decoder + tokenizer as one Hugging Face checkpoint,
    with the dev-perplexity curve (``curve.json``, ``curve.png``). Training checkpoints go to
    ``OUT/checkpoints`` (a killed run resumes from them); the finished checkpoint replaces OUT whole."""
    out = Path(config.out)
    resolve_device(config.device)  # a device this machine lacks: one line, before any work
    exclude = {u.target for u in load_manifests(config.exclude)} | {u.text for u in load_manifests(config.exclude)} \
        if config.exclude else set()
    train_texts = grammar_texts(config.sentences, config.seed, config.languages, exclude)
    dev_pool = grammar_texts(config.sentences + config.dev_sentences, config.seed + 7919, config.languages, exclude)
    seen = set(train_texts)
    dev_texts = [t for t in dev_pool if t not in seen][: config.dev_sentences * len(config.languages)]
    require(len(dev_texts) > 0, "no dev sentence is left once the training sentences are removed")
    prompts = [p.format(target_language=LANGUAGE_NAMES.get(lang, lang)) for p in config.prompts.values()
               for lang in config.languages]
    train_documents = documents(train_texts, config.sentences_per_document, config.repeat_probability, config.seed)
    dev_documents = documents(dev_texts, config.sentences_per_document, config.repeat_probability, config.seed + 1)
    # prompts precede every target a SpeechLLM reads: weight them so the BPE merges them
    bpe_texts = train_texts + prompts * max(1, len(train_texts) // (10 * len(prompts)))
    seed_everything(config.loop.seed)
    model = SpeechLLM.build(ModelConfig(decoder=config.decoder, prompts=config.prompts, ctc=False), bpe_texts)
    console.print(f"base LLM: {len(train_texts):,} training sentences in {len(train_documents):,} documents, "
                  f"{len(dev_texts):,} dev sentences in {len(dev_documents):,}, in {', '.join(config.languages)}; "
                  f"{sum(p.numel() for p in model.decoder.parameters()):,} parameters")
    save_config(config, out / "config.yaml")
    dev = _as_utterances(dev_documents, "dev")
    curve: list[dict] = []

    def measure(stage: str, step: int) -> dict:
        if step % config.eval_every and step != config.steps:
            return {}
        ppl = text_perplexity(model, dev)
        curve.append({"step": step, "dev_ppl": ppl})
        return {"dev_ppl": ppl}

    stage = StageConfig(steps=config.steps, input="lm", encoder="frozen", projector="frozen", lr=config.lr,
                        batch_size=config.batch_size)
    loop = dataclasses.replace(config.loop, log_every=math.gcd(config.loop.log_every, config.eval_every))
    started = time.perf_counter()
    model.train()
    results = run_stages(model, _as_utterances(train_documents, "text"), {"text-lm": stage}, loop, out,
                         make_accelerator(loop, out, config.device), on_log=measure)
    model.eval()
    # a resumed run measured only its own part of the curve: the stage history has all of it
    curve = [{"step": r["step"], "dev_ppl": r["dev_ppl"]} for r in results[0].history if "dev_ppl" in r]
    with staged_dir(out) as staging:  # replaces OUT whole, checkpoints included
        model.decoder.save_pretrained(staging)
        model.tokenizer.save_pretrained(staging)
        save_config(config, staging / "config.yaml")
        write_json(staging / CURVE_FILE, {
            "curve": curve, "levelled_off_at": levelled_off_at(curve), "final_dev_ppl": curve[-1]["dev_ppl"],
            "train_loss": [{"step": r["step"], "loss": r["loss"]} for r in results[0].history if "loss" in r],
            "train_sentences": len(train_texts), "dev_sentences": len(dev_texts),
            "train_documents": len(train_documents), "dev_documents": len(dev_documents), "languages": config.languages,
            "steps": config.steps, "train_seconds": results[0].seconds,
            "wall_seconds": time.perf_counter() - started})
        _plot(curve, staging / "curve.png")
    level = levelled_off_at(curve)
    console.print(f"[bold green]base LLM[/] saved to {out}: dev perplexity {curve[0]['dev_ppl']:.2f} -> "
                  f"{curve[-1]['dev_ppl']:.2f} in {config.steps} steps ({results[0].seconds:.0f} s); "
                  + (f"levelled off at step {level}" if level is not None
                     else "not levelled off (still over 1% better per measurement)"))
    return out
