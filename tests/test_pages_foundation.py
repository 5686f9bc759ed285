"""The real pages through Streamlit's AppTest on a real SQLite file: labeling (label, next,
undo, deep link, text correction, model verdicts), gallery filters, data page actions, and
every page rendering when opened first on a fresh database."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import NamedTuple

import pytest
from sqlalchemy import select
from streamlit.runtime.memory_media_file_storage import _calculate_file_id
from streamlit.testing.v1 import AppTest

from workbench.store.annotations import export_annotations
from workbench.store.demo_memes import render_meme, write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import consensus_labels
from workbench.store.ocr_texts import best_text
from workbench.store.schema import Image, Label, ModelRun, OcrResult, Prediction

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = REPO_ROOT / "streamlit_app.py"
PAGES = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "pages").glob("*.py"))
TIMEOUT = 120


def open_page(page: str | None, annotator: str | None = "alice", query: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if page:
        at.switch_page(page)
    if annotator:
        at.session_state["annotator"] = annotator
    if query:
        at.query_params.update(query)
    return at.run()


def done(session) -> None:
    """End the test's transaction: every SQLite transaction here takes the write lock (BEGIN
    IMMEDIATE), so a test must not hold one while the page writes."""
    session.commit()
    session.expire_all()


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


class Meme(NamedTuple):
    id: int
    path: str
    folder: str


@pytest.fixture
def memes(settings, session) -> list[Meme]:
    """Four ingested demo memes (2 toxic, 2 neutral by folder), ordered by path. Plain
    tuples: touching an expired ORM object would open a transaction (and take the lock)."""
    write_sample_memes(settings.memes_dir, n=4, size=(96, 96))
    scan_folder(session, settings.memes_dir)
    images = [Meme(*r) for r in session.execute(select(Image.id, Image.path, Image.folder).order_by(Image.path))]
    done(session)
    return images


@pytest.mark.parametrize("page", [None, *PAGES], ids=["streamlit_app.py", *PAGES])
def test_every_page_renders_first_on_a_fresh_db(settings, clear_streamlit_cache, page) -> None:
    at = open_page(page, annotator=None)
    no_exception(at)


def shown_image_id(at: AppTest) -> int:
    return int(at.query_params["image"])


def test_label_toxic_then_next_then_undo(settings, session, memes, clear_streamlit_cache) -> None:
    at = open_page("pages/1_Label.py")
    no_exception(at)
    first = shown_image_id(at)
    assert first == memes[0].id
    assert memes[0].path in [t.value for t in at.text]
    at.text_input(key=f"lbl_note_{first}").input("obvious insult")
    at.button(key="lbl_toxic").click().run()
    no_exception(at)
    rows = session.execute(select(Label.image_id, Label.label, Label.annotator, Label.note, Label.revoked_at)
                           .where(Label.annotator == "alice")).all()
    done(session)
    assert rows == [(first, "toxic", "alice", "obvious insult", None)]
    second = shown_image_id(at)
    assert second == memes[1].id and memes[1].path in [t.value for t in at.text]
    assert "You (alice) labeled 1 of 4" in at.get("progress")[0].proto.text
    at.button(key="lbl_back").click().run()  # undo: the label is revoked and the first meme is back
    no_exception(at)
    assert session.scalar(select(Label.revoked_at).where(Label.annotator == "alice")) is not None
    assert shown_image_id(at) == first
    assert consensus_labels(session)[first] == "toxic"  # back to the folder's label
    done(session)
    at.button(key="lbl_neutral").click().run()
    at.button(key="lbl_skip").click().run()
    assert shown_image_id(at) == memes[2].id
    assert consensus_labels(session)[first] == "non_toxic"  # alice outranks the folder
    done(session)


def test_labeling_needs_an_annotator_name(settings, memes, clear_streamlit_cache) -> None:
    at = open_page("pages/1_Label.py", annotator=None)
    no_exception(at)
    assert at.button(key="lbl_toxic").disabled and at.button(key="lbl_neutral").disabled
    assert any("Enter your name" in w.value for w in at.warning)
    at.sidebar.text_input(key="_annotator_input").input("bob").run()
    assert not at.button(key="lbl_toxic").disabled


def test_deep_link_text_correction_and_model_verdicts(settings, session, memes, clear_streamlit_cache) -> None:
    target = memes[3]
    session.add(OcrResult(image_id=target.id, engine="tesseract", fingerprint="t1", text="<script>КОТ</script>"))
    run = ModelRun(kind="vlm", model_id="tiny/vlm", name="tiny vlm", fingerprint="r1")
    session.add(run)
    session.flush()
    session.add(Prediction(run_id=run.id, image_id=target.id, label="toxic", prob_toxic=0.91,
                           explanation="Оскорбление в подписи"))
    session.commit()
    at = open_page("pages/1_Label.py", query={"image": str(target.id)})
    no_exception(at)
    assert shown_image_id(at) == target.id
    area = at.text_area(key=f"lbl_ocr_{target.id}")
    assert area.value == "<script>КОТ</script>"  # shown as text in an input, never as HTML
    table = next(d for d in at.dataframe if "P(toxic)" in d.value.columns)
    models = table.value
    # the verdict first, at full width under the meme (not in the narrow column behind a scroll bar)
    assert list(models.columns) == ["label", "P(toxic)", "explanation", "run"]  # no error column: none failed
    assert list(models["run"]) == ["tiny vlm (vlm)"] and list(models["explanation"]) == ["Оскорбление в подписи"]
    in_columns = [d.value.columns.tolist() for column in at.main.columns for d in column.dataframe]
    assert in_columns and ["label", "P(toxic)", "explanation", "run"] not in in_columns  # the labels table is there
    widths = {c: cfg.get("width") for c, cfg in json.loads(table.proto.columns).items() if c != "_index"}
    assert widths == {"label": "small", "P(toxic)": "small", "explanation": "large", "run": "medium"}
    area.input("кот спит")
    at.button(key="lbl_save_text").click().run()
    no_exception(at)
    assert best_text(session, target.id) == "кот спит"
    done(session)


def test_gallery_filters_and_links(settings, session, memes, clear_streamlit_cache) -> None:
    session.add(OcrResult(image_id=memes[0].id, engine="tesseract", fingerprint="t1", text="КОТ ОПЯТЬ СПИТ"))
    session.commit()
    at = open_page("pages/2_Gallery.py")
    no_exception(at)
    assert "4 memes match" in at.caption[0].value or any("4 memes match" in c.value for c in at.caption)
    links = at.main.get("page_link")
    assert len(links) == 4 and all("image=" in link.proto.query_string for link in links)
    at.selectbox(key="gal_label").select("toxic").run()
    toxic_ids = {m.id for m in memes if m.folder == "Негативно"}
    linked = {int(link.proto.query_string.split("=")[1]) for link in at.main.get("page_link")}
    assert linked == toxic_ids
    at.selectbox(key="gal_label").select("any label").run()
    at.text_input(key="gal_text").input("кот").run()  # lower-case query, upper-case OCR text
    linked = {int(link.proto.query_string.split("=")[1]) for link in at.main.get("page_link")}
    assert linked == {memes[0].id}
    assert any(c.value.startswith("1 meme matches ·") for c in at.caption)  # not "1 memes match"
    at.text_input(key="gal_text").input("nothing like this").run()
    assert any("No memes match" in i.value for i in at.info)


def test_gallery_edits_meme_texts_in_one_save(settings, session, memes, clear_streamlit_cache) -> None:
    """Edit mode turns the snippets into text boxes; Save stores only the changed texts, as
    manual corrections by the annotator, and they become the texts in force."""
    session.add(OcrResult(image_id=memes[0].id, engine="tesseract", fingerprint="t1", text="КОТ ОПЯТЬ СПИТ"))
    session.commit()
    at = open_page("pages/2_Gallery.py", annotator=None)
    no_exception(at)
    assert at.toggle(key="gal_edit").disabled  # corrections need a name
    at = open_page("pages/2_Gallery.py")
    at.toggle(key="gal_edit").set_value(True).run()
    no_exception(at)
    assert at.text_area(key=f"gal_txt_{memes[0].id}").value == "КОТ ОПЯТЬ СПИТ"
    at.text_area(key=f"gal_txt_{memes[0].id}").input("КОТ ОПЯТЬ НЕ СПИТ")
    at.text_area(key=f"gal_txt_{memes[1].id}").input("новый текст")
    at.button[-1].click().run()  # the form's Save texts
    no_exception(at)
    session.expire_all()
    assert best_text(session, memes[0].id) == "КОТ ОПЯТЬ НЕ СПИТ" and best_text(session, memes[1].id) == "новый текст"
    manual = list(session.scalars(select(OcrResult).where(OcrResult.engine == "manual")))
    assert sorted(r.image_id for r in manual) == sorted([memes[0].id, memes[1].id])
    assert {r.annotator for r in manual} == {"alice"}
    done(session)
    at.button[-1].click().run()  # nothing changed since: nothing more stored
    no_exception(at)
    assert len(list(session.scalars(select(OcrResult).where(OcrResult.engine == "manual")))) == 2
    done(session)


def test_data_page_upload_import_and_download(settings, session, memes, clear_streamlit_cache) -> None:
    buf = io.BytesIO()
    render_meme("новый мем", seed=5, size=(96, 96)).save(buf, "PNG")
    at = open_page("pages/3_Data.py")
    no_exception(at)
    at.radio(key="data_upload_target").set_value("toxic (Негативно/)")
    at.get("file_uploader")[0].set_value([("new.png", buf.getvalue(), "image/png"),
                                          ("evil.png", b"<svg onload=alert(1)>", "image/png")])
    at.run()
    at.button(key="data_store").click().run()
    no_exception(at)
    report = at.dataframe[0].value
    assert list(report["status"]) == ["rejected", "added"] and "SVG" in report["reason"][0]
    assert (settings.memes_dir / "Негативно" / "new.png").is_file()

    expected = export_annotations(session).encode("utf-8")
    done(session)
    assert expected.count(b"\n") == 6  # header + 4 demo memes + the upload
    button = at.get("download_button")[0]
    assert button.proto.url.endswith(_calculate_file_id(expected, "text/csv", "annotations.csv") + ".csv")


def test_home_demo_button_fills_an_empty_db(settings, session, clear_streamlit_cache) -> None:
    at = open_page(None)
    no_exception(at)
    assert any("no memes" in i.value for i in at.info)
    at.button(key="home_demo").click().run()
    no_exception(at)
    assert [m.value for m in at.metric][:2] == ["40", "40"]


def test_the_app_menu_has_no_deploy_button() -> None:
    """Streamlit reads .streamlit/config.toml from where the app starts: its own parser must see
    the toolbar without developer options (the Deploy button is one of them)."""
    import subprocess
    import sys

    code = ("from streamlit import config; config.get_config_options(force_reparse=True); "
            "print(config.get_option('client.toolbarMode'), config.get_option('server.address'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["viewer", "127.0.0.1"]
