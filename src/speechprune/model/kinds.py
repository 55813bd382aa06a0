"""The kinds of model this toolkit had before Hugging Face speech-LLMs: its own SpeechLLM directory,
a plain Hugging Face causal LM, and a GGUF file read as one (``model/gguf.py``), behind
:class:`~speechprune.model.loaded.LoadedModel`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechprune.data.manifest import Utterance
from speechprune.model.gguf import dequantised, gguf_path
from speechprune.model.loaded import (LoadedModel, copy_files, copy_non_weight_files, from_pretrained, local_dir,
                                      place)
from speechprune.model.layout import DecoderInputs
from speechprune.model.safety import SAFE, LoadingPolicy
from speechprune.model.speechllm import SPEECHLLM_FILE, SpeechLLM, generate_text
from speechprune.model.text import text_batch, text_decoder_inputs
from speechprune.model.tokenizer import load_tokenizer

DECODER_DIR = "decoder"


def _reload_causal_lm(directory: Path) -> tuple[nn.Module, dict]:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(directory, dtype="auto", output_loading_info=True)
    return model.eval(), info


class SpeechLLMModel(LoadedModel):
    """This toolkit's SpeechLLM directory (``speechllm.json``, ``decoder/`` and the rest)."""

    kind = "speechllm"
    description = "a SpeechLLM directory"
    sources = ("speech", "text")
    mergekit_note = ("applies to decoder/ (a complete Hugging Face causal LM with its tokenizer): bit-exact for "
                     "Llama-style configs; mergekit 0.1.5 fails on configs with layer_types (Qwen2, Qwen3, Gemma)")

    def __init__(self, path: str, speechllm: SpeechLLM):
        self.speechllm = speechllm
        # (utterance id, audio) -> projected speech on the CPU, shared through share_speech; None: off
        self.shared_speech: dict[tuple[str, str | None], torch.Tensor] | None = None
        super().__init__(path, speechllm.decoder, speechllm.tokenizer, speechllm)

    @property
    def causal_lm(self) -> nn.Module:
        return self.speechllm.decoder

    @causal_lm.setter
    def causal_lm(self, value: nn.Module) -> None:
        self.speechllm.decoder = value

    @classmethod
    def open(cls, path: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
             device_map: str | None = None, loading: LoadingPolicy = SAFE) -> "SpeechLLMModel":
        return cls(path, SpeechLLM.load(path, device=device, dtype=dtype, device_map=device_map, loading=loading))

    def task_inputs(self, utterances: list[Utterance], source: str, with_target: bool = True,
                    padding_side: str = "right") -> DecoderInputs:
        if source == "text":  # no audio is read for text input
            batch, speech = text_batch(self.tokenizer, utterances, self.speechllm.prompts), None
        else:
            batch, speech = self._speech_batch_and_positions(utterances)
        return self.speechllm.decoder_inputs(batch, source=source, with_target=with_target, padding_side=padding_side,
                                             speech=speech)

    def _speech_batch(self, utterances: list[Utterance]):
        # one small dataset per call: nothing (features included) is kept across batches
        return next(iter(self.speechllm.batches(utterances, batch_size=len(utterances), shuffle=False)))

    def share_speech(self, speech: dict) -> bool:
        self.shared_speech = speech
        return True

    def _speech_batch_and_positions(self, utterances: list[Utterance]) -> tuple:
        """The batch of ``utterances`` and their projected speech: None (computed from the batch's
        audio as it is used) without a shared dict; with one, the batch holds token ids only (no
        audio read) and the speech comes from the dict, the missing utterances encoded and
        projected together first (one batch, as they would have been without the dict)."""
        if self.shared_speech is None:
            return self._speech_batch(utterances), None
        key = lambda utterance: (utterance.id, utterance.audio)  # noqa: E731  (ids may repeat across test sets)
        missing = [u for u in utterances if key(u) not in self.shared_speech]
        if missing:
            with torch.no_grad():
                projected = self.speechllm.project(*self.speechllm.encode(self._speech_batch(missing)))
            for utterance, positions in zip(missing, projected):
                # on the CPU: a sweep's cells record their own peak GPU memory
                self.shared_speech[key(utterance)] = positions.to("cpu", copy=True)
        return (text_batch(self.tokenizer, utterances, self.speechllm.prompts),
                [self.shared_speech[key(u)].to(self.device) for u in utterances])

    def generate(self, utterances: list[Utterance], max_new_tokens: int = 64, num_beams: int = 1) -> list[str]:
        batch, speech = self._speech_batch_and_positions(utterances)
        return self.speechllm.generate(batch, max_new_tokens=max_new_tokens, num_beams=num_beams, speech=speech)

    def save_pruned(self, out: Path) -> Path:
        root = Path(self.path)
        # The decoder is written anew; the LoRA adapters of the unpruned decoder (already merged into
        # it) name layers that no longer exist, so they are left out.
        stale = {root / DECODER_DIR, root / "adapters" / DECODER_DIR, root / "pruning.json", root / "mergekit.yaml",
                 root / "config.yaml"}  # the recipe of the unpruned model; prune writes this one's
        self.not_copied = [p for p in copy_files(root, out, lambda p: p in stale) if p != DECODER_DIR]
        target = out / DECODER_DIR
        target.mkdir(parents=True, exist_ok=True)
        self.causal_lm.save_pretrained(target)
        # the tokenizer beside the decoder makes decoder/ a complete model (mergekit --copy-tokenizer)
        self.tokenizer.save_pretrained(target)
        copy_non_weight_files(root / DECODER_DIR, target)
        return target

    def reload_causal_lm(self, directory: Path) -> tuple[nn.Module, dict]:
        return _reload_causal_lm(directory)

    def source_checkpoint(self) -> Path | None:
        return Path(self.path) / DECODER_DIR


