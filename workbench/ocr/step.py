"""OCR as a job-runner step: reads each image with one engine and stores an ocr_results
row per (image, engine+config fingerprint), errors included."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.ocr.base import OcrEngine, OcrOutput
from workbench.runs.step import ItemResult, Step, WorkItem, fingerprint
from workbench.store.db import in_batches
from workbench.store.images import load_rgb
from workbench.store.schema import OcrResult, utcnow

# Tesseract-based engines are CPU-bound, single-threaded and light: one per worker process.
PARALLEL_ENGINES = ("tesseract", "accurate")
_FROM_SETTINGS = ("name", "tessdata_dir", "easyocr_dir")  # engine fields make_engine fills, not a recipe


class OcrStep(Step):
    """Runs one OCR engine over images; results are stored under `fingerprint()`."""

    kind = "ocr"

    def __init__(self, engine: OcrEngine) -> None:
        self.engine = engine
        self.name = f"ocr:{engine.name}"
        self.parallel_ok = engine.name in PARALLEL_ENGINES

    def fingerprint(self) -> str:
        return f"{self.engine.name}:{fingerprint(self.engine.config())}"

    def recipe(self) -> dict[str, Any] | None:
        """The engine's name and constructor options (folders come from settings on rebuild)."""
        if not dataclasses.is_dataclass(self.engine):
            return None
        options = {f.name: getattr(self.engine, f.name) for f in dataclasses.fields(self.engine)
                   if f.init and not f.name.startswith("_") and f.name not in _FROM_SETTINGS}
        return {"engine": self.engine.name,
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], settings: Any) -> OcrStep:
        from workbench.ocr import make_engine

        options = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(recipe.get("options") or {}).items()}
        lang = options.pop("lang", "rus")
        return cls(make_engine(str(recipe["engine"]), settings, lang=lang, **options))

    def done_ids(self, session: Session, image_ids: Sequence[int]) -> set[int]:
        done: set[int] = set()
        ids = list(image_ids)
        fp = self.fingerprint()
        for chunk in in_batches(ids):
            done.update(session.scalars(select(OcrResult.image_id).where(
                OcrResult.fingerprint == fp, OcrResult.error.is_(None), OcrResult.image_id.in_(chunk))))
        return done

    def load(self) -> None:
        self.engine.load()

    def process(self, items: list[WorkItem]) -> list[ItemResult]:
        results = []
        for item in items:
            started = time.perf_counter()
            try:
                output = self.engine.read(load_rgb(item.path))
                results.append(ItemResult(item.image_id, value=output, duration_ms=_ms(started)))
            except Exception as exc:  # noqa: BLE001 - one unreadable image must not stop the batch
                results.append(ItemResult(item.image_id, error=f"{type(exc).__name__}: {exc}", duration_ms=_ms(started)))
        return results

    def save(self, session: Session, results: list[ItemResult], force: bool) -> None:
        fp = self.fingerprint()
        existing = {row.image_id: row for row in session.scalars(select(OcrResult).where(
            OcrResult.fingerprint == fp, OcrResult.image_id.in_([r.image_id for r in results])))}
        for result in results:
            row = existing.get(result.image_id)
            if row is None:
                row = OcrResult(image_id=result.image_id, engine=self.engine.name, fingerprint=fp)
                session.add(row)
            elif row.error is None and result.error and not force:
                continue  # never replace a good reading with a later failure
            output: OcrOutput | None = result.value
            row.config = self.engine.config()
            row.text = output.text if output else ""
            row.confidence = output.confidence if output else None
            row.boxes = [w.as_json() for w in output.words] if output else []
            row.error = result.error
            row.duration_ms = result.duration_ms
            row.created_at = utcnow()  # a redone reading is the newest (best_texts takes the latest)
        session.flush()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 1)
