"""Text <-> token ids for the models the evaluation runs: tiktoken encodings and ``transformers`` tokenizers.

Stop sequences are searched in the bytes a codec decodes, so they match exactly across token boundaries.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any


class Codec(abc.ABC):
    """Text <-> token ids for one model."""

    name: str
    eos_token_id: int | None
    n_vocab: int  # ids the tokenizer can decode; the model's padded embedding rows beyond are never picked

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """UTF-8 bytes of ``ids`` (stop sequences are searched in bytes, exact across token boundaries)."""
        return self.decode(ids).encode("utf-8", "surrogatepass")

    def token_bytes(self, token: int) -> bytes | None:
        """The bytes one token adds, when that is well defined (byte-level BPE); None otherwise."""
        return None


class TiktokenCodec(Codec):
    """A ``tiktoken.Encoding`` (``p50k_base`` or a trained BPE); special tokens in text are plain text."""

    def __init__(self, encoding: Any) -> None:
        from textbooks.tokenizer import TokenizerError, eot_token

        self.encoding = encoding
        self.name = encoding.name
        self.n_vocab = encoding.n_vocab
        try:
            self.eos_token_id = eot_token(encoding)
        except TokenizerError:
            self.eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(list(ids), errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))

    def token_bytes(self, token: int) -> bytes | None:
        return self.encoding.decode_single_token_bytes(token)


class HFCodec(Codec):
    """A ``transformers`` tokenizer, without added special tokens and without clean-up of spaces."""

    def __init__(self, tokenizer: Any, eos_token_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        self.n_vocab = len(tokenizer)
        self.eos_token_id = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
