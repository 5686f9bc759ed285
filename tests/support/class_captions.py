"""Meme captions that carry their class, noisily, at any scale: for the learner's tests and
benches (TF-IDF over OCR text) without an OCR engine. Each caption mixes words typical of its
class, some of the other class and neutral filler, so a text learner can learn the class but
not perfectly. Rows go in with bulk inserts (image rows without files; the learner reads text
and cached vectors, never pixels)."""

from __future__ import annotations

import random

from sqlalchemy import insert
from sqlalchemy.orm import Session

from tests.support.synthetic_runs import add_images
from workbench.store.demo_memes import NEUTRAL_CAPTIONS, TOXIC_CAPTIONS
from workbench.store.schema import OcrResult

TOXIC_WORDS = sorted({w for c in TOXIC_CAPTIONS for w in c.split() if len(w) > 3})
NEUTRAL_WORDS = sorted({w for c in NEUTRAL_CAPTIONS for w in c.split() if len(w) > 3})
FILLER = [f"слово{i}" for i in range(400)]


def caption(label: str, rng: random.Random, words: int = 7, own: float = 0.4, other: float = 0.1) -> str:
    """A caption of `words` words: each is a word of its class with probability `own`, of the
    other class with `other`, filler otherwise."""
    mine, theirs = (TOXIC_WORDS, NEUTRAL_WORDS) if label == "toxic" else (NEUTRAL_WORDS, TOXIC_WORDS)
    out = []
    for _ in range(words):
        r = rng.random()
        out.append(rng.choice(mine) if r < own else rng.choice(theirs) if r < own + other else rng.choice(FILLER))
    return " ".join(out)


def add_captioned_memes(session: Session, n: int, toxic_share: float = 0.3, seed: int = 0,
                        folder: str = "bench") -> dict[int, str]:
    """n image rows (no files), each with a caption as its OCR text; returns {image_id: true class}."""
    rng = random.Random(seed)
    ids = add_images(session, n, folder=folder)
    truth = {i: "toxic" if rng.random() < toxic_share else "non_toxic" for i in ids}
    rows = [{"image_id": i, "engine": "manual", "fingerprint": f"manual:bench-{i}", "config": {},
             "text": caption(label, rng), "boxes": [], "annotator": "bench"} for i, label in truth.items()]
    for start in range(0, len(rows), 5000):
        session.execute(insert(OcrResult), rows[start:start + 5000])
    session.flush()
    return truth
