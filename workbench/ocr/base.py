"""The OCR engine interface: every engine reads one RGB image into an `OcrOutput`.

An engine is built from a plain, JSON-able config (so results are stored and skipped
under that config's fingerprint) and loads its heavy parts once per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image


@dataclass
class Word:
    """One recognised word: its text, confidence (0-100) and box (x, y, w, h) in the
    original image's pixels."""

    text: str
    conf: float
    box: tuple[int, int, int, int]

    def as_json(self) -> dict[str, Any]:
        return {"text": self.text, "conf": round(self.conf, 1), "box": list(self.box)}


@dataclass
class OcrOutput:
    """An engine's reading of one image."""

    text: str
    words: list[Word] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)  # engine-specific notes (chosen pass, ...)

    @property
    def confidence(self) -> float | None:
        """Mean word confidence (0-100), None when no words were read."""
        return sum(w.conf for w in self.words) / len(self.words) if self.words else None


class OcrEngine(Protocol):
    """What every engine provides."""

    name: str

    def config(self) -> dict[str, Any]:
        """The JSON-able settings that determine this engine's output (its identity)."""
        ...

    def load(self) -> None:
        """Heavy set-up, once per process; raises workbench.errors.ModelUnavailable when it cannot."""
        ...

    def read(self, image: Image.Image) -> OcrOutput:
        """Read the text of one RGB image."""
        ...
