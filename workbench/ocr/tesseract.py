"""Tesseract: in-process through `tesserocr` (one API handle per language/mode, kept for
the process; no subprocess per image). `recognise` is also the recogniser of the default
`accurate` engine.

The `tesseract` engine reads the whole image in passes — as it is, as a "white text"
mask (upscaled, bright unsaturated pixels as black on white) and as an "outlined
letters" mask — and keeps the pass with more letters in confident words: meme captions
are white-on-photo, which raw Tesseract reads badly, while captions on plain bands read
fine raw. Lines of the chosen pass that are
mostly not letters are dropped (`is_text_line`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from workbench.config import TESSDATA_DIRS
from workbench.errors import ModelUnavailable
from workbench.ocr.base import OcrOutput, Word
from workbench.ocr.preprocess import outlined_text_mask, upscale, white_text_mask

# Tesseract's OpenMP threads fight the process pool on a small CPU; one each is fastest.
os.environ.setdefault("OMP_THREAD_LIMIT", "1")

TESSERACT_FIX = (
    "Install Tesseract with Russian data (Debian/Ubuntu: `sudo apt-get install tesseract-ocr tesseract-ocr-rus "
    "tesseract-ocr-eng`; macOS: `brew install tesseract tesseract-lang`), or point WORKBENCH_TESSDATA at a folder "
    "holding rus.traineddata."
)


def find_tessdata(langs: str, explicit: str | None = None) -> str:
    """The tessdata folder holding every `+`-separated language in `langs`; raises
    ModelUnavailable naming what is missing. tesserocr's wheel needs this path explicitly."""
    needed = [f"{lang}.traineddata" for lang in langs.split("+")]
    candidates = [explicit] if explicit else list(TESSDATA_DIRS)
    for folder in candidates:
        if folder and all((Path(folder) / name).is_file() for name in needed):
            return str(Path(folder))
    where = explicit or ", ".join(TESSDATA_DIRS)
    raise ModelUnavailable(f"tesseract:{langs}", f"{' and '.join(needed)} not found in {where}", TESSERACT_FIX)


# --- recognition of one prepared image --------------------------------------------------------

_apis: dict[tuple[str, str, int], Any] = {}


def _api(tessdata: str, lang: str, psm: int):  # noqa: ANN202 - tesserocr.PyTessBaseAPI
    """One tesserocr handle per (tessdata, lang, psm) per process (initialising costs ~0.2 s)."""
    key = (tessdata, lang, psm)
    if key not in _apis:
        import tesserocr

        _apis[key] = tesserocr.PyTessBaseAPI(path=tessdata, lang=lang, psm=psm, oem=tesserocr.OEM.LSTM_ONLY)
    return _apis[key]


def recognise(image: Image.Image, tessdata: str, lang: str, psm: int) -> list[list[Word]]:
    """Words of `image`, grouped by text line, with confidences and boxes in its pixels."""
    import tesserocr

    api = _api(tessdata, lang, psm)
    api.SetImage(image)
    api.Recognize()
    lines: list[list[Word]] = []
    iterator = api.GetIterator()
    word_level, line_level = tesserocr.RIL.WORD, tesserocr.RIL.TEXTLINE
    for item in tesserocr.iterate_level(iterator, word_level):
        try:
            text = item.GetUTF8Text(word_level)
        except RuntimeError:  # "No text returned": an empty page
            break
        if not text or not text.strip():
            continue
        box = item.BoundingBox(word_level)
        if not lines or item.IsAtBeginningOf(line_level):
            lines.append([])
        x0, y0, x1, y1 = box if box else (0, 0, 0, 0)
        lines[-1].append(Word(text.strip(), float(item.Confidence(word_level)), (x0, y0, x1 - x0, y1 - y0)))
    api.Clear()
    return lines


def letters(words: list[Word], min_conf: float) -> int:
    """Letters in words of confidence >= min_conf: the score that picks the better pass."""
    return sum(sum(ch.isalpha() for ch in w.text) for w in words if w.conf >= min_conf)


