"""Near-duplicate groups from the stored perceptual hashes (and CLIP image embeddings where cached).

1. Candidates, indexed (multi-index hashing, never all pairs): every image's 64-bit keys (one
   per crop level) are cut into 16-bit windows at every 8th bit (eight overlapping windows: with
   four disjoint chunks 1.2 % of cropped reposts shared none, with eight 0.3 %); two images are
   candidates when any of their keys share a window at the same position. Keys on the same
   window value sit next to each other once sorted, so the pairs come from a few vectorised
   passes over sorted arrays. A window value shared by more than MAX_BUCKET keys says nothing
   (flat skies, white borders) and is skipped. Past MAX_DENSITY keys per 16-bit value on average
   (~100,000 images) the windows widen (window_bits), so the candidates grow with the number of
   images, not with its square: 16-bit windows over a million images would give ~1.5 billion
   candidate pairs of unrelated images.
2. Check: the fraction of differing bits of the 256-bit pHashes, the smallest over the crop-level
   pairs in which one side is the whole image (a crop of the other); at most `threshold` joins.
3. Second signal, where CLIP image embeddings are cached for both images: a cosine below
   `veto_cosine` keeps a pair apart; a pair just past the threshold (by at most `slack`) joins
   when the cosine is at least `confirm_cosine`.
4. Groups: joined pairs are merged closest first, never merging two sets that hold a pair people
   marked "not duplicates" (DistinctPair). Flat images (no detail) never join.

Groups are stored with the parameters that made them. A re-grouping keeps a group whose members
are unchanged (same id), adds new ones and marks vanished ones superseded; nothing is deleted,
so a group whose member's file was deleted keeps its history (its hashes stay stored).

`regroup` reads the hashes in a short read-only session, finds the groups with no transaction
open, and stores them in one short write transaction: a grouping of 100,000 hashes (~20 s)
never holds SQLite's write lock while it computes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from workbench.features.embeddings import from_blob
from workbench.features.image_hashes import CROP_LEVELS, LONG_BITS, HashTable, hash_fingerprint, load_hash_table
from workbench.store import users
from workbench.store.db import in_batches, read_scope, session_scope
from workbench.store.schema import DistinctPair, DuplicateGroup, DuplicateMember, Embedding, utcnow

CHUNK_BITS = 16
CHUNK_STEP = 8  # windows overlap by half
MAX_BUCKET = 256  # keys per chunk value above which the value is uninformative
MAX_DENSITY = 8  # keys per window value on average, at most: wider windows beyond (window_bits)
THRESHOLD_RANGE = (0.02, 0.40)  # beyond 0.40 unrelated images start to match (random pairs differ in ~0.5)
DEFAULT_THRESHOLD = 0.25  # measured: reposts <= 0.19, different memes >= 0.30 (README)
VERIFY_BATCH = 100_000


class GroupingError(ValueError):
    """Parameters out of range, or a group that cannot be changed; str() says why."""


@dataclass(frozen=True)
class GroupingParams:
    """What decides whether two images join (see the module docstring)."""

    threshold: float = DEFAULT_THRESHOLD
    use_embeddings: bool = True
    confirm_cosine: float = 0.95
    veto_cosine: float = 0.70
    slack: float = 0.06

    def __post_init__(self) -> None:
        lo, hi = THRESHOLD_RANGE
        if not lo <= self.threshold <= hi:
            raise GroupingError(f"threshold must be between {lo} and {hi} (the fraction of differing hash bits; "
                                f"default {DEFAULT_THRESHOLD}), not {self.threshold}")
        for name in ("confirm_cosine", "veto_cosine"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise GroupingError(f"{name} must be a cosine between -1 and 1, not {getattr(self, name)}")
        if self.veto_cosine > self.confirm_cosine:
            raise GroupingError("veto_cosine must not exceed confirm_cosine")
        if not 0.0 <= self.slack <= 0.1 or self.threshold + self.slack > 0.45:
            raise GroupingError(f"slack must be between 0 and 0.1 and threshold + slack at most 0.45, not {self.slack}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- candidates and checks

def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique of a 1-d integer array by sorting: numpy 2.4's np.unique hashes integers and took
    ~4.6 s for 5 million int64 where a sort takes 0.08 s (the candidates step at a million images)."""
    out = np.sort(values)
    return out[np.r_[True, out[1:] != out[:-1]]] if len(out) else out


