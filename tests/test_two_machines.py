"""Two machines, one PostgreSQL (issue 22): processes with their own memes copy, temp dir
and artefacts folder (so no file lock is shared, as on two machines) against one throwaway
PostgreSQL server. Concurrent scans of the same memes never fail on a unique hash and store
each meme once. Skipped when no PostgreSQL server binary is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from workbench.store import db
from workbench.store.demo_memes import write_sample_memes
from workbench.store.schema import Image, Label

REPO = Path(__file__).resolve().parent.parent
N_MEMES = 60

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_url():
    from tests.support.pgserver import PostgresUnavailable, find_pg_bin, temporary_postgres

    if find_pg_bin() is None:
        pytest.skip("no PostgreSQL server binary (initdb/pg_ctl) installed")
    try:
        with temporary_postgres("two_machines") as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


def machine_env(tmp_path: Path, name: str, url: str) -> dict[str, str]:
    """The environment of one 'machine': its own temp dir (file locks), artefacts and memes copy."""
    home = tmp_path / name
    (home / "tmp").mkdir(parents=True)
    return dict(os.environ, WORKBENCH_DB_URL=url, WORKBENCH_MEMES_DIR=str(home / "memes"),
                WORKBENCH_ARTEFACTS_DIR=str(home / "artefacts"), TMPDIR=str(home / "tmp"), OMP_NUM_THREADS="1")



def test_concurrent_scans_on_two_machines_store_each_meme_once(pg_url, tmp_path):
    from workbench.store.schema import Base

    db.upgrade(pg_url)
    with db.session_scope(pg_url) as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
    source = tmp_path / "source"
    write_sample_memes(source, n=N_MEMES, seed=21, size=(96, 96))
    envs = [machine_env(tmp_path, name, pg_url) for name in ("a", "b")]
    for env in envs:
        shutil.copytree(source, env["WORKBENCH_MEMES_DIR"])
    procs = [subprocess.Popen([sys.executable, "-m", "workbench", "ingest"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for env in envs]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-2000:]
        assert "Traceback" not in err
    with db.session_scope(pg_url) as session:
        assert session.scalar(select(func.count()).select_from(Image)) == N_MEMES
        assert session.scalar(select(func.count(func.distinct(Image.sha256)))) == N_MEMES
        folder_labels = session.scalar(select(func.count()).select_from(Label).where(Label.annotator == "folder"))
        assert folder_labels == N_MEMES


def _empty(url: str) -> None:
    from workbench.store.schema import Base

    db.upgrade(url)
    with db.session_scope(url) as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())


@pytest.mark.parametrize("batch_size", [8, 1])
def test_one_ocr_job_on_two_machines_reads_each_meme_once(pg_url, tmp_path, batch_size):
    """Two machines start the same OCR job at once: the job lock is a PostgreSQL advisory lock
    per step fingerprint, so the second is refused (or, if the first already finished, finds
    everything done); no meme is read twice and no job crashes on a unique key."""
    from workbench.store.schema import Job, OcrResult

    _empty(pg_url)
    source = tmp_path / "source"
    write_sample_memes(source, n=24, seed=22, size=(160, 96))
    envs = [machine_env(tmp_path, name, pg_url) for name in ("a", "b")]
    for env in envs:
        shutil.copytree(source, env["WORKBENCH_MEMES_DIR"])
    assert subprocess.run([sys.executable, "-m", "workbench", "ingest"], cwd=REPO, env=envs[0],
                          capture_output=True).returncode == 0
    command = [sys.executable, "-m", "workbench", "ocr", "--engine", "tesseract", "--workers", "1",
               "--batch-size", str(batch_size), "--quiet"]
    procs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for env in envs]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_out, err) in zip(procs, results):
        assert "Traceback" not in err, err[-3000:]
        assert proc.returncode == 0 or "already running" in err, err[-2000:]
    with db.session_scope(pg_url) as session:
        rows = session.execute(select(OcrResult.image_id, OcrResult.fingerprint)).all()
        assert len(rows) == 24 and len(set(rows)) == 24
        jobs = session.execute(select(Job.status, Job.done, Job.failed)).all()
    assert all(status == "done" for status, _, _ in jobs), jobs
    assert sum(done + failed for _, done, failed in jobs) == 24  # every meme read by exactly one machine
