"""Training in stages on Hugging Face Accelerate: the same loop in one CPU process and under
``accelerate launch`` on many GPUs. Training a new SpeechLLM, text pretraining of its decoder
and healing a pruned model of any kind all run through :func:`run_stages`, which asks a model only
for what :class:`Trainable` names (a SpeechLLM's own losses, or any other kind's decoder on its
next-token loss).

Why stages: a SpeechLLM trained jointly from step 0 learns the grammar of the targets before it
learns to listen. The offline default therefore runs, in order,

1. ``text-lm``: the decoder alone as a language model on the corpus text (a "pretrained LLM");
   0 steps by default, because on the offline default any text pretraining made the decoder
   listen later (docs/offline-default.md);
2. ``ctc``: the encoder alone with a character CTC loss, so it learns to hear;
3. ``joint``: encoder, projector and decoder together on the target, CTC kept at weight 0.3.

Each stage has its own steps, learning rate (warm-up then cosine decay), losses and, per
component (encoder, projector, decoder), ``frozen``, ``lora`` or ``full``. A stage with 0 steps
is skipped; a YAML file or ``stages.text-lm.steps=150`` changes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, gather_object
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from speechprune.config import save_config
from speechprune.console import note, show, stderr, table
from speechprune.data.manifest import Utterance, load_manifests
from speechprune.errors import UserError
from speechprune.files import claims_output, read_json, staged_dir, write_json
from speechprune.model.decoder import next_token_loss
from speechprune.model.device import resolve_device, training_precision
from speechprune.model.interface import LoadedModel
from speechprune.model.kinds import SpeechLLMModel
from speechprune.model.speechllm import SpeechLLM, decoder_texts
from speechprune.model.text import text_batch
from speechprune.options.train import (COMPONENTS, MODES, LoopConfig, LoraConfig,  # noqa: F401  (re-exported)
                                       StageConfig, TrainConfig, base_llm_stages, default_stages,
                                       frozen_encoder_stages)

LATEST = "latest.json"  # names the newest whole checkpoint under OUT/checkpoints


# ----------------------------------------------------------------------------- what the loop trains
class Trainable(Protocol):
    """What :func:`run_stages` needs of a model, whatever its kind: the module that Accelerate
    wraps and the checkpoints hold, the parameters a stage trains, its batches and its losses."""

    @property
    def module(self) -> nn.Module:
        """Wrapped by Accelerate, saved in checkpoints and switched between train and eval."""

    def set_trainable(self, stage: StageConfig, lora: LoraConfig) -> list[nn.Parameter]:
        """Freeze or unfreeze for ``stage`` (wrapping in LoRA the first time it is asked for);
        returns the parameters the optimiser should see."""

    def param_groups(self, params: list[nn.Parameter], stage: StageConfig) -> list[dict]:
        """The optimiser's parameter groups."""

    def loader(self, stage: StageConfig, loop: LoopConfig) -> torch.utils.data.DataLoader:
        """Shuffled batches (a seeded order) of the training utterances."""

    def losses(self, wrapped: nn.Module, batch, stage: StageConfig) -> dict[str, torch.Tensor]:
        """The stage's weighted losses through ``wrapped`` (:attr:`module` as Accelerate prepared
        it); ``total`` is what the optimiser follows."""


def trainable(model: SpeechLLM | LoadedModel, utterances: list[Utterance], loop: LoopConfig) -> Trainable:
    """A SpeechLLM trains with its own forward (CTC, token CTC, text stages); any other
    :class:`LoadedModel` trains its decoder on the next-token loss of its own task inputs."""
    if isinstance(model, SpeechLLMModel):
        model = model.speechllm
    if isinstance(model, SpeechLLM):
        return SpeechLLMTraining(model, utterances, loop)
    return DecoderTraining(model, utterances)


