"""What every generation backend takes and returns: decoding parameters and completions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenParams:
    """How to decode: temperature 0 means greedy."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 16
    stop_at_newline: bool = False  # answers: stop at the end of the first non-empty line


@dataclass(frozen=True)
class Completion:
    """One generated text and how it ended."""

    text: str
    tokens: int  # generated tokens, EOS excluded
    finish: str  # "stop" (EOS) or "length"
