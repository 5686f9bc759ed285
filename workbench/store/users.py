"""People and roles for team labeling, and the permission check every data-changing
library function makes.

Roles (each includes the ones before it):

    annotator   label memes
    reviewer    also adjudicate memes whose labels disagree
    admin       also upload, import, scan, run models and jobs, change settings, manage users

The check, `require(session, actor, permission)`:
- sign-in off (WORKBENCH_AUTH unset or 'off'): everything is allowed, as in single-user local use;
- `actor` None or `os:<login>`: the machine's operator — the command line without `--as`
  (emails never contain ':', so no signed-in user can pass for one);
- otherwise the actor's role is read from the database at every call, so removing a user
  or changing a role applies at once, and raises PermissionDenied when it does not allow it.
"""

from __future__ import annotations

import getpass
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.config import auth_mode
from workbench.errors import PermissionDenied
from workbench.store import audit
from workbench.store.schema import User

ROLES = ("annotator", "reviewer", "admin")
LABEL, ADJUDICATE, ADMIN = "label", "adjudicate", "admin"
# permission -> the least role that has it
PERMISSIONS = {LABEL: "annotator", ADJUDICATE: "reviewer", ADMIN: "admin"}
WHAT = {LABEL: "label memes", ADJUDICATE: "adjudicate", ADMIN: "do this (admins only)"}
OPERATOR_PREFIX = "os:"
_EMAIL = re.compile(r"^[^@\s:/\\]+@[^@\s:/\\]+$")


def signin_enabled() -> bool:
    """Whether sign-in with roles is on (WORKBENCH_AUTH=oidc)."""
    return auth_mode() == "oidc"


def normalize_email(email: str) -> str:
    """The email as users are stored: trimmed, lower case. ValueError when it is not an email."""
    value = (email or "").strip().lower()
    if len(value) > 320 or not _EMAIL.match(value):
        raise ValueError(f"not an email address: {email!r}")
    return value


def has_permission(role: str | None, permission: str) -> bool:
    """Whether `role` includes `permission` (label | adjudicate | admin)."""
    if role not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(PERMISSIONS[permission])


def role_of(session: Session, email: str | None) -> str | None:
    """The role kept for this email, or None (unknown email, or not an email)."""
    try:
        key = normalize_email(email or "")
    except ValueError:
        return None
    return session.scalar(select(User.role).where(User.email == key))


def require(session: Session, actor: str | None, permission: str) -> None:
    """Raise PermissionDenied unless `actor` may do `permission` (see the module docstring)."""
    if actor is None or actor.startswith(OPERATOR_PREFIX) or not signin_enabled():
        return
    role = role_of(session, actor)
    if role is None:
        raise PermissionDenied(f"{actor} is not allowed in this workbench (no role); ask an admin to add you")
    if not has_permission(role, permission):
        raise PermissionDenied(f"{actor} ({role}) may not {WHAT[permission]}; "
                               f"that needs the {PERMISSIONS[permission]} role")


def actor_name(actor: str | None) -> str:
    """Who to record: the actor's email, else the operating-system user as os:<login>."""
    if actor:
        return actor
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        login = "unknown"
    return f"{OPERATOR_PREFIX}{login}"


def authorize(session: Session, actor: str | None, permission: str, action: str,
              detail: dict[str, Any] | None = None) -> None:
    """require(), then record the action in the audit log under actor_name(actor)."""
    require(session, actor, permission)
    audit.record(session, actor_name(actor), action, detail)


def add_user(session: Session, email: str, role: str, actor: str | None = None) -> str:
    """Add a user, or change an existing user's role (admins only). Returns 'added',
    'changed' or 'unchanged'."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    key = normalize_email(email)
    authorize(session, actor, ADMIN, "user add", {"email": key, "role": role})
    row = session.get(User, key)
    if row is None:
        session.add(User(email=key, role=role, added_by=actor_name(actor)))
        session.flush()
        return "added"
    if row.role == role:
        return "unchanged"
    row.role = role
    session.flush()
    return "changed"


def remove_user(session: Session, email: str, actor: str | None = None) -> bool:
    """Remove a user (admins only); their labels stay. False when there was no such user."""
    key = normalize_email(email)
    authorize(session, actor, ADMIN, "user remove", {"email": key})
    row = session.get(User, key)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def list_users(session: Session) -> list[dict[str, str]]:
    """Every user as {"email", "role"}, by email."""
    return [{"email": e, "role": r} for e, r in session.execute(select(User.email, User.role).order_by(User.email))]
