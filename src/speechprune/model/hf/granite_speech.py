"""Granite Speech (``ibm-granite/granite-speech-3.3-2b``): Conformer encoder, Q-Former projector,
Granite decoder (which scales its input embeddings itself, so they are captured before it does).
Its chat template takes the user turn as one string with the ``<|audio|>`` placeholder in it; its
feature extractor needs torchaudio."""

from speechprune.data.manifest import Utterance
from speechprune.model.hf.base import HFSpeechLLM
from speechprune.model.speechllm import prompt_text


class GraniteSpeech(HFSpeechLLM):
    family = "Granite Speech"
    model_class = "GraniteSpeechForConditionalGeneration"

    def user_content(self, utt: Utterance, source: str) -> str:
        audio = getattr(self.processor, "audio_token", None) or "<|audio|>"
        return f"{audio if source == 'speech' else utt.text} {prompt_text(self.prompts, utt)}"
