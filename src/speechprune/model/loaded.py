"""The one model interface every stage speaks to: :class:`LoadedModel`, which each kind implements
(this toolkit's SpeechLLM directory and a plain Hugging Face causal LM in ``model/kinds.py``, each
Hugging Face speech-LLM family in ``model/hf/``), and the helpers those kinds share.
:func:`speechprune.model.interface.load_model` picks the kind of a model once.

What the stages need of a model, and nothing else:
- ``causal_lm``: the module that holds the decoder layers; called with ``inputs_embeds`` it returns
  next-token logits (scan hooks it, prune cuts it, heal wraps it in LoRA);
- ``tokenizer``;
- :meth:`LoadedModel.decoder_inputs`: utterances -> decoder inputs with region masks, from speech
  or from the source text, in the ``task`` layout (each kind's own sequence, :meth:`task_inputs`)
  or, for text, the ``plain`` layout (the text alone as the tokenizer frames it, the same for
  every kind);
- :meth:`LoadedModel.generate`: utterances -> hypotheses (:meth:`LoadedModel.share_speech`: with
  the speech input computed once for models that share an encoder and projector);
- :meth:`LoadedModel.save_pruned`: write the (pruned) model with every non-weight file of the
  original, and :meth:`LoadedModel.reload_causal_lm` to check what was written.
"""

from __future__ import annotations

import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from speechprune.data.manifest import Utterance
from speechprune.errors import UserError
from speechprune.model.layout import DecoderInputs, plain_layout, resolve_layout
from speechprune.model.safety import SAFE, LoadingPolicy, pretrained

# Files that save_pretrained writes itself, or that describe the old weights: never copied over.
NOT_COPIED = re.compile(
    r"(\.safetensors|\.bin|\.pt|\.pth|\.ckpt|\.gguf|\.index\.json)$|^(config\.json|generation_config\.json"
    r"|pruning\.json|mergekit\.yaml|heal\.json|config\.yaml)$"
)


class LoadedModel(ABC):
    """A loaded model of one kind. ``sources`` are the inputs it can be scanned on."""

    kind: ClassVar[str]
    description: ClassVar[str]  # for messages: "a plain causal LM"
    sources: ClassVar[tuple[str, ...]]
    #: text shown to users for mergekit.yaml: which part mergekit can rebuild, or why it cannot
    mergekit_note: ClassVar[str] = ""
    #: the layout of text input under ``--layout auto``: a speech model's own (task) sequence
    default_layout: ClassVar[str] = "task"

    def __init__(self, path: str, causal_lm: nn.Module, tokenizer: Any, module: nn.Module | None = None):
        self.path = path
        self.causal_lm = causal_lm
        self.tokenizer = tokenizer
        self._module = module

    @property
    def module(self) -> nn.Module:
        """Every parameter of the model (the causal LM alone for a plain LLM)."""
        return self._module if self._module is not None else self.causal_lm

    def decoder_parameters(self):
        """The LLM's parameters (embeddings, layers, head): what pruning shrinks."""
        return self.causal_lm.parameters()

    @property
    def device(self) -> torch.device:
        return self.causal_lm.get_input_embeddings().weight.device

    def check_source(self, source: str) -> None:
        if source not in self.sources:
            raise UserError(f"--input {source}: {self.path} is {self.description}, it has no {source} input; "
                            f"use --input {' or '.join(self.sources)}")

    def resolve_layout(self, layout: str) -> str:
        """``auto`` -> this kind's :attr:`default_layout`; ``task`` and ``plain`` as they are."""
        return resolve_layout(layout, self.default_layout)

    def decoder_inputs(self, utterances: list[Utterance], source: str, with_target: bool = True,
                       padding_side: str = "right", layout: str = "task") -> DecoderInputs:
        """The decoder's input for ``utterances``. ``layout="task"``: the kind's own sequence with
        the regions speech / prompt / target / last / all (:meth:`task_inputs`); ``source="text"``
        puts the source transcript where the speech would be. ``layout="plain"`` (text only): each
        transcript alone as the tokenizer frames it, regions last / all, every next token labelled
        (``with_target`` does not apply)."""
        layout = self.resolve_layout(layout)
        self.check_source(source)
        if layout == "task":
            return self.task_inputs(utterances, source, with_target=with_target, padding_side=padding_side)
        if source != "text":
            raise UserError(f"--layout plain is a text layout; {source} input has the model's own: use --input text")
        try:
            return plain_layout(self.tokenizer, self.causal_lm.get_input_embeddings(), [u.text for u in utterances],
                                padding_side, utterance_ids=[u.id for u in utterances])
        except ValueError as error:  # a text the tokenizer turns into nothing
            raise UserError(f"{self.path}: {error}") from None

    @abstractmethod
    def task_inputs(self, utterances: list[Utterance], source: str, with_target: bool = True,
                    padding_side: str = "right") -> DecoderInputs:
        """The ``task`` layout of :meth:`decoder_inputs`: the kind's own sequence with the regions
        speech / prompt / target / last / all."""

    @abstractmethod
    def generate(self, utterances: list[Utterance], max_new_tokens: int = 64, num_beams: int = 1) -> list[str]:
        """Hypotheses (decoded target texts) in the order of ``utterances``."""

    def share_speech(self, speech: dict) -> bool:
        """Read the projected speech of utterances (encoder and projector output) from ``speech``, a
        dict shared by models whose encoder and projector are this one's (a sweep's cells: pruning
        the decoder changes neither, nor does healing it without the projector), computing and adding
        what it lacks. False: this kind computes its speech input anew on every call."""
        return False

    @abstractmethod
    def save_pruned(self, out: Path) -> Path:
        """Write the model as it is now (layers removed, LoRA merged) into the existing, empty
        directory ``out``, with every non-weight file of the original. Returns the directory that
        holds the causal LM's checkpoint (what :meth:`reload_causal_lm` and mergekit read)."""

    @abstractmethod
    def reload_causal_lm(self, directory: Path) -> tuple[nn.Module, dict]:
        """The causal LM from a directory :meth:`save_pruned` wrote, in the original's class, with
        ``from_pretrained``'s loading info (missing / unexpected / mismatched keys)."""

    def source_checkpoint(self) -> Path | None:
        """The local directory of the original causal LM's checkpoint (for mergekit), if any."""
        return None

    def pruning_refusal(self) -> str | None:
        """Why this model's decoder cannot be pruned safely, or None."""
        from speechprune.model.decoder import text_config

        return unsafe_to_prune(text_config(self.causal_lm))

    def describe(self) -> dict:
        from speechprune.model.decoder import decoder_layers, text_config

        config = text_config(self.causal_lm)
        return {"path": self.path, "kind": self.kind, "class": type(self.module).__name__,
                "family": getattr(config, "model_type", None), "hidden_size": getattr(config, "hidden_size", None),
                "num_layers": len(decoder_layers(self.causal_lm))}

    def release(self) -> None:
        """Drop this object's references to its weights (it is unusable afterwards)."""
        for name, value in list(vars(self).items()):
            if isinstance(value, nn.Module):
                setattr(self, name, None)

    def eval(self) -> "LoadedModel":
        self.module.eval()
        return self


