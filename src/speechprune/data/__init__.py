"""Data: the manifest format (schema and validation), audio I/O, the synthetic espeak-ng corpus
(``synth``, from the parallel grammar in ``grammar``) and Hugging Face datasets export (``hf``).

This package imports nothing from the model, training or pruning stages.
"""

from speechprune.data.audio import add_noise, load_audio, save_audio
from speechprune.data.manifest import Utterance, load_manifest, load_manifests, write_manifest

__all__ = ["Utterance", "load_manifest", "load_manifests", "write_manifest", "load_audio", "save_audio", "add_noise"]
