"""Overlap: k labels per meme from k different people, and who still needs to label what.

- `labels_per_meme` (k, default 1) is a setting kept in the database; admins change it.
- A meme *needs* annotator A when A has no current label on it and fewer than k people
  have one. People who have the meme on their screen right now (a claim younger than
  CLAIM_TTL) count as if they had labeled it, so people labeling at the same time are
  given different memes until each meme has its k labels. Only people count toward k,
  never the system annotators ('folder', 'import').
- `needed_ids` filters any ordering down to the memes that need A; `still_needed` re-checks
  a few ids when the Label page moves on, so a meme that others finished meanwhile is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from workbench.config import SYSTEM_ANNOTATORS
from workbench.store import users
from workbench.store.id_sets import id_mask
from workbench.store.labels import followed_map, get_setting, labeled_by, raw_column, set_setting
from workbench.store.schema import Label, LabelClaim, utcnow

K_SETTING = "labels_per_meme"
MAX_K = 20
CLAIM_TTL = timedelta(minutes=10)
_HUMAN = "revoked_at IS NULL AND annotator NOT IN (?, ?)"


def labels_per_meme(session: Session) -> int:
    """k: how many different people should label each meme (default 1)."""
    try:
        return max(1, min(MAX_K, int(get_setting(session, K_SETTING, 1) or 1)))
    except (TypeError, ValueError):
        return 1


def set_labels_per_meme(session: Session, k: int, actor: str | None = None) -> None:
    """Change k (admins only), 1..MAX_K."""
    if not 1 <= int(k) <= MAX_K:
        raise ValueError(f"labels per meme must be between 1 and {MAX_K}, not {k}")
    users.authorize(session, actor, users.ADMIN, "labels per meme", {"k": int(k)})
    set_setting(session, K_SETTING, int(k))


def team_queue(k: int) -> bool:
    """Whether the Label page uses the team queue (needed memes only): sign-in on, or k > 1.
    Otherwise it keeps the one-person queue of workbench.store.labels.labeling_queue."""
    return k > 1 or users.signin_enabled()


def full_ids(session: Session, k: int) -> set[int]:
    """Images that already have current labels by at least k different people."""
    return set(_full_array(session, k).tolist())


def _full_array(session: Session, k: int) -> np.ndarray:
    if k <= 1:
        sql = f"SELECT DISTINCT image_id FROM labels WHERE {_HUMAN}"
        return np.array(raw_column(session, sql, SYSTEM_ANNOTATORS), dtype=np.int64)
    ids, counts = people_counts(session)
    return ids[counts >= k]


# Every distinct annotator from the (annotator, ...) index, one index probe per name (a loose
# index scan; the same SQL on SQLite and PostgreSQL) instead of reading every label row.
_ANNOTATORS = ("WITH RECURSIVE a(name) AS (SELECT min(annotator) FROM labels UNION ALL "
               "SELECT (SELECT min(annotator) FROM labels WHERE annotator > a.name) FROM a WHERE a.name IS NOT NULL) "
               "SELECT name FROM a WHERE name IS NOT NULL")


def people_per_image(session: Session) -> dict[int, int]:
    """image_id -> how many different people have a current label on it (labeled images only)."""
    return dict(followed_map(session, "people per image", lambda ids: _people_per_image(session, ids)))


def people_counts(session: Session) -> tuple[np.ndarray, np.ndarray]:
    """people_per_image as arrays: (labeled image ids, sorted; how many people labeled each).

    Kept per database and brought up to date for the memes labelled or undone since
    (labels.followed_map): each new session's team queue needs it, and at a million memes reading
    every person's labels took ~0.2 s."""
    per_image = followed_map(session, "people per image", lambda ids: _people_per_image(session, ids))
    key = str(session.get_bind().engine.url)
    cached = _COUNT_ARRAYS.get(key)
    if cached is None or cached[0] is not per_image:
        ids = np.fromiter(per_image.keys(), dtype=np.int64, count=len(per_image))
        counts = np.fromiter(per_image.values(), dtype=np.int64, count=len(per_image))
        order = np.argsort(ids)
        cached = _COUNT_ARRAYS[key] = (per_image, (ids[order], counts[order]))
    return cached[1]


_COUNT_ARRAYS: dict[str, tuple[dict[int, int], tuple[np.ndarray, np.ndarray]]] = {}


def _people_per_image(session: Session, image_ids: Sequence[int] | None) -> dict[int, int]:
    """image_id -> people with a current label on it, for the images given (a few) or all.

    All: per person, their labeled images from one range of the (annotator, image_id, revoked_at)
    index, counted with numpy: the system annotators' rows (most rows in a folder-labeled project)
    are never read. A million memes with 330,000 people's labels: 0.42 s -> ~0.1 s."""
    if image_ids is not None:
        return {i: len(people) for i, people in human_labelers(session, image_ids).items() if people}
    people = [a for a in raw_column(session, _ANNOTATORS) if a not in SYSTEM_ANNOTATORS]
    parts = [np.array(raw_column(session, "SELECT DISTINCT image_id FROM labels WHERE annotator = ? "
                                          "AND revoked_at IS NULL", (person,)), dtype=np.int64) for person in people]
    ids = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    if not len(ids):
        return {}
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return dict(zip(ids[starts].tolist(), np.diff(np.r_[starts, len(ids)]).tolist()))


