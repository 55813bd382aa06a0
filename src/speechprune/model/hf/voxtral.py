"""Voxtral (``mistralai/Voxtral-Mini-3B-2507``): Whisper-style encoder, Llama-style decoder; the
placeholder is ``audio_token_id`` (24 in the released configs). Its processor renders and tokenizes
chats with audio only through mistral-common (``apply_chat_template(tokenize=True)``, audio padded to
30 s), which gives no character offsets for the regions: speech input is refused with that reason,
text input and pruning work as for the other families."""

from speechprune.errors import UserError
from speechprune.model.hf.base import HFSpeechLLM


class Voxtral(HFSpeechLLM):
    family = "Voxtral"
    model_class = "VoxtralForConditionalGeneration"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sources = ("text",)

    def check_source(self, source: str) -> None:
        if source == "speech":
            raise UserError(f"--input speech: {self.path}: Voxtral's processor renders audio chats only through "
                            "mistral-common, which this toolkit does not drive yet; use --input text")
        super().check_source(source)
