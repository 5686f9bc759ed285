"""Character error rate (CER) of OCR text against a known caption."""

from __future__ import annotations

import re

from rapidfuzz.distance import Levenshtein

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, ё as е, runs of whitespace (line breaks included) as one space.
    Punctuation is kept: stray marks read from the picture count as errors."""
    return _SPACE.sub(" ", text.lower().replace("ё", "е")).strip()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1), by rapidfuzz."""
    return Levenshtein.distance(a, b)


def cer(hypothesis: str, reference: str) -> float:
    """Edit distance / reference length, after `normalise` (can exceed 1 with junk)."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(hyp, ref) / len(ref)


def mean_cer(pairs: list[tuple[str, str]]) -> float:
    """Corpus CER: total edits / total reference characters over (hypothesis, reference) pairs."""
    edits = sum(edit_distance(normalise(h), normalise(r)) for h, r in pairs)
    chars = sum(len(normalise(r)) for _, r in pairs)
    return edits / chars if chars else 0.0
