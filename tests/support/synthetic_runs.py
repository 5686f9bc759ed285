"""Builders of model runs and predictions without a model, shared by the metric tests,
the page tests and bench/metrics.py (datasette's in-package fixtures idea).

Rows are inserted exactly as the job runner stores them (model_runs + predictions), so
every analysis query runs on the real schema.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import insert
from sqlalchemy.orm import Session

from workbench.store.schema import Image, Label, ModelRun, Prediction


@dataclass(frozen=True)
class Pred:
    """One stored answer: label toxic|non_toxic|unknown; error set = a failed prediction."""

    label: str
    prob: float | None = None
    explanation: str | None = None
    latency_ms: float | None = None
    error: str | None = None


def add_run(session: Session, kind: str, name: str, predictions: Mapping[int, Pred], model_id: str = "synthetic",
            params: dict | None = None) -> int:
    """Insert a finished run with its predictions (image_id -> Pred); returns the run id."""
    fingerprint = hashlib.sha256(f"{kind}|{name}|{model_id}|{random.random()}".encode()).hexdigest()[:32]
    run = ModelRun(kind=kind, model_id=model_id, name=name, params=params or {}, fingerprint=fingerprint,
                   status="done")
    session.add(run)
    session.flush()
    rows = [
        {"run_id": run.id, "image_id": image_id, "label": p.label, "prob_toxic": p.prob, "explanation": p.explanation,
         "latency_ms": p.latency_ms, "error": p.error, "extra": {}, "raw_output": None}
        for image_id, p in predictions.items()
    ]
    for start in range(0, len(rows), 5000):
        session.execute(insert(Prediction), rows[start : start + 5000])
    session.flush()
    return run.id


def add_images(session: Session, n: int, folder: str = "synthetic", source: str = "folder") -> list[int]:
    """Insert n image rows without files (for metric queries that never open an image)."""
    start = session.query(Image).count()
    rows = [
        {"sha256": hashlib.sha256(f"synthetic-{folder}-{start + k}".encode()).hexdigest(),
         "path": f"{folder}/img_{start + k:06d}.png", "original_name": f"img_{start + k:06d}.png", "format": "PNG",
         "width": 1, "height": 1, "bytes": 1, "n_frames": 1, "source": source, "folder": folder, "missing": False}
        for k in range(n)
    ]
    for chunk in range(0, len(rows), 5000):
        session.execute(insert(Image), rows[chunk : chunk + 5000])
    session.flush()
    return [i for (i,) in session.query(Image.id).filter(Image.folder == folder).order_by(Image.id)][-n:]


def add_labels(session: Session, labels: Mapping[int, str], annotator: str) -> None:
    """Insert one current label per image for `annotator` (bulk; no validation)."""
    rows = [{"image_id": i, "label": lab, "annotator": annotator} for i, lab in labels.items()]
    for start in range(0, len(rows), 5000):
        session.execute(insert(Label), rows[start : start + 5000])
    session.flush()


def generate(session: Session, n_images: int, n_runs: int, seed: int = 0,
             kinds: Sequence[str] = ("vlm", "clip", "head", "nudenet", "text-toxicity")) -> list[int]:
    """n_images labeled images and n_runs runs predicting all of them, with realistic mess:
    ~5% unknown, ~2% failed, ~3% not predicted, probabilities for all but the first run."""
    rng = random.Random(seed)
    ids = add_images(session, n_images, folder="Негативно")
    truth = {i: rng.choice(("toxic", "non_toxic")) for i in ids}
    add_labels(session, truth, "folder")
    run_ids = []
    for r in range(n_runs):
        skill = 0.6 + 0.3 * rng.random()
        preds: dict[int, Pred] = {}
        for i in ids:
            u = rng.random()
            if u < 0.03:
                continue
            if u < 0.05:
                preds[i] = Pred("unknown", error="synthetic failure")
                continue
            if u < 0.10:
                preds[i] = Pred("unknown", latency_ms=rng.uniform(50, 500))
                continue
            target = 1.0 if truth[i] == "toxic" else 0.0
            p = min(1.0, max(0.0, rng.gauss(target * skill + (1 - target) * (1 - skill), 0.25)))
            preds[i] = Pred("toxic" if p >= 0.5 else "non_toxic", prob=None if r == 0 else p,
                            latency_ms=rng.uniform(50, 500))
        run_ids.append(add_run(session, kinds[r % len(kinds)], f"synthetic {r}", preds))
    return run_ids
