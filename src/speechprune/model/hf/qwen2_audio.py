"""Qwen2-Audio (``Qwen/Qwen2-Audio-7B-Instruct``): Whisper-style encoder, Qwen2 decoder; the chat
template writes each audio item as ``<|audio_bos|><|AUDIO|><|audio_eos|>``, the processor expands
``<|AUDIO|>`` to one token per encoder frame (the model would also expand a single one itself, so
speech positions are read only from the processor's expanded ids)."""

from speechprune.model.hf.base import HFSpeechLLM


class Qwen2Audio(HFSpeechLLM):
    family = "Qwen2-Audio"
    model_class = "Qwen2AudioForConditionalGeneration"