def human_labelers(session: Session, image_ids: Sequence[int]) -> dict[int, set[str]]:
    """image_id -> the people with a current label on it (for a few ids)."""
    out: dict[int, set[str]] = {int(i): set() for i in image_ids}
    if not out:
        return out
    rows = session.execute(select(Label.image_id, Label.annotator).distinct().where(
        Label.image_id.in_(list(out)), Label.revoked_at.is_(None), Label.annotator.not_in(SYSTEM_ANNOTATORS)))
    for image_id, annotator in rows:
        out[image_id].add(annotator)
    return out


def _claims_by_others(session: Session, annotator: str, image_ids: Sequence[int] | None = None) -> dict[int, set[str]]:
    query = select(LabelClaim.image_id, LabelClaim.annotator).where(
        LabelClaim.annotator != annotator, LabelClaim.claimed_at >= utcnow() - CLAIM_TTL)
    if image_ids is not None:
        query = query.where(LabelClaim.image_id.in_(list(image_ids)))
    out: dict[int, set[str]] = {}
    for image_id, who in session.execute(query):
        out.setdefault(image_id, set()).add(who)
    return out


def _still_open(labelers: dict[int, set[str]], claims: dict[int, set[str]], annotator: str, k: int) -> set[int]:
    """Of the images in `labelers`: those without a label by `annotator` and with fewer than k
    people counting labels and live claims."""
    return {i for i, people in labelers.items()
            if annotator not in people and len(people | claims.get(i, set())) < k}


def needed_ids(session: Session, ordered_ids: Sequence[int] | np.ndarray, annotator: str, k: int,
               full: np.ndarray | None = None) -> list[int]:
    """`ordered_ids` (any order) without the memes that do not need `annotator` (module docstring);
    `full`: the ids with k people already (people_counts) when the caller has them."""
    ordered = np.asarray(ordered_ids, dtype=np.int64)
    mine = np.array(list(labeled_by(session, annotator)), dtype=np.int64)
    done = np.concatenate([mine, _full_array(session, k) if full is None else full])
    claims = _claims_by_others(session, annotator)
    if claims:
        done_set = set(done.tolist())
        claimed = [i for i in claims if i not in done_set]
        labelers = human_labelers(session, claimed)
        closed = set(claimed) - _still_open(labelers, claims, annotator, k)
        done = np.concatenate([done, np.array(sorted(closed), dtype=np.int64)])
    return ordered[~id_mask(ordered, done)].tolist()


def still_needed(session: Session, image_ids: Sequence[int], annotator: str, k: int) -> list[int]:
    """The ids (in the order given) that still need `annotator` now: a few indexed lookups."""
    labelers = human_labelers(session, image_ids)
    keep = _still_open(labelers, _claims_by_others(session, annotator, image_ids), annotator, k)
    return [i for i in image_ids if i in keep]


def claim(session: Session, image_id: int, annotator: str) -> None:
    """Mark the meme as on `annotator`'s screen now (a lease of CLAIM_TTL); drops expired claims."""
    session.execute(delete(LabelClaim).where(LabelClaim.claimed_at < utcnow() - CLAIM_TTL))
    row = session.get(LabelClaim, (image_id, annotator))
    if row is not None:
        row.claimed_at = utcnow()
        return
    try:
        with session.begin_nested():
            session.add(LabelClaim(image_id=image_id, annotator=annotator[:128]))
    except IntegrityError:  # the same person in a second tab claimed it a moment ago
        pass


def release(session: Session, image_id: int, annotator: str) -> None:
    """Drop `annotator`'s claim on the meme (after skipping it)."""
    session.execute(delete(LabelClaim).where(LabelClaim.image_id == image_id, LabelClaim.annotator == annotator))


def progress(session: Session, k: int, complete: bool = False) -> dict[str, Any]:
    """Team progress: each person's labeled memes and the labels given in all (one index scan);
    with `complete`, also how many memes have their k labels (a scan of the people's labels)."""
    # One range of the (annotator, image_id, revoked_at) index per person: the system annotators'
    # rows are never read (a GROUP BY over every label row took 0.15 s at a million memes).
    people = sorted(a for a in raw_column(session, _ANNOTATORS) if a not in SYSTEM_ANNOTATORS)
    counted = [(a, session.scalar(select(func.count(func.distinct(Label.image_id)))
                                  .where(Label.annotator == a, Label.revoked_at.is_(None))) or 0) for a in people]
    per_person = [(a, n) for a, n in counted if n]
    out: dict[str, Any] = {"k": k, "labels": sum(n for _, n in per_person),
                           "annotators": [{"annotator": a, "labeled": n} for a, n in per_person]}
    if complete:
        out["complete"] = len(full_ids(session, k))
    return out
