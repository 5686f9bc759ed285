"""How each labelled meme was chosen: at random, by a model-ranked queue, or otherwise.

Metrics over memes a learner picked (its least sure, its likely toxic) are biased: those memes
are harder, or more toxic, than the collection. Only a random sample estimates how a model does
on the collection. A meme counts as chosen

- `random`: its first label (the earliest label row not undone) came from the random order, an
  exploration pick inside a scored order, a folder or an import (these label whatever they
  hold, whatever any model thinks);
- `active`: from a model-ranked order (unsure, likely-toxic, label-issue, disagree);
- `other`: from an order by name or position (unlabeled first, by file name, a deep link), or
  before label context was recorded (migration 0005).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from workbench.store.labels import RANDOM_ORDERS
from workbench.store.schema import Image, Label

RANDOM, ACTIVE, OTHER = "random", "active", "other"
ACTIVE_ORDERS = frozenset({"unsure", "likely-toxic", "label-issue", "disagree"})
MOSTLY = 0.5  # "mostly chosen actively": more than this share of the labelled memes


def classify(order: str | None, exploration: bool | None) -> str:
    """RANDOM, ACTIVE or OTHER for one label row's context."""
    if exploration or order in RANDOM_ORDERS:
        return RANDOM
    return ACTIVE if order in ACTIVE_ORDERS else OTHER


def how_chosen(session: Session) -> dict[int, str]:
    """{image_id: RANDOM | ACTIVE | OTHER} for every present meme with a label not undone."""
    first = (select(func.min(Label.id)).join(Image, Image.id == Label.image_id)
             .where(Label.revoked_at.is_(None), Image.missing.is_(False)).group_by(Label.image_id))
    rows = session.execute(select(Label.image_id, Label.queue_order, Label.exploration)
                           .where(Label.id.in_(first.scalar_subquery()))).all()
    return {int(image_id): classify(order, exploration) for image_id, order, exploration in rows}


@dataclass(frozen=True)
class ChoiceSummary:
    """How the labelled memes behind a metric were chosen."""

    random: int
    active: int
    other: int

    @property
    def total(self) -> int:
        return self.random + self.active + self.other

    @property
    def mostly_active(self) -> bool:
        return self.total > 0 and self.active / self.total > MOSTLY

    def describe(self) -> str:
        """One plain sentence, with a warning when most labels were chosen actively."""
        if not self.total:
            return "No labelled memes yet."
        text = (f"Of {self.total} labelled memes, {self.random} were chosen at random (random order, exploration "
                f"picks, folders, imports), {self.active} by a model-ranked queue and {self.other} otherwise.")
        if self.mostly_active:
            text += (" Most labels were chosen actively, by a model: metrics over all labels are biased (those memes "
                     "are harder or more toxic than the collection). Restrict to labels chosen at random for an "
                     "unbiased estimate.")
        return text

    def to_dict(self) -> dict[str, object]:
        return {"random": self.random, "active": self.active, "other": self.other, "total": self.total,
                "mostly_active": self.mostly_active, "note": self.describe()}


def summarize(chosen: dict[int, str], image_ids: object = None) -> ChoiceSummary:
    """Counts over `chosen` (how_chosen's result), optionally only over `image_ids`."""
    keep = None if image_ids is None else {int(i) for i in image_ids}  # type: ignore[union-attr]
    counts = Counter(v for k, v in chosen.items() if keep is None or k in keep)
    return ChoiceSummary(counts[RANDOM], counts[ACTIVE], counts[OTHER])


def random_ids(chosen: dict[int, str]) -> set[int]:
    """The memes chosen at random."""
    return {k for k, v in chosen.items() if v == RANDOM}
