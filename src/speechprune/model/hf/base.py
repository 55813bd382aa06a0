"""What every Hugging Face speech-LLM family shares: the model's own processor and chat template
turn an utterance into token ids and audio features, the model's own forward merges the audio into
the embeddings (captured where they enter the LLM decoder), and the regions are read off the
rendered chat text.

Regions (as for this toolkit's SpeechLLM; padding and the template's framing tokens are in none):
- ``speech``: the audio placeholder tokens after the processor expanded them (``input_ids ==
  audio_token_id``); with text input, the tokens of the source transcript put in place of the audio;
- ``prompt``: the tokens of the instruction ("Transcribe speech to text.");
- ``target``: the tokens of the assistant's answer, and the end-of-turn token right after it;
- ``last``, ``all``: the final and every real position.
The decoder's layers sit at ``get_decoder().layers``; the text config is ``get_text_config()``.

That chat is the ``task`` layout. The ``plain`` layout (``--layout plain``, text input only) is, as
for every kind, the transcript alone as the family's tokenizer frames it: no chat template, no
prompt, the LLM decoder measured as the language model it was before audio was attached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from speechprune.data.audio import load_audio
from speechprune.data.manifest import Utterance
from speechprune.errors import UserError
from speechprune.model.decoder import base_model
from speechprune.model.loaded import LoadedModel, copy_non_weight_files, from_pretrained, local_dir, place
from speechprune.model.layout import DecoderInputs, Segment, assemble
from speechprune.model.safety import SAFE, LoadingPolicy
from speechprune.model.speechllm import DEFAULT_PROMPTS, generate_text, prompt_text


class _Captured(Exception):
    """Stops the forward once the decoder's input embeddings are known."""


