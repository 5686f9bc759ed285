"""A full disk never leaves half a file (issue 22): on a small real tmpfs filled to a few KB,
thumbnails are either whole or not written (Pillow's JPEG encoder can lose a short write
silently: the old code stored truncated thumbnails that were served forever), the report
fails with "disk full" instead of embedding nothing, and the CLI says "disk full: PATH" in
one line. Needs root to mount the tmpfs (CI runs as root); skipped otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.store.demo_memes import render_meme
from workbench.store.files import DiskFull
from workbench.store.images import ensure_thumbnail, load_rgb

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    for p in disk.rglob("*"):
        if p.is_file():
            p.unlink()
    st = os.statvfs(disk)
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def test_thumbnails_are_whole_or_absent_on_a_full_disk(small_disk, tmp_path):
    source = tmp_path / "meme.png"
    render_meme("тест мем текст", seed=1, size=(800, 800)).save(source)
    stored = refused = 0
    for leave in range(1000, 60_000, 1500):
        fill(small_disk, leave)
        try:
            path = ensure_thumbnail(small_disk / "thumbs", "ab" * 32, source)
        except DiskFull as exc:
            assert str(exc).startswith("disk full: ") and "thumbs" in str(exc)
            refused += 1
            assert not list((small_disk / "thumbs").rglob("*.jpg"))
            continue
        load_rgb(path)  # every stored thumbnail decodes whole
        stored += 1
    assert refused and stored


def test_report_thumbnails_fail_on_a_full_disk_instead_of_embedding_nothing(small_disk, tmp_path, settings):
    from dataclasses import replace

    from workbench.analysis.report.figures import thumbnail

    rel = "a/meme.png"
    (settings.memes_dir / "a").mkdir(parents=True)
    render_meme("мем", seed=2, size=(800, 800)).save(settings.memes_dir / rel)
    fill(small_disk, 1000)
    with pytest.raises(DiskFull):
        thumbnail(replace(settings, artefacts_dir=small_disk), "cd" * 32, rel, 120)
    assert thumbnail(settings, "cd" * 32, rel, 120).startswith("data:image/jpeg")


def test_the_cli_says_disk_full_in_one_line(small_disk, tmp_path, settings):
    env = dict(os.environ, WORKBENCH_DB_URL=settings.db_url, WORKBENCH_MEMES_DIR=str(settings.memes_dir),
               WORKBENCH_ARTEFACTS_DIR=str(tmp_path / "art"))
    subprocess.run([sys.executable, "-m", "workbench", "demo", "-n", "4"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    fill(small_disk, 0)
    out = small_disk / "annotations.csv"
    done = subprocess.run([sys.executable, "-m", "workbench", "export", "annotations", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: disk full: {out}"
    assert not out.exists()


def test_a_job_on_a_full_disk_ends_failed_with_disk_full(small_disk, settings, session):
    """A CAM job whose maps go to a full disk ends `failed` with "disk full: PATH", never
    `running`, and no half-written map is left behind."""
    from sqlalchemy import select

    from tests.support.tiny_models import tiny_model_dir
    from workbench.explain import cam as explain
    from workbench.runs.runner import run_step
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Image, Job

    write_sample_memes(settings.memes_dir, n=3, seed=4, size=(160, 96))
    scan_folder(session, settings.memes_dir)
    session.commit()
    ids = list(session.scalars(select(Image.id)))
    session.commit()
    fill(small_disk, 0)
    request = explain.CamRequest.for_class(str(tiny_model_dir("clip")), "gradcam", "toxic", dtype="float32")
    summary = run_step(settings.db_url, explain.CamStep(request, small_disk / "art"), ids, memes_dir=settings.memes_dir,
                       lock_dir=settings.artefacts_dir, prefetch=0)
    assert summary.status == "failed" and summary.error.startswith("disk full: "), summary
    session.expire_all()
    job = session.get(Job, summary.job_id)
    assert job.status == "failed" and job.error.startswith("disk full: ")
    assert not list((small_disk / "art").rglob("*.png"))


def test_a_full_database_disk_is_one_line_not_a_traceback(small_disk, tmp_path, settings):
    from workbench.store import db as store_db

    url = f"sqlite:///{small_disk / 'full.sqlite3'}"
    store_db.upgrade(url)
    store_db.dispose_all()
    env = dict(os.environ, WORKBENCH_DB_URL=url, WORKBENCH_MEMES_DIR=str(settings.memes_dir),
               WORKBENCH_ARTEFACTS_DIR=str(tmp_path / "art"))
    from workbench.store.demo_memes import write_sample_memes

    write_sample_memes(settings.memes_dir, n=30, seed=5, size=(64, 64))
    filler = small_disk / "filler"
    st = os.statvfs(small_disk)
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize))
    done = subprocess.run([sys.executable, "-m", "workbench", "ingest"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("error: disk full:"), done.stderr[-2000:]
