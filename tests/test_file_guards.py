"""No file outside the memes folder is ever read (issue 22): the one guarded resolver for stored
paths, and scans that never open FIFOs, devices, links leaving the folder or files past the cap."""

from __future__ import annotations

import io
import os
import threading

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
