"""Backup bundles: restore into an empty SQLite or PostgreSQL DB gives back every row count,
the same rows, and annotations.csv byte for byte; a non-empty DB is refused."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from workbench.predictors.base import PredictInput, Predictor, PredictorStep, PredictOutput
from workbench.runs.runner import run_step
from workbench.store import db
from workbench.store.annotations import export_annotations
from workbench.store.backup import (
    BackupError,
    backup,
    decode_csv_cell,
    encode_csv_cell,
    read_manifest,
    restore,
    snapshot_session,
    table_counts,
)
from workbench.store.catalog import stats
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import add_label, set_setting, undo_last
from workbench.store.ocr_texts import save_correction
from workbench.store.schema import Base, DistinctPair, DuplicateGroup, DuplicateMember, Embedding, Label, OcrResult

REPO_ROOT = Path(__file__).resolve().parent.parent
HOSTILE_NOTES = ["=HYPERLINK(\"http://x\")", "'quoted", "\\N", "line1\nline2, \"q\"", "😀 мем", "", "-1", "@x"]


class MeanPredictor(Predictor):
    """Deterministic test predictor: toxic when the image is darker than mid-grey."""

    kind = "test-mean"

    def config(self) -> dict:
        return {"model": "mean-brightness", "threshold": 128}

    def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        outs = []
        for item in batch:
            mean = float(np.asarray(item.image.convert("L")).mean())
            p = round(1 - mean / 255, 6)
            outs.append(PredictOutput("toxic" if p > 0.5 else "non_toxic", p, explanation=f"<b>mean</b> {mean:.1f}",
                                      extra={"mean": mean, "text": item.ocr_text}))
        return outs


def populate(settings, session) -> None:
    """A small DB that uses every table: folder labels, human labels with history and undo,
    OCR + a manual correction, a model run with predictions (via the job runner), an
    embedding, a remembered setting, a near-duplicate group and a "not duplicates" pair."""
    write_sample_memes(settings.memes_dir, n=12, seed=3, size=(64, 64))
    scan_folder(session, settings.memes_dir)
    ids = list(session.scalars(select(Label.image_id).distinct()))
    for n, image_id in enumerate(ids[:8]):
        add_label(session, image_id, "toxic" if n % 3 else "non_toxic", "anna", note=HOSTILE_NOTES[n % len(HOSTILE_NOTES)])
        add_label(session, image_id, "non_toxic", "boris")
    undo_last(session, "boris")
    add_label(session, ids[0], "toxic", "anna")  # history: anna changed her mind
    session.add(OcrResult(image_id=ids[0], engine="tesseract", fingerprint="tess:abc", config={"lang": "rus"},
                          text="=SUM(A1)", confidence=0.5, boxes=[[1, 2, 3, 4]]))
    save_correction(session, ids[0], "<script>alert(1)</script>", "anna")
    session.add(Embedding(image_id=ids[1], fingerprint="emb:1", kind="clip-image", dim=4, vector=b"\x00\x01" * 4))
    set_setting(session, "last_annotator", "anna")
    group = DuplicateGroup(status="active", params={"threshold": 0.25, "hash": "phash256"})
    session.add(group)
    session.flush()
    session.add_all([DuplicateMember(group_id=group.id, image_id=ids[2], distance=0.0, cosine=None),
                     DuplicateMember(group_id=group.id, image_id=ids[3], distance=0.12, cosine=0.97)])
    session.add(DistinctPair(image_a=ids[4], image_b=ids[5], annotator="anna", group_id=None))
    session.commit()
    summary = run_step(settings.db_url, PredictorStep(MeanPredictor()), ids, memes_dir=settings.memes_dir,
                       lock_dir=settings.artefacts_dir, batch_size=5)
    assert summary.status == "done" and summary.done == len(ids)


def snapshot(session) -> dict:
    """Every row of every table, for exact comparison (datetimes as UTC, naive)."""
    out = {}
    for name, table in Base.metadata.tables.items():
        rows = []
        for row in session.execute(select(table).order_by(*table.primary_key.columns)).mappings():
            record = {}
            for key, value in row.items():
                if hasattr(value, "tzinfo") and value.tzinfo is not None:
                    value = value.astimezone(__import__("datetime").timezone.utc).replace(tzinfo=None)
                record[key] = bytes(value) if isinstance(value, memoryview) else value
            rows.append(record)
        out[name] = rows
    return out


@pytest.mark.parametrize("value", ["", "plain", "=1+1", "+7", "-x", "@a", "'a", "''", "\\N", "\\x", "\ttab", None])
def test_csv_cells_round_trip_and_are_spreadsheet_safe(value):
    cell = encode_csv_cell(value)
    assert decode_csv_cell(cell) == value
    if value:
        assert not cell.startswith(("=", "+", "-", "@", "\t")), cell


@pytest.mark.parametrize("suffix", [".zip", ""])
def test_restore_into_empty_sqlite_reproduces_everything(settings, session, tmp_path, suffix):
    populate(settings, session)
    before, before_stats = snapshot(session), stats(session)
    annotations = export_annotations(session)
    assert annotations.count("\n") > 5
    report = backup(session, tmp_path / f"bundle{suffix}", include_embeddings=True)
    assert report.counts["labels"] == len(before["labels"]) and report.counts["embeddings"] == 1
    assert read_manifest(tmp_path / f"bundle{suffix}")["counts"] == report.counts

    url2 = f"sqlite:///{tmp_path / 'restored.sqlite3'}"
    db.upgrade(url2)
    with db.session_scope(url2) as s2:
        restored = restore(s2, tmp_path / f"bundle{suffix}")
    assert restored.annotations_identical
    with db.session_scope(url2) as s2:
        after = snapshot(s2)
        restore_entry = after["audit_log"].pop()  # the restore itself is audited, after the bundle's history
        assert restore_entry["action"] == "restore" and restore_entry["detail"]["counts"]["labels"] == len(before["labels"])
        assert after == before
        assert stats(s2) == before_stats
        assert export_annotations(s2).encode() == annotations.encode()
        # new rows after a restore get fresh ids
        new = add_label(s2, before["images"][0]["id"], "toxic", "carl")
        assert new.id > max(r["id"] for r in before["labels"])


def test_restore_refuses_a_non_empty_db_and_changes_nothing(settings, session, tmp_path):
    populate(settings, session)
    backup(session, tmp_path / "b.zip")
    counts = table_counts(session)
    with pytest.raises(BackupError, match="not empty"):
        restore(session, tmp_path / "b.zip")
    assert table_counts(session) == counts


def test_backup_refuses_to_overwrite_and_restore_rejects_foreign_or_tampered_bundles(settings, session, tmp_path):
    populate(settings, session)
    backup(session, tmp_path / "b")
    with pytest.raises(BackupError, match="not an empty folder"):
        backup(session, tmp_path / "b")
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    url2 = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    db.upgrade(url2)
    with db.session_scope(url2) as s2:
        with pytest.raises(BackupError, match="not a zip"):
            restore(s2, tmp_path / "junk.zip")
        with pytest.raises(BackupError, match="no manifest"):
            restore(s2, tmp_path)
    # a label row deleted from the bundle: counts no longer match -> nothing restored
    labels_csv = tmp_path / "b" / "labels.csv"
    lines = labels_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    labels_csv.write_text("".join(lines[:-1]), encoding="utf-8")
    with db.session_scope(url2) as s2:
        with pytest.raises(BackupError, match="differ"):
            restore(s2, tmp_path / "b")
    with db.session_scope(url2) as s2:
        assert sum(table_counts(s2).values()) == 0


def test_files_travel_in_the_bundle_and_hostile_paths_stay_inside(settings, session, tmp_path):
    populate(settings, session)
    backup(session, tmp_path / "b.zip", memes_dir=settings.memes_dir, include_files=True)
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        assert sum(n.startswith("files/") for n in zf.namelist()) == 12
    memes2 = tmp_path / "memes2"
    url2 = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    db.upgrade(url2)
    with db.session_scope(url2) as s2:
        # a hostile path in the manifest must not be written outside memes2
        from workbench.store.schema import Image

        report = restore(s2, tmp_path / "b.zip", memes_dir=memes2)
        assert report.files_written == 12 and not report.files_missing
        s2.get(Image, 1).path = "../evil.png"
        from workbench.store.backup import RestoreReport, _Bundle, _restore_files

        rr = RestoreReport(counts={})
        _restore_files(_Bundle(tmp_path / "b.zip", "r"), memes2, [("../evil.png", "x", False), ("/etc/x", "y", False)],
                       rr, True)
        assert rr.files_missing == ["../evil.png", "/etc/x"] and not (tmp_path / "evil.png").exists()
        s2.rollback()
    assert sorted(p.relative_to(memes2) for p in memes2.rglob("*.png")) == sorted(
        p.relative_to(settings.memes_dir) for p in settings.memes_dir.rglob("*.png"))


def test_cli_backup_and_restore(settings, session, tmp_path):
    populate(settings, session)
    annotations = export_annotations(session)
    session.commit()  # end our transaction: SQLite BEGIN IMMEDIATE holds the write lock until then
    env = dict(os.environ)
    run = lambda *a, **kw: subprocess.run([sys.executable, "-m", "workbench", *a], cwd=REPO_ROOT, env=kw.get("env", env),  # noqa: E731
                                          capture_output=True, text=True, timeout=120)
    out = run("backup", str(tmp_path / "cli.zip"))
    assert out.returncode == 0, out.stderr
    assert "backup written" in out.stdout
    refused = run("restore", str(tmp_path / "cli.zip"))
    assert refused.returncode == 2 and "not empty" in refused.stderr
    env2 = env | {"WORKBENCH_DB_URL": f"sqlite:///{tmp_path / 'cli2.sqlite3'}"}
    ok = run("restore", str(tmp_path / "cli.zip"), env=env2)
    assert ok.returncode == 0, ok.stderr
    assert "annotations.csv identical: yes" in ok.stdout
    exported = run("export", "annotations", str(tmp_path / "a.csv"), env=env2)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "a.csv").read_bytes() == annotations.encode("utf-8")


@pytest.mark.postgres
def test_restore_into_empty_postgres(settings, session, tmp_path):
    from tests.support.pgserver import PostgresUnavailable, find_pg_bin, temporary_postgres

    if find_pg_bin() is None:
        pytest.skip("no PostgreSQL server binary (initdb/pg_ctl) installed")
    populate(settings, session)
    before, annotations = snapshot(session), export_annotations(session)
    backup(session, tmp_path / "pg.zip", include_embeddings=True)
    try:
        with temporary_postgres() as url:
            db.upgrade(url)
            with db.session_scope(url) as pg:
                restore(pg, tmp_path / "pg.zip")
            with db.session_scope(url) as pg:
                after = snapshot(pg)
                assert after["audit_log"].pop()["action"] == "restore"
                assert after == before
                assert export_annotations(pg) == annotations
                new = add_label(pg, before["images"][0]["id"], "toxic", "carl")  # sequences were moved on
                assert new.id > max(r["id"] for r in before["labels"])
            with db.session_scope(url) as pg, pytest.raises(BackupError, match="not empty"):
                restore(pg, tmp_path / "pg.zip")
            from workbench.store.backup import snapshot_session

            with snapshot_session(url) as snap:  # back up the PostgreSQL copy: same content again
                again = backup(snap, tmp_path / "pg-again.zip")
            assert again.counts["labels"] == len(before["labels"]) + 1
            with db.session_scope(url) as pg:
                now = export_annotations(pg).encode("utf-8")
            assert read_manifest(tmp_path / "pg-again.zip")["annotations_sha256"] == hashlib.sha256(now).hexdigest()
            db.dispose_all()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


def test_backup_reads_a_snapshot_and_does_not_block_writers(settings, session, tmp_path):
    """While a backup's snapshot is open, an annotator (another process) can still write,
    and the backup holds the state of the moment it started."""
    from workbench.store.backup import snapshot_session

    populate(settings, session)
    session.commit()
    image_id = session.scalar(select(Label.image_id))
    n_labels = table_counts(session)["labels"]
    annotations = export_annotations(session)
    session.close()
    with snapshot_session(settings.db_url) as snap:
        assert table_counts(snap)["labels"] == n_labels  # the snapshot starts here
        code = ("import sys; from workbench.store import db; from workbench.store.labels import add_label\n"
                f"with db.session_scope({settings.db_url!r}) as s: add_label(s, {image_id}, 'non_toxic', 'zoe')\n")
        writer = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
        assert writer.returncode == 0, writer.stderr
        report = backup(snap, tmp_path / "snap.zip")
    assert report.counts["labels"] == n_labels
    url2 = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    db.upgrade(url2)
    with db.session_scope(url2) as s2:
        restore(s2, tmp_path / "snap.zip")
    with db.session_scope(url2) as s2:
        assert export_annotations(s2) == annotations
    with db.session_scope(settings.db_url) as s:
        assert table_counts(s)["labels"] == n_labels + 1


# ---- database URLs -------------------------------------------------------------------------

PG_PASSWORD = "postgresql://anna:s3cr%40t@db.example:5433/wb?sslmode=require"


@pytest.mark.parametrize(("url", "shown", "normal"), [
    (PG_PASSWORD, "postgresql://anna:***@db.example:5433/wb?sslmode=require",
     PG_PASSWORD.replace("postgresql:", "postgresql+psycopg:")),
    ("postgres://anna:pw@db/wb", "postgres://anna:***@db/wb", "postgresql+psycopg://anna:pw@db/wb"),
    ("postgresql+psycopg://anna:pw@db/wb", "postgresql+psycopg://anna:***@db/wb", None),
    ("postgresql://anna@db/wb?password=s3cret&sslmode=require", "postgresql://anna@db/wb?password=***&sslmode=require",
     "postgresql+psycopg://anna@db/wb?password=s3cret&sslmode=require"),  # libpq's other way to give it
    ("postgresql+psycopg://анна:пароль@db/мемы", "postgresql+psycopg://анна:***@db/мемы", None),
    ("sqlite:///data/workbench.sqlite3", None, None),
    ("sqlite:////srv/мемы и фото/wb.sqlite3", None, None),
    ("not a url: s3cret", "<unparseable database URL>", None),
])
def test_urls_show_no_password_and_plain_postgresql_uses_psycopg_3(url, shown, normal):
    """None: as given. SQLite paths stay readable; the URL that connects keeps its password."""
    assert db.mask_password(url) == (shown or url)
    assert db.normalize_url(url) == (normal or url)


def test_a_new_sqlite_file_gets_its_folder(tmp_path):
    path = tmp_path / "new" / "deeper" / "wb.sqlite3"
    try:
        db.upgrade(f"sqlite:///{path}")
        with snapshot_session(f"sqlite:///{path}") as session:  # the backup's own engine reads it
            assert set(table_counts(session).values()) == {0}
    finally:
        db.dispose_all()
    assert path.is_file()
