"""The SpeechLLM: speech encoder -> frame-stacking projector -> any Hugging Face causal LM.

It assembles the decoder's input (see ``layout.py`` for the sequence and its regions), computes
the training losses (next-token loss on the target, optional character CTC on the encoder),
decodes with the KV cache, and saves to / loads from one directory:

    speechllm.json          what ties the parts together (projector shape, prompts, CTC alphabet)
    encoder/                a Hugging Face checkpoint with its feature extractor
    projector.safetensors   frame-stacking projector and the two marker embeddings
    ctc_head.safetensors    (only when trained with CTC)
    decoder/                a standard Hugging Face causal-LM checkpoint (LoRA merged)
    adapters/<part>/        the LoRA adapters themselves, when a part was trained with LoRA
    tokenizer/
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from speechprune.data.audio import load_audio
from speechprune.data.manifest import Utterance
from speechprune.errors import UserError
from speechprune.files import staged_dir
from speechprune.model.decoder import next_token_loss
from speechprune.model.encoders import build_encoder, load_encoder
from speechprune.model.greedy import changes_logits, greedy_tokens
from speechprune.model.layout import DecoderInputs, Segment, assemble
from speechprune.model.projector import FrameStackProjector
from speechprune.model.safety import SAFE, LoadingPolicy, pretrained
from speechprune.model.tokenizer import load_tokenizer, separator_id, train_bpe_tokenizer
from speechprune.options.model import (DEFAULT_PROMPTS, DecoderConfig, EncoderConfig,  # noqa: F401  (re-exported)
                                       ModelConfig, ProjectorConfig)

SPEECHLLM_FILE = "speechllm.json"
LANGUAGE_NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian",
                  "pt": "Portuguese", "nl": "Dutch", "ca": "Catalan", "ja": "Japanese", "zh": "Chinese",
                  "ru": "Russian", "ar": "Arabic", "tr": "Turkish", "fa": "Persian", "et": "Estonian"}


@dataclass
class SpeechBatch:
    """One collated batch on the CPU; the model moves what it uses to its device."""

    ids: list[str]
    encoder_inputs: dict[str, torch.Tensor]
    prompt_ids: list[torch.Tensor]
    source_ids: list[torch.Tensor]  # the source transcript, for text-input scans
    target_ids: list[torch.Tensor]  # target tokens followed by <eos>
    ctc_labels: list[torch.Tensor]
    references: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    audio: list[str | None] = field(default_factory=list)  # each utterance's audio file (None: text only)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def speech_keys(self) -> list[str]:
        """What names each utterance's speech in :attr:`SpeechLLM.encoder_cache`: its audio file, so
        that tasks reading the same audio (ASR and ST of one recording) share its states; its id
        where it has no file."""
        if not self.audio:
            return list(self.ids)
        return [audio or utterance_id for audio, utterance_id in zip(self.audio, self.ids)]


class SpeechDataset(torch.utils.data.Dataset):
    """Utterances turned into encoder features and token ids, cached after the first use."""

    def __init__(self, model: "SpeechLLM", utterances: list[Utterance], max_seconds: float | None = None):
        self.model, self.utterances, self.max_seconds = model, utterances, max_seconds
        self.cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        if index not in self.cache:
            utt = self.utterances[index]
            wave = load_audio(utt.audio, max_seconds=self.max_seconds)
            self.cache[index] = {"utterance": utt, "features": self.model.encoder.featurize(wave),
                                 **self.model.tokenize(utt)}
        return self.cache[index]


# ----------------------------------------------------------------------------- the model
class SpeechLLM(nn.Module):
    def __init__(self, encoder: nn.Module, projector: FrameStackProjector, decoder: PreTrainedModel,
                 tokenizer: PreTrainedTokenizerBase, prompts: dict, projector_config: ProjectorConfig,
                 ctc_alphabet: str | None = None):
        super().__init__()
        self.encoder, self.projector, self.decoder = encoder, projector, decoder
        self.tokenizer = tokenizer
        self.prompts = dict(prompts)
        self.projector_config = projector_config
        self.ctc_alphabet = ctc_alphabet
        # CTC class 0 is the blank; character i of the alphabet is class i + 1
        self.ctc_head = nn.Linear(encoder.output_dim, len(ctc_alphabet) + 1) if ctc_alphabet else None
        self.separator_id = separator_id(tokenizer)
        self._prompt_cache: dict[tuple[str, str], list[int]] = {}
        # speech key (SpeechBatch.speech_keys) -> encoder states, while a training stage keeps the
        # encoder frozen (None: off). States depend on the encoder's weights and on the audio's cut
        # (--loop.max-seconds) alone, so trainings with the same frozen encoder and cut may share one
        # dict (train's encoder_states: the study's conditions do)
        self.encoder_cache: dict[str, torch.Tensor] | None = None
        # token ids the token CTC normalises over (sorted, with the blank); None: the whole vocabulary
        self.token_ctc_vocabulary: torch.Tensor | None = None

    # ---- construction
    @classmethod
    def build(cls, config: ModelConfig, texts: list[str], ctc_texts: list[str] | None = None,
              loading: LoadingPolicy = SAFE) -> "SpeechLLM":
        """A new SpeechLLM: pretrained parts loaded, the others built from their configs.
        ``texts`` trains the BPE when the decoder has no tokenizer, each as often as it occurs
        (:func:`decoder_texts` lists them for a corpus); ``ctc_texts`` give the alphabet; ``loading``
        governs the pretrained parts."""
        encoder = (load_encoder(config.encoder.pretrained, config.encoder.window, loading) if config.encoder.pretrained
                   else build_encoder(config.encoder.config, config.encoder.window, config.encoder.hop_length))
        prompts = [p.format(target_language=name) for p in config.prompts.values() for name in LANGUAGE_NAMES.values()]
        if config.decoder.pretrained:
            from speechprune.model.gguf import decoder_checkpoint

            checkpoint = decoder_checkpoint(config.decoder.pretrained)  # a GGUF model: its dequantised cache
            decoder = _load_decoder(checkpoint, loading=loading)
            tokenizer = load_tokenizer(decoder_checkpoint(config.decoder.tokenizer) if config.decoder.tokenizer
                                       else checkpoint)
        else:
            tokenizer = (load_tokenizer(config.decoder.tokenizer) if config.decoder.tokenizer
                         else train_bpe_tokenizer(list(texts) + prompts, config.decoder.bpe_vocab_size))
            decoder_config = dict(config.decoder.config)
            model_type = decoder_config.pop("model_type", "llama")
            decoder_config.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            decoder = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **decoder_config))
        embed_std = float(decoder.get_input_embeddings().weight.detach().float().std())
        projector_config = config.projector.for_encoder(encoder.frame_ms)
        projector = FrameStackProjector(encoder.output_dim, decoder.get_input_embeddings().embedding_dim,
                                        projector_config.stack, projector_config.kind, projector_config.hidden_dim,
                                        marker_std=embed_std)
        alphabet = None
        if config.ctc and ctc_texts:
            alphabet = "".join(sorted({ch for text in ctc_texts for ch in normalize_for_ctc(text)}))
        return cls(encoder, projector, decoder, tokenizer, config.prompts, projector_config, alphabet)

    def take_encoder(self, other: "SpeechLLM") -> None:
        """Use ``other``'s encoder and CTC head (and its CTC alphabet): a warmed-up encoder shared
        by SpeechLLMs with different decoders."""
        self.encoder = other.encoder
        self.ctc_alphabet = other.ctc_alphabet
        self.ctc_head = other.ctc_head
        # called on a new model: its untrained projector takes the new width (and frame rate)
        config = self.projector_config = self.projector_config.for_encoder(other.encoder.frame_ms)
        self.projector = FrameStackProjector(other.encoder.output_dim, self.projector.markers.shape[1],
                                             config.stack, config.kind, config.hidden_dim,
                                             marker_std=float(self.projector.markers.detach().std()))

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    # ---- text side
    def tokenize(self, utt: Utterance) -> dict:
        ids = tokenize_utterance(self.tokenizer, self.prompts, utt, self._prompt_cache)
        ctc = [self.ctc_alphabet.index(ch) + 1 for ch in normalize_for_ctc(utt.text)
               if ch in self.ctc_alphabet] if self.ctc_alphabet else []
        return {**ids, "ctc_labels": torch.tensor(ctc, dtype=torch.long)}

    # ---- data
    def dataset(self, utterances: list[Utterance], max_seconds: float | None = None) -> SpeechDataset:
        return SpeechDataset(self, utterances, max_seconds)

    def collate(self, items: list[dict]) -> SpeechBatch:
        return SpeechBatch(
            ids=[item["utterance"].id for item in items],
            encoder_inputs=self.encoder.collate([item["features"] for item in items]),
            prompt_ids=[item["prompt_ids"] for item in items],
            source_ids=[item["source_ids"] for item in items],
            target_ids=[item["target_ids"] for item in items],
            ctc_labels=[item["ctc_labels"] for item in items],
            references=[item["utterance"].target for item in items],
            tasks=[item["utterance"].task for item in items],
            audio=[item["utterance"].audio for item in items],
        )

    def batches(self, utterances: list[Utterance] | SpeechDataset, batch_size: int = 8, shuffle: bool = False,
                seed: int = 0, max_seconds: float | None = None) -> Iterator[SpeechBatch]:
        """Batches in manifest order (or shuffled with ``seed``)."""
        dataset = utterances if isinstance(utterances, SpeechDataset) else self.dataset(utterances, max_seconds)
        order = np.random.default_rng(seed).permutation(len(dataset)) if shuffle else np.arange(len(dataset))
        for start in range(0, len(order), batch_size):
            yield self.collate([dataset[int(i)] for i in order[start: start + batch_size]])

    # ---- forward
    def encode(self, batch: SpeechBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states [B, T, D] and their real lengths. With :attr:`encoder_cache` on (a frozen
        encoder), each utterance's states are computed once, without gradient or dropout, and
        reused on every later visit."""
        device = self.device
        if self.encoder_cache is None:
            return self.encoder(**{name: value.to(device) for name, value in batch.encoder_inputs.items()})
        keys = batch.speech_keys
        if any(key not in self.encoder_cache for key in keys):
            was_training = self.encoder.training
            self.encoder.eval()
            with torch.no_grad():
                encoded, lengths = self.encoder(**{name: value.to(device)
                                                   for name, value in batch.encoder_inputs.items()})
            self.encoder.train(was_training)
            for row, (key, length) in enumerate(zip(keys, lengths.tolist())):
                self.encoder_cache[key] = encoded[row, :length].clone()
        states = [self.encoder_cache[key] for key in keys]
        lengths = torch.tensor([len(s) for s in states], device=device)
        return nn.utils.rnn.pad_sequence(states, batch_first=True), lengths

    def project(self, encoded: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        projected, projected_lengths = self.projector(encoded.to(self.projector.markers.dtype), lengths)
        return [projected[row, : int(n)] for row, n in enumerate(projected_lengths)]

    def decoder_inputs(self, batch: SpeechBatch, source: str = "speech", with_target: bool = True,
                       padding_side: str = "right", speech: list[torch.Tensor] | None = None) -> DecoderInputs:
        """The decoder's input for ``batch``. ``source="text"`` puts the source transcript's token
        embeddings in place of the speech segment (same layout, same regions). ``speech`` reuses
        projected speech computed earlier (e.g. cached for repeated decoder passes)."""
        if source == "speech":
            speech = speech if speech is not None else self.project(*self.encode(batch))
        elif source == "text":
            speech = None
        else:
            raise UserError(f"input source must be 'speech' or 'text', not {source!r}")
        return build_decoder_inputs(self.decoder, batch, self.separator_id, speech=speech,
                                    markers=self.projector.markers, with_target=with_target,
                                    padding_side=padding_side)

    def lm_loss(self, inputs: DecoderInputs) -> torch.Tensor:
        return next_token_loss(self.decoder, inputs)

    def ctc_loss(self, encoded: torch.Tensor, lengths: torch.Tensor, batch: SpeechBatch) -> torch.Tensor:
        if self.ctc_head is None:
            raise UserError("this SpeechLLM has no CTC head (built with ctc=false or without an alphabet)")
        log_probs = self.ctc_head(encoded).float().log_softmax(-1).transpose(0, 1)
        targets = torch.cat(batch.ctc_labels).to(encoded.device)
        target_lengths = torch.tensor([len(t) for t in batch.ctc_labels], device=encoded.device)
        return nn.functional.ctc_loss(log_probs, targets, lengths, target_lengths, blank=0, zero_infinity=True)

    def text_lm_inputs(self, batch: SpeechBatch) -> DecoderInputs:
        """``<bos> target <eos>`` alone: the decoder as a plain language model (text pretraining)."""
        embedding = self.decoder.get_input_embeddings()
        device = embedding.weight.device
        utterances = []
        for target in batch.target_ids:
            ids = torch.cat([torch.tensor([self.separator_id]), target])
            vectors = embedding(ids.to(device))
            utterances.append([Segment(vectors[:1], None, ids[:1]), Segment(vectors[1:], "target", ids[1:])])
        return assemble(utterances, "right", batch.ids)

    def forward(self, batch: SpeechBatch, lm_weight: float = 1.0, ctc_weight: float = 0.0,
                input: str = "speech", token_ctc_weight: float = 0.0) -> dict[str, torch.Tensor]:
        """Weighted training losses; ``total`` is what the optimiser follows. ``input`` is
        ``speech`` (the whole model), ``text`` (the source transcript in place of the speech) or
        ``lm`` (the decoder alone as a language model on the targets)."""
        if input == "speech":
            return self.losses(batch, lm_weight, ctc_weight, token_ctc_weight)
        inputs = self.text_lm_inputs(batch) if input == "lm" else self.decoder_inputs(batch, source="text")
        loss = self.lm_loss(inputs)
        return {"lm": loss, "total": lm_weight * loss}

    def token_ctc_loss(self, speech: list[torch.Tensor], batch: SpeechBatch, scale: float = 16.0) -> torch.Tensor:
        """The token CTC (:func:`token_ctc`) of ``speech`` against the batch's source transcripts,
        over :attr:`token_ctc_vocabulary` (the whole vocabulary when None); the pad token is the blank."""
        return token_ctc(speech, batch.source_ids, self.decoder.get_input_embeddings().weight,
                         self.tokenizer.pad_token_id, self.token_ctc_vocabulary, scale)

    def corpus_vocabulary(self, utterances: list[Utterance]) -> torch.Tensor:
        """The sorted token ids of ``utterances``' source transcripts and the CTC blank (pad)."""
        ids = {self.tokenizer.pad_token_id}
        for utt in utterances:
            ids.update(self.tokenize(utt)["source_ids"].tolist())
        return torch.tensor(sorted(ids), dtype=torch.long)

    def losses(self, batch: SpeechBatch, lm_weight: float = 1.0, ctc_weight: float = 0.0,
               token_ctc_weight: float = 0.0) -> dict[str, torch.Tensor]:
        encoded, lengths = self.encode(batch)
        out: dict[str, torch.Tensor] = {}
        total = encoded.new_zeros((), dtype=torch.float32)
        speech = self.project(encoded, lengths) if lm_weight > 0 or token_ctc_weight > 0 else None
        if lm_weight > 0:
            out["lm"] = self.lm_loss(self.decoder_inputs(batch, speech=speech))
            total = total + lm_weight * out["lm"]
        if token_ctc_weight > 0:
            out["token_ctc"] = self.token_ctc_loss(speech, batch)
            total = total + token_ctc_weight * out["token_ctc"]
        if ctc_weight > 0:
            out["ctc"] = self.ctc_loss(encoded, lengths, batch)
            total = total + ctc_weight * out["ctc"]
        out["total"] = total
        return out

    @torch.no_grad()
    def generate(self, batch: SpeechBatch, max_new_tokens: int = 64, num_beams: int = 1,
                 speech: list[torch.Tensor] | None = None) -> list[str]:
        """Greedy (or beam) decoding with the KV cache; returns the decoded target texts."""
        inputs = self.decoder_inputs(batch, with_target=False, padding_side="left", speech=speech)
        return generate_text(self.decoder, self.tokenizer, inputs, max_new_tokens, num_beams)

    # ---- persistence
    def save(self, directory: str | Path) -> Path:
        """Write the whole model to ``directory`` (atomically). LoRA-wrapped parts are merged into
        standard checkpoints; their adapters are kept under ``adapters/``."""
        with staged_dir(directory) as staging:
            for name in ("encoder", "decoder"):
                part = getattr(self, name)
                target = part.model if name == "encoder" else part
                if hasattr(target, "merge_and_unload"):  # a peft model
                    target.save_pretrained(staging / "adapters" / name)
                    merged = target.merge_and_unload()
                    if name == "encoder":
                        part.model = merged
                    else:
                        self.decoder = merged
            self.encoder.save(staging / "encoder")
            self.decoder.save_pretrained(staging / "decoder")
            # decoder/ is a complete Hugging Face model (AutoTokenizer loads it too, mergekit copies it)
            self.tokenizer.save_pretrained(staging / "decoder")
            self.tokenizer.save_pretrained(staging / "tokenizer")
            save_file(_contiguous(self.projector.state_dict()), staging / "projector.safetensors")
            if self.ctc_head is not None:
                save_file(_contiguous(self.ctc_head.state_dict()), staging / "ctc_head.safetensors")
            spec = {"format": 1, "encoder": {"window": self.encoder.window},
                    "projector": asdict(self.projector_config), "prompts": self.prompts,
                    "ctc_alphabet": self.ctc_alphabet, "separator_id": self.separator_id}
            (staging / SPEECHLLM_FILE).write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None, device_map: str | None = None,
             loading: LoadingPolicy = SAFE) -> "SpeechLLM":
        """Load a SpeechLLM directory. ``device_map="auto"`` spreads a decoder too large for one
        device over all of them (Accelerate); encoder and projector then sit with its first layer."""
        directory = Path(directory)
        if not is_speechllm_dir(directory):
            raise UserError(f"{directory} is not a SpeechLLM directory (no {SPEECHLLM_FILE})")
        try:
            spec = json.loads((directory / SPEECHLLM_FILE).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise UserError(f"{directory / SPEECHLLM_FILE}: not valid JSON ({error})".splitlines()[0]) from None
        encoder = load_encoder(str(directory / "encoder"), spec["encoder"]["window"], loading)
        decoder = _load_decoder(str(directory / "decoder"), dtype=dtype, device_map=device_map, loading=loading)
        tokenizer = load_tokenizer(str(directory / "tokenizer"))
        projector_config = ProjectorConfig(**spec["projector"])
        projector = FrameStackProjector(encoder.output_dim, decoder.get_input_embeddings().embedding_dim,
                                        projector_config.stack, projector_config.kind, projector_config.hidden_dim)
        _load_part(projector, directory / "projector.safetensors", directory)
        model = cls(encoder, projector, decoder, tokenizer, spec["prompts"], projector_config, spec.get("ctc_alphabet"))
        if model.ctc_head is not None and (directory / "ctc_head.safetensors").exists():
            _load_part(model.ctc_head, directory / "ctc_head.safetensors", directory)
        model.eval()
        if device_map:  # the decoder is placed already; move the rest, not the dispatched decoder
            first = decoder.get_input_embeddings().weight.device
            for part in (model.encoder, model.projector, model.ctc_head):
                if part is not None:
                    part.to(device=first, dtype=dtype) if dtype is not None else part.to(first)
            return model
        return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


# ----------------------------------------------------------------------------- shared helpers
def prompt_text(prompts: dict, utt: Utterance) -> str:
    """The instruction for an utterance's task, with the target language named. A manifest line's
    own ``prompt`` (``data hf --prompt``) replaces the model's prompt for its task."""
    template = utt.extra.get("prompt") or prompts.get(utt.task)
    if template is None:
        raise UserError(f"no prompt for task {utt.task!r} (utterance {utt.id})")
    if not isinstance(template, str):
        raise UserError(f"utterance {utt.id}: its 'prompt' must be text, not {template!r}")
    return template.format(target_language=LANGUAGE_NAMES.get(utt.tgt_lang, utt.tgt_lang),
                           source_language=LANGUAGE_NAMES.get(utt.src_lang, utt.src_lang))


def decoder_texts(prompts: dict, utterances: list[Utterance]) -> list[str]:
    """Every text the decoder reads in training, as often as it reads it: each utterance's
    prompt, target and source transcript (what a new BPE is trained on)."""
    return ([prompt_text(prompts, u) for u in utterances] + [u.target for u in utterances]
            + [u.text for u in utterances])


def tokenize_utterance(tokenizer: PreTrainedTokenizerBase, prompts: dict, utt: Utterance,
                       prompt_cache: dict | None = None) -> dict[str, torch.Tensor]:
    """Prompt, source-transcript and target (+ <eos>) token ids of one utterance."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt_cache = {} if prompt_cache is None else prompt_cache
    key = (utt.task, utt.src_lang, utt.tgt_lang, utt.extra.get("prompt"))
    if key not in prompt_cache:
        prompt_cache[key] = encode(prompt_text(prompts, utt))
    return {"prompt_ids": torch.tensor(prompt_cache[key], dtype=torch.long),
            "source_ids": torch.tensor(encode(utt.text), dtype=torch.long),
            "target_ids": torch.tensor(encode(utt.target) + [tokenizer.eos_token_id], dtype=torch.long)}


def is_speechllm_dir(path: str | Path) -> bool:
    return (Path(path) / SPEECHLLM_FILE).is_file()


def normalize_for_ctc(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").replace(",", " ").replace("?", " ").replace("!", " ").split())


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous() for name, tensor in state.items()}


def _load_decoder(path: str, dtype: torch.dtype | None = None, device_map: str | None = None,
                  loading: LoadingPolicy = SAFE) -> PreTrainedModel:
    kwargs = {key: value for key, value in (("dtype", dtype), ("device_map", device_map)) if value is not None}
    return pretrained(AutoModelForCausalLM, path, "decoder", loading=loading, **kwargs)


def _load_part(module: nn.Module, path: Path, directory: Path) -> None:
    """Weights of a small part; a missing file or a shape that does not fit (a decoder swapped for
    one of another hidden size) is one line naming the directory."""
    if not path.is_file():
        raise UserError(f"SpeechLLM {directory}: {path.name} is missing")
    try:
        module.load_state_dict(load_file(path))
    except RuntimeError as error:
        shapes = "; ".join(line.strip() for line in str(error).splitlines() if "size mismatch" in line)[:300]
        raise UserError(f"SpeechLLM {directory}: {path.name} does not fit the encoder and decoder beside it "
                        f"(was one of them replaced?): {shapes or str(error).splitlines()[0]}") from None


def token_ctc(speech: list[torch.Tensor], source_ids: list[torch.Tensor], embeddings: torch.Tensor, blank: int,
              vocabulary: torch.Tensor | None = None, scale: float = 16.0) -> torch.Tensor:
    """CTC between projected speech positions and the source transcripts' tokens, scored by cosine
    similarity with the decoder's (frozen) token embeddings: it pulls each speech position towards
    the embedding of the token spoken there, so speech enters the decoder looking like the text it
    says. ``blank`` is the token id that serves as the CTC blank.

    With ``vocabulary`` (sorted token ids: a training corpus's tokens and the blank) the softmax runs
    over those tokens alone: the same pull towards the spoken token, pushed away from the corpus's
    other tokens only. Its cost follows the corpus, not the vocabulary (a few thousand tokens
    against 49,152 for SmolLM2, 262,144 for Gemma-3)."""
    embeddings = embeddings.detach()
    targets = torch.cat(source_ids).to(embeddings.device)
    if vocabulary is not None:
        vocabulary = vocabulary.to(embeddings.device)
        embeddings = embeddings[vocabulary]
        positions = torch.searchsorted(vocabulary, targets).clamp(max=len(vocabulary) - 1)
        if not torch.equal(vocabulary[positions], targets):
            missing = sorted(set(targets.tolist()) - set(vocabulary.tolist()))[:5]
            raise UserError(f"the token CTC's vocabulary lacks tokens of this batch ({missing}): it must hold "
                            f"every source token of the training utterances")
        targets, blank = positions, int(torch.searchsorted(vocabulary, torch.tensor(blank, device=vocabulary.device)))
    embeddings = nn.functional.normalize(embeddings.float(), dim=-1)
    lengths = torch.tensor([len(s) for s in speech], device=embeddings.device)
    padded = nn.utils.rnn.pad_sequence([s.float() for s in speech], batch_first=True)
    logits = scale * nn.functional.normalize(padded, dim=-1) @ embeddings.T
    target_lengths = torch.tensor([len(t) for t in source_ids], device=embeddings.device)
    return nn.functional.ctc_loss(logits.log_softmax(-1).transpose(0, 1), targets, lengths, target_lengths,
                                  blank=blank, zero_infinity=True)


def build_decoder_inputs(decoder: PreTrainedModel, batch: SpeechBatch, separator: int,
                         speech: list[torch.Tensor] | None, markers: torch.Tensor | None,
                         with_target: bool = True, padding_side: str = "right") -> DecoderInputs:
    """The one place the layout is filled in, for SpeechLLMs and plain LLMs alike.

    ``speech`` holds each utterance's projected speech; ``None`` puts the source transcript's
    tokens there instead. ``markers`` are the <audio-start>/<audio-end> embeddings (None for a
    plain LLM, which has none)."""
    embedding = decoder.get_input_embeddings()
    device, dtype = embedding.weight.device, embedding.weight.dtype
    # Gemma's embedding module multiplies every token vector by a fixed scale (sqrt(hidden), about 25
    # for Gemma-3-270M); speech and markers bypass that module, so they get the same scale: they
    # live in the raw embedding space, where the token CTC compares them with the token vectors
    scale = float(getattr(embedding, "embed_scale", 1.0))
    sep = torch.tensor([separator])
    pieces = []  # per utterance, token-id runs in a fixed order, embedded in one call below
    for row in range(len(batch)):
        runs = [batch.prompt_ids[row], sep, batch.target_ids[row] if with_target else sep[:0]]
        if speech is None:
            runs.insert(0, batch.source_ids[row])
        pieces.append(runs)
    flat = torch.cat([run for runs in pieces for run in runs]).to(device)
    embedded = embedding(flat).split([len(run) for runs in pieces for run in runs])
    cursor = 0
    utterances = []
    for row, runs in enumerate(pieces):
        vectors = embedded[cursor: cursor + len(runs)]
        cursor += len(runs)
        if speech is None:
            source, (prompt, separator_vec, target) = Segment(vectors[0], "speech", runs[0]), vectors[1:]
        else:
            source, (prompt, separator_vec, target) = Segment(speech[row].to(dtype) * scale, "speech"), vectors
        segs = [source]
        if markers is not None:
            segs = [Segment(markers[:1].to(dtype) * scale, None), source, Segment(markers[1:].to(dtype) * scale, None)]
        segs += [Segment(prompt, "prompt", runs[-3]), Segment(separator_vec, None, runs[-2])]
        if with_target:
            segs.append(Segment(target, "target", runs[-1]))
        utterances.append(segs)
    return assemble(utterances, padding_side, batch.ids)


def generate_text(decoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, inputs: DecoderInputs,
                  max_new_tokens: int = 64, num_beams: int = 1, eos_token_id: int | list[int] | None = None,
                  drop_finished: bool = True) -> list[str]:
    """Decode from a left-padded prefix (KV cache on); stop on ``eos_token_id`` (default: the
    tokenizer's). Greedy decoding takes each row out of its batch at its end (``model/greedy.py``;
    the tokens of ``generate``, which keeps finished rows to the batch's end: ``drop_finished``
    off). Beam search, and a decoder whose generation config processes logits, go through
    ``generate``. Measured in BENCHMARKS.md (a sweep cell part by part): a Gemma-3 cell 1.19x
    faster, a SmolLM2 one unchanged (1.01x)."""
    device = decoder.get_input_embeddings().weight.device
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    if drop_finished and num_beams == 1 and not changes_logits(getattr(decoder, "generation_config", None)):
        output = greedy_tokens(decoder, inputs.inputs_embeds.to(device), inputs.attention_mask.to(device),
                               max_new_tokens, [] if eos is None else [eos] if isinstance(eos, int) else list(eos))
    else:
        output = decoder.generate(inputs_embeds=inputs.inputs_embeds.to(device), attention_mask=inputs.attention_mask.to(device),
                                  max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                  eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, use_cache=True)
    return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]
