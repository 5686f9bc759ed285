"""Queries over the image collection: selections for jobs, the gallery's filtered pages,
and counts. Plain functions over a session; kept fast at 10,000+ images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from workbench.labels import consensus_labels
from workbench.schema import Image, Label, ModelRun, OcrResult, Prediction

SELECTIONS = ("all", "unlabeled", "labeled", "toxic", "non_toxic")


@dataclass(frozen=True)
class ImageCard:
    id: int
    path: str
    sha256: str
    folder: str
    label: str | None  # consensus


def image_ids(session: Session, selection: str = "all", folder: str | None = None, limit: int | None = None) -> list[int]:
    """Ids of present images for a job selection: all | unlabeled | labeled | toxic | non_toxic."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}")
    query = select(Image.id).where(Image.missing.is_(False)).order_by(Image.id)
    if folder is not None:
        query = query.where(Image.folder == folder)
    ids = list(session.scalars(query))
    if selection != "all":
        labels = consensus_labels(session)
        if selection == "unlabeled":
            ids = [i for i in ids if i not in labels]
        elif selection == "labeled":
            ids = [i for i in ids if i in labels]
        else:
            ids = [i for i in ids if labels.get(i) == selection]
    return ids[:limit] if limit else ids


def count_present(session: Session) -> int:
    """Number of images whose file was present at the last scan."""
    return session.scalar(select(func.count()).select_from(Image).where(Image.missing.is_(False))) or 0


def folders(session: Session) -> list[str]:
    """Distinct first-level folders of present images ('' = the memes root)."""
    return list(session.scalars(select(Image.folder).where(Image.missing.is_(False)).distinct().order_by(Image.folder)))


def gallery_page(
    session: Session,
    label: str | None = None,  # toxic | non_toxic | unlabeled | None (any)
    folder: str | None = None,
    annotator: str | None = None,
    text: str | None = None,
    page: int = 0,
    page_size: int = 48,
) -> tuple[list[ImageCard], int]:
    """One page of the gallery and the total number of matches."""
    query = select(Image.id, Image.path, Image.sha256, Image.folder).where(Image.missing.is_(False))
    if folder is not None:
        query = query.where(Image.folder == folder)
    if annotator:
        query = query.where(Image.id.in_(
            select(Label.image_id).where(Label.annotator == annotator, Label.revoked_at.is_(None))))
    if text:
        pattern = f"%{text.lower()}%"
        ocr_match = select(OcrResult.image_id).where(func.lower(OcrResult.text).like(pattern))
        query = query.where(or_(func.lower(Image.path).like(pattern), Image.id.in_(ocr_match)))
    rows = session.execute(query.order_by(Image.path, Image.id)).all()
    labels = consensus_labels(session) if rows else {}
    if label == "unlabeled":
        rows = [r for r in rows if r[0] not in labels]
    elif label:
        rows = [r for r in rows if labels.get(r[0]) == label]
    total = len(rows)
    chunk = rows[page * page_size : (page + 1) * page_size]
    return [ImageCard(r[0], r[1], r[2], r[3], labels.get(r[0])) for r in chunk], total


def stats(session: Session) -> dict[str, object]:
    """Counts for the home page and `python -m workbench stats`."""
    n_images = session.scalar(select(func.count()).select_from(Image).where(Image.missing.is_(False))) or 0
    labels = consensus_labels(session)
    present = set(session.scalars(select(Image.id).where(Image.missing.is_(False))))
    by_label: dict[str, int] = {}
    for i, lab in labels.items():
        if i in present:
            by_label[lab] = by_label.get(lab, 0) + 1
    return {
        "images": n_images,
        "labeled": sum(by_label.values()),
        "unlabeled": n_images - sum(by_label.values()),
        "by_label": dict(sorted(by_label.items())),
        "missing_files": session.scalar(select(func.count()).select_from(Image).where(Image.missing.is_(True))) or 0,
        "annotators": session.scalar(select(func.count(func.distinct(Label.annotator)))) or 0,
        "ocr_results": session.scalar(select(func.count()).select_from(OcrResult)) or 0,
        "model_runs": session.scalar(select(func.count()).select_from(ModelRun)) or 0,
        "predictions": session.scalar(select(func.count()).select_from(Prediction)) or 0,
    }


def image_path(memes_dir: Path, image: Image) -> Path:
    return memes_dir / image.path


@dataclass(frozen=True)
class RunPrediction:
    """One model run's verdict on one image, for the labeling page."""

    run_id: int
    run_name: str
    kind: str
    model_id: str
    label: str
    prob_toxic: float | None
    explanation: str | None
    error: str | None
    created_at: object


def image_predictions(session: Session, image_id: int) -> list[RunPrediction]:
    """Every model run's prediction for one image, oldest run first."""
    rows = session.execute(
        select(ModelRun.id, ModelRun.name, ModelRun.kind, ModelRun.model_id, Prediction.label, Prediction.prob_toxic,
               Prediction.explanation, Prediction.error, Prediction.created_at)
        .join(ModelRun, ModelRun.id == Prediction.run_id)
        .where(Prediction.image_id == image_id)
        .order_by(ModelRun.created_at, ModelRun.id)
    ).all()
    return [RunPrediction(r[0], r[1] or r[3], *r[2:]) for r in rows]
