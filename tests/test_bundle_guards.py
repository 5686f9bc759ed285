"""Backup bundles are never trusted (issue 22): restore holds every member to size caps while
it streams, refuses image paths that leave the memes folder, turns every malformed member into
one clear error with nothing stored, restores users only when asked, and is audited; a backup
never reads or writes outside its target and never leaves a partial bundle under its name."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from sqlalchemy import func, insert, select

from workbench.store import db
from workbench.store.backup import BackupError, backup, restore
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import add_label
from workbench.store.schema import AuditEntry, Image, Label, User


@pytest.fixture
def bundle(settings, session, tmp_path):
    """A real backup (zip, with the image files) of three labeled memes and one user."""
    write_sample_memes(settings.memes_dir, n=3, seed=5, size=(48, 48))
    scan_folder(session, settings.memes_dir)
    for image_id in session.scalars(select(Image.id)):
        add_label(session, image_id, "toxic", "anna")
    session.add(User(email="boss@lab.org", role="admin"))
    session.commit()
    out = tmp_path / "good.zip"
    backup(session, out, memes_dir=settings.memes_dir, include_files=True)
    return out


def rewrite(src, dst, change):
    """A copy of zip `src` with members replaced: change(name, bytes) -> bytes (or None to drop)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def empty_db(tmp_path, name="target"):
    url = f"sqlite:///{tmp_path / (name + '.sqlite3')}"
    db.upgrade(url)
    return url


def restore_into(url, path, **kwargs):
    with db.session_scope(url) as s:
        return restore(s, path, **kwargs)


def nothing_stored(url):
    with db.session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Image)) == 0 and \
            s.scalar(select(func.count()).select_from(Label)) == 0


@pytest.mark.parametrize("bad_path", ["../../x.png", "/etc/passwd", "a/../../../x.png", "C:\\x.png"])
def test_image_rows_outside_the_memes_folder_are_refused_by_line(bundle, tmp_path, bad_path):
    def change(name, data):
        if name == "images.csv":
            lines = data.decode().splitlines(keepends=True)
            header = lines[0].rstrip("\n").split(",")
            cells = lines[1].rstrip("\n").split(",")
            cells[header.index("path")] = bad_path
            lines[1] = ",".join(cells) + "\n"
            return "".join(lines).encode()
        return data

    url = empty_db(tmp_path)
    with pytest.raises(BackupError, match=r"images\.csv: 1 image path.*line 2"):
        restore_into(url, rewrite(bundle, tmp_path / "evil.zip", change), memes_dir=tmp_path / "memes2")
    assert nothing_stored(url)
    assert not (tmp_path / "x.png").exists()


def test_members_past_the_caps_are_refused_while_streaming(bundle, tmp_path, monkeypatch):
    # A highly compressible annotations.csv: small in the zip, 8 MB expanded.
    big = rewrite(bundle, tmp_path / "bomb.zip",
                  lambda name, data: data + b"x" * (8 << 20) if name == "annotations.csv" else data)
    assert big.stat().st_size < 1 << 20
    monkeypatch.setenv("WORKBENCH_RESTORE_MAX_MB", "2")
    url = empty_db(tmp_path)
    with pytest.raises(BackupError, match="over the restore limit of 2 MB"):
        restore_into(url, big)
    assert nothing_stored(url)


def test_a_zip_that_lies_about_a_members_size_is_stopped_at_the_cap(bundle, tmp_path, monkeypatch):
    liar = rewrite(bundle, tmp_path / "liar.zip",
                   lambda name, data: data + b"\n" * (3 << 20) if name == "labels.csv" else data)
    raw = bytearray(liar.read_bytes())
    with zipfile.ZipFile(liar) as z:
        info = z.getinfo("labels.csv")
    # Declare 100 bytes in the central directory: the reader must count what really comes out.
    cd = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"labels.csv") + 1)
    raw[cd + 24: cd + 28] = (100).to_bytes(4, "little")
    local = info.header_offset
    raw[local + 22: local + 26] = (100).to_bytes(4, "little")
    liar.write_bytes(bytes(raw))
    monkeypatch.setenv("WORKBENCH_RESTORE_MAX_MB", "1")
    url = empty_db(tmp_path)
    with pytest.raises(BackupError):
        restore_into(url, liar)
    assert nothing_stored(url)


def test_a_single_huge_line_is_refused(bundle, tmp_path, monkeypatch):
    long_line = rewrite(bundle, tmp_path / "line.zip", lambda name, data: data.rstrip(b"\n") + b"a" * (3 << 20) + b"\n"
                        if name == "settings.jsonl" else data)
    monkeypatch.setenv("WORKBENCH_RESTORE_MAX_LINE_MB", "1")
    url = empty_db(tmp_path)
    with pytest.raises(BackupError, match=r"settings\.jsonl line 1: longer than 1 MB"):
        restore_into(url, long_line)
    assert nothing_stored(url)