def with_lora(module: nn.Module, targets: list[str], lora: LoraConfig) -> nn.Module:
    """``module`` wrapped in LoRA adapters on ``targets`` (module names, name suffixes or full-name
    regexes, or ``["all-linear"]``); a module that is already wrapped comes back as it is. The one
    place this toolkit wraps anything in LoRA (training and healing alike)."""
    import warnings

    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    if hasattr(module, "peft_config"):
        return module
    # peft 0.21 asks transformers 5.24 a deprecated question on every wrap; nothing for users to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # peft takes "all-linear" as a bare string; anything else as a list of names or name suffixes
    config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules="all-linear" if list(targets) == ["all-linear"] else list(targets))
    return get_peft_model(module, config)


def _train_lora_only(module: nn.Module) -> None:
    for name, param in module.named_parameters():
        param.requires_grad_("lora_" in name)


class SpeechLLMTraining:
    """This toolkit's SpeechLLM: encoder, projector and decoder per stage, speech or text input."""

    def __init__(self, model: SpeechLLM, utterances: list[Utterance], loop: LoopConfig):
        self.model = model
        self.utterances = utterances
        self.speech_data = model.dataset(utterances, loop.max_seconds)  # caches features across epochs
        self._corpus_vocabulary: torch.Tensor | None = None

    @property
    def module(self) -> nn.Module:
        return self.model

    def set_trainable(self, stage: StageConfig, lora: LoraConfig) -> list[nn.Parameter]:
        model = self.model
        model.requires_grad_(False)
        for component in COMPONENTS:
            mode = getattr(stage, component)
            module = model.encoder.model if component == "encoder" else getattr(model, component)
            if mode == "lora":
                if component == "encoder":
                    module = model.encoder.model = with_lora(module, lora.encoder_targets, lora)
                else:
                    module = model.decoder = with_lora(module, lora.decoder_targets, lora)
                _train_lora_only(module)
            elif mode == "full":
                module.requires_grad_(True)
        if stage.input != "speech":  # the encoder side is not run at all
            model.encoder.requires_grad_(False)
            model.projector.net.requires_grad_(False)
        # a frozen encoder gives the same states on every visit: compute them once per utterance
        # (kept while the encoder stays frozen, dropped when a stage trains it)
        if stage.encoder == "frozen":
            model.encoder_cache = model.encoder_cache if model.encoder_cache is not None else {}
        else:
            model.encoder_cache = None
        model.token_ctc_vocabulary = self.corpus_vocabulary() if stage.token_ctc_vocabulary == "corpus" else None
        if stage.ctc_weight > 0:
            if model.ctc_head is None:
                raise UserError("a stage asks for CTC but the model has no CTC head (model.ctc=false?)")
            model.ctc_head.requires_grad_(True)
        return [p for p in model.parameters() if p.requires_grad]

    def corpus_vocabulary(self) -> torch.Tensor:
        if self._corpus_vocabulary is None:
            self._corpus_vocabulary = self.model.corpus_vocabulary(self.utterances)
        return self._corpus_vocabulary

    def param_groups(self, params: list[nn.Parameter], stage: StageConfig) -> list[dict]:
        return _param_groups(self.model, params, stage)

    def loader(self, stage: StageConfig, loop: LoopConfig) -> torch.utils.data.DataLoader:
        """Speech batches from the (feature-caching) speech dataset; text batches without audio."""
        model, utterances = self.model, self.utterances
        datasets = {"speech": lambda: self.speech_data, "text": lambda: utterances,
                    "lm": lambda: _CorpusText(utterances)}
        collate = (model.collate if stage.input == "speech"
                   else partial(text_batch, model.tokenizer, prompts=model.prompts))
        return _shuffled(datasets[stage.input](), collate, stage, loop)

    def losses(self, wrapped: nn.Module, batch, stage: StageConfig) -> dict[str, torch.Tensor]:
        return wrapped(batch, lm_weight=stage.lm_weight, ctc_weight=stage.ctc_weight, input=stage.input,
                       token_ctc_weight=stage.token_ctc_weight)


def _param_groups(model: nn.Module, params: list[nn.Parameter], stage: StageConfig) -> list[dict]:
    """One group at the stage's lr, and the projector's own group when ``projector_lr`` is set."""
    if stage.projector_lr is None:
        return [{"params": params}]
    projector = {id(p) for p in model.projector.parameters()}
    groups = [{"params": [p for p in params if id(p) not in projector]},
              {"params": [p for p in params if id(p) in projector], "lr": stage.projector_lr}]
    return [group for group in groups if group["params"]]