def unsafe_to_prune(text_config: Any) -> str | None:
    """A one-line reason when removing whole decoder layers of this architecture is not supported."""
    model_type = getattr(text_config, "model_type", "?")
    for name in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"):
        if (getattr(text_config, name, 0) or 0) > 0:
            return (f"{model_type} is a mixture-of-experts decoder ({name}={getattr(text_config, name)}); "
                    "removing its layers is not supported (expert routing and its config are per layer)")
    if getattr(text_config, "hidden_size_per_layer_input", None) or getattr(text_config, "num_kv_shared_layers", 0):
        return (f"{model_type} keeps per-layer embeddings outside the layer list and shares KV caches across "
                "layers; removing its layers is not supported")
    kinds = set(getattr(text_config, "layer_types", None) or [])
    linear = sorted(k for k in kinds if isinstance(k, str) and ("linear" in k or "mamba" in k or "recurrent" in k))
    if linear:
        return (f"{model_type} is a hybrid decoder with {', '.join(linear)} layers; removing its layers is not "
                "supported (their recurrent state and per-layer config are not handled)")
    return None


# ----------------------------------------------------------------------------- shared helpers
def from_pretrained(model_class: Any, path: str | Path, what: str, loading: LoadingPolicy = SAFE, **kwargs) -> Any:
    """``model_class.from_pretrained`` under ``loading``, with a one-line UserError for a path that
    is not such a model."""
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    return pretrained(model_class, str(path), what, loading=loading, **kwargs)


def place(module: nn.Module, device: str | torch.device, dtype: torch.dtype | None, device_map: str | None) -> nn.Module:
    if not device_map:
        module = module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
    return module.eval()


def local_dir(path: str) -> Path | None:
    """``path`` itself when it is a directory, else the hub snapshot it was loaded from (cache only)."""
    if Path(path).is_dir():
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:  # not in the cache: the tokenizer/processor saved explicitly still go along
        return None


def copy_files(source: Path, target: Path, skip: Callable[[Path], bool]) -> list[str]:
    """Copy ``source``'s entries (recursively) except hidden ones and those ``skip`` names (the
    original's files win over any of the same name in ``target``); return the relative paths skipped."""
    skipped: list[str] = []

    def ignore(folder: str, names: list[str]) -> list[str]:
        left_out = [n for n in names if n.startswith(".") or skip(Path(folder) / n)]
        skipped.extend(str((Path(folder) / n).relative_to(source)) for n in left_out if not n.startswith("."))
        return left_out

    for entry in sorted(source.iterdir()):
        if entry.name in ignore(str(source), [entry.name]):
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target / entry.name)
    return skipped


def copy_non_weight_files(source: Path | None, target: Path) -> None:
    """Tokenizer, processor, chat template and any other non-weight file of a checkpoint folder."""
    if source is not None and source.is_dir():
        copy_files(source, target, lambda p: p.is_dir() or NOT_COPIED.search(p.name) is not None)
