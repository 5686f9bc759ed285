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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from workbench.store.db import fetch_tuples
from workbench.store.labels import RANDOM_ORDERS, followed_codes, followed_map, missing_ids
from workbench.store.schema import Label

RANDOM, ACTIVE, OTHER = "random", "active", "other"
ACTIVE_ORDERS = frozenset({"unsure", "likely-toxic", "label-issue", "disagree"})
MOSTLY = 0.5  # "mostly chosen actively": more than this share of the labelled memes


def classify(order: str | None, exploration: bool | None) -> str:
    """RANDOM, ACTIVE or OTHER for one label row's context."""
    if exploration or order in RANDOM_ORDERS:
        return RANDOM
    return ACTIVE if order in ACTIVE_ORDERS else OTHER


def how_chosen(session: Session) -> dict[int, str]:
    """{image_id: RANDOM | ACTIVE | OTHER} for every present meme with a label not undone.

    Kept per database and brought up to date for the memes labelled or undone since
    (labels.followed_map): at a million memes reading every meme's first label took ~2 s."""
    chosen = followed_map(session, "how chosen", lambda ids: _first_label_choice(session, ids))
    missing = missing_ids(session)
    return {i: c for i, c in chosen.items() if i not in missing} if missing else dict(chosen)


def chosen_codes(session: Session) -> np.ndarray:
    """How each labelled meme was chosen as an int8 array by image id (CHOICE_CODES; -1: no label
    not undone), kept with the labels (labels.followed_codes). Missing memes are not left out."""
    return followed_codes(session, "how chosen", lambda ids: _first_label_choice(session, ids), CHOICE_CODES)


def summarize_ids(session: Session, image_ids: np.ndarray) -> ChoiceSummary:
    """summarize(how_chosen(session), image_ids) from the kept codes: a count, not a look-up per meme."""
    codes = chosen_codes(session)
    ids = np.asarray(image_ids, dtype=np.int64)
    counts = np.bincount(codes[ids[ids < len(codes)]] + 1, minlength=len(CHOICE_CODES) + 1)
    return ChoiceSummary(*(int(counts[CHOICE_CODES[kind] + 1]) for kind in (RANDOM, ACTIVE, OTHER)))


def _first_label_choice(session: Session, image_ids: Sequence[int] | None) -> dict[int, str]:
    first = select(func.min(Label.id)).where(Label.revoked_at.is_(None)).group_by(Label.image_id)
    if image_ids is not None:
        first = first.where(Label.image_id.in_(list(image_ids)))
    # classify() in SQL: one small int per meme instead of a Python call each (860,000 memes)
    kind = case((Label.exploration.is_(True), 0), (Label.queue_order.in_(sorted(RANDOM_ORDERS)), 0),
                (Label.queue_order.in_(sorted(ACTIVE_ORDERS)), 1), else_=2)
    rows = fetch_tuples(session, select(Label.image_id, kind).where(Label.id.in_(first.scalar_subquery())))
    return {int(image_id): _KINDS[k] for image_id, k in rows}


_KINDS = (RANDOM, ACTIVE, OTHER)
CHOICE_CODES = {kind: code for code, kind in enumerate(_KINDS)}


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


def summarize(chosen: dict[int, str], image_ids: Iterable[int] | None = None) -> ChoiceSummary:
    """Counts over `chosen` (how_chosen's result), optionally only over `image_ids` (distinct ids)."""
    if image_ids is None:
        counts = Counter(chosen.values())
    else:  # one look-up per id: a set of 800,000 ids first took 0.2 s
        ids = image_ids.tolist() if isinstance(image_ids, np.ndarray) else image_ids
        counts = Counter(map(chosen.get, ids))
    return ChoiceSummary(counts[RANDOM], counts[ACTIVE], counts[OTHER])


def random_ids(chosen: dict[int, str]) -> set[int]:
    """The memes chosen at random."""
    return {k for k, v in chosen.items() if v == RANDOM}
