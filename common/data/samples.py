"""A training sample as both services read it, whatever the file's format.

A sample is an optional system prompt and a conversation of (user, assistant) turns. Every
assistant turn is trained on (its tokens carry labels) and each user turn is context; an
alpaca row is one turn whose user text joins instruction and input, with its `history` as
earlier turns.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    turns: tuple[tuple[str, str], ...]  # (user, assistant) pairs, in conversation order
    system: str = ""

    def __post_init__(self) -> None:
        if not self.turns:
            raise ValueError("a sample needs at least one (user, assistant) turn")

    @property
    def response(self) -> str:
        """The last assistant turn."""
        return self.turns[-1][1]
