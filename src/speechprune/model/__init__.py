"""SpeechLLM assembly: encoders, projector, decoder access, input layout, save/load."""

from transformers.utils import logging as _hf_logging

# Per-shard progress bars on every save/load would drown the toolkit's own progress output.
_hf_logging.disable_progress_bar()
