"""The Map page in a real browser on a fresh server, opened first by its URL: a PCA projection at once
while UMAP runs in a background process, then, with no click or reload, the UMAP map once it is
cached (the page polls). Skips only when Chromium or Playwright is missing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.support.browser import CHROMIUM_ARGS, TIMEOUT_MS, chromium_path, no_exceptions, settle, streamlit_server

pytestmark = pytest.mark.browser


def test_map_page_shows_pca_at_once_then_umap_in_a_real_browser(tmp_path):
    chromium = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")
    from tests.support.synthetic_runs import add_images
    from workbench.features.embeddings import ClipImageEmbedder, store_embeddings
    from workbench.store import db

    db_url = f"sqlite:///{tmp_path / 'map.sqlite3'}"
    db.upgrade(db_url)
    rng = np.random.default_rng(0)
    with db.session_scope(db_url) as session:
        ids = add_images(session, 60)
        embedder = ClipImageEmbedder("browser-map")
        store_embeddings(session, embedder, [(i, embedder.fingerprint(), rng.normal(0, 1, 16).astype(np.float32))
                                             for i in ids])
    db.dispose_all()
    (tmp_path / "memes").mkdir()
    env = dict(os.environ, WORKBENCH_DB_URL=db_url, WORKBENCH_MEMES_DIR=str(tmp_path / "memes"),
               WORKBENCH_ARTEFACTS_DIR=str(tmp_path / "artefacts"), OMP_NUM_THREADS="1")
    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            with streamlit_server(env, tmp_path / "streamlit.log") as base:
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(base + "/Map")
                settle(page)
                expect(page.get_by_text("60 memes · PCA (a preview until UMAP is ready)")).to_be_visible()
                expect(page.get_by_text("UMAP is being computed in a background process")).to_be_visible()
                # numba compiles UMAP in that process (~20-40 s here); the page polls and shows it when cached
                expect(page.get_by_text("60 memes · UMAP (")).to_be_visible(timeout=300_000)
                settle(page)
                no_exceptions(page)
                assert not list((tmp_path / "artefacts" / "maps").glob("*.error"))
        finally:
            browser.close()
