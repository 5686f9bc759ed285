"""The sidebar navigation through Streamlit's AppTest on the real entry script (issue 21,
point 2): every page file has a link, grouped, the links Streamlit draws are exactly the
pages a role may open, and Home links the pages nothing else linked to. The browser test
(tests/test_browser_navigation.py) clicks every link."""

from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from workbench.store import users
from workbench.ui import NAV, nav_entries

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = REPO_ROOT / "streamlit_app.py"
GROUPS = ["Label", "Review", "Models", "Data", "Team"]


def sidebar_links(at: AppTest) -> list[str]:
    return [link.proto.label for link in at.sidebar.get("page_link")]


def open_home(email: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    if email:
        at.user = {"is_logged_in": True, "email": email, "iat": int(time.time()) - 60}
    return at.run()


def test_every_page_file_is_in_the_navigation_once() -> None:
    files = sorted(["streamlit_app.py"] + [f"pages/{p.name}" for p in (REPO_ROOT / "pages").glob("*.py")])
    assert sorted(entry[0] for entry in NAV) == files
    assert [g for g in dict.fromkeys(entry[3] for entry in NAV) if g] == GROUPS


def test_the_sidebar_links_every_page_grouped(settings, clear_streamlit_cache) -> None:
    at = open_home()
    assert not at.exception, [e.message for e in at.exception]
    assert sidebar_links(at) == [entry[1] for entry in NAV]
    captions = [c.value for c in at.sidebar.caption]
    assert [c for c in captions if c in GROUPS] == GROUPS


def test_each_role_sees_the_pages_it_may_open(settings, session, clear_streamlit_cache, monkeypatch) -> None:
    everyone = [entry[1] for entry in NAV]
    assert [e[1] for e in nav_entries(None, signed_in=False)] == everyone
    assert [e[1] for e in nav_entries("annotator", signed_in=True)] == [x for x in everyone if x != "Adjudication"]
    assert [e[1] for e in nav_entries("reviewer", signed_in=True)] == everyone

    users.add_user(session, "ann@example.org", "annotator")
    users.add_user(session, "rev@example.org", "reviewer")
    session.commit()
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    annotator = open_home("ann@example.org")
    assert not annotator.exception, [e.message for e in annotator.exception]
    assert "Adjudication" not in sidebar_links(annotator) and "Team" not in [c.value for c in annotator.sidebar.caption]
    assert "Label" in sidebar_links(annotator)
    assert sidebar_links(open_home("rev@example.org")) == everyone
    assert sidebar_links(open_home(None)) == []  # not signed in: the sign-in page, no navigation
