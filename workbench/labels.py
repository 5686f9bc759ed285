"""Labels: add, undo, current label per annotator, consensus, and the labeling queue.

Consensus rule (used by exports and metrics): human annotators outrank the system
annotators ('folder', 'import'). Among the current labels of the outranking group the
majority wins; a tie goes to the most recent of the tied labels.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from workbench.config import LABELS, SYSTEM_ANNOTATORS
from workbench.schema import Image, Label, Setting, utcnow


class LabelError(ValueError):
    pass


@dataclass(frozen=True)
class CurrentLabel:
    image_id: int
    annotator: str
    label: str
    created_at: datetime
    label_id: int


def add_label(session: Session, image_id: int, label: str, annotator: str, note: str | None = None) -> Label:
    """Record `annotator`'s label for an image (a new row; history is kept)."""
    if label not in LABELS:
        raise LabelError(f"label must be one of {', '.join(LABELS)}, not {label!r}")
    annotator = (annotator or "").strip()
    if not annotator:
        raise LabelError("annotator name is required")
    if session.get(Image, image_id) is None:
        raise LabelError(f"no image with id {image_id}")
    row = Label(image_id=image_id, label=label, annotator=annotator[:128], note=(note or None))
    session.add(row)
    session.flush()
    return row


def undo_last(session: Session, annotator: str, image_id: int | None = None) -> Label | None:
    """Revoke the annotator's latest label (on one image, or overall); returns it, or None."""
    query = select(Label).where(Label.annotator == annotator, Label.revoked_at.is_(None))
    if image_id is not None:
        query = query.where(Label.image_id == image_id)
    row = session.scalar(query.order_by(Label.id.desc()).limit(1))
    if row is not None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def current_labels(session: Session, image_ids: Sequence[int] | None = None) -> list[CurrentLabel]:
    """The latest non-revoked label of each (image, annotator)."""
    latest = (
        select(func.max(Label.id).label("id"))
        .where(Label.revoked_at.is_(None))
        .group_by(Label.image_id, Label.annotator)
    )
    if image_ids is not None:
        latest = latest.where(Label.image_id.in_(list(image_ids)))
    rows = session.execute(
        select(Label.image_id, Label.annotator, Label.label, Label.created_at, Label.id).where(Label.id.in_(latest.scalar_subquery()))
    ).all()
    return [CurrentLabel(*r) for r in rows]


def consensus_from(labels: Sequence[CurrentLabel]) -> str | None:
    """Apply the consensus rule to one image's current labels."""
    if not labels:
        return None
    human = [c for c in labels if c.annotator not in SYSTEM_ANNOTATORS]
    group = human or list(labels)
    counts = Counter(c.label for c in group)
    best = max(counts.values())
    tied = {lab for lab, n in counts.items() if n == best}
    if len(tied) == 1:
        return tied.pop()
    return max((c for c in group if c.label in tied), key=lambda c: c.label_id).label


def consensus_labels(session: Session, image_ids: Sequence[int] | None = None) -> dict[int, str]:
    """image_id -> consensus label, for every labeled image (or those given)."""
    per_image: dict[int, list[CurrentLabel]] = {}
    if image_ids is not None and len(image_ids) > 900:
        ids = list(image_ids)
        out: dict[int, str] = {}
        for start in range(0, len(ids), 900):
            out.update(consensus_labels(session, ids[start : start + 900]))
        return out
    for c in current_labels(session, image_ids):
        per_image.setdefault(c.image_id, []).append(c)
    return {i: lab for i, cs in per_image.items() if (lab := consensus_from(cs)) is not None}


def label_history(session: Session, image_id: int) -> list[Label]:
    """Every label row of an image, newest first (revoked ones included)."""
    return list(session.scalars(select(Label).where(Label.image_id == image_id).order_by(Label.id.desc())))


QUEUE_ORDERS = ("unlabeled first", "random", "by file name")


def labeling_queue(session: Session, annotator: str, order: str = "unlabeled first", seed: int = 0,
                   folder: str | None = None) -> list[int]:
    """Image ids in the order the labeling page walks them.

    'unlabeled first': images this annotator has not labeled (by file name), then the rest.
    """
    query = select(Image.id, Image.path).where(Image.missing.is_(False))
    if folder is not None:
        query = query.where(Image.folder == folder)
    rows = session.execute(query.order_by(Image.path, Image.id)).all()
    ids = [r[0] for r in rows]
    if order == "random":
        random.Random(seed).shuffle(ids)
        return ids
    if order == "unlabeled first":
        mine = set(session.scalars(
            select(Label.image_id).where(Label.annotator == annotator, Label.revoked_at.is_(None)).distinct()))
        return [i for i in ids if i not in mine] + [i for i in ids if i in mine]
    return ids


def labeled_count(session: Session, annotator: str | None = None) -> int:
    """Images with at least one current label (by this annotator when given)."""
    query = select(func.count(func.distinct(Label.image_id))).where(Label.revoked_at.is_(None))
    if annotator:
        query = query.where(Label.annotator == annotator)
    return session.scalar(query) or 0


def annotators(session: Session) -> list[str]:
    return list(session.scalars(select(Label.annotator).distinct().order_by(Label.annotator)))


def get_setting(session: Session, key: str, default: object = None) -> object:
    row = session.get(Setting, key)
    return row.value.get("v", default) if row else default


def set_setting(session: Session, key: str, value: object) -> None:
    row = session.get(Setting, key)
    if row is None:
        session.add(Setting(key=key, value={"v": value}))
    else:
        row.value = {"v": value}
