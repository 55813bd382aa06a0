"""Hugging Face speech-LLM families, one small adapter each; importing this registers them, and
the families that cannot be pruned safely, with the reason."""

from speechprune.model.hf import audioflamingo3, glmasr, granite_speech, qwen2_audio, voxtral  # noqa: F401
from speechprune.model.interface import refuse

refuse("gemma3n", "Gemma 3n keeps per-layer embedding tables outside the decoder's layer list and shares KV caches "
                  "across layers; removing its layers is not supported")
refuse("qwen2_5_omni", "the Qwen2.5-Omni thinker places tokens with 3-D multimodal rotary positions, which this "
                       "toolkit's decoder inputs do not build; it is not supported yet")
