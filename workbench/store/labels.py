"""Labels: add, undo, current label per annotator, consensus, and the labeling queue.

Consensus rule (used by exports, metrics, the gallery and the report):
1. a current adjudication (a reviewer's latest decision on the meme, not undone; see
   workbench.store.adjudication) decides;
2. otherwise human annotators outrank the system annotators ('folder', 'import'), and among
   the current labels of the outranking group the majority wins; a tie goes to the most
   recent of the tied labels.

When sign-in is on (workbench.store.users), a label's annotator is the signed-in user and
must hold a role; the system annotators are written only by scans and imports, which are
admin actions themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import numpy as np
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from workbench.config import DATASET_ANNOTATOR_PREFIX, LABELS, SYSTEM_ANNOTATORS
from workbench.store import users
from workbench.store.db import fetch_tuples, in_batches
from workbench.store.id_sets import id_mask
from workbench.store.schema import Adjudication, Image, Label, Setting, utcnow

T = TypeVar("T")


class LabelError(ValueError):
    pass


@dataclass(frozen=True)
class CurrentLabel:
    image_id: int
    annotator: str
    label: str
    created_at: datetime
    label_id: int


def checked_input(session: Session, image_id: int, label: str, person: str, role: str = "annotator") -> str:
    """LabelError unless `label` is a label, `person` a name and `image_id` an image; the name, trimmed."""
    if label not in LABELS:
        raise LabelError(f"label must be one of {', '.join(LABELS)}, not {label!r}")
    person = (person or "").strip()
    if not person:
        raise LabelError(f"{role} name is required")
    if session.get(Image, image_id) is None:
        raise LabelError(f"no image with id {image_id}")
    return person


@dataclass(frozen=True)
class LabelContext:
    """How a labelled meme was chosen and what was shown with it (stored on the label row).

    `order` is the queue order ("unsure", "random", ...) or the label's origin ("folder",
    "import"); `exploration` marks a random pick inside an active order; `suggestion` /
    `suggestion_prob` are the learner's class and P(toxic) for the meme at that moment, and
    `suggestion_shown` whether the page showed them to the annotator."""

    order: str | None = None
    rank: int | None = None
    score: float | None = None
    exploration: bool | None = None
    suggestion: str | None = None
    suggestion_prob: float | None = None
    suggestion_shown: bool | None = None
    seconds_spent: float | None = None


# Orders whose picks do not depend on any model: labels chosen this way are a random sample
# (folder labels and imports label whatever they hold, independent of any learner).
RANDOM_ORDERS = frozenset({"random", "folder", "import"})


def add_label(session: Session, image_id: int, label: str, annotator: str, note: str | None = None,
              context: LabelContext | None = None) -> Label:
    """Record `annotator`'s label for an image (a new row; history is kept), with how the
    meme was chosen when the caller knows it."""
    annotator = checked_input(session, image_id, label, annotator)
    if annotator not in SYSTEM_ANNOTATORS and not annotator.startswith(DATASET_ANNOTATOR_PREFIX):
        users.require(session, annotator, users.LABEL)  # sign-in on: the annotator is a user with a role
    c = context or LabelContext()
    row = Label(image_id=image_id, label=label, annotator=annotator[:128], note=(note or None),
                queue_order=(c.order or None) and c.order[:32], queue_rank=c.rank, queue_score=c.score,
                exploration=c.exploration, suggestion=c.suggestion, suggestion_prob=c.suggestion_prob,
                suggestion_shown=c.suggestion_shown, seconds_spent=c.seconds_spent)
    session.add(row)
    session.flush()
    return row


def undo_last(session: Session, annotator: str, image_id: int | None = None) -> Label | None:
    """Revoke the annotator's latest label (on one image, or overall); returns it, or None."""
    if annotator not in SYSTEM_ANNOTATORS:
        users.require(session, annotator, users.LABEL)
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


