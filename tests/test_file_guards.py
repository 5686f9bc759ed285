"""No file outside the memes folder is ever read (issue 22): the one guarded resolver for stored
paths, and scans that never open FIFOs, devices, links leaving the folder or files past the cap."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from workbench.store.demo_memes import render_meme
from workbench.store.ingest import scan_folder
from workbench.store.paths import UnsafePath, check_rel_path, image_file
from workbench.store.schema import Image


def png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    render_meme("тест", seed=seed, size=(48, 48)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("rel", ["../x.png", "a/../../x.png", "/etc/passwd", "C:/x.png", "a\\..\\x.png", "",
                                 "a//b.png", "./a.png", "a/\x00.png", "a/"])
def test_stored_paths_that_leave_the_folder_are_refused(tmp_path, rel):
    assert check_rel_path(rel) is not None
    with pytest.raises(UnsafePath):
        image_file(tmp_path, rel)


def test_a_link_out_of_the_folder_is_refused_and_one_inside_resolves(tmp_path):
    memes = tmp_path / "memes"
    (memes / "a").mkdir(parents=True)
    (memes / "a" / "in.png").write_bytes(png_bytes(1))
    (tmp_path / "secret.png").write_bytes(png_bytes(2))
    (memes / "a" / "out.png").symlink_to(tmp_path / "secret.png")
    (memes / "a" / "alias.png").symlink_to(memes / "a" / "in.png")
    (memes / "up").symlink_to(tmp_path, target_is_directory=True)
    assert image_file(memes, "a/in.png") == (memes / "a" / "in.png").resolve()
    assert image_file(memes, "a/alias.png") == (memes / "a" / "in.png").resolve()
    for rel in ("a/out.png", "up/secret.png"):
        with pytest.raises(UnsafePath, match="outside the memes folder"):
            image_file(memes, rel)


def _scan_in_thread(session, memes_dir, seconds: float = 30):
    """scan_folder in a thread, joined with a deadline: a scan that opens a FIFO blocks forever."""
    out: dict = {}
    worker = threading.Thread(target=lambda: out.setdefault("report", scan_folder(session, memes_dir)), daemon=True)
    worker.start()
    worker.join(seconds)
    return out.get("report")


def test_scan_skips_fifos_devices_outside_links_and_files_past_the_cap(session, settings, tmp_path):
    memes = settings.memes_dir
    (memes / "batch").mkdir(parents=True)
    (memes / "batch" / "ok.png").write_bytes(png_bytes(3))
    (memes / "batch" / "z_inside_link.png").symlink_to(memes / "batch" / "ok.png")
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(4))
    (memes / "batch" / "secret.png").symlink_to(secret)
    (memes / "batch" / "zero.png").symlink_to("/dev/zero")
    fifo = memes / "batch" / "y.png"
    os.mkfifo(fifo)
    with open(memes / "batch" / "huge.png", "wb") as fh:  # sparse: past the 25 MB cap, costs no disk
        fh.truncate(26 * 2**20)
    report = _scan_in_thread(session, memes)
    if report is None:  # the old behaviour: unblock the scan stuck opening the FIFO, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert report is not None, "the scan hung (it opened the FIFO)"
    by_name = {f.name: f for f in report.files}
    assert by_name["batch/ok.png"].status == "added"
    assert by_name["batch/y.png"].status == "rejected" and "not a regular file" in by_name["batch/y.png"].reason
    assert by_name["batch/secret.png"].status == "rejected" and "outside" in by_name["batch/secret.png"].reason
    assert by_name["batch/zero.png"].status == "rejected" and "outside" in by_name["batch/zero.png"].reason
    assert by_name["batch/huge.png"].status == "rejected" and "limit is 25 MB" in by_name["batch/huge.png"].reason
    assert by_name["batch/z_inside_link.png"].status == "duplicate"  # same content as ok.png, inside the folder
    session.commit()
    assert sorted(session.scalars(select(Image.path))) == ["batch/ok.png"]


def test_stored_rows_that_point_outside_are_never_read_or_served(session, settings, tmp_path, clear_streamlit_cache):
    """Rows as a hostile bundle restored them before restore checked paths: OCR refuses them per
    image (the outside file, a readable image, is never read), the Label page shows the meme as
    missing, and no thumbnail is made of the outside file."""
    from sqlalchemy import insert
    from streamlit.testing.v1 import AppTest

    from workbench.ocr.step import OcrStep
    from workbench.ocr.tesseract import TesseractEngine
    from workbench.runs.runner import run_step
    from workbench.store.schema import OcrResult

    secret = tmp_path / "secret.png"
    render_meme("СЕКРЕТ", seed=9, size=(200, 120)).save(secret)
    (settings.memes_dir / "in").mkdir(parents=True)
    (settings.memes_dir / "in" / "ok.png").write_bytes(png_bytes(8))
    scan_folder(session, settings.memes_dir)
    base = {"format": "PNG", "width": 1, "height": 1, "bytes": 10, "n_frames": 1, "source": "folder", "folder": "",
            "missing": False, "original_name": "x"}
    session.execute(insert(Image), [{**base, "sha256": "a" * 64, "path": "../secret.png"},
                                    {**base, "sha256": "b" * 64, "path": str(secret)}])
    session.commit()
    ids = dict((p, i) for i, p in session.execute(select(Image.id, Image.path)))
    session.commit()
    summary = run_step(settings.db_url, OcrStep(TesseractEngine()), list(ids.values()), memes_dir=settings.memes_dir,
                       lock_dir=settings.artefacts_dir)
    assert (summary.done, summary.failed) == (1, 2)
    rows = {i: (text, error) for i, text, error in session.execute(
        select(OcrResult.image_id, OcrResult.text, OcrResult.error))}
    for rel in ("../secret.png", str(secret)):
        text, error = rows[ids[rel]]
        assert error.startswith("refused:") and "СЕКРЕТ" not in (text or "")
    session.commit()  # no transaction held while the page runs
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"), default_timeout=120)
    at.switch_page("pages/1_Label.py")
    at.session_state["annotator"] = "alice"
    at.query_params.update({"image": str(ids["../secret.png"])})
    at.run()
    assert not at.exception
    assert any("missing" in e.value for e in at.error)
    assert not list(settings.artefacts_dir.rglob("*.jpg"))


def test_scan_refuses_names_no_stored_path_may_have(session, settings):
    """Ingest applies the stored-path rule per file: a name with a backslash or a control
    character would be refused by every reader later, so it is refused now, with its reason."""
    folder = settings.memes_dir / "batch"
    folder.mkdir(parents=True)
    (folder / "good.png").write_bytes(png_bytes(11))
    (folder / "back\\slash.png").write_bytes(png_bytes(12))
    (folder / "tab\tname.png").write_bytes(png_bytes(13))
    report = scan_folder(session, settings.memes_dir)
    by_name = {f.name: f for f in report.files}
    assert by_name["batch/good.png"].status == "added"
    assert by_name["batch/back\\slash.png"].status == "rejected" and "backslash" in by_name["batch/back\\slash.png"].reason
    assert by_name["batch/tab\tname.png"].status == "rejected" and "control" in by_name["batch/tab\tname.png"].reason
