"""Queries over the image collection: selections for jobs, the gallery's filtered pages,
and counts. Plain functions over a session; kept fast at 10,000+ images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from workbench.store.labels import (
    CurrentLabel,
    adjudicated_labels,
    cached_by_images,
    consensus_from,
    consensus_labels,
    current_labels,
    label_history,
    present_ids,
)
from workbench.store.ocr_texts import best_text
from workbench.store.schema import Image, Label, ModelRun, OcrResult, Prediction

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
    """Number of images whose file was present at the last scan (cached while no image was added
    and no scan ran: a count of a million rows at every rerun of a page took ~70 ms)."""
    return cached_by_images(session, ("count present",), lambda: session.scalar(
        select(func.count()).select_from(Image).where(Image.missing.is_(False))) or 0)


def folders(session: Session) -> list[str]:
    """Distinct first-level folders of present images ('' = the memes root), cached as count_present."""
    # Distinct over the folder index first, then one indexed probe per folder: ~1 ms at 10k images
    # where a filtered DISTINCT reads every row.
    distinct = select(Image.folder).distinct().subquery()
    present = select(Image.id).where(Image.folder == distinct.c.folder, Image.missing.is_(False)).exists()
    found = cached_by_images(session, ("folders",), lambda: tuple(
        session.scalars(select(distinct.c.folder).where(present).order_by(distinct.c.folder))))
    return list(found)


def _gallery_filters(folder: str | None, annotator: str | None, text: str | None) -> list:
    conditions = [Image.missing.is_(False)]
    if folder is not None:
        conditions.append(Image.folder == folder)
    if annotator:
        conditions.append(Image.id.in_(
            select(Label.image_id).where(Label.annotator == annotator, Label.revoked_at.is_(None))))
    if text:
        patterns = text_patterns(text)
        ocr_match = select(OcrResult.image_id).where(or_(*(OcrResult.text.ilike(p, escape="\\") for p in patterns)))
        conditions.append(or_(*(Image.path.ilike(p, escape="\\") for p in patterns), Image.id.in_(ocr_match)))
    return conditions


def text_patterns(text: str) -> list[str]:
    """LIKE patterns for a case-insensitive substring search that also works for Cyrillic.

    SQLite's lower()/ILIKE fold ASCII only, so the common spellings of the query (as typed,
    lower, UPPER — memes are often all caps — Capitalised, Title) are searched side by side.
    """
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    variants = dict.fromkeys([escaped, escaped.lower(), escaped.upper(), escaped.capitalize(), escaped.title()])
    return [f"%{v}%" for v in variants]


def gallery_page(
    session: Session,
    label: str | None = None,  # toxic | non_toxic | unlabeled | None (any)
    folder: str | None = None,
    annotator: str | None = None,
    text: str | None = None,
    page: int = 0,
    page_size: int = 48,
) -> tuple[list[ImageCard], int]:
    """One page of the gallery (ordered by path) and the total number of matches.

    Without a label filter the page is cut in SQL (COUNT + LIMIT/OFFSET) and only its
    images' labels are read; with one, the cached consensus map filters the ids.
    Text search: file name or any OCR text (see text_patterns for case handling).
    """
    conditions = _gallery_filters(folder, annotator, text)
    order = (Image.path, Image.id)
    if not label:
        total = session.scalar(select(func.count()).select_from(Image).where(*conditions)) or 0
        rows = session.execute(select(Image.id, Image.path, Image.sha256, Image.folder).where(*conditions)
                               .order_by(*order).limit(page_size).offset(page * page_size)).all()
        labels = consensus_labels(session, [r[0] for r in rows]) if rows else {}
    else:
        labels = consensus_labels(session)
        if annotator or text:
            ids = list(session.scalars(select(Image.id).where(*conditions).order_by(*order)))
        else:  # the same ids in the same order, from present_ids' cache (a million ids: ~0.6 s)
            ids = present_ids(session, folder)
        if label == "unlabeled":
            ids = [i for i in ids if i not in labels]
        else:
            ids = [i for i in ids if labels.get(i) == label]
        total = len(ids)
        chunk = ids[page * page_size : (page + 1) * page_size]
        rows = session.execute(select(Image.id, Image.path, Image.sha256, Image.folder)
                               .where(Image.id.in_(chunk)).order_by(*order)).all() if chunk else []
    return [ImageCard(r[0], r[1], r[2], r[3], labels.get(r[0])) for r in rows], total


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
    """The image's file through the guarded resolver (UnsafePath when it leaves the folder)."""
    from workbench.store.paths import image_file

    return image_file(memes_dir, image.path)


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


def image_card(session: Session, image_id: int) -> ImageCard | None:
    """One present image as a card (consensus label included), or None when unknown or missing."""
    image = session.get(Image, image_id)
    if image is None or image.missing:
        return None
    return ImageCard(image.id, image.path, image.sha256, image.folder, consensus_labels(session, [image.id]).get(image.id))


@dataclass(frozen=True)
class MemeView:
    """Everything the Label page shows about one meme, read in one call."""

    id: int
    path: str
    missing: bool
    current: list[CurrentLabel]  # each annotator's latest label, oldest first
    consensus: str | None
    history: list[Label]  # every label row, undone ones included
    ocr_text: str
    predictions: list[RunPrediction]

    def label_of(self, annotator: str | None) -> str | None:
        return next((c.label for c in self.current if c.annotator == annotator), None)


def meme_view(session: Session, image_id: int) -> MemeView | None:
    """The Label page's view of one meme, or None when there is no such image."""
    image = session.get(Image, image_id)
    if image is None:
        return None
    current = sorted(current_labels(session, [image_id]), key=lambda c: c.label_id)
    decided = adjudicated_labels(session, [image_id]).get(image_id)  # a reviewer's decision outranks the labels
    return MemeView(image.id, image.path, bool(image.missing), current, consensus_from(current, decided),
                    label_history(session, image_id), best_text(session, image_id), image_predictions(session, image_id))