BROKEN = {
    "bad CRC": ("labels.csv", None),
    "bad type": ("images.csv", lambda d: d.replace(b",48,", b",forty-eight,", 1)),
    "not JSON": ("audit_log.jsonl", lambda d: b"{not json\n"),
    "not an object": ("manifest.json", lambda d: b"[1, 2]"),
    "big field": ("labels.csv", lambda d: d.rstrip(b"\n") + b',"' + b"n" * (300 << 10) + b'"\n'),
}


def _corrupt_crc(path, member):
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("case", ["bad CRC", "bad type", "foreign key", "not JSON", "not an object", "big field"])
def test_malformed_members_give_one_clear_error_and_store_nothing(bundle, tmp_path, case):
    target = tmp_path / f"{case.replace(' ', '_')}.zip"
    if case == "bad CRC":
        rewrite(bundle, target, lambda name, data: data)
        _corrupt_crc(target, "labels.csv")
    elif case == "foreign key":
        def change(name, data):
            if name != "labels.csv":
                return data
            lines = data.decode().splitlines(keepends=True)
            header = lines[0].rstrip("\n").split(",")
            cells = lines[1].rstrip("\n").split(",")
            cells[header.index("image_id")] = "99999"
            lines[1] = ",".join(cells) + "\n"
            return "".join(lines).encode()
        rewrite(bundle, target, change)
    else:
        member, fix = BROKEN[case]  # (bad CRC and foreign key are made above)
        rewrite(bundle, target, lambda name, data: fix(data) if name == member else data)
    url = empty_db(tmp_path)
    with pytest.raises(BackupError) as info:
        restore_into(url, target)
    assert str(info.value).strip() and "\n" not in str(info.value)
    assert nothing_stored(url)


def test_users_come_across_only_when_asked_and_the_restore_is_audited(bundle, tmp_path):
    url = empty_db(tmp_path, "plain")
    report = restore_into(url, bundle, actor="restorer@lab.org")
    assert report.skipped == {"users": 1} and "--with-users" in report.summary()
    with db.session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(User)) == 0
        entry = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
        assert (entry.actor, entry.action, entry.detail["with_users"]) == ("restorer@lab.org", "restore", False)
    url = empty_db(tmp_path, "with_users")
    restore_into(url, bundle, with_users=True)
    with db.session_scope(url) as s:
        assert s.scalars(select(User.email)).all() == ["boss@lab.org"]


def test_backup_with_files_never_reads_or_writes_outside(settings, session, tmp_path):
    write_sample_memes(settings.memes_dir, n=2, seed=6, size=(48, 48))
    scan_folder(session, settings.memes_dir)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"top secret")
    # Rows as a hostile bundle would have restored them before this fix.
    session.execute(insert(Image), [
        {"sha256": "a" * 64, "path": "../secret.png", "original_name": "x", "format": "PNG", "width": 1, "height": 1,
         "bytes": 10, "n_frames": 1, "source": "folder", "folder": "", "missing": False},
        {"sha256": "b" * 64, "path": str(secret), "original_name": "y", "format": "PNG", "width": 1, "height": 1,
         "bytes": 10, "n_frames": 1, "source": "folder", "folder": "", "missing": False}])
    session.commit()
    for out in (tmp_path / "bk" / "bundle.zip", tmp_path / "bk" / "folder"):
        report = backup(session, out, memes_dir=settings.memes_dir, include_files=True)
        assert report.files == 2 and sorted(report.skipped_files) == sorted(["../secret.png", str(secret)])
    with zipfile.ZipFile(tmp_path / "bk" / "bundle.zip") as z:
        assert not any("secret" in n for n in z.namelist())
    assert sorted(p.name for p in (tmp_path / "bk").iterdir()) == ["bundle.zip", "folder"]
    assert not any("secret" in str(p) for p in (tmp_path / "bk").rglob("*"))


@pytest.mark.parametrize("name", ["b.zip", "folder"])
def test_a_failed_backup_leaves_nothing_under_its_name(settings, session, tmp_path, name):
    write_sample_memes(settings.memes_dir, n=2, seed=7, size=(48, 48))
    scan_folder(session, settings.memes_dir)
    session.commit()
    out = tmp_path / "bk" / name
    seen = []

    def crash(table):
        seen.append(out.exists())
        if table == "predictions":
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        backup(session, out, on_progress=crash)
    assert seen and not any(seen)  # never visible under the final name while being written
    assert list((tmp_path / "bk").iterdir()) == []  # and the partial one is gone
    backup(session, out)  # so the next backup to that name works
    assert json.loads(io.BytesIO((out / "manifest.json").read_bytes() if out.is_dir() else
                                 zipfile.ZipFile(out).read("manifest.json")).read())["format_version"] == 1
