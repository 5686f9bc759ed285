"""Ingest of the memes folder and of uploads, on real files and a real SQLite file."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import threading
from pathlib import Path

from sqlalchemy import func, select

from workbench.store.annotations import export_annotations
from workbench.store.demo_memes import render_meme, write_sample_memes
from workbench.store.ingest import folder_lock, scan_folder, store_uploads
from workbench.store.labels import consensus_labels, current_labels
from workbench.store.schema import Image


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    render_meme("тест загрузки", seed=seed, size=(96, 96)).save(buf, "PNG")
    return buf.getvalue()


def n_images(session) -> int:
    return session.scalar(select(func.count()).select_from(Image))


def test_scan_labels_by_folder_and_reports_every_file(session, settings) -> None:
    memes = settings.memes_dir
    write_sample_memes(memes, n=4, size=(96, 96))
    (memes / "inbox").mkdir()
    (memes / "inbox" / "fake.png").write_bytes(b"<html>not an image</html>")
    (memes / "inbox" / "notes.txt").write_text("hello")
    report = scan_folder(session, memes)
    by_name = {f.name: f for f in report.files}
    assert report.counts == {"added": 4, "rejected": 1, "ignored": 1}
    assert "HTML" in by_name["inbox/fake.png"].reason
    labels = consensus_labels(session)
    assert sorted(labels.values()) == ["non_toxic", "non_toxic", "toxic", "toxic"]
    assert {c.annotator for c in current_labels(session)} == {"folder"}


def test_rescan_is_incremental(session, settings) -> None:
    memes = settings.memes_dir
    written = write_sample_memes(memes, n=3, size=(96, 96))
    scan_folder(session, memes)
    # Change an already-ingested file's bytes but keep its size and mtime: an incremental scan
    # must not read it again, so it still counts as unchanged (a full re-hash would reject it).
    victim = written[0].path
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    new = memes / "Нейтрально" / "new.png"
    new.write_bytes(png_bytes(7))
    report = scan_folder(session, memes)
    assert report.counts == {"added": 1, "unchanged": 3}
    assert [f.name for f in report.files if f.status == "added"] == ["Нейтрально/new.png"]


def test_moved_and_renamed_file_is_recognised(session, settings) -> None:
    memes = settings.memes_dir
    written = write_sample_memes(memes, n=2, size=(96, 96))
    scan_folder(session, memes)
    toxic = written[0].path  # in Негативно/
    image_id = session.scalar(select(Image.id).where(Image.path == f"Негативно/{toxic.name}"))
    shutil.move(toxic, memes / "Нейтрально" / "renamed.png")
    report = scan_folder(session, memes)
    moved = [f for f in report.files if f.status == "moved"]
    assert [(f.name, f.image_id) for f in moved] == [("Нейтрально/renamed.png", image_id)]
    assert n_images(session) == 2
    assert consensus_labels(session)[image_id] == "non_toxic"  # the new folder's label
    assert session.get(Image, image_id).folder == "Нейтрально"


def test_duplicates_are_reported_not_added(session, settings) -> None:
    memes = settings.memes_dir
    written = write_sample_memes(memes, n=2, size=(96, 96))
    shutil.copy(written[0].path, memes / "copy of meme.png")
    report = scan_folder(session, memes)
    dup = [f for f in report.files if f.status == "duplicate"]
    assert len(dup) == 1 and "same content as" in dup[0].reason
    assert n_images(session) == 2


def test_deleted_file_is_marked_missing_and_keeps_labels(session, settings) -> None:
    memes = settings.memes_dir
    written = write_sample_memes(memes, n=2, size=(96, 96))
    scan_folder(session, memes)
    written[0].path.unlink()
    scan_folder(session, memes)
    missing = session.scalars(select(Image).where(Image.missing.is_(True))).all()
    assert len(missing) == 1
    assert missing[0].id in consensus_labels(session)  # history is never dropped


def test_upload_into_label_with_report(session, settings) -> None:
    memes = settings.memes_dir
    files = [
        ("мем 1.png", png_bytes(1)),
        ("../../escape.png", png_bytes(2)),
        ("renamed.jpg", png_bytes(3)),  # a PNG named .jpg: stored as .png
        ("again.png", png_bytes(1)),  # same bytes as the first: duplicate
        ("page.png", b"<html><body>hi</body></html>"),
    ]
    report = store_uploads(session, memes, files, label="toxic", annotator="alice")
    assert [f.status for f in report.files] == ["added", "added", "added", "duplicate", "rejected"]
    assert "HTML" in report.files[4].reason
    stored = sorted(p.relative_to(memes).as_posix() for p in memes.rglob("*") if p.is_file())
    assert stored == ["Негативно/escape.png", "Негативно/renamed.png", "Негативно/мем 1.png"]
    current = current_labels(session)
    assert {(c.annotator, c.label) for c in current} == {("alice", "toxic")} and len(current) == 3
    # A rescan afterwards finds those files already known.
    assert scan_folder(session, memes).counts == {"unchanged": 3}


def test_upload_unlabeled_goes_to_uploads_folder(session, settings) -> None:
    report = store_uploads(session, settings.memes_dir, [("x.png", png_bytes(5))])
    assert report.files[0].status == "added"
    assert (settings.memes_dir / "uploads" / "x.png").is_file()
    assert consensus_labels(session) == {}


def test_real_memes_ingest_and_export(session, real_memes: Path) -> None:
    report = scan_folder(session, real_memes)
    assert report.counts.get("added") == 51, report.summary()
    labels = consensus_labels(session)
    assert sorted(labels.values()).count("toxic") == 26
    assert sorted(labels.values()).count("non_toxic") == 25
    rows = list(csv.DictReader(io.StringIO(export_annotations(session))))
    assert len(rows) == 51
    expected = {p.relative_to(real_memes).as_posix(): ("toxic" if p.parent.name == "Негативно" else "non_toxic")
                for p in real_memes.rglob("*") if p.is_file()}
    assert {r["filename"]: r["label"] for r in rows} == expected


def test_folder_lock_makes_a_second_writer_wait(settings) -> None:
    """Writers of one folder (scan, upload, annotations import) take turns, across threads too."""
    order: list[str] = []
    with folder_lock(settings.memes_dir):
        second = threading.Thread(target=lambda: _hold_folder_lock(settings.memes_dir, order))
        second.start()
        second.join(0.5)
        assert second.is_alive()  # waiting for us
        order.append("first done")
    second.join(10)
    assert order == ["first done", "second ran"]


def _hold_folder_lock(memes_dir: Path, order: list[str]) -> None:
    with folder_lock(memes_dir):
        order.append("second ran")


def test_folder_lock_goes_on_unlocked_when_its_file_cannot_be_opened(session, settings, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    with folder_lock(settings.memes_dir):  # the lock path now exists ...
        pass
    [lock_file] = tmp_path.glob("vlmemes-workbench-*.lock")  # ... make it unopenable: a folder
    lock_file.unlink()
    lock_file.mkdir()
    write_sample_memes(settings.memes_dir, n=2, size=(64, 64))
    assert scan_folder(session, settings.memes_dir).count("added") == 2