def _decide(group: Sequence[tuple[str, str, int]], adjudicated: str | None = None) -> str | None:
    """The consensus rule over (annotator, label, label_id) current labels of one image."""
    if adjudicated is not None:
        return adjudicated
    if not group:
        return None
    human = [g for g in group if g[0] not in SYSTEM_ANNOTATORS]
    voters = human or group
    counts = Counter(g[1] for g in voters)
    best = max(counts.values())
    tied = {lab for lab, n in counts.items() if n == best}
    if len(tied) == 1:
        return tied.pop()
    return max((g for g in voters if g[1] in tied), key=lambda g: g[2])[1]  # tie: the most recent label


def consensus_from(labels: Sequence[CurrentLabel], adjudicated: str | None = None) -> str | None:
    """Apply the consensus rule to one image's current labels (and its adjudicated label, if any)."""
    return _decide([(c.annotator, c.label, c.label_id) for c in labels], adjudicated)


def adjudicated_labels(session: Session, image_ids: Sequence[int] | None = None) -> dict[int, str]:
    """image_id -> the label of its current adjudication (latest, not undone), where it has one."""
    latest = select(func.max(Adjudication.id)).where(Adjudication.revoked_at.is_(None)).group_by(Adjudication.image_id)
    if image_ids is not None:
        latest = latest.where(Adjudication.image_id.in_(list(image_ids)))
    rows = session.execute(select(Adjudication.image_id, Adjudication.label)
                           .where(Adjudication.id.in_(latest.scalar_subquery()))).all()
    return {i: lab for i, lab in rows}


def _consensus_query(session: Session, image_ids: Sequence[int] | None) -> dict[int, str]:
    """The consensus rule (module docstring) over every labelled image, or those given, in numpy:
    the same rule as _decide (tests hold them equal); a million labels took 7 s one image at a time."""
    # Plain tuples with the label and the kind of annotator as small ints, straight from the cursor.
    query = select(Label.image_id, Label.annotator, case((Label.label == LABELS[0], 1), else_=0),
                   case((Label.annotator.in_(SYSTEM_ANNOTATORS), 0), else_=1), Label.id).where(
        Label.revoked_at.is_(None), Label.label.in_(LABELS))
    if image_ids is not None:
        query = query.where(Label.image_id.in_(list(image_ids)))
    rows = fetch_tuples(session, query)
    decided = adjudicated_labels(session, image_ids)
    out: dict[int, str] = {}
    if rows:
        n = len(rows)
        image = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        names: dict[str, int] = {}
        person = np.fromiter((names.setdefault(r[1], len(names)) for r in rows), dtype=np.int64, count=n)
        toxic = np.fromiter((r[2] for r in rows), dtype=np.int8, count=n)
        human = np.fromiter((r[3] for r in rows), dtype=bool, count=n)
        label_id = np.fromiter((r[4] for r in rows), dtype=np.int64, count=n)
        # Each (image, annotator)'s newest label: the last of its run after sorting by (image, annotator, id).
        order = np.lexsort((label_id, person, image))
        image, person, toxic, human, label_id = image[order], person[order], toxic[order], human[order], label_id[order]
        newest = np.r_[(image[1:] != image[:-1]) | (person[1:] != person[:-1]), True]
        image, toxic, human, label_id = image[newest], toxic[newest], human[newest], label_id[newest]
        ids, slot = np.unique(image, return_inverse=True)
        # People outrank the system annotators: where an image has a person's label, only people vote.
        with_person = np.bincount(slot, weights=human, minlength=len(ids)) > 0
        votes = human | ~with_person[slot]
        slot, toxic, label_id = slot[votes], toxic[votes], label_id[votes]
        n_toxic = np.bincount(slot, weights=toxic, minlength=len(ids))
        n_neutral = np.bincount(slot, weights=1 - toxic, minlength=len(ids))
        # A tie goes to the newest vote: the last per image after sorting by (image, id).
        last = np.lexsort((label_id, slot))
        at_end = np.r_[slot[last][1:] != slot[last][:-1], True]
        newest_toxic = np.zeros(len(ids), dtype=bool)
        newest_toxic[slot[last][at_end]] = toxic[last][at_end] == 1
        is_toxic = (n_toxic > n_neutral) | ((n_toxic == n_neutral) & newest_toxic)
        out = dict(zip(ids.tolist(), np.where(is_toxic, LABELS[0], LABELS[1]).tolist()))
    out.update(decided)  # an adjudication decides, even where every label has since been undone
    return out


