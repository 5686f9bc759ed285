"""The audit log: who changed what, when (users and roles, settings, scans, uploads, imports,
jobs, adjudications).

Times are stored in UTC and read back as aware UTC datetimes (`recent` gives ISO 8601 with
+00:00). An actor is the signed-in user's email, or `os:<login>` for the command line without
`--as` and for local use without sign-in (see workbench.store.users.actor_name).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.store.schema import AuditEntry

_operator: str | None = None  # the OS user behind this process, when it is the command line


def set_operator(os_user: str | None) -> None:
    """Mark this process as run by an operator (the CLI): every entry it records under an
    email (`--as`) also names that OS user, so nobody is recorded as someone else without a trace."""
    global _operator
    _operator = os_user


def record(session: Session, actor: str, action: str, detail: dict[str, Any] | None = None) -> None:
    """Add one audit entry (committed with the session's transaction)."""
    detail = dict(detail or {})
    if _operator and not actor.startswith("os:"):
        detail.setdefault("operator", _operator)
    session.add(AuditEntry(actor=actor[:320], action=action[:64], detail=detail))


def as_utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC datetime. Times are stored in UTC; SQLite keeps no offset
    (it hands back naive datetimes), PostgreSQL's timestamptz comes back in the session's zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def recent(session: Session, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
    """The newest entries first, as plain dicts; `at` is ISO 8601 in UTC with its offset
    (2026-12-05T12:00:00.123456+00:00), on SQLite and PostgreSQL alike."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if action:
        query = query.where(AuditEntry.action == action)
    return [{"at": as_utc(e.at).isoformat(), "actor": e.actor, "action": e.action, "detail": e.detail}
            for e in session.scalars(query)]