def window_bits(n_keys: int) -> int:
    """Window width for `n_keys` keys: CHUNK_BITS up to MAX_DENSITY keys per value on average,
    then as wide as keeps that density (at most 32 bits)."""
    if n_keys <= MAX_DENSITY << CHUNK_BITS:
        return CHUNK_BITS
    return min(32, math.ceil(math.log2(n_keys / MAX_DENSITY)))


def candidate_pairs(short: np.ndarray, usable: np.ndarray | None = None) -> np.ndarray:
    """Row pairs [m, 2] (a < b) whose 64-bit keys share a window (window_bits wide) at the same
    position at any crop levels; rows where `usable` is False take no part."""
    n, levels = short.shape
    rows = np.arange(n) if usable is None else np.flatnonzero(usable)
    if len(rows) < 2:
        return np.zeros((0, 2), np.int64)
    owner = np.repeat(rows, levels).astype(np.int64)
    keys = short[rows].reshape(-1)
    bits = window_bits(len(keys))
    found: list[np.ndarray] = []  # pairs as a * n + b (a < b): 8 bytes each
    for shift in range(0, 64, CHUNK_STEP):
        rotated = keys if shift == 0 else (keys >> np.uint64(shift)) | (keys << np.uint64(64 - shift))
        chunk = (rotated & np.uint64((1 << bits) - 1)).astype(np.int64)
        code = sorted_unique(chunk * n + owner)  # one entry per (window value, image), sorted by value then image
        value, image = code // n, code % n
        starts = np.flatnonzero(np.r_[True, value[1:] != value[:-1]])
        sizes = np.diff(np.r_[starts, len(value)])
        keep = np.repeat(sizes <= MAX_BUCKET, sizes)
        value, image = value[keep], image[keep]
        longest = int(sizes[sizes <= MAX_BUCKET].max(initial=0))
        for offset in range(1, longest):
            same = value[offset:] == value[:-offset]
            if not same.any():
                break
            found.append(image[:-offset][same] * n + image[offset:][same])
    codes = sorted_unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    return np.stack([codes // n, codes % n], axis=1)


def pair_distances(long: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Fraction of differing bits of the 256-bit hashes per row pair: the smallest over the
    crop-level pairs in which one side is the whole image (level 0)."""
    out = np.empty(len(pairs), np.float64)
    for start in range(0, len(pairs), VERIFY_BATCH):
        a, b = long[pairs[start:start + VERIFY_BATCH, 0]], long[pairs[start:start + VERIFY_BATCH, 1]]
        whole_a = np.bitwise_count(a[:, :1, :] ^ b).sum(axis=2)  # a whole vs each crop of b
        whole_b = np.bitwise_count(a ^ b[:, :1, :]).sum(axis=2)  # each crop of a vs b whole
        out[start:start + len(a)] = np.minimum(whole_a.min(axis=1), whole_b.min(axis=1)) / LONG_BITS
    return out


def pair_cosines(image_ids: np.ndarray, pairs: np.ndarray, vectors: dict[int, np.ndarray]) -> np.ndarray:
    """Cosine of the two images' embeddings per row pair (nan where either has none)."""
    out = np.full(len(pairs), np.nan)
    for k, (a, b) in enumerate(pairs.tolist()):
        va, vb = vectors.get(int(image_ids[a])), vectors.get(int(image_ids[b]))
        if va is not None and vb is not None:
            out[k] = float(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-12))
    return out


# ---------------------------------------------------------------- grouping

@dataclass
class FoundGroup:
    """A group found by `find_groups`: image ids with each one's closest link (distance, cosine)."""

    members: dict[int, tuple[float, float | None]]

    @property
    def key(self) -> frozenset[int]:
        return frozenset(self.members)


@dataclass
class GroupingResult:
    groups: list[FoundGroup]
    params: dict[str, Any]
    n_hashes: int = 0
    n_candidates: int = 0
    n_joined_pairs: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    edges: list[tuple[int, int, float, float | None]] = field(default_factory=list, repr=False)  # joined pairs


def merge_pairs(edges: Sequence[tuple[int, int, float, float | None]],
                cannot: Iterable[tuple[int, int]] = ()) -> list[FoundGroup]:
    """Merge (a, b, distance, cosine) links closest first into groups of two or more, never
    putting two images of a `cannot` pair into one group."""
    parent: dict[int, int] = {}
    members: dict[int, set[int]] = {}
    forbidden: dict[int, set[int]] = {}
    partners: dict[int, set[int]] = {}
    for a, b in cannot:
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    link: dict[int, tuple[float, float | None]] = {}

    def find(x: int) -> int:
        if x not in parent:
            parent[x], members[x], forbidden[x] = x, {x}, set(partners.get(x, ()))
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, dist, cos in sorted(edges, key=lambda e: (e[2], e[0], e[1])):
        ra, rb = find(a), find(b)
        if ra == rb or members[rb] & forbidden[ra]:
            continue
        if len(members[ra]) < len(members[rb]):
            ra, rb = rb, ra
        parent[rb] = ra
        members[ra] |= members.pop(rb)
        forbidden[ra] |= forbidden.pop(rb)
        for x in (a, b):
            if x not in link or dist < link[x][0]:
                link[x] = (dist, cos)
    groups = [FoundGroup({i: link[i] for i in sorted(m)}) for m in members.values() if len(m) > 1]
    return sorted(groups, key=lambda g: min(g.members))


def find_groups(table: HashTable, params: GroupingParams, vectors: dict[int, np.ndarray] | None = None,
                cannot: Iterable[tuple[int, int]] = ()) -> GroupingResult:
    """Near-duplicate groups among the hashed images (pure: arrays in, groups out)."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    pairs = candidate_pairs(table.short, ~table.flat)
    timings["candidates_s"] = time.perf_counter() - t0
    dist = pair_distances(table.long, pairs)
    keep = dist <= params.threshold + (params.slack if vectors else 0.0)
    pairs, dist = pairs[keep], dist[keep]
    cos = pair_cosines(table.image_ids, pairs, vectors) if vectors else np.full(len(pairs), np.nan)
    joined = ((dist <= params.threshold) & ~(cos < params.veto_cosine)) | (cos >= params.confirm_cosine)
    timings["check_s"] = time.perf_counter() - t0 - timings["candidates_s"]
    ids = table.image_ids
    edges = [(int(ids[a]), int(ids[b]), float(d), None if np.isnan(c) else float(c))
             for (a, b), d, c in zip(pairs[joined].tolist(), dist[joined], cos[joined])]
    groups = merge_pairs(edges, cannot)
    seconds = time.perf_counter() - t0
    timings["merge_s"] = seconds - timings["candidates_s"] - timings["check_s"]
    return GroupingResult(groups, params.to_dict(), len(table), int(keep.size), len(edges), seconds, timings, edges)


# ---------------------------------------------------------------- storage

def clip_image_vectors(session: Session) -> tuple[str | None, dict[int, np.ndarray]]:
    """The most complete cached CLIP image embedding set: (its fingerprint, image_id -> vector)."""
    row = session.execute(select(Embedding.fingerprint, func.count()).where(Embedding.kind == "clip-image")
                          .group_by(Embedding.fingerprint).order_by(func.count().desc(), Embedding.fingerprint)
                          .limit(1)).first()
    if row is None:
        return None, {}
    rows = session.execute(select(Embedding.image_id, Embedding.dim, Embedding.vector)
                           .where(Embedding.fingerprint == row[0])).all()
    return row[0], {i: from_blob(blob, dim) for i, dim, blob in rows}


def distinct_pairs(session: Session) -> set[tuple[int, int]]:
    """Every pair people marked "not duplicates" (smaller id first)."""
    return {(a, b) for a, b in session.execute(select(DistinctPair.image_a, DistinctPair.image_b))}


@dataclass(frozen=True)
class SavedGrouping:
    """What `save_groups` changed."""

    created: list[int]
    kept: list[int]
    superseded: list[int]

    def describe(self) -> str:
        return (f"{len(self.created) + len(self.kept)} groups ({len(self.created)} new, {len(self.kept)} unchanged), "
                f"{len(self.superseded)} no longer found")


def active_groups(session: Session) -> dict[int, set[int]]:
    """group id -> member image ids of every active group."""
    out: dict[int, set[int]] = {}
    for gid, image_id in session.execute(select(DuplicateMember.group_id, DuplicateMember.image_id)
                                         .join(DuplicateGroup, DuplicateGroup.id == DuplicateMember.group_id)
                                         .where(DuplicateGroup.status == "active")):
        out.setdefault(gid, set()).add(image_id)
    return out


def save_groups(session: Session, groups: Sequence[FoundGroup], params: dict[str, Any]) -> SavedGrouping:
    """Store a grouping: unchanged groups keep their id, new ones are added with `params`,
    active groups not found again are marked superseded (never deleted)."""
    now = utcnow()
    current = {frozenset(m): gid for gid, m in active_groups(session).items()}
    found = {g.key: g for g in groups}
    created, kept = [], []
    for key, group in found.items():
        gid = current.get(key)
        if gid is not None:
            session.get(DuplicateGroup, gid).seen_at = now
            kept.append(gid)
            continue
        row = DuplicateGroup(status="active", params=params, created_at=now, seen_at=now)
        session.add(row)
        session.flush()
        session.add_all(DuplicateMember(group_id=row.id, image_id=i, distance=d, cosine=c)
                        for i, (d, c) in group.members.items())
        created.append(row.id)
    superseded = sorted(gid for key, gid in current.items() if key not in found)
    for gid in superseded:
        row = session.get(DuplicateGroup, gid)
        row.status, row.closed_at = "superseded", now
    session.flush()
    return SavedGrouping(sorted(created), sorted(kept), superseded)


@dataclass
class GroupingInputs:
    """What a grouping reads: the hashes, the CLIP image vectors (when used) and the "not duplicates" pairs."""

    table: HashTable
    embedding: str | None
    vectors: dict[int, np.ndarray]
    cannot: set[tuple[int, int]]


def grouping_inputs(session: Session, params: GroupingParams) -> GroupingInputs:
    """Read what `find_groups` needs (reads only)."""
    emb_fp, vectors = clip_image_vectors(session) if params.use_embeddings else (None, {})
    return GroupingInputs(load_hash_table(session), emb_fp if vectors else None, vectors, distinct_pairs(session))


def store_grouping(session: Session, result: GroupingResult, cannot_read: set[tuple[int, int]]) -> SavedGrouping:
    """Store a grouping computed on inputs read earlier: when someone marked a group "not duplicates"
    since then, the same links are merged again with their pairs kept apart (cheap, no hashes read)."""
    cannot_now = distinct_pairs(session)
    if cannot_now != cannot_read:
        result.groups = merge_pairs(result.edges, cannot_now)
    return save_groups(session, result.groups, result.params)


def regroup(db_url: str, params: GroupingParams, actor: str | None = None) -> tuple[GroupingResult, SavedGrouping]:
    """Group every stored hash of the current config and store the groups (the step after hashing):
    read in a read-only session, compute with none open, write in one short transaction.
    Admins only when sign-in is on (`actor`: workbench.store.users.authorize), checked first."""
    with session_scope(db_url) as session:
        users.require(session, actor, users.ADMIN)
    with read_scope(db_url) as session:
        inputs = grouping_inputs(session, params)
    result = find_groups(inputs.table, params, inputs.vectors or None, inputs.cannot)
    result.params.update(hash=hash_fingerprint(), crop_levels=list(CROP_LEVELS), embedding=inputs.embedding)
    with session_scope(db_url) as session:
        users.authorize(session, actor, users.ADMIN, "regroup",
                        {"threshold": params.threshold, "embeddings": params.use_embeddings})
        return result, store_grouping(session, result, inputs.cannot)


def dismiss_group(session: Session, group_id: int, annotator: str, actor: str | None = None) -> int:
    """Mark an active group "not duplicates": its pairs are remembered and never grouped again.
    Returns how many pairs were recorded. A decision about the data, not a label: reviewers and
    admins only when sign-in is on (`actor`: workbench.store.users.authorize), recorded."""
    annotator = (annotator or "").strip()[:128]
    if not annotator:
        raise GroupingError("annotator name is required")
    users.authorize(session, actor, users.ADJUDICATE, "not duplicates", {"group": group_id})
    group = session.get(DuplicateGroup, group_id)
    if group is None or group.status != "active":
        raise GroupingError(f"no active near-duplicate group #{group_id}")
    ids = sorted(session.scalars(select(DuplicateMember.image_id).where(DuplicateMember.group_id == group_id)))
    known = distinct_pairs(session)
    new = [(a, b) for k, a in enumerate(ids) for b in ids[k + 1:] if (a, b) not in known]
    session.add_all(DistinctPair(image_a=a, image_b=b, annotator=annotator, group_id=group_id) for a, b in new)
    group.status, group.closed_at, group.closed_by = "dismissed", utcnow(), annotator
    session.flush()
    return len(new)


def group_of_images(session: Session, image_ids: Sequence[int]) -> dict[int, int]:
    """image_id -> its active group's id, for the images given that are in one."""
    out: dict[int, int] = {}
    for chunk in in_batches(image_ids):
        out.update(session.execute(select(DuplicateMember.image_id, DuplicateMember.group_id)
                                   .join(DuplicateGroup, DuplicateGroup.id == DuplicateMember.group_id)
                                   .where(DuplicateGroup.status == "active", DuplicateMember.image_id.in_(chunk))).all())
    return out
