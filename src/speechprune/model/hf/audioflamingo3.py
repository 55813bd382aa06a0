"""Audio Flamingo 3 (``nvidia/audio-flamingo-3-hf``): Whisper-style encoder, Qwen2 decoder; the
processor expands ``<sound>`` to one token per encoder position."""

from speechprune.model.hf.base import HFSpeechLLM


class AudioFlamingo3(HFSpeechLLM):
    family = "Audio Flamingo 3"
    model_class = "AudioFlamingo3ForConditionalGeneration"