# Maps over every labelled image (the consensus, how each was chosen) by (DB URL, name), valid
# while the labels table's fingerprint is unchanged; new labels and undos since are applied to the
# cached map (followed_map), anything else recomputes it. The fingerprint covers inserts, deletes
# and undos (revoked_at) — and the timestamps, so a rolled-back write followed by another write
# cannot look like the state that was cached.
# Each entry: (fingerprint, map, anchor, how it was made: (the fingerprint it was updated from, the
# images touched) after an update, None after a full computation).
_FOLLOWED: dict[tuple[str, str], tuple[tuple, dict, object, tuple[tuple, set[int]] | None]] = {}
# followed_codes: (fingerprint, array by image id) by (DB URL, name)
_CODES: dict[tuple[str, str], tuple[tuple, np.ndarray]] = {}


def labels_fingerprint(session: Session) -> tuple:
    """Changes whenever labels or adjudications do: new rows, undos, deletions (index ends and
    small counts)."""
    decisions = session.execute(select(func.max(Adjudication.id), func.count(), func.count(Adjudication.revoked_at),
                                       func.max(Adjudication.revoked_at))).one()
    return (*label_rows_version(session), *decisions)


def label_rows_version(session: Session) -> tuple:
    """Changes whenever label rows do (new rows, undos, deletions), not with adjudications."""
    # One scalar subquery per number: each max reads one end of its index (migrations 0006, 0007:
    # the revoked_at index holds undone rows only, hence their WHERE) and the undone count one small
    # range; a single SELECT of all five scanned every label row (0.28 s at 1M).
    def one(expr, *where):  # noqa: ANN001, ANN202
        return select(expr).select_from(Label).where(*where).scalar_subquery()

    return tuple(session.execute(select(
        one(func.max(Label.id)), one(func.count()), one(func.count(), Label.revoked_at.is_not(None)),
        one(func.max(Label.created_at)), one(func.max(Label.revoked_at), Label.revoked_at.is_not(None)))).one())


def consensus_labels(session: Session, image_ids: Sequence[int] | None = None) -> dict[int, str]:
    """image_id -> consensus label, for every labeled image (or those given).

    The full map is cached per database and follows the labels (followed_map), so the gallery
    and the home page stay fast at 10,000+ images.
    """
    if image_ids is not None:
        ids = list(image_ids)
        out: dict[int, str] = {}
        for chunk in in_batches(ids):
            out.update(_consensus_query(session, chunk))
        return out
    return dict(followed_map(session, "consensus", lambda ids: _consensus_query(session, ids)))  # as consensus_codes


def followed_map(session: Session, name: str, compute: Callable[[Sequence[int] | None], dict[int, T]]) -> dict[int, T]:
    """A map over labelled images (compute(None): all of them; compute(ids): those images), cached
    per database and `name` while the labels' fingerprint is unchanged. New labels and undos since
    are applied by computing only the images they touched (a million labels: ~7 s in full, a few ms
    per new label); any other change (adjudications, deletions, a rolled-back write) computes all.
    The map returned is the cache's own: do not change it."""
    key = (str(session.get_bind().engine.url), name)  # .engine: works for Engine and Connection binds
    fingerprint = labels_fingerprint(session)
    cached = _FOLLOWED.get(key)
    if cached is None or cached[0] != fingerprint:
        touched = _touched_since(session, cached, fingerprint) if cached is not None else None
        if touched is None:
            found, made = compute(None), None
        else:
            found, made = dict(cached[1]), (cached[0], touched)
            for image_id in touched:
                found.pop(image_id, None)
            for chunk in in_batches(sorted(touched)):
                found.update(compute(chunk))
        cached = _FOLLOWED[key] = (fingerprint, found, _anchor(session, fingerprint[0]), made)
    return cached[1]  # type: ignore[return-value]


