"""The real app in a real browser: `streamlit run` on 127.0.0.1 and a free port, driven by
Debian's Chromium through Playwright (never `playwright install`).

Ingest generated memes, label five of them with clicks and with the keyboard shortcuts,
undo one, download annotations.csv, then open the gallery and the dashboard by deep link,
each as the first page a fresh server serves. Screenshots of every page go into the test's
tmp dir. Skips only when Chromium or Playwright is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from tests.support.browser import (
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    button,
    chromium_path,
    current_image,
    no_exceptions,
    quiet,
    settle,
    streamlit_server,
    wait_for_image_change,
)

N_MEMES = 8

pytestmark = pytest.mark.browser


class MeanPredictor:
    """Built lazily (needs workbench imports): a deterministic test predictor for the dashboard."""

    @staticmethod
    def make():  # noqa: ANN205
        from workbench.predictors.base import PredictInput, Predictor, PredictOutput

        class _Mean(Predictor):
            kind = "test-mean"

            def config(self) -> dict:
                return {"model": "mean-brightness"}

            def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
                outs = []
                for item in batch:
                    p = round(1 - float(np.asarray(item.image.convert("L")).mean()) / 255, 6)
                    outs.append(PredictOutput("toxic" if p > 0.5 else "non_toxic", p))
                return outs

        return _Mean()


def test_label_export_and_deep_links_in_a_real_browser(tmp_path):
    chromium = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")
    from workbench.store import db
    from workbench.store.annotations import export_annotations
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.schema import Image, Label

    memes, shots, log = tmp_path / "memes", tmp_path / "screenshots", tmp_path / "streamlit.log"
    shots.mkdir()
    write_sample_memes(memes, n=N_MEMES, seed=11, into_label_folders=False, size=(256, 256))
    db_url = f"sqlite:///{tmp_path / 'e2e.sqlite3'}"  # fresh: the app creates the schema itself
    env = dict(os.environ, WORKBENCH_DB_URL=db_url, WORKBENCH_MEMES_DIR=str(memes),
               WORKBENCH_ARTEFACTS_DIR=str(tmp_path / "artefacts"), OMP_NUM_THREADS="1")
    expect = sync_api.expect

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            with streamlit_server(env, log) as base:
                context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
                page = context.new_page()
                page.set_default_timeout(TIMEOUT_MS)

                # Home on an empty DB -> ingest the memes folder
                page.goto(base + "/")
                settle(page)
                button(page, "home_scan").click()
                expect(page.get_by_text(f"{N_MEMES} added")).to_be_visible()
                settle(page)
                expect(page.get_by_test_id("stMetricValue").first).to_have_text(str(N_MEMES))
                no_exceptions(page)
                quiet(page)
                page.screenshot(path=str(shots / "home.png"), full_page=True)

                # Label page: name the annotator, then label 5 memes (2 clicks, 3 keys)
                page.goto(base + "/Label")
                settle(page)
                name_box = page.get_by_label("Annotator", exact=True)
                name_box.fill("alice")
                name_box.press("Enter")
                expect(page.get_by_text("Enter your name in the sidebar")).to_have_count(0)
                settle(page)
                expect(button(page, "lbl_toxic")).to_be_enabled()
                expected: dict[int, str] = {}
                for how, label in (("click", "toxic"), ("click", "non_toxic"), ("1", "toxic"), ("0", "non_toxic"),
                                   ("1", "toxic")):
                    image_id = current_image(page)
                    assert image_id is not None
                    if how == "click":
                        button(page, "lbl_toxic" if label == "toxic" else "lbl_neutral").click()
                    else:
                        page.locator("h1").first.click()  # focus off any text field: keys go to the app
                        page.keyboard.press(how)
                    shown = "Toxic" if label == "toxic" else "Neutral"
                    expect(page.get_by_text(f"Labeled #{image_id} as {shown}.")).to_be_visible()
                    expected[image_id] = label
                    wait_for_image_change(page, image_id)
                no_exceptions(page)
                quiet(page)
                page.screenshot(path=str(shots / "label.png"), full_page=True)

                # Undo the last one with ← (Back)
                last = list(expected)[-1]
                page.locator("h1").first.click()
                page.keyboard.press("ArrowLeft")
                expect(page.get_by_text(f"Undid your label on #{last}.")).to_be_visible()
                settle(page)
                assert current_image(page) == last
                del expected[last]

                with db.session_scope(db_url) as session:
                    rows = session.execute(select(Label.image_id, Label.label, Label.revoked_at)
                                           .where(Label.annotator == "alice").order_by(Label.id)).all()
                    paths = dict(session.execute(select(Image.id, Image.path)).all())
                assert len(rows) == 5
                assert [r.image_id for r in rows if r.revoked_at is not None] == [last]
                assert {r.image_id: r.label for r in rows if r.revoked_at is None} == expected

                # Data page: download annotations.csv
                page.goto(base + "/Data")
                settle(page)
                with page.expect_download() as info:
                    button(page, "data_export").click()
                download = info.value
                assert download.suggested_filename == "annotations.csv"
                csv_bytes = Path(download.path()).read_bytes()
                want = "filename,label\n" + "".join(f"{paths[i]},{lab}\n" for i, lab in
                                                    sorted(expected.items(), key=lambda kv: paths[kv[0]]))
                assert csv_bytes.decode("utf-8") == want
                with db.session_scope(db_url) as session:
                    assert export_annotations(session) == want
                no_exceptions(page)
                quiet(page)
                page.screenshot(path=str(shots / "data.png"), full_page=True)
                context.close()

            # A model run, so the dashboard has something to show
            from workbench.predictors.base import PredictorStep
            from workbench.runs.runner import run_step

            summary = run_step(db_url, PredictorStep(MeanPredictor.make()), list(paths), memes_dir=memes,
                               lock_dir=tmp_path / "artefacts")
            assert summary.status == "done"
            db.dispose_all()

            # Deep links, each the first page a fresh server serves (then the Label page's ?image= link)
            for path, ready in (("/Gallery", "[data-testid='stImage'] img"),
                                ("/Dashboard", "[data-testid='stVegaLiteChart']")):
                with streamlit_server(env, log) as base:
                    context = browser.new_context(viewport={"width": 1400, "height": 1000})
                    page = context.new_page()
                    page.set_default_timeout(TIMEOUT_MS)
                    page.goto(base + path)
                    settle(page)
                    if path == "/Gallery":
                        expect(page.get_by_text(f"{N_MEMES} memes match")).to_be_visible()
                        expect(page.locator(ready)).to_have_count(N_MEMES)  # every thumbnail rendered
                    else:
                        expect(page.get_by_text("Metrics (95% bootstrap CI)")).to_be_visible()
                        expect(page.locator(ready).first).to_be_visible()
                    quiet(page)
                    no_exceptions(page)
                    page.screenshot(path=str(shots / f"deeplink_{path.strip('/').lower()}.png"), full_page=True)
                    if path == "/Dashboard":
                        page.goto(f"{base}/Label?image={last}")
                        settle(page)
                        expect(page.get_by_text(f"id {last}")).to_be_visible()
                        quiet(page)
                        no_exceptions(page)
                        page.screenshot(path=str(shots / "deeplink_label.png"), full_page=True)
                    context.close()
        finally:
            browser.close()
    assert sorted(p.name for p in shots.iterdir()) == ["data.png", "deeplink_dashboard.png", "deeplink_gallery.png",
                                                       "deeplink_label.png", "home.png", "label.png"]