class DecoderLoss(nn.Module):
    """The next-token loss of a :class:`LoadedModel`'s decoder on its own inputs (the ``task`` layout
    of a speech model, the ``plain`` layout of a plain LLM: what it is scanned on), logits at
    the labelled positions only: the module Accelerate wraps and the checkpoints hold. Only LoRA
    adapters train here, so its state is the adapters alone: everything else is the model as it
    was loaded, the same when a run resumes (a checkpoint of a real LLM stays megabytes)."""

    def __init__(self, model: LoadedModel):
        super().__init__()
        self.causal_lm = model.causal_lm
        self.model = model  # not a module: its causal_lm is the one above
        # the model's own sequence: the task layout of a speech model, the text alone for a plain LLM
        self.layout = model.resolve_layout("auto")

    def forward(self, utterances: list[Utterance], source: str) -> torch.Tensor:
        with torch.no_grad():  # the inputs' embeddings (and a speech-LLM's audio side) stay frozen
            inputs = self.model.decoder_inputs(utterances, source=source, layout=self.layout)
        return next_token_loss(self.causal_lm, inputs)

    def state_dict(self, *args, **kwargs) -> dict:
        return {name: value for name, value in super().state_dict(*args, **kwargs).items() if "lora_" in name}

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        lost = [name for name in result.missing_keys if "lora_" in name]
        if strict and (lost or result.unexpected_keys):
            raise UserError(f"a checkpoint does not fit this model's LoRA adapters (missing {lost[:3]}, "
                            f"unexpected {result.unexpected_keys[:3]}); remove it or pass --overwrite")
        return result


class DecoderTraining:
    """Any other :class:`LoadedModel` (a plain causal LM, a Hugging Face speech-LLM): LoRA on its
    decoder, trained on the target of its own task sequence, from speech or from the source text."""

    def __init__(self, model: LoadedModel, utterances: list[Utterance]):
        self.model = model
        self.utterances = utterances
        self.loss = DecoderLoss(model)

    @property
    def module(self) -> nn.Module:
        return self.loss

    def check(self, stage: StageConfig) -> None:
        what = f"{self.model.path} is {self.model.description}"
        if stage.encoder != "frozen" or stage.projector != "frozen":
            raise UserError(f"{what}: only its decoder trains here; keep encoder and projector frozen")
        if stage.ctc_weight or stage.token_ctc_weight:
            raise UserError(f"{what}: it has no CTC head here; set ctc_weight and token_ctc_weight to 0")
        if stage.decoder != "lora":
            raise UserError(f"{what}: its decoder trains with LoRA only (decoder=lora, not {stage.decoder})")
        if stage.input not in self.model.sources:
            raise UserError(f"{what}: it has no {stage.input} input; use input {' or '.join(self.model.sources)}")

    def set_trainable(self, stage: StageConfig, lora: LoraConfig) -> list[nn.Parameter]:
        self.check(stage)
        self.model.module.requires_grad_(False)
        wrapped = with_lora(self.model.causal_lm, lora.decoder_targets, lora)
        self.model.causal_lm = self.loss.causal_lm = wrapped
        _train_lora_only(wrapped)
        return [p for p in wrapped.parameters() if p.requires_grad]

    def param_groups(self, params: list[nn.Parameter], stage: StageConfig) -> list[dict]:
        return [{"params": params}]

    def loader(self, stage: StageConfig, loop: LoopConfig) -> torch.utils.data.DataLoader:
        return _shuffled(self.utterances, list, stage, loop)  # utterances: the loss builds their inputs

    def losses(self, wrapped: nn.Module, batch, stage: StageConfig) -> dict[str, torch.Tensor]:
        loss = wrapped(batch, source=stage.input)
        return {"lm": loss, "total": stage.lm_weight * loss}


