"""The Duplicates page in a real browser, opened first by its URL on a fresh server: the groups
found by `python -m workbench duplicates` side by side, and one click labels a whole group.
Skips only when Chromium or Playwright is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from tests.support.browser import (
    CHROMIUM_ARGS,
    REPO_ROOT,
    TIMEOUT_MS,
    button,
    chromium_path,
    no_exceptions,
    quiet,
    settle,
    streamlit_server,
)
from tests.support.variants import plant_reposts

pytestmark = pytest.mark.browser


def test_duplicates_page_labels_a_whole_group_in_a_real_browser(tmp_path):
    chromium = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")
    from workbench.features.near_duplicates import active_groups
    from workbench.store import db
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.labels import consensus_labels
    from workbench.store.schema import Image

    memes, log = tmp_path / "memes", tmp_path / "streamlit.log"
    samples = write_sample_memes(memes, n=4, seed=13, into_label_folders=False, size=(256, 256))
    plant_reposts([s.path for s in samples[:2]])
    db_url = f"sqlite:///{tmp_path / 'dup.sqlite3'}"
    env = dict(os.environ, WORKBENCH_DB_URL=db_url, WORKBENCH_MEMES_DIR=str(memes),
               WORKBENCH_ARTEFACTS_DIR=str(tmp_path / "artefacts"), OMP_NUM_THREADS="1")
    for command in (["ingest"], ["duplicates", "--workers", "1"]):
        subprocess.run([sys.executable, "-m", "workbench", *command], cwd=REPO_ROOT, env=env, check=True,
                       capture_output=True)
    with db.session_scope(db_url) as session:
        groups = active_groups(session)
        paths = dict(session.execute(select(Image.id, Image.path)).all())
    db.dispose_all()
    assert len(groups) == 2
    gid = min(groups)
    expect = sync_api.expect

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            with streamlit_server(env, log) as base:
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(base + "/Duplicates")  # the first page this server serves
                settle(page)
                expect(page.get_by_text("2 groups · 0 with conflicting labels")).to_be_visible()
                for image_id in groups[gid]:
                    expect(page.get_by_text(f"#{image_id} {paths[image_id]}")).to_be_visible()
                name_box = page.get_by_label("Annotator", exact=True)
                name_box.fill("erin")
                name_box.press("Enter")
                settle(page)
                label_all = button(page, f"dup_{gid}_toxic").first  # a button with help also has a tooltip copy
                expect(label_all).to_be_enabled()
                label_all.click()
                expect(page.get_by_text(f"Group #{gid}: 2 memes labeled toxic by erin.")).to_be_visible()
                settle(page)
                no_exceptions(page)
                quiet(page)
                page.screenshot(path=str(tmp_path / "duplicates.png"), full_page=True)
        finally:
            browser.close()
    with db.session_scope(db_url) as session:
        labels = consensus_labels(session)
    db.dispose_all()
    assert {i: labels.get(i) for i in groups[gid]} == {i: "toxic" for i in groups[gid]}
    assert not set(labels) & groups[max(groups)]
