"""Plain causal LMs on text: the same prompt layout as a SpeechLLM, with the source transcript
where the speech would be and no audio markers. This is how the redundancy of a decoder is
measured before speech was attached to it."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from speechprune.data.manifest import Utterance
from speechprune.model.layout import DecoderInputs
from speechprune.model.speechllm import DEFAULT_PROMPTS, SpeechBatch, build_decoder_inputs, tokenize_utterance
from speechprune.model.tokenizer import separator_id


def text_batch(tokenizer: PreTrainedTokenizerBase, utterances: list[Utterance],
               prompts: dict | None = None) -> SpeechBatch:
    prompts = prompts or DEFAULT_PROMPTS
    cache: dict = {}
    tokens = [tokenize_utterance(tokenizer, prompts, utt, cache) for utt in utterances]
    return SpeechBatch(ids=[utt.id for utt in utterances], encoder_inputs={},
                       prompt_ids=[t["prompt_ids"] for t in tokens], source_ids=[t["source_ids"] for t in tokens],
                       target_ids=[t["target_ids"] for t in tokens], ctc_labels=[torch.zeros(0, dtype=torch.long)] * len(tokens),
                       references=[utt.target for utt in utterances], tasks=[utt.task for utt in utterances])


def text_decoder_inputs(decoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, utterances: list[Utterance],
                        prompts: dict | None = None, padding_side: str = "right",
                        with_target: bool = True) -> DecoderInputs:
    """``source_text prompt <bos> target <eos>``; regions as for a SpeechLLM (``speech`` = source text)."""
    batch = text_batch(tokenizer, utterances, prompts)
    return build_decoder_inputs(decoder, batch, separator_id(tokenizer), speech=None, markers=None,
                                with_target=with_target, padding_side=padding_side)