def followed_codes(session: Session, name: str, compute: Callable[[Sequence[int] | None], dict[int, T]],
                   codes: dict[T, int]) -> np.ndarray:
    """followed_map(session, name, compute) as a read-only int8 array indexed by image id: -1 where
    the map has no entry, else codes[value]. Kept with the map: after an update for a few memes only
    those are coded again (a million entries: ~0.2 s in full; the Dashboard reads the truth so)."""
    found = followed_map(session, name, compute)
    key = (str(session.get_bind().engine.url), name)
    fingerprint, _map, _anchor_value, made = _FOLLOWED[key]
    cached = _CODES.get(key)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    if cached is not None and made is not None and made[0] == cached[0]:
        touched = sorted(made[1])
        dense = np.full(max(len(cached[1]), touched[-1] + 1 if touched else 0), -1, dtype=np.int8)
        dense[:len(cached[1])] = cached[1]
        for image_id in touched:
            value = found.get(image_id)
            dense[image_id] = -1 if value is None else codes[value]
    else:
        ids = np.fromiter(found.keys(), dtype=np.int64, count=len(found))
        dense = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int8)
        dense[ids] = np.fromiter((codes[v] for v in found.values()), dtype=np.int8, count=len(found))
    dense.flags.writeable = False  # shared by every caller
    _CODES[key] = (fingerprint, dense)
    return dense


def consensus_codes(session: Session) -> np.ndarray:
    """The consensus of every labelled image as followed_codes: 1 toxic, 0 non_toxic, -1 none."""
    return followed_codes(session, "consensus", lambda ids: _consensus_query(session, ids), _TRUE)


_TRUE = {LABELS[0]: 1, LABELS[1]: 0}  # analysis.metrics.TRUE_CODES (the store cannot import it)


def _anchor(session: Session, label_id: int | None) -> object:
    """created_at of the label with this id (the cache's newest): tells a rolled-back label whose id was reused."""
    return session.scalar(select(Label.created_at).where(Label.id == label_id)) if label_id is not None else None


def _touched_since(session: Session, cached: tuple, fingerprint: tuple) -> set[int] | None:
    """The images whose labels were added or undone since the cached fingerprint, or None when the
    change is anything else (adjudications, deletions, a rolled-back write)."""
    old, anchor = cached[0], cached[2]
    old_max, old_count, old_revoked, _, old_max_revoked = old[:5]
    new_max, new_count, new_revoked = fingerprint[:3]
    if old[5:] != fingerprint[5:] or old_max is None or new_max is None or new_max < old_max:
        return None
    if _anchor(session, old_max) != anchor:
        return None
    added = list(session.scalars(select(Label.image_id).where(Label.id > old_max)))
    if len(added) != new_count - old_count:
        return None
    if new_revoked == old_revoked:
        if fingerprint[4] != old_max_revoked:
            return None
        undone: list[int] = []
    else:  # undos stamp revoked_at now: the new ones are those after the newest one cached
        undone_query = select(Label.image_id).where(Label.revoked_at.is_not(None))
        if old_max_revoked is not None:
            undone_query = undone_query.where(Label.revoked_at > old_max_revoked)
        undone = list(session.scalars(undone_query))
        if len(undone) != new_revoked - old_revoked:
            return None
    return set(added) | set(undone)


def label_history(session: Session, image_id: int) -> list[Label]:
    """Every label row of an image, newest first (revoked ones included)."""
    return list(session.scalars(select(Label).where(Label.image_id == image_id).order_by(Label.id.desc())))


QUEUE_ORDERS = ("unlabeled first", "random", "by file name")


def labeling_queue(session: Session, annotator: str, order: str = "unlabeled first", seed: int = 0,
                   folder: str | None = None) -> list[int]:
    """Image ids in the order the labeling page walks them (one person, no overlap setting;
    workbench.store.overlap builds the team queue).

    'unlabeled first': images this annotator has not labeled (by file name), then the rest.
    """
    ids = present_array(session, folder)
    if order == "random":
        return shuffled(ids, seed).tolist()
    if order == "unlabeled first":
        mine = id_mask(ids, labeled_by(session, annotator))
        return np.concatenate([ids[~mine], ids[mine]]).tolist()
    return ids.tolist()


