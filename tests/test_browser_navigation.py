"""Navigation and server-side jobs in a real browser (issue 21, points 2 and 3): the real
app (`streamlit run`) on a free port, Debian's Chromium through Playwright.

The Run page is the first page the fresh server serves (a deep link). Start OCR there, then
open every page from the sidebar (each grouped link, each page rendering without an
exception, the running job shown in the sidebar), and come back: the job went on while
other pages were open, finished, and read every meme exactly once. The server log has no
"missing ScriptRunContext" warning (the job's thread never touches Streamlit, and its
worker processes never run the page script).
"""

from __future__ import annotations

import os
import re
import time

import pytest
from sqlalchemy import func, select

from tests.support.browser import (
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    button,
    chromium_path,
    no_exceptions,
    open_from_sidebar,
    settle,
    streamlit_server,
)

N_MEMES = 32  # two Tesseract workers: long enough to still be running when the test leaves the page

pytestmark = pytest.mark.browser


def test_every_page_from_the_sidebar_while_an_ocr_job_runs_on_the_server(tmp_path):
    chromium = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")
    from workbench.store import db
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Job, OcrResult
    from workbench.ui import NAV

    memes, log = tmp_path / "memes", tmp_path / "streamlit.log"
    write_sample_memes(memes, n=N_MEMES, seed=5, into_label_folders=False, size=(256, 256))
    db_url = f"sqlite:///{tmp_path / 'nav.sqlite3'}"
    db.upgrade(db_url)
    with db.session_scope(db_url) as session:
        scan_folder(session, memes)
    db.dispose_all()
    env = dict(os.environ, WORKBENCH_DB_URL=db_url, WORKBENCH_MEMES_DIR=str(memes),
               WORKBENCH_ARTEFACTS_DIR=str(tmp_path / "artefacts"), OMP_NUM_THREADS="1")
    expect = sync_api.expect

    def job() -> tuple[str, int, int] | None:
        with db.session_scope(db_url) as session:
            row = session.execute(select(Job.status, Job.done, Job.total)).first()
        return tuple(row) if row else None

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            with streamlit_server(env, log) as base:
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(base + "/Run")  # a deep link, the first page this server serves
                settle(page)
                expect(page.get_by_text(f"{N_MEMES} memes selected.")).to_be_visible()
                sidebar = page.locator("[data-testid='stSidebar']")
                for group in ("Label", "Review", "Models", "Data", "Team"):
                    expect(sidebar.get_by_text(group, exact=True).first).to_be_visible()
                expect(sidebar.locator("[data-testid='stPageLink']")).to_have_count(len(NAV))

                page.locator(".st-key-run_engine").click()
                page.get_by_role("option", name=re.compile(r"^tesseract")).click()
                settle(page)
                workers = page.locator(".st-key-run_workers input")
                workers.fill("2")  # a process pool: its workers must not run the page (the log is checked)
                workers.press("Enter")
                settle(page)
                button(page, "run_start").click()
                expect(page.get_by_test_id("stProgress").first).to_be_visible()
                deadline = time.monotonic() + 60
                while job() is None:  # (with two workers, counts move a few batches at a time)
                    assert time.monotonic() < deadline, "the job did not start"
                    time.sleep(0.1)

                # every page from the sidebar, the first one while the job is surely running
                left_at = job()
                titles = {"Home": "Home", "Run OCR · jobs": "Run"}
                for _, label, _, _, _ in [e for e in NAV if e[1] != "Run OCR · jobs"]:
                    open_from_sidebar(page, label, titles.get(label, label))
                    if label == "Label":
                        assert left_at[0] == "running" and left_at[1] < N_MEMES, left_at
                        running = job()
                        if running[0] == "running":  # the indicator, while it still runs
                            expect(sidebar.get_by_text(re.compile(rf"running: OCR \d+/{N_MEMES}"))).to_be_visible()
                open_from_sidebar(page, "Run OCR · jobs", "Run")

                deadline = time.monotonic() + 120
                while (state := job())[0] == "running":
                    assert time.monotonic() < deadline, f"the job did not finish: {state}"
                    time.sleep(0.2)
                assert state == ("done", N_MEMES, N_MEMES)
                with db.session_scope(db_url) as session:
                    assert session.scalar(select(func.count()).select_from(Job)) == 1
                    assert session.scalar(select(func.count()).select_from(OcrResult)) == N_MEMES
                    assert session.scalar(select(func.count(func.distinct(OcrResult.image_id)))) == N_MEMES
                page.reload()  # the sidebar indicator is gone once nothing runs
                settle(page)
                expect(sidebar.get_by_text(re.compile(r"running: OCR"))).to_have_count(0)
                no_exceptions(page)
                page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
        finally:
            browser.close()
    db.dispose_all()
    assert "missing ScriptRunContext" not in log.read_text(errors="replace")
