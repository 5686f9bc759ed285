"""Reviewing near-duplicate groups: each group with every member's labels, conflicting groups
first; one label for a whole group (each member gets the annotator's label, undoable like any
label); the near-copies of one meme for the Label page; the `duplicates --json` report.

The groups themselves are found and stored by workbench.features.near_duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.store.db import in_batches
from workbench.store.labels import LabelError, add_label, consensus_labels, current_labels, undo_last
from workbench.store.schema import DuplicateGroup, DuplicateMember, Image, Label

GROUP_NOTE = "near-duplicate group #{}"  # the note on labels given to a whole group (what its undo looks for)


@dataclass(frozen=True)
class Member:
    """One meme of a group, as the review shows it."""

    image_id: int
    path: str
    sha256: str
    missing: bool
    consensus: str | None
    labels: list[tuple[str, str]]  # (annotator, label), current labels
    distance: float | None  # fraction of differing hash bits to its closest member
    cosine: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "path": self.path, "label": self.consensus, "missing": self.missing,
                "labels": [list(x) for x in self.labels], "distance": self.distance, "cosine": self.cosine}


@dataclass(frozen=True)
class GroupView:
    """A group with its members; `conflict` when its members' consensus labels differ."""

    id: int
    status: str
    params: dict[str, Any]
    created_at: datetime | None
    members: list[Member] = field(default_factory=list)

    @property
    def consensus_labels(self) -> set[str]:
        return {m.consensus for m in self.members if m.consensus}

    @property
    def conflict(self) -> bool:
        return len(self.consensus_labels) > 1

    @property
    def n_unlabeled(self) -> int:
        return sum(1 for m in self.members if m.consensus is None)

    @property
    def sort_key(self) -> tuple[int, int]:
        """Conflicts first, then groups with unlabeled members, then the rest (oldest id first)."""
        return (0 if self.conflict else 1 if self.n_unlabeled else 2, self.id)


def _members(session: Session, group_ids: Sequence[int]) -> dict[int, list[Member]]:
    rows = []
    for chunk in in_batches(group_ids):
        rows += session.execute(select(DuplicateMember.group_id, DuplicateMember.image_id, DuplicateMember.distance,
                                       DuplicateMember.cosine, Image.path, Image.sha256, Image.missing)
                                .join(Image, Image.id == DuplicateMember.image_id)
                                .where(DuplicateMember.group_id.in_(chunk))).all()
    labels: dict[int, list] = {}
    image_ids = sorted({r[1] for r in rows})
    for chunk in in_batches(image_ids):
        for c in current_labels(session, chunk):
            labels.setdefault(c.image_id, []).append(c)
    consensus = consensus_labels(session, image_ids)
    out: dict[int, list[Member]] = {}
    for gid, image_id, dist, cos, path, sha, missing in sorted(rows, key=lambda r: (r[0], r[1])):
        current = sorted(labels.get(image_id, []), key=lambda c: c.annotator)
        out.setdefault(gid, []).append(Member(image_id, path, sha, bool(missing), consensus.get(image_id),
                                              [(c.annotator, c.label) for c in current], dist, cos))
    return out


def group_views(session: Session, status: str = "active", group_ids: Sequence[int] | None = None) -> list[GroupView]:
    """Groups (of a status, or the ids given) with their members, conflicting groups first."""
    query = select(DuplicateGroup)
    query = query.where(DuplicateGroup.id.in_(list(group_ids))) if group_ids is not None else \
        query.where(DuplicateGroup.status == status)
    groups = list(session.scalars(query))
    members = _members(session, [g.id for g in groups])
    views = [GroupView(g.id, g.status, dict(g.params or {}), g.created_at, members.get(g.id, [])) for g in groups]
    return sorted(views, key=lambda v: v.sort_key)


def groups_report(session: Session) -> dict[str, Any]:
    """What `duplicates --json` prints: the active groups of two or more members."""
    return {"groups": [{"id": v.id, "members": [{"image_id": m.image_id, "path": m.path, "label": m.consensus,
                                                  "missing": m.missing} for m in v.members]}
                       for v in sorted(group_views(session), key=lambda v: v.id) if len(v.members) >= 2]}


def apply_group_label(session: Session, group_id: int, label: str, annotator: str) -> list[int]:
    """Give every member of a group `annotator`'s `label` (noted with the group); returns the label ids.
    Each is an ordinary label: the Label page's Back, or `undo_group_label`, revokes it."""
    members = list(session.scalars(select(DuplicateMember.image_id).where(DuplicateMember.group_id == group_id)
                                   .order_by(DuplicateMember.image_id)))
    if not members:
        raise LabelError(f"no near-duplicate group #{group_id}")
    return [add_label(session, i, label, annotator, note=GROUP_NOTE.format(group_id)).id for i in members]


def undo_group_label(session: Session, group_id: int, annotator: str) -> list[int]:
    """Revoke `annotator`'s group label on each member where it is still their latest label;
    returns the image ids whose label was revoked."""
    members = list(session.scalars(select(DuplicateMember.image_id).where(DuplicateMember.group_id == group_id)))
    note = GROUP_NOTE.format(group_id)
    undone = []
    for image_id in sorted(members):
        latest = session.scalar(select(Label.note).where(Label.image_id == image_id, Label.annotator == annotator,
                                                         Label.revoked_at.is_(None)).order_by(Label.id.desc()).limit(1))
        if latest == note and undo_last(session, annotator, image_id) is not None:
            undone.append(image_id)
    return undone


def near_copies(session: Session, image_id: int) -> list[Member]:
    """The other members of the active groups `image_id` belongs to (empty when it has none)."""
    gids = list(session.scalars(select(DuplicateMember.group_id).join(DuplicateGroup)
                                .where(DuplicateMember.image_id == image_id, DuplicateGroup.status == "active")))
    if not gids:
        return []
    members = _members(session, gids)
    seen: dict[int, Member] = {}
    for gid in gids:
        for m in members.get(gid, []):
            if m.image_id != image_id:
                seen.setdefault(m.image_id, m)
    return sorted(seen.values(), key=lambda m: m.image_id)