class HFSpeechLLM(LoadedModel):
    """A Hugging Face speech-LLM: audio encoder + projector + LLM decoder in one ``from_pretrained``
    class. A family subclass names its model class and, where its chat template needs it, how the
    user's turn is written."""

    kind = "hf-speech-llm"
    sources = ("speech", "text")
    mergekit_note = "does not apply: mergekit reads causal LMs, not this multimodal class"
    family: ClassVar[str]
    model_class: ClassVar[str]  # attribute of ``transformers``
    prompts: ClassVar[dict] = DEFAULT_PROMPTS

    def __init__(self, path: str, model: nn.Module, tokenizer: Any, processor: Any = None,
                 processor_error: str = ""):
        super().__init__(path, model, tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.processor = processor
        self.processor_error = processor_error
        # without its processor (a missing audio backend) the model still takes text input
        self.sources = ("speech", "text") if processor is not None else ("text",)
        config = model.config
        token = next((getattr(c, name) for c in (config, getattr(config, "audio_config", None))
                      for name in ("audio_token_id", "audio_token_index") if getattr(c, name, None) is not None), None)
        self.speech_token_id = token if token is not None else getattr(processor, "audio_token_id", None)
        if self.speech_token_id is None:
            raise UserError(f"{path}: neither the config nor the processor names the audio placeholder token")
        generation = getattr(model, "generation_config", None)
        eos = getattr(generation, "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(set(eos))

    @property
    def description(self) -> str:
        return f"a {self.family} speech-LLM"

    @classmethod
    def load_class(cls):
        import transformers

        return getattr(transformers, cls.model_class)

    @classmethod
    def open(cls, path: str, config: Any = None, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu", device_map: str | None = None,
             loading: LoadingPolicy = SAFE) -> "HFSpeechLLM":
        from transformers import AutoProcessor

        from speechprune.model.tokenizer import load_tokenizer

        model = from_pretrained(cls.load_class(), path, cls.family, loading, dtype=dtype, device_map=device_map)
        try:
            processor, error = AutoProcessor.from_pretrained(path, trust_remote_code=loading.trust_remote_code), ""
        except (ImportError, OSError, ValueError, TypeError) as problem:
            processor, error = None, str(problem).splitlines()[0] if str(problem) else type(problem).__name__
        tokenizer = processor.tokenizer if processor is not None else load_tokenizer(path)
        return cls(path, place(model, device, dtype, device_map), tokenizer, processor, error)

    def check_source(self, source: str) -> None:
        if source == "speech" and self.processor is None:
            raise UserError(f"--input speech: the {self.family} processor of {self.path} cannot be loaded here "
                            f"({self.processor_error}); text input works without it")
        super().check_source(source)

    # ---- the chat
    def user_content(self, utt: Utterance, source: str) -> list[dict] | str:
        first = {"type": "audio"} if source == "speech" else {"type": "text", "text": utt.text}
        return [first, {"type": "text", "text": prompt_text(self.prompts, utt)}]

    def render(self, utt: Utterance, source: str, with_target: bool) -> tuple[str, int]:
        """The chat text of one utterance and where the assistant's answer starts in it."""
        messages = [{"role": "user", "content": self.user_content(utt, source)}]
        chat = self.processor if self.processor is not None else self.tokenizer
        prefix = chat.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not with_target:
            return prefix, len(prefix)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": utt.target}]})
        full = chat.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prefix):
            raise UserError(f"{self.path}: the chat template does not render the answer after the generation prompt")
        return full, len(prefix)

    def sampling_rate(self) -> int:
        extractor = getattr(self.processor, "feature_extractor", None) or getattr(self.processor, "audio_processor")
        return int(extractor.sampling_rate)

    def tokenized(self, texts: list[str], waves: list[np.ndarray] | None) -> dict:
        if waves is None:
            return dict(self.tokenizer(texts, return_tensors="pt", padding=True))
        # padding for the text only: the audio is padded as the family's processor pads it (Whisper-style
        # encoders need their full window)
        return dict(self.processor(text=texts, audio=waves, sampling_rate=self.sampling_rate(), return_tensors="pt",
                                   text_kwargs={"padding": True}))

    # ---- decoder inputs
    @torch.no_grad()
    def task_inputs(self, utterances: list[Utterance], source: str, with_target: bool = True,
                    padding_side: str = "right") -> DecoderInputs:
        rendered = [self.render(utt, source, with_target) for utt in utterances]
        waves = None
        if source == "speech":
            waves = [load_audio(utt.audio, sample_rate=self.sampling_rate()) for utt in utterances]
        inputs = self.tokenized([text for text, _ in rendered], waves)
        embeds = self._input_embeddings(inputs)
        rows = []
        for row, (utt, (text, answer_start)) in enumerate(zip(utterances, rendered)):
            real = inputs["attention_mask"][row].bool()
            ids = inputs["input_ids"][row][real]
            regions = self._regions(utt, text, answer_start, ids, source, with_target)
            rows.append(_segments(embeds[row][real.to(embeds.device)], ids, regions))
        return assemble(rows, padding_side, [utt.id for utt in utterances])

    def _input_embeddings(self, inputs: dict) -> torch.Tensor:
        """Run the model's own forward up to the LLM decoder and keep what enters it (audio merged
        into the placeholder positions, by the family's own code)."""
        captured: list[torch.Tensor] = []

        def capture(module, args, kwargs):
            captured.append(kwargs["inputs_embeds"])
            raise _Captured

        handle = base_model(self.causal_lm).register_forward_pre_hook(capture, with_kwargs=True)
        device = self.device
        try:
            self.causal_lm(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()},
                           use_cache=False)
        except _Captured:
            pass
        finally:
            handle.remove()
        if not captured or captured[0].shape[:2] != inputs["input_ids"].shape:
            raise UserError(f"{self.path}: the model did not feed its decoder one embedding per input token")
        return captured[0]

    def _regions(self, utt: Utterance, text: str, answer_start: int, ids: torch.Tensor, source: str,
                 with_target: bool) -> list[str | None]:
        """One region (or None) per token of ``ids``, from character spans of the rendered ``text``."""
        encoded = self.tokenizer(text, return_offsets_mapping=True)
        plain_ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        positions = _expanded_positions(ids.tolist(), plain_ids, self.speech_token_id, self.path)
        spans = {"prompt": _find(text, prompt_text(self.prompts, utt), 0, answer_start)}
        if source == "text":
            spans["speech"] = _find(text, utt.text, 0, answer_start)
        if with_target:
            spans["target"] = _find(text, utt.target, answer_start, len(text))
        lost = sorted(name for name, span in spans.items() if span == (0, 0))
        if lost:
            raise UserError(f"{self.path}: utterance {utt.id}: the chat template does not render its {lost[0]} text "
                            "verbatim, so its region cannot be located")
        plain_regions: list[str | None] = []
        for start, end in offsets:
            plain_regions.append(next((name for name, (a, b) in spans.items() if start < b and end > a), None))
        if with_target:  # the end-of-turn token after the answer is predicted too, as <eos> is
            last = max((i for i, r in enumerate(plain_regions) if r == "target"), default=None)
            if last is not None and last + 1 < len(plain_ids) and plain_ids[last + 1] in self.eos_ids:
                plain_regions[last + 1] = "target"
        regions = [plain_regions[p] for p in positions]
        return ["speech" if token == self.speech_token_id and source == "speech" else region
                for token, region in zip(ids.tolist(), regions)]

    # ---- decoding and saving
    def generate(self, utterances: list[Utterance], max_new_tokens: int = 64, num_beams: int = 1) -> list[str]:
        inputs = self.decoder_inputs(utterances, self.sources[0], with_target=False, padding_side="left",
                                     layout="task")
        return generate_text(self.causal_lm, self.tokenizer, inputs, max_new_tokens, num_beams, eos_token_id=self.eos_ids)

    def decoder_parameters(self):
        yield from base_model(self.causal_lm).parameters()
        yield from self.causal_lm.get_output_embeddings().parameters()

    def save_pruned(self, out: Path) -> Path:
        self.causal_lm.save_pretrained(out)
        (self.processor if self.processor is not None else self.tokenizer).save_pretrained(out)
        copy_non_weight_files(local_dir(self.path), out)
        return out

    def reload_causal_lm(self, directory: Path) -> tuple[nn.Module, dict]:
        model, info = self.load_class().from_pretrained(directory, dtype="auto", output_loading_info=True)
        return model.eval(), info


