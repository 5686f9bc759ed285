"""The OCR text every downstream consumer uses: a manual correction first, else the
newest successful engine result (or a chosen engine fingerprint's)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.store.db import in_batches
from workbench.store.schema import OcrResult

MANUAL_ENGINE = "manual"


@dataclass(frozen=True)
class TextSource:
    """The text a meme goes by and the ocr_results row it comes from."""

    text: str
    ocr_id: int
    engine: str  # an engine name, or "manual" for a correction
    fingerprint: str  # engine + config (its version): "tesseract:<hash>"; "manual:<uuid>" for a correction

    @property
    def ref(self) -> str:
        """A short stored reference: "<fingerprint>#<ocr_results id>"."""
        return f"{self.fingerprint}#{self.ocr_id}"


def best_text_sources(session: Session, image_ids: Sequence[int],
                      engine_fingerprint: str | None = None) -> dict[int, TextSource]:
    """image_id -> the text in force and its source row (images with no OCR are absent)."""
    out: dict[int, TextSource] = {}
    manual: dict[int, TextSource] = {}
    ids = list(image_ids)
    for chunk in in_batches(ids):
        rows = session.execute(
            select(OcrResult.image_id, OcrResult.id, OcrResult.engine, OcrResult.fingerprint, OcrResult.text)
            .where(OcrResult.image_id.in_(chunk), OcrResult.error.is_(None))
            .order_by(OcrResult.created_at, OcrResult.id)
        ).all()
        for image_id, ocr_id, engine, fp, text in rows:  # ascending: later rows win
            if engine == MANUAL_ENGINE:
                manual[image_id] = TextSource(text, ocr_id, engine, fp)
            elif engine_fingerprint is None or fp == engine_fingerprint:
                out[image_id] = TextSource(text, ocr_id, engine, fp)
    out.update(manual)
    return out


def best_texts(session: Session, image_ids: Sequence[int], engine_fingerprint: str | None = None) -> dict[int, str]:
    """image_id -> text for the given images (images with no OCR are absent)."""
    return {i: s.text for i, s in best_text_sources(session, image_ids, engine_fingerprint).items()}


def best_text(session: Session, image_id: int) -> str:
    return best_texts(session, [image_id]).get(image_id, "")


def save_correction(session: Session, image_id: int, text: str, annotator: str) -> OcrResult:
    """Store a manual correction as its own row; it becomes the text in force."""
    row = OcrResult(image_id=image_id, engine=MANUAL_ENGINE, fingerprint=f"{MANUAL_ENGINE}:{uuid.uuid4().hex}",
                    config={}, text=text.strip(), confidence=None, boxes=[], annotator=annotator)
    session.add(row)
    session.flush()
    return row


def ocr_history(session: Session, image_id: int) -> list[OcrResult]:
    """Every OCR row of an image, newest first (engines and manual corrections)."""
    return list(session.scalars(
        select(OcrResult).where(OcrResult.image_id == image_id).order_by(OcrResult.created_at.desc(), OcrResult.id.desc())))
