"""Sign-in for the app when WORKBENCH_AUTH=oidc: Streamlit's native OpenID Connect sign-in
(st.login / st.user / st.logout, configured under [auth] in .streamlit/secrets.toml, so any
OIDC provider works) plus the workbench's own roles (workbench.store.users).

`gate()` runs first on every page (ui.bootstrap), at every page load:
- not signed in: a sign-in page and nothing else;
- the sign-in is older than WORKBENCH_AUTH_MAX_AGE_HOURS (the ID token's `iat`), or the
  provider says the email is not verified: signed out;
- the email has no role (never added, or removed since): a "not allowed" page, no meme, no
  navigation;
- otherwise the page goes on, and the role read just now is the one it uses.
A forged or expired session cookie never gets this far: Streamlit checks the cookie's
signature and age, and the visitor is simply not signed in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import streamlit as st

from workbench.config import Settings
from workbench.store import db
from workbench.store.users import PERMISSIONS, normalize_email, role_of

SECRETS_HELP = ("Sign-in is on (WORKBENCH_AUTH=oidc) but `.streamlit/secrets.toml` has no `[auth]` section: "
                "copy `.streamlit/secrets.toml.example` and fill in your provider (see README, Team labeling).")


@dataclass(frozen=True)
class SignedIn:
    """The signed-in person and the role the workbench keeps for them."""

    email: str
    role: str


def _user() -> dict[str, Any]:
    try:
        return dict(st.user.to_dict())
    except Exception:  # noqa: BLE001 - no user info at all reads as "not signed in"
        return {}


def _auth_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file
        return False


def _expired(info: dict[str, Any], max_age_hours: float) -> bool:
    issued = info.get("iat")
    if not isinstance(issued, int | float):
        return True  # every OpenID Connect ID token carries iat; without it the sign-in cannot be trusted
    return time.time() - float(issued) > max_age_hours * 3600


def gate(settings: Settings) -> SignedIn | None:
    """None when sign-in is off; else the signed-in user with a role, or the page stops here."""
    if settings.auth != "oidc":
        return None
    info = _user()
    if not info.get("is_logged_in"):
        _sign_in_page()
    if _expired(info, settings.auth_max_age_hours) or info.get("email_verified") is False:
        st.logout()  # clears the cookie and starts over at the sign-in page
        st.stop()
    try:
        email = normalize_email(str(info.get("email") or ""))
    except ValueError:
        email = ""
    with db.session_scope(settings.db_url) as session:
        role = role_of(session, email) if email else None
    if role is None:
        _not_allowed(email or "This account (the provider gave no email)")
    signed = SignedIn(email, role)
    with st.sidebar:
        st.caption(f"Signed in as **{_md(email)}** ({role})")
        st.button("Sign out", key="auth_sign_out", on_click=st.logout, icon=":material/logout:")
    return signed


def _sign_in_page() -> None:
    st.title("VLMemes Workbench")
    st.info("Sign in to continue. Your role (annotator, reviewer or admin) decides what you can do here.")
    configured = _auth_configured()
    if not configured:
        st.error(SECRETS_HELP)
    st.button("Sign in", key="auth_sign_in", type="primary", on_click=st.login, disabled=not configured,
              icon=":material/login:")
    st.stop()


def _not_allowed(email: str) -> None:
    st.title("Not allowed")
    st.error(f"{email} is signed in but has no role in this workbench, so nothing here is shown. "
             "Ask an admin to add you (`python -m workbench users add EMAIL --role annotator`), then reload.")
    st.button("Sign out", key="auth_sign_out", on_click=st.logout, icon=":material/logout:")
    st.stop()


def page_requires(ctx: Any, permission: str) -> None:
    """Stop the page with a clear message unless the page's user has `permission`."""
    if ctx.can(permission):
        return
    st.title("Not allowed")
    st.error(f"This page needs the {PERMISSIONS[permission]} role; you are signed in as {ctx.user} ({ctx.role}).")
    st.stop()


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_").replace("`", "\\`")