class CausalLMModel(LoadedModel):
    """A plain Hugging Face causal LM with its tokenizer, by local path or hub id. Its input is text:
    by default the text alone (the ``plain`` layout); its ``task`` layout is
    ``source_text prompt <bos> target <eos>`` (the SpeechLLM's with the transcript as source), for
    comparisons of a base LLM with a SpeechLLM built on it."""

    kind = "causal-lm"
    description = "a plain causal LM"
    sources = ("text",)
    mergekit_note = ("applies to this causal LM: bit-exact for Llama-style configs; mergekit 0.1.5 fails on "
                     "configs with layer_types (Qwen2, Qwen3, Gemma)")
    default_layout = "plain"

    @staticmethod
    def accepts(config: Any) -> bool:
        from transformers import AutoModelForCausalLM

        return type(config) in AutoModelForCausalLM._model_mapping

    @classmethod
    def open(cls, path: str, config: Any = None, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu", device_map: str | None = None,
             loading: LoadingPolicy = SAFE) -> "CausalLMModel":
        from transformers import AutoModelForCausalLM

        causal_lm = from_pretrained(AutoModelForCausalLM, path, "causal LM", loading, dtype=dtype,
                                    device_map=device_map)
        return cls(path, place(causal_lm, device, dtype, device_map), load_tokenizer(path))

    def task_inputs(self, utterances: list[Utterance], source: str = "text", with_target: bool = True,
                    padding_side: str = "right") -> DecoderInputs:
        return text_decoder_inputs(self.causal_lm, self.tokenizer, utterances, padding_side=padding_side,
                                   with_target=with_target)

    def generate(self, utterances: list[Utterance], max_new_tokens: int = 64, num_beams: int = 1) -> list[str]:
        inputs = self.decoder_inputs(utterances, "text", with_target=False, padding_side="left", layout="task")
        return generate_text(self.causal_lm, self.tokenizer, inputs, max_new_tokens, num_beams)

    def save_pruned(self, out: Path) -> Path:
        self.causal_lm.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        copy_non_weight_files(local_dir(self.path), out)
        return out

    def reload_causal_lm(self, directory: Path) -> tuple[nn.Module, dict]:
        return _reload_causal_lm(directory)

    def source_checkpoint(self) -> Path | None:
        return local_dir(self.path)


class GGUFModel(CausalLMModel):
    """A GGUF file (or a short name, ``model/gguf.py``) opened as a plain causal LM from its
    dequantised cache. ``path`` and every record name the GGUF file; ``checkpoint`` is the cache."""

    kind = "gguf"
    description = "a GGUF causal LM"
    mergekit_note = "does not apply: the original is a GGUF file, mergekit reads Hugging Face checkpoints"

    def __init__(self, path: str, causal_lm: nn.Module, tokenizer: Any, checkpoint: Path):
        super().__init__(path, causal_lm, tokenizer)
        self.checkpoint = checkpoint

    @classmethod
    def open(cls, path: str, config: Any = None, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu", device_map: str | None = None,
             loading: LoadingPolicy = SAFE) -> "GGUFModel":
        from transformers import AutoModelForCausalLM

        file = gguf_path(path)
        checkpoint = dequantised(str(file))  # written by this toolkit: safetensors, no code to run
        causal_lm = from_pretrained(AutoModelForCausalLM, checkpoint, "causal LM", dtype=dtype, device_map=device_map)
        return cls(str(file), place(causal_lm, device, dtype, device_map), load_tokenizer(str(checkpoint)), checkpoint)

    def save_pruned(self, out: Path) -> Path:
        self.causal_lm.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        copy_non_weight_files(self.checkpoint, out)
        return out

    def source_checkpoint(self) -> Path | None:
        return None


__all__ = ["SpeechLLMModel", "CausalLMModel", "GGUFModel", "SPEECHLLM_FILE", "DECODER_DIR"]