def _find(text: str, needle: str, start: int, end: int) -> tuple[int, int]:
    """The character span of ``needle`` in ``text[start:end]`` ((0, 0) when it is not there or empty)."""
    at = text.find(needle, start, end) if needle else -1
    return (at, at + len(needle)) if at >= 0 else (0, 0)


def _expanded_positions(ids: list[int], plain_ids: list[int], audio_id: int, path: str) -> list[int]:
    """For each token of the processor's ``ids`` (audio placeholders expanded), the index of the
    token of the unexpanded text it comes from."""
    positions, plain = [], 0
    for index, token in enumerate(ids):
        if token == audio_id and index > 0 and ids[index - 1] == audio_id and plain > 0 and plain_ids[plain - 1] == audio_id:
            if plain >= len(plain_ids) or plain_ids[plain] != audio_id:  # one more copy of the same placeholder
                positions.append(plain - 1)
                continue
        if plain >= len(plain_ids) or plain_ids[plain] != token:
            raise UserError(f"{path}: the processor's tokens do not follow the chat text (at token {index})")
        positions.append(plain)
        plain += 1
    if plain != len(plain_ids):
        raise UserError(f"{path}: the processor's tokens do not follow the chat text (it stops early)")
    return positions


def _segments(embeds: torch.Tensor, ids: torch.Tensor, regions: list[str | None]) -> list[Segment]:
    """Runs of equal region as layout segments (text runs keep their token ids for the labels)."""
    segments, start = [], 0
    for index in range(1, len(regions) + 1):
        if index == len(regions) or regions[index] != regions[start]:
            segments.append(Segment(embeds[start:index], regions[start], ids[start:index]))
            start = index
    return segments
