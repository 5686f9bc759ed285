"""Team labeling end to end in a real browser: the real app server with sign-in on, against a
real OpenID Connect provider started here (`oidc-provider-mock`), driven by Debian's Chromium.

With two labels per meme, two annotators sign in and label the same memes, one of them
differently; a reviewer adjudicates it; the consensus, the downloaded annotations.csv and
the metrics follow the decision. An unknown email sees no meme, an annotator cannot reach
the admin actions, a forged session cookie is not signed in, and a removed user loses
access at the next page load.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support import browser as web
from tests.support.ports import free_port
from tests.support.synthetic_runs import Pred, add_run

# Authlib's DeprecationWarnings come from inside the test provider (its own AuthlibDeprecationWarning
# at import time bypasses warning filters).
pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
ADMIN, REVIEWER, ANNA, BORIS = "admin@team.org", "rev@team.org", "anna@team.org", "boris@team.org"
N_MEMES = 3


def test_team_labeling_with_sign_in_overlap_and_adjudication(tmp_path: Path) -> None:
    chromium = web.chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")
    provider_mock = pytest.importorskip("oidc_provider_mock", reason="oidc-provider-mock is not installed")
    from workbench.analysis.outcomes import load_runs
    from workbench.store import db, labels, overlap, users
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Image

    memes, log = tmp_path / "memes", tmp_path / "streamlit.log"
    write_sample_memes(memes, n=N_MEMES, seed=5, into_label_folders=False, size=(128, 128))
    db_url = f"sqlite:///{tmp_path / 'team.sqlite3'}"
    db.upgrade(db_url)
    with db.session_scope(db_url) as session:
        scan_folder(session, memes)
        for email, role in ((ADMIN, "admin"), (REVIEWER, "reviewer"), (ANNA, "annotator"), (BORIS, "annotator")):
            users.add_user(session, email, role)
        overlap.set_labels_per_meme(session, 2)
        paths = dict(session.execute(select(Image.id, Image.path)).all())
        run = add_run(session, "clip", "says toxic", {i: Pred("toxic", 0.9) for i in paths})
    db.dispose_all()

    port = free_port()
    base = f"http://localhost:{port}"  # one host name throughout: the session cookie is per host
    expect = sync_api.expect
    cookie_secret = secrets.token_hex(16)
    with provider_mock.run_server_in_thread(port=free_port()) as provider:
        secrets_file = tmp_path / "secrets.toml"
        secrets_file.write_text(
            "[auth]\n"
            f'redirect_uri = "{base}/oauth2callback"\n'
            f'cookie_secret = "{cookie_secret}"\n'
            'client_id = "workbench-test"\n'
            'client_secret = "not-a-secret"\n'
            f'server_metadata_url = "http://localhost:{provider.server_port}/.well-known/openid-configuration"\n',
            encoding="utf-8")
        env = dict(os.environ, WORKBENCH_DB_URL=db_url, WORKBENCH_MEMES_DIR=str(memes), WORKBENCH_AUTH="oidc",
                   WORKBENCH_ARTEFACTS_DIR=str(tmp_path / "artefacts"), OMP_NUM_THREADS="1")
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=web.CHROMIUM_ARGS, headless=True)
            try:
                with web.streamlit_server(env, log, port=port, args=["--secrets.files", str(secrets_file)]):

                    def signed_in(email: str, path: str):  # noqa: ANN202 - a Playwright page
                        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
                        page = context.new_page()
                        page.set_default_timeout(web.TIMEOUT_MS)
                        page.goto(base + path)
                        web.settle(page)
                        expect(page.get_by_text("Sign in to continue")).to_be_visible()
                        assert page.locator("[data-testid='stImage']").count() == 0
                        web.button(page, "auth_sign_in").click()
                        page.locator("input[name=sub]").fill(email)  # the provider's own form
                        page.get_by_role("button", name="Authorize", exact=True).click()
                        # back on the page the sign-in started from (Streamlit itself lands on Home)
                        page.wait_for_url(base + path + "**")
                        web.settle(page)
                        return page

                    def label_queue(page, choices: list[str]) -> list[int]:  # noqa: ANN001
                        seen = []
                        for label in choices:
                            image_id = web.current_image(page)
                            assert image_id is not None
                            web.button(page, "lbl_toxic" if label == "toxic" else "lbl_neutral").click()
                            shown = "Toxic" if label == "toxic" else "Neutral"
                            expect(page.get_by_text(f"Labeled #{image_id} as {shown}.")).to_be_visible()
                            seen.append(image_id)
                            if len(seen) < len(choices):
                                web.wait_for_image_change(page, image_id)
                        expect(page.get_by_text("No meme needs your label right now")).to_be_visible()
                        return seen

                    # Opened under another host than the redirect URI's: a clear message, not a sign-in loop
                    other = browser.new_context().new_page()
                    other.set_default_timeout(web.TIMEOUT_MS)
                    other.goto(f"http://127.0.0.1:{port}/Label")
                    web.settle(other)
                    expect(other.get_by_text(f"Open the app at {base} (the redirect URI's host)")).to_be_visible()
                    expect(web.button(other, "auth_sign_in")).to_be_disabled()
                    expect(other.get_by_role("link", name=f"Open {base}/Label")).to_be_visible()
                    other.context.close()

                    # Anna labels every meme; she is the annotator, there is no name field
                    anna = signed_in(ANNA, "/Label")
                    expect(anna.get_by_text(f"Signed in as {ANNA} (annotator)")).to_be_visible()
                    assert anna.get_by_label("Annotator", exact=True).count() == 0
                    anna_ids = label_queue(anna, ["toxic", "toxic", "non_toxic"])
                    web.no_exceptions(anna)
                    # ... and cannot reach the admin actions or the adjudication
                    anna.goto(base + "/Data")
                    web.settle(anna)
                    expect(web.button(anna, "data_scan")).to_be_disabled()
                    expect(web.button(anna, "data_demo")).to_be_disabled()
                    anna.goto(base + "/Adjudication")
                    web.settle(anna)
                    expect(anna.get_by_text("This page needs the reviewer role")).to_be_visible()

                    # Boris gets the same memes (k = 2) and disagrees on the first
                    boris = signed_in(BORIS, "/Label")
                    expect(boris.get_by_text("3 of 6 labels given")).to_be_visible()  # the sidebar's team progress
                    boris_ids = label_queue(boris, ["non_toxic", "toxic", "non_toxic"])
                    assert boris_ids == anna_ids
                    expect(boris.get_by_text("6 of 6 labels given")).to_be_visible()
                    first = anna_ids[0]
                    with db.session_scope(db_url) as session:
                        assert labels.consensus_labels(session)[first] == "non_toxic"  # a tie: the latest label
                    # a removed user loses access at the next page load
                    with db.session_scope(db_url) as session:
                        users.remove_user(session, BORIS)
                    boris.reload()
                    web.settle(boris)
                    expect(boris.get_by_text("Not allowed", exact=True)).to_be_visible()
                    assert boris.locator("[data-testid='stImage']").count() == 0

                    # The reviewer decides the conflict: it outranks both labels
                    rev = signed_in(REVIEWER, "/Adjudication")
                    expect(rev.get_by_text("Queue: 1 meme to decide")).to_be_visible()
                    expect(rev.get_by_text("3 of 3 memes have their 2 labels")).to_be_visible()
                    expect(rev.get_by_text(f"#{first}")).to_be_visible()
                    web.button(rev, "adj_toxic").click()
                    expect(rev.get_by_text(f"Decided #{first}: Toxic.")).to_be_visible()
                    expect(rev.get_by_text("Queue: 0 memes to decide")).to_be_visible()
                    web.no_exceptions(rev)
                    rev.goto(base + "/Data")
                    web.settle(rev)
                    with rev.expect_download() as info:
                        web.button(rev, "data_export").click()
                    csv_text = Path(info.value.path()).read_text(encoding="utf-8")
                    want = {first: "toxic", anna_ids[1]: "toxic", anna_ids[2]: "non_toxic"}
                    assert csv_text == "filename,label\n" + "".join(
                        f"{paths[i]},{want[i]}\n" for i in sorted(want, key=paths.get))
                    with db.session_scope(db_url) as session:
                        assert labels.consensus_labels(session) == want
                        (data,) = load_runs(session, [run])
                        assert data.evaluate(n_boot=0).accuracy == pytest.approx(2 / 3)  # the always-toxic run

                    # An email without a role sees no meme
                    stranger = signed_in("stranger@elsewhere.org", "/Label")
                    expect(stranger.get_by_text("Not allowed", exact=True)).to_be_visible()
                    assert stranger.locator("[data-testid='stImage']").count() == 0
                    assert web.button(stranger, "lbl_toxic").count() == 0

                    # A forged session cookie is nobody
                    forged = browser.new_context()
                    forged.add_cookies([{"name": "_streamlit_user", "value": '{"email": "' + ADMIN + '"}',
                                         "url": base}])
                    page = forged.new_page()
                    page.set_default_timeout(web.TIMEOUT_MS)
                    page.goto(base + "/Label")
                    web.settle(page)
                    expect(page.get_by_text("Sign in to continue")).to_be_visible()
                    assert web.button(page, "lbl_toxic").count() == 0

                    # A genuine cookie from a sign-in three days ago (older than WORKBENCH_AUTH_MAX_AGE_HOURS) signs out
                    from streamlit.web.server.starlette.starlette_app_utils import create_signed_value

                    claims = {"email": ADMIN, "iat": int(time.time()) - 3 * 86400, "origin": base, "is_logged_in": True,
                              "provider": "default"}
                    old = browser.new_context()
                    old.add_cookies([{"name": "_streamlit_user", "url": base, "value": create_signed_value(
                        cookie_secret, "_streamlit_user", json.dumps(claims)).decode("ascii")}])
                    page = old.new_page()
                    page.set_default_timeout(web.TIMEOUT_MS)
                    page.goto(base + "/Data")
                    page.wait_for_function("() => !document.cookie.includes('_streamlit_user')", timeout=web.TIMEOUT_MS)
                    assert not [c for c in old.cookies() if c["name"] == "_streamlit_user"]
                    page = old.new_page()  # the first tab may still be redirecting through the provider's sign-out
                    page.set_default_timeout(web.TIMEOUT_MS)
                    page.goto(base + "/Data")
                    web.settle(page)
                    expect(page.get_by_text("Sign in to continue")).to_be_visible()
                    assert web.button(page, "data_scan").count() == 0
            finally:
                browser.close()
