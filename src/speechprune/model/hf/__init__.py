"""Hugging Face speech-LLM families, one small adapter each, and the families that are refused.

:data:`FAMILIES` is the whole list of supported families: ``load_model`` opens a checkpoint whose
config is (a subclass of) one of these config classes with that adapter.
"""

from transformers import (AudioFlamingo3Config, GlmAsrConfig, GraniteSpeechConfig, Qwen2AudioConfig,
                          VoxtralConfig)

from speechprune.model.hf.audioflamingo3 import AudioFlamingo3
from speechprune.model.hf.base import HFSpeechLLM
from speechprune.model.hf.glmasr import GlmAsr
from speechprune.model.hf.granite_speech import GraniteSpeech
from speechprune.model.hf.qwen2_audio import Qwen2Audio
from speechprune.model.hf.voxtral import Voxtral

FAMILIES: dict[type, type[HFSpeechLLM]] = {
    AudioFlamingo3Config: AudioFlamingo3,
    GlmAsrConfig: GlmAsr,
    GraniteSpeechConfig: GraniteSpeech,
    Qwen2AudioConfig: Qwen2Audio,
    VoxtralConfig: Voxtral,
}

# model_type -> why it is not supported at all
REFUSED: dict[str, str] = {
    "gemma3n": "Gemma 3n keeps per-layer embedding tables outside the decoder's layer list and shares KV caches "
               "across layers; removing its layers is not supported",
    "qwen2_5_omni": "the Qwen2.5-Omni thinker places tokens with 3-D multimodal rotary positions, which this "
                    "toolkit's decoder inputs do not build; it is not supported yet",
}