def is_text_line(line: list[Word], min_letters: int, min_letter_share: float) -> bool:
    """Whether a read line looks like caption text rather than junk read from the picture
    ('= |', '$44 |.', a lone 'А'): at least `min_letters` letters, and letters at least
    `min_letter_share` of its non-space characters."""
    chars = "".join(w.text for w in line)
    n_letters = sum(ch.isalpha() for ch in chars)
    return n_letters >= min_letters and n_letters >= min_letter_share * len(chars)


def lines_text(lines: list[list[Word]]) -> str:
    return "\n".join(" ".join(w.text for w in line) for line in lines if line)


def _scaled(words: list[Word], scale: float) -> list[Word]:
    if scale == 1.0:
        return words
    return [Word(w.text, w.conf, tuple(round(v / scale) for v in w.box)) for w in words]  # type: ignore[misc]


# --- the engine -------------------------------------------------------------------------------


@dataclass
class TesseractEngine:
    """Tesseract over several renderings of the image ("passes"), keeping the one with the
    most letters in words of confidence >= `min_conf`; words below `drop_below` are left
    out of the text (junk read from the picture), and so are lines with fewer than
    `min_line_letters` letters or a letter share below `min_letter_share` (measured on
    hand-transcribed real memes: held-out CER 0.27 -> 0.17, generated memes unchanged).
    Default passes: raw, white-text mask, outlined-letters mask; `passes=("raw",)` is plain
    Tesseract, `("raw", "white")` the research baseline."""

    lang: str = "rus"
    psm: int = 6
    passes: tuple[str, ...] = ("raw", "white", "outlined")
    min_conf: float = 50.0
    drop_below: float = 30.0
    min_line_letters: int = 2
    min_letter_share: float = 0.6
    min_long_side: int = 1200
    tessdata_dir: str | None = None
    name: str = "tesseract"
    _tessdata: str | None = field(default=None, init=False, repr=False)

    def config(self) -> dict[str, Any]:
        return {"engine": self.name, "lang": self.lang, "psm": self.psm, "passes": list(self.passes),
                "min_conf": self.min_conf, "drop_below": self.drop_below, "min_long_side": self.min_long_side,
                "min_line_letters": self.min_line_letters, "min_letter_share": self.min_letter_share}

    def load(self) -> None:
        if self._tessdata is None:
            self._tessdata = find_tessdata(self.lang, self.tessdata_dir)
            _check_api(self._tessdata, self.lang, self.psm)

    def read(self, image: Image.Image) -> OcrOutput:
        self.load()
        assert self._tessdata is not None
        passes: list[tuple[int, str, list[list[Word]]]] = []
        for name in self.passes:
            prepared, scale = self.prepare(image, name)
            lines = [_scaled(line, scale) for line in recognise(prepared, self._tessdata, self.lang, self.psm)]
            passes.append((letters([w for line in lines for w in line], self.min_conf), name, lines))
        best = max(passes, key=lambda p: p[0])  # first pass wins ties
        lines = [[w for w in line if w.conf >= self.drop_below] for line in best[2]]
        lines = [line for line in lines if line and is_text_line(line, self.min_line_letters, self.min_letter_share)]
        words = [w for line in lines for w in line]
        return OcrOutput(lines_text(lines), words, {"pass": best[1], "letters": best[0]})

    def prepare(self, image: Image.Image, pass_name: str) -> tuple[Image.Image, float]:
        """The image a pass reads and its scale relative to the original."""
        if pass_name == "raw":
            return image, 1.0
        if pass_name == "white":
            big, scale = upscale(image, self.min_long_side)
            return white_text_mask(big), scale
        if pass_name == "outlined":
            big, scale = upscale(image, self.min_long_side)
            return outlined_text_mask(big), scale
        raise ValueError(f"unknown tesseract pass {pass_name!r}")


def _check_api(tessdata: str, lang: str, psm: int) -> None:
    """Fail at load time, clearly, when tesserocr or its language data is missing."""
    try:
        _api(tessdata, lang, psm)
    except ImportError as exc:
        raise ModelUnavailable(f"tesseract:{lang}", "the tesserocr package is not installed", TESSERACT_FIX) from exc
    except RuntimeError as exc:  # tesserocr: "Failed to init API, possibly an invalid tessdata path"
        raise ModelUnavailable(f"tesseract:{lang}", str(exc), TESSERACT_FIX) from exc
