"""Audio Flamingo 3 (``nvidia/audio-flamingo-3-hf``): Whisper-style encoder, Qwen2 decoder; the
processor expands ``<sound>`` to one token per encoder position."""

from transformers import AudioFlamingo3Config

from speechprune.model.hf.base import HFSpeechLLM


class AudioFlamingo3(HFSpeechLLM):
    family = "Audio Flamingo 3"
    model_class = "AudioFlamingo3ForConditionalGeneration"


AudioFlamingo3.register(AudioFlamingo3Config)
