"""Captions -> token ids: the one tokenizer of text-to-image models.

Training, export and the service all tokenise with this module, from the vocabulary file that
ships beside the model (``vocabulary.json``, checked by sha256 like the graph). It needs only
the standard library and numpy, so the service imports it without torch.

A caption is lower-cased, split on whitespace (``.`` and ``,`` count as spaces), and each
word is looked up in a closed vocabulary. Token id 0 is padding; a caption becomes
``max_tokens`` ids, padded at the end. Unknown words, an empty caption and one longer than
``max_tokens`` words are refused with :class:`CaptionError`, which names the words at fault.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOCABULARY_FILE = "vocabulary.json"
PAD_TOKEN = "<pad>"
PAD_ID = 0
MAX_CAPTION_CHARS = 256  # refused before splitting, so a huge caption costs nothing
_SEPARATORS = re.compile(r"[\s.,]+")


class CaptionError(ValueError):
    """A caption the vocabulary cannot encode; ``unknown`` lists the words it does not know."""

    def __init__(self, message: str, unknown: list[str] | None = None) -> None:
        super().__init__(message)
        self.unknown = unknown or []


@dataclass(frozen=True)
class Vocabulary:
    """The closed word list of a text-to-image model; word i has token id i (0 is padding)."""

    words: tuple[str, ...]
    max_tokens: int

    def __post_init__(self) -> None:
        if not self.words or self.words[PAD_ID] != PAD_TOKEN:
            raise ValueError(f"the vocabulary's first word must be {PAD_TOKEN!r}")
        if len(set(self.words)) != len(self.words):
            raise ValueError("the vocabulary repeats a word")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")

    @functools.cached_property
    def ids(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.words)}

    @property
    def size(self) -> int:
        return len(self.words)

    def known_words(self) -> list[str]:
        """Every word a caption may use (padding excluded)."""
        return list(self.words[1:])

    def split(self, caption: str) -> list[str]:
        """Lower-cased words of a caption, without separators."""
        if len(caption) > MAX_CAPTION_CHARS:
            raise CaptionError(f"caption is {len(caption)} characters; at most {MAX_CAPTION_CHARS}")
        return [w for w in _SEPARATORS.split(caption.lower()) if w]

    def encode(self, caption: str) -> np.ndarray:
        """int64 [max_tokens]: the caption's token ids, padded with 0."""
        words = self.split(caption)
        if not words:
            raise CaptionError("caption is empty")
        if len(words) > self.max_tokens:
            raise CaptionError(f"caption has {len(words)} words; at most {self.max_tokens}")
        unknown = sorted({w for w in words if w not in self.ids or w == PAD_TOKEN})
        if unknown:
            raise CaptionError(f"unknown words: {', '.join(unknown)}", unknown)
        out = np.full(self.max_tokens, PAD_ID, np.int64)
        out[: len(words)] = [self.ids[w] for w in words]
        return out

    def encode_many(self, captions: list[str]) -> np.ndarray:
        """int64 [n, max_tokens]; the first caption at fault raises, naming its index."""
        rows = []
        for i, caption in enumerate(captions):
            try:
                rows.append(self.encode(caption))
            except CaptionError as exc:
                prefix = f"caption {i}: " if len(captions) > 1 else ""
                raise CaptionError(prefix + str(exc), exc.unknown) from None
        return np.stack(rows)

    def decode(self, ids: np.ndarray) -> str:
        return " ".join(self.words[int(i)] for i in ids if int(i) != PAD_ID)

    # --- the shipped file ------------------------------------------------------------------

    def to_json(self) -> str:
        data = {"pad_id": PAD_ID, "max_tokens": self.max_tokens, "words": list(self.words)}
        return json.dumps(data, indent=1) + "\n"

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / VOCABULARY_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        data = json.loads(text)
        if data.get("pad_id") != PAD_ID:
            raise ValueError(f"pad_id must be {PAD_ID}")
        return cls(tuple(str(w) for w in data["words"]), int(data["max_tokens"]))


@functools.lru_cache(maxsize=32)
def _load_cached(path: str, sha256: str) -> Vocabulary:
    return Vocabulary.from_json(Path(path).read_text(encoding="utf-8"))


def load_vocabulary(directory: str | Path, sha256: str = "") -> Vocabulary:
    """The vocabulary beside a model version, read once per (file, checksum)."""
    return _load_cached(str(Path(directory) / VOCABULARY_FILE), sha256)
