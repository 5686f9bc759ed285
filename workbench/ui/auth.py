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

Two things Streamlit's sign-in does not do, done here:
- the provider always sends the browser back to the redirect URI's host, and the sign-in state
  is a cookie of the host it started on: opened at 127.0.0.1 with a `localhost` redirect URI,
  the sign-in loops back to this page ("Missing provider for OAuth callback" in the log). The
  sign-in page detects the mismatch (`host_mismatch`) and links to the right address instead;
- Streamlit lands on Home after signing in. The page the visitor started from (and its query,
  e.g. /Label?image=12) is remembered for this browser, keyed by its XSRF cookie (present
  whenever sign-in is configured; `browser_key`), and Home switches back to it once.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

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


DEFAULT_PORTS = {"http": 80, "https": 443}


def host_mismatch(host: str | None, redirect_uri: str | None) -> str | None:
    """The address to open the app at (scheme://host:port of the redirect URI) when the browser
    reached it under another host or port (`host`: the Host header, or X-Forwarded-Host behind a
    proxy); None when they match or either is unknown."""
    if not host or not redirect_uri:
        return None
    want = urlsplit(redirect_uri.strip())
    if not want.hostname:
        return None
    try:
        got = urlsplit("//" + host.strip())
        default = DEFAULT_PORTS.get(want.scheme)
        same = (got.hostname == want.hostname.lower()) and (got.port or default) == (want.port or default)
    except ValueError:  # a malformed Host header: nothing to compare
        return None
    return None if same else f"{want.scheme}://{want.netloc}"


XSRF_COOKIE = "_streamlit_xsrf"  # Streamlit sets it in every browser once sign-in is configured
RETURN_TTL_S = 15 * 60  # a sign-in that takes longer lands on Home
_returns: dict[str, tuple[str, dict[str, str], float]] = {}  # browser key -> (page script, query, when)
_returns_lock = threading.Lock()


def browser_key(xsrf_cookie: str | None) -> str | None:
    """A stable key of one browser from Streamlit's XSRF cookie ("2|mask|masked token|time", hex;
    the mask changes with every response, the token does not); None when there is none."""
    if not xsrf_cookie:
        return None
    try:
        version, mask_hex, masked_hex, _ = xsrf_cookie.strip("\"'").split("|")
        mask, masked = bytes.fromhex(mask_hex), bytes.fromhex(masked_hex)
    except ValueError:
        return None
    if version != "2" or not mask or not masked:
        return None
    token = bytes(b ^ mask[i % len(mask)] for i, b in enumerate(masked))
    return hashlib.sha256(token).hexdigest()


def remember_return(key: str | None, page: str, query: dict[str, str], now: float | None = None) -> None:
    """Remember the page (script path) and query a browser was on when it was asked to sign in."""
    if key is None:
        return
    now = time.time() if now is None else now
    with _returns_lock:
        for stale in [k for k, (_, _, at) in _returns.items() if now - at > RETURN_TTL_S]:
            del _returns[stale]
        _returns[key] = (page, dict(query), now)


def take_return(key: str | None, now: float | None = None) -> tuple[str, dict[str, str]] | None:
    """The page and query remembered for this browser (once; None when none or too old)."""
    if key is None:
        return None
    with _returns_lock:
        found = _returns.pop(key, None)
    now = time.time() if now is None else now
    if found is None or now - found[2] > RETURN_TTL_S:
        return None
    return found[0], found[1]


def _this_page() -> tuple[str, bool] | None:
    """The running page's script path, and whether it is the entry page (Home)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    run = get_script_run_ctx()
    if run is None:
        return None
    info = run.pages_manager.get_pages().get(run.page_script_hash)
    if not info:
        return None
    script = str(info["script_path"])
    return script, Path(script).resolve() == Path(run.main_script_path).resolve()


def _context(name: str) -> Any:
    try:
        return getattr(st.context, name)
    except Exception:  # noqa: BLE001 - no browser context (AppTest, bare mode): nothing to read
        return None


def gate(settings: Settings) -> SignedIn | None:
    """None when sign-in is off; else the signed-in user with a role, or the page stops here."""
    if settings.auth != "oidc":
        return None
    info = _user()
    cookies = _context("cookies") or {}
    key = browser_key(cookies.get(XSRF_COOKIE))
    if not info.get("is_logged_in"):
        page = _this_page()
        if page is not None and not page[1]:
            remember_return(key, page[0], st.query_params.to_dict())
        _sign_in_page()
    page = _this_page()
    if page is not None and page[1]:  # signed in and on Home, where Streamlit lands after the provider
        back = take_return(key)
        if back is not None:
            st.switch_page(back[0], query_params=back[1] or None)
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


def _redirect_uri() -> str | None:
    try:
        return str(st.secrets["auth"].get("redirect_uri") or "") or None
    except Exception:  # noqa: BLE001 - no secrets / no [auth]: the page says so already
        return None


def _sign_in_page() -> None:
    st.title("VLMemes Workbench")
    st.info("Sign in to continue. Your role (annotator, reviewer or admin) decides what you can do here.")
    configured = _auth_configured()
    if not configured:
        st.error(SECRETS_HELP)
    headers = _context("headers") or {}
    right = host_mismatch(headers.get("X-Forwarded-Host") or headers.get("Host"), _redirect_uri()) if configured else None
    if right is not None:
        here = urlsplit(_context("url") or "")
        query = urlencode(st.query_params.to_dict())
        target = right + (here.path or "/") + (f"?{query}" if query else "")
        st.error(f"Open the app at {right} (the redirect URI's host): signing in from here comes back to {right}, "
                 "where this browser has no sign-in under way, and ends on this page again.")
        st.link_button(f"Open {target}", target, type="primary", icon=":material/open_in_new:")
    st.button("Sign in", key="auth_sign_in", type="primary" if right is None else "secondary", on_click=st.login,
              disabled=not configured or right is not None, icon=":material/login:")
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
