"""Adjudication: memes whose people disagree, and a reviewer's decision on them.

The adjudication queue holds memes with current labels from at least k people (k = labels
per meme, workbench.store.overlap) that do not all agree, and without a current
adjudication: ties (no majority) first, then the most split, then by file name.

A decision is stored as an adjudicated label. The latest one per meme that is not undone
outranks every label in the consensus (workbench.store.labels), so the export, the metrics
and the report follow it; undoing it restores the plain consensus. Reviewers and admins
adjudicate (workbench.store.users).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.config import SYSTEM_ANNOTATORS
from workbench.store import users
from workbench.store.db import in_batches
from workbench.store.labels import checked_input
from workbench.store.schema import Adjudication, Image, Label, utcnow


@dataclass(frozen=True)
class Conflict:
    """A meme in the adjudication queue."""

    image_id: int
    path: str
    folder: str
    labels: tuple[tuple[str, str], ...]  # (person, label), current labels, by person

    @property
    def votes(self) -> dict[str, int]:
        return dict(Counter(label for _, label in self.labels))

    @property
    def tie(self) -> bool:
        return len(set(self.votes.values())) == 1

    def to_dict(self) -> dict[str, object]:
        return {"image_id": self.image_id, "path": self.path, "folder": self.folder,
                "labels": [{"annotator": a, "label": lab} for a, lab in self.labels], "votes": self.votes}


def _human_current(session: Session) -> dict[int, dict[str, str]]:
    """image_id -> {person: current label} over every image (plain tuples: 100k rows stay fast)."""
    latest: dict[tuple[int, str], tuple[int, str]] = {}
    rows = session.execute(select(Label.image_id, Label.annotator, Label.label, Label.id).where(
        Label.revoked_at.is_(None), Label.annotator.not_in(SYSTEM_ANNOTATORS)))
    for image_id, annotator, label, label_id in rows:
        prev = latest.get((image_id, annotator))
        if prev is None or label_id > prev[0]:
            latest[(image_id, annotator)] = (label_id, label)
    out: dict[int, dict[str, str]] = {}
    for (image_id, annotator), (_, label) in latest.items():
        out.setdefault(image_id, {})[annotator] = label
    return out


SCAN_ABOVE = 2000  # split memes above which one scan of the images beats IN (...) lookups


def conflicts(session: Session, k: int, folder: str | None = None, limit: int | None = None) -> list[Conflict]:
    """The adjudication queue (module docstring), present images only."""
    decided = decided_ids(session)
    found = [c for c in disputed(session, k, folder) if c.image_id not in decided]
    return found[:limit] if limit else found


def disputed(session: Session, k: int, folder: str | None = None) -> list[Conflict]:
    """Present memes with current labels from at least k people that do not all agree, decided
    or not, in the queue's order. It depends on the labels only, so a page may keep it while
    decisions come and go (conflicts() = these minus decided_ids())."""
    split = {i: people for i, people in _human_current(session).items()
             if len(people) >= k and len(set(people.values())) > 1}
    if not split:
        return []
    query = select(Image.id, Image.path, Image.folder).where(Image.missing.is_(False))
    if folder is not None:
        query = query.where(Image.folder == folder)
    if len(split) > SCAN_ABOVE:
        rows = [r for r in session.execute(query) if r[0] in split]
    else:
        rows = [r for chunk in in_batches(list(split)) for r in session.execute(query.where(Image.id.in_(chunk)))]
    found = [Conflict(i, path, fold, tuple(sorted(split[i].items()))) for i, path, fold in rows]
    found.sort(key=_queue_order)
    return found


def decided_ids(session: Session) -> set[int]:
    """Memes with a current adjudication: any decision that is not undone (workbench.store.labels
    takes the latest of those)."""
    return set(session.scalars(select(Adjudication.image_id).where(Adjudication.revoked_at.is_(None)).distinct()))


def _queue_order(c: Conflict) -> tuple:
    """Ties first, then the most split, then by file name (votes counted once per meme)."""
    counts = c.votes.values()
    return len(set(counts)) != 1, -min(counts), c.path, c.image_id


def adjudicate(session: Session, image_id: int, label: str, reviewer: str, note: str | None = None) -> Adjudication:
    """Store `reviewer`'s decision on a meme (reviewers and admins when sign-in is on)."""
    reviewer = checked_input(session, image_id, label, reviewer, "reviewer")
    users.authorize(session, reviewer, users.ADJUDICATE, "adjudicate", {"image_id": image_id, "label": label})
    row = Adjudication(image_id=image_id, label=label, reviewer=reviewer[:320], note=note or None)
    session.add(row)
    session.flush()
    return row


def undo_adjudication(session: Session, image_id: int, reviewer: str) -> Adjudication | None:
    """Undo the meme's current adjudication (any reviewer's: reviewers correct each other);
    returns it, or None when there was none."""
    users.authorize(session, reviewer, users.ADJUDICATE, "undo adjudication", {"image_id": image_id})
    row = session.scalar(select(Adjudication).where(Adjudication.image_id == image_id, Adjudication.revoked_at.is_(None))
                         .order_by(Adjudication.id.desc()).limit(1))
    if row is not None:
        row.revoked_at = utcnow()
        session.flush()
    return row


@dataclass(frozen=True)
class Decision:
    label: str
    reviewer: str
    note: str | None
    created_at: datetime
    revoked_at: datetime | None


def decisions(session: Session, image_id: int) -> list[Decision]:
    """Every adjudication of a meme, newest first (undone ones included)."""
    rows = session.execute(select(Adjudication.label, Adjudication.reviewer, Adjudication.note, Adjudication.created_at,
                                  Adjudication.revoked_at)
                           .where(Adjudication.image_id == image_id).order_by(Adjudication.id.desc()))
    return [Decision(*r) for r in rows]