# ----------------------------------------------------------------------------- data
class _CorpusText(torch.utils.data.Dataset):
    """Every distinct target and source sentence once, as an utterance whose target it is."""

    def __init__(self, utterances: list[Utterance]):
        texts = sorted({u.target for u in utterances} | {u.text for u in utterances})
        self.items = [Utterance(id=f"text-{i}", audio="", text=t, task="asr", src_lang="xx", tgt_lang="xx", target=t)
                      for i, t in enumerate(texts)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Utterance:
        return self.items[index]


def _shuffled(dataset, collate: Callable, stage: StageConfig, loop: LoopConfig) -> torch.utils.data.DataLoader:
    batch_size = stage.batch_size or loop.batch_size
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                       generator=torch.Generator().manual_seed(loop.seed),
                                       drop_last=len(dataset) > batch_size)


# ----------------------------------------------------------------------------- the loop
@dataclass
class StageResult:
    name: str
    steps: int
    seconds: float
    final_loss: float
    history: list[dict] = field(default_factory=list)


def make_accelerator(loop: LoopConfig, out: Path, device: str | torch.device = "auto") -> Accelerator:
    """The Accelerator of a training run: on the CPU with ``loop.cpu`` or ``device`` cpu (or no GPU),
    else on ``device`` (``cuda:N``: that GPU; under accelerate launch each process takes its own),
    in ``loop.mixed_precision`` (``auto``: bf16 autocast where it is faster here, said in one line:
    :func:`~speechprune.model.device.training_precision`). A device this machine lacks is a one-line
    error."""
    placed = resolve_device("cpu" if loop.cpu else device)
    on_cpu = placed.type == "cpu"
    if not on_cpu and placed.index is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.cuda.set_device(placed.index)  # Accelerate trains on the current CUDA device
    precision, line = training_precision(loop.mixed_precision, placed)
    if line and os.environ.get("RANK", "0") == "0":  # one line per run, not one per process
        note(line)
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        # Accelerate keeps one precision per process and refuses another; a study or demo trains in
        # bf16, then heals in float32 in the same process: the new run's precision replaces it
        AcceleratorState._reset_state()
    if on_cpu and loop.mixed_precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        note("bf16 on this CPU is emulated (no AVX512-BF16 or AMX): about 7x slower than float32 here "
             "(BENCHMARKS.md, bf16); --loop.mixed-precision no (or auto) trains faster")
    return Accelerator(
        cpu=on_cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=loop.grad_accum,
        log_with=loop.log_with,
        project_dir=str(out),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # stages freeze different parts; parameters unused in one forward must not stall DDP
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_stages(model: SpeechLLM | LoadedModel, utterances: list[Utterance], stages: dict[str, StageConfig],
               loop: LoopConfig, out: Path, accelerator: Accelerator | None = None, resume: bool = True,
               on_log: Callable[[str, int], dict] | None = None) -> list[StageResult]:
    """Train ``model`` in place through ``stages`` (in order): a SpeechLLM with its own losses, any
    other :class:`LoadedModel` on its decoder's next-token loss (:func:`trainable`). Checkpoints go to
    ``out/checkpoints`` every ``loop.checkpoint_every`` steps and at each stage's end; with
    ``resume`` an interrupted run continues from the newest one with the same result.
    ``on_log(stage, step)``, when given, is called at every logged step (and at step 0 of each
    stage) and its numbers join that step's record (a dev-set perplexity, say)."""
    accelerator = accelerator or make_accelerator(loop, out)
    seed_everything(loop.seed)
    checkpoint_dir = out / "checkpoints"
    state = _load_checkpoint_state(checkpoint_dir) if resume else None
    training = trainable(model, utterances, loop)
    module = training.module
    results: list[StageResult] = list(_restored_results(state))
    active = [(name, stage) for name, stage in stages.items() if stage.steps > 0]
    if state and accelerator.is_main_process:
        note(resume_line(state, [name for name, _ in active], checkpoint_dir))
    if loop.log_with:
        accelerator.init_trackers("speechprune")
    for stage_index, (name, stage) in enumerate(active):
        if state and stage_index < state["stage_index"]:
            training.set_trainable(stage, loop.lora)  # re-create LoRA wrappers so weights line up
            continue
        params = training.set_trainable(stage, loop.lora)
        loader = training.loader(stage, loop)
        optimizer = torch.optim.AdamW(training.param_groups(params, stage), lr=stage.lr,
                                      weight_decay=stage.weight_decay,
                                      fused=all(p.device.type in ("cpu", "cuda") for p in params))
        scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(stage.warmup * stage.steps), stage.steps)
        wrapped, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, loader, scheduler)
        step, history, elapsed = 0, [], 0.0
        if state and stage_index == state["stage_index"]:
            step, history, elapsed = _restore(state, module, optimizer, scheduler, accelerator)
        started = time.perf_counter()
        progress = Progress(TextColumn(f"[bold]{name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(),
                            console=stderr(), disable=not accelerator.is_main_process or not stderr().is_terminal)
        task = progress.add_task(name, total=stage.steps, completed=step, loss=float("nan"))
        running, loss_value = [], float("nan")
        if on_log is not None and step == 0:
            history.append({"stage": name, "step": 0, **_logged(on_log, module, name, 0)})
        batches = _endless(loader, accelerator, start_batch=step * loop.grad_accum)
        with progress:
            while step < stage.steps:
                batch = next(batches)
                with accelerator.accumulate(wrapped), accelerator.autocast():
                    losses = training.losses(wrapped, batch, stage)
                    accelerator.backward(losses["total"])
                    if accelerator.sync_gradients and loop.max_grad_norm:
                        accelerator.clip_grad_norm_(params, loop.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                running.append(float(losses["total"].detach()))
                if not accelerator.sync_gradients:
                    continue
                step += 1
                loss_value, running = float(np.mean(running)), []
                progress.update(task, completed=step, loss=loss_value)
                if step % loop.log_every == 0 or step == stage.steps:
                    record = {"stage": name, "step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                              **{k: float(v.detach()) for k, v in losses.items() if k != "total"}}
                    if on_log is not None:
                        record.update(_logged(on_log, module, name, step))
                    history.append(record)
                    if accelerator.is_main_process and not progress.console.is_terminal:
                        extra = "".join(f" {k} {v:.4g}" for k, v in record.items()
                                        if k not in ("stage", "step", "loss", "lr", "lm") and isinstance(v, float))
                        progress.console.print(f"{name} step {step}/{stage.steps} loss {loss_value:.4f}{extra} "
                                               f"({elapsed + time.perf_counter() - started:.0f}s)")
                    if loop.log_with:
                        accelerator.log({f"{name}/{k}": v for k, v in record.items() if k != "stage"}, step=step)
                if step % loop.checkpoint_every == 0 and step < stage.steps:
                    _save_checkpoint(checkpoint_dir, accelerator, module, optimizer, scheduler, stage_index, step,
                                     history, elapsed + time.perf_counter() - started, results)
        seconds = elapsed + time.perf_counter() - started
        results.append(StageResult(name, step, seconds, loss_value, history))
        _save_checkpoint(checkpoint_dir, accelerator, module, None, None, stage_index + 1, 0, [], 0.0, results)
        state = None
    if state:  # killed after the last stage's checkpoint: every stage is done, only the weights are needed
        _restore(state, module, None, None, accelerator)
    if loop.log_with:
        accelerator.end_training()
    module.requires_grad_(False)
    if isinstance(module, SpeechLLM):
        module.encoder_cache = None  # training is over: the encoder runs as usual again
        module.token_ctc_vocabulary = None
    return results


def resume_line(state: dict, stage_names: list[str], checkpoint_dir: Path) -> str:
    """What a resumed run tells the user: where it picks up."""
    index = state["stage_index"]
    if index >= len(stage_names):
        return f"resumed from {checkpoint_dir}: every stage ({', '.join(stage_names)}) was already done"
    done = f" (done before: {', '.join(stage_names[:index])})" if index else ""
    return f"resumed from step {state['step']} of stage {stage_names[index]}{done}, from {checkpoint_dir}"


def summary(title: str, results: list[StageResult]) -> object:
    """Steps, time and final loss per stage."""
    return table(title, ("stage", "steps", "seconds", "final loss"),
                 [(r.name, r.steps, f"{r.seconds:.1f}", f"{r.final_loss:.4f}") for r in results])


def _logged(on_log: Callable[[str, int], dict], model: nn.Module, stage: str, step: int) -> dict:
    """``on_log``'s numbers, measured in eval mode without gradients (training resumes after)."""
    model.eval()
    with torch.no_grad():
        numbers = on_log(stage, step)
    model.train()
    return numbers


def replica_fingerprints(model: torch.nn.Module, accelerator: Accelerator) -> list[str]:
    """A hash of every process's weights: data-parallel replicas must end up identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return gather_object([digest.hexdigest()])


@torch.no_grad()
def ctc_greedy_cer(model: SpeechLLM, utterances: list[Utterance], batch_size: int = 16,
                   max_seconds: float | None = None) -> float:
    """Character error rate of the encoder's CTC head alone (best path, blanks and repeats
    collapsed) against the normalised transcripts: how well a warmed-up encoder hears."""
    import jiwer

    from speechprune.model.speechllm import normalize_for_ctc

    if model.ctc_head is None:
        raise UserError("this SpeechLLM has no CTC head: its encoder cannot be scored alone")
    hypotheses, references = [], []
    for batch in model.batches(utterances, batch_size=batch_size, max_seconds=max_seconds):
        encoded, lengths = model.encode(batch)
        best = model.ctc_head(encoded).argmax(-1).cpu()
        for row, length in zip(best, lengths.tolist()):
            classes = torch.unique_consecutive(row[:length]).tolist()
            hypotheses.append("".join(model.ctc_alphabet[c - 1] for c in classes if c > 0))
        references.extend(normalize_for_ctc(u.text) for u in utterances[len(references): len(references) + len(batch)])
    return float(jiwer.cer(references, hypotheses))


# ----------------------------------------------------------------------------- checkpoints
def _endless(loader, accelerator: Accelerator, start_batch: int = 0):
    """Batches epoch after epoch (each epoch its own seeded order), starting ``start_batch``
    batches in, which is how a resumed run sees exactly the batches it would have seen."""
    epoch, skip = divmod(start_batch, len(loader))
    while True:
        loader.set_epoch(epoch)
        yield from (accelerator.skip_first_batches(loader, skip) if skip else loader)
        epoch, skip = epoch + 1, 0


def _save_checkpoint(directory: Path, accelerator: Accelerator, model: nn.Module, optimizer, scheduler,
                     stage_index: int, step: int, history: list, elapsed: float,
                     results: list[StageResult]) -> None:
    """Model weights, optimiser and scheduler (mid-stage only), RNG states and progress, in a
    directory of its own that ``latest.json`` then names: a kill at any moment leaves the
    previous checkpoint named and whole. Tensors go through ``torch.save`` and are read back with
    ``weights_only=True``; the RNG states and progress are JSON."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        name = f"stage{stage_index}-step{step}"
        with staged_dir(directory / name) as staging:
            torch.save(model.state_dict(), staging / "model.pt")
            if optimizer is not None:
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                           staging / "optim.pt")
            write_json(staging / "rng.json", _rng_state())
            write_json(staging / "state.json", {"stage_index": stage_index, "step": step, "history": history,
                                                "elapsed": elapsed, "results": [r.__dict__ for r in results]})
        write_json(directory / LATEST, {"checkpoint": name})
        for old in directory.iterdir():
            if old.is_dir() and old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    return {"torch": torch.get_rng_state().tolist(),
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *map(lambda v: v.item() if hasattr(v, "item") else v,
                                                                    numpy_state[2:])],
            "python": [python_state[0], list(python_state[1]), python_state[2]]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _latest_checkpoint(directory: Path) -> Path | None:
    try:
        name = read_json(directory / LATEST)["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return directory / name if (directory / name / "state.json").is_file() else None


def _load_checkpoint_state(directory: Path) -> dict | None:
    latest = _latest_checkpoint(directory)
    return {**read_json(latest / "state.json"), "path": str(latest)} if latest else None


def _restored_results(state: dict | None) -> list[StageResult]:
    return [StageResult(**r) for r in state["results"]] if state else []


def _safe_load(path: Path, device) -> dict:
    """Tensors, numbers, strings, lists and dicts only: a checkpoint from elsewhere cannot run code."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever is wrong with it, the user sees one line
        raise UserError(f"{path}: cannot be loaded safely as a checkpoint ({type(error).__name__}); "
                        "remove it or pass --overwrite to start over") from None


def _restore(state: dict, model: nn.Module, optimizer, scheduler, accelerator: Accelerator):
    checkpoint = Path(state["path"])
    model.load_state_dict(_safe_load(checkpoint / "model.pt", accelerator.device))
    if (checkpoint / "optim.pt").exists() and state["step"] > 0:
        saved = _safe_load(checkpoint / "optim.pt", accelerator.device)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(read_json(checkpoint / "rng.json"))
    if accelerator.is_main_process:
        print(f"train: resumed from {checkpoint} (stage {state['stage_index']}, step {state['step']})",
              file=sys.stderr, flush=True)
    return state["step"], state["history"], state["elapsed"]


# ----------------------------------------------------------------------------- the command
@claims_output("train", resumable=True)
def train(config: TrainConfig, encoder_states: dict[str, torch.Tensor] | None = None) -> Path:
    """Build (or load with --init) a SpeechLLM and train it through the configured stages.

    OUT becomes a SpeechLLM directory, with ``config.yaml`` (the resolved configuration) and
    ``train_log.json`` (per-stage steps, seconds and loss curves) beside the model files.
    ``encoder_states``: the encoder-state cache of the stages that keep the encoder frozen
    (:attr:`SpeechLLM.encoder_cache`), shared with other trainings of the same frozen encoder and
    audio cut, so that each recording is encoded once for all of them (the study's conditions);
    ignored when a stage trains the encoder."""
    out = Path(config.out)
    resolve_device(config.device)  # a device this machine lacks: one line, before any work
    utterances = load_manifests(config.train, skip_bad=config.skip_bad)
    seed_everything(config.loop.seed)
    if config.init:
        model = SpeechLLM.load(config.init, loading=config.loading)
    else:
        texts = decoder_texts(config.model.prompts, utterances)
        model = SpeechLLM.build(config.model, texts, ctc_texts=[u.text for u in utterances if u.task == "asr"] or None,
                                loading=config.loading)
        if config.encoder_from:
            model.take_encoder(SpeechLLM.load(config.encoder_from, loading=config.loading))
    out.mkdir(parents=True, exist_ok=True)
    # the stages by name, in order: read back, config.yaml is merged over the default stages, and
    # without an order it would run those as well
    config = dataclasses.replace(config, stage_order=list(config.ordered_stages()))
    save_config(config, out / "config.yaml")
    accelerator = make_accelerator(config.loop, out, config.device)
    model.train()
    if all(stage.encoder == "frozen" for stage in config.ordered_stages().values()):
        model.encoder_cache = encoder_states  # set_trainable keeps it; states of a trained encoder are never shared
    results = run_stages(model, utterances, config.ordered_stages(), config.loop, out, accelerator, config.resume)
    fingerprints = replica_fingerprints(model, accelerator)
    model.eval()
    if accelerator.is_main_process:
        with staged_dir(out) as staging:  # replaces OUT whole, checkpoints included
            model.save(staging)
            save_config(config, staging / "config.yaml")
            write_json(staging / "train_log.json", {
                "stages": [r.__dict__ for r in results],
                "train_seconds": sum(r.seconds for r in results),
                "num_processes": accelerator.num_processes,
                "mixed_precision": accelerator.mixed_precision,  # what ran (auto: what the probe chose)
                "replica_fingerprints": fingerprints,
                "utterances": len(utterances),
            })
        show(summary(f"train: {len(utterances)} utterances, {sum(r.seconds for r in results):.0f}s -> {out}",
                     results))
    accelerator.wait_for_everyone()
    return out
