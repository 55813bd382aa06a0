"""GLM-ASR (``zai-org/GLM-ASR-Nano-2512``): Whisper-style encoder, Llama-style decoder; the processor
expands its audio placeholder to one token per encoder position."""

from speechprune.model.hf.base import HFSpeechLLM


class GlmAsr(HFSpeechLLM):
    family = "GLM-ASR"
    model_class = "GlmAsrForConditionalGeneration"
