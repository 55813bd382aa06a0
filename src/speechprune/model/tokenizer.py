"""Tokenizers: the decoder's own, or for the tiny offline default a byte-level BPE trained
locally with ``tokenizers`` on the corpus text."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from speechprune.errors import UserError

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


def train_bpe_tokenizer(texts: list[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A byte-level BPE over ``texts`` (any Unicode survives as bytes), with pad/bos/eos/unk.

    Each text counts as often as it occurs, so the merges follow what the decoder reads: a prompt
    that precedes every utterance becomes a few tokens instead of one token per character."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(sorted(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load tokenizer {path!r}: {str(error).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def separator_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token between prompt and target: ``<bos>``, or ``<eos>`` for tokenizers without one
    (Qwen's), which is harmless because decoding only stops on generated tokens."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise UserError("the decoder's tokenizer has neither a bos nor an eos token")
    return token_id