def shuffled(ids: np.ndarray, seed: int) -> np.ndarray:
    """`ids` in a random order that the seed repeats (the random queues; a Python shuffle of a
    million ids took 0.4 s)."""
    return ids[np.random.default_rng(seed).permutation(len(ids))]


def raw_column(session: Session, sql: str, params: Sequence[object] = ()) -> list:
    """The first column of a plain SQL query with `?` placeholders, read straight from the DB-API
    cursor: no per-row objects, ~2-3x faster at 100,000 rows (the Label page's queue)."""
    conn = session.connection()
    if conn.dialect.paramstyle in ("format", "pyformat"):
        sql = sql.replace("?", "%s")
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, tuple(params))
        return [row[0] for row in cursor.fetchall()]
    finally:
        cursor.close()


IMAGES_VERSION = "images_version"  # bumped by every scan: paths and the missing flags may have changed
# What the pages read of the images table (present ids by file name, their count, the folders),
# by (database, what), valid while (max image id, IMAGES_VERSION) is unchanged: images are never
# deleted, new ones raise the max id, and only scans move files or mark them missing. At a
# million memes the ids take ~0.5 s to read, the count and the folders ~70 ms each at every
# rerun of a page; the check takes ~1 ms.
_BY_IMAGES: dict[tuple, tuple[tuple, object]] = {}
_BY_IMAGES_MAX = 16


def images_changed(session: Session) -> None:
    """Record that image paths or missing flags changed (scans call it): the cached reads are redone."""
    set_setting(session, IMAGES_VERSION, int(get_setting(session, IMAGES_VERSION, 0) or 0) + 1)  # type: ignore[arg-type]


def images_fingerprint(session: Session) -> tuple:
    """(max image id, IMAGES_VERSION): changes when an image is added or a scan runs."""
    return session.scalar(select(func.max(Image.id))), get_setting(session, IMAGES_VERSION, 0)


def cached_by_images(session: Session, what: tuple, compute: Callable[[], T]) -> T:
    """compute(), cached per database and `what` while no image was added and no scan ran."""
    key = (str(session.get_bind().engine.url), *what)
    fingerprint = images_fingerprint(session)
    cached = _BY_IMAGES.get(key)
    if cached is None or cached[0] != fingerprint:
        if len(_BY_IMAGES) >= _BY_IMAGES_MAX and key not in _BY_IMAGES:
            _BY_IMAGES.pop(next(iter(_BY_IMAGES)))
        cached = _BY_IMAGES[key] = (fingerprint, compute())
    return cached[1]  # type: ignore[return-value]


def present_array(session: Session, folder: str | None = None) -> np.ndarray:
    """Ids of present images (in one folder when given), by file name, as a read-only int64 array:
    one covering index scan, cached (cached_by_images)."""
    def read() -> np.ndarray:
        if folder is None:
            ids = raw_column(session, "SELECT id FROM images WHERE missing = ? ORDER BY path, id", (False,))
        else:
            ids = raw_column(session, "SELECT id FROM images WHERE missing = ? AND folder = ? ORDER BY path, id",
                             (False, folder))
        array = np.array(ids, dtype=np.int64)
        array.flags.writeable = False  # shared by every caller
        return array

    return cached_by_images(session, ("present", folder), read)


def missing_ids(session: Session) -> frozenset[int]:
    """Ids of the images whose file was missing at the last scan (cached as present_array)."""
    return cached_by_images(session, ("missing",), lambda: frozenset(
        raw_column(session, "SELECT id FROM images WHERE missing = ?", (True,))))


def present_ids(session: Session, folder: str | None = None) -> list[int]:
    """present_array as a new list."""
    return present_array(session, folder).tolist()


def labeled_by(session: Session, annotator: str) -> set[int]:
    """Ids of the images that carry a current label by `annotator`."""
    return set(raw_column(session, "SELECT DISTINCT image_id FROM labels WHERE annotator = ? AND revoked_at IS NULL",
                          (annotator,)))


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
