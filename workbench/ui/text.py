"""Counted nouns for page text: "1 meme", "2 memes" (never "1 memes")."""

from __future__ import annotations


def plural(n: int, noun: str, many: str | None = None) -> str:
    """`n` and the noun, singular for exactly one: plural(1, "meme") -> "1 meme";
    `many` is the plural where adding "s" is wrong (plural(2, "match", "matches"))."""
    return f"{n} {noun if n == 1 else (many or noun + 's')}"
