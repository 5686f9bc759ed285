"""The job runner (workbench.runs) driving a real step — Tesseract OCR — over real
generated memes in a real SQLite file: resume after a killed worker or a killed run,
skip on re-run, force, per-item failure isolation, cancel."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from workbench.ocr.step import OcrStep
from workbench.ocr.tesseract import TesseractEngine
from workbench.runs.listing import list_jobs
from workbench.runs.lock import JobBusy, heavy_job_lock
from workbench.runs.runner import run_step
from workbench.runs.step import Progress
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.schema import Image, Job, OcrResult

REPO_ROOT = Path(__file__).resolve().parent.parent
HOLD_THE_JOB_LOCK = """
import sys, time
from pathlib import Path
from workbench.runs.lock import heavy_job_lock
with heavy_job_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def fast_step() -> OcrStep:
    """Plain Tesseract (one pass, ~0.07 s/image): the runner is under test, not accuracy."""
    return OcrStep(TesseractEngine(passes=("raw",)))


def _ingest(settings, n: int) -> list[int]:
    write_sample_memes(settings.memes_dir, n=n, size=(256, 256))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        return list(session.scalars(select(Image.id).order_by(Image.id)))


def _rows(settings) -> tuple[int, int, int]:
    """(rows, distinct images, rows with an error) in ocr_results."""
    with session_scope(settings.db_url) as session:
        return (session.scalar(select(func.count()).select_from(OcrResult)),
                session.scalar(select(func.count(func.distinct(OcrResult.image_id)))),
                session.scalar(select(func.count()).select_from(OcrResult).where(OcrResult.error.is_not(None))))


def _run(settings, step, ids, **kwargs):
    return run_step(settings.db_url, step, ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir,
                    **kwargs)


def test_killed_worker_process_then_resume_loses_nothing_and_duplicates_nothing(settings) -> None:
    ids = _ingest(settings, 16)
    killed: list[int] = []

    def kill_a_worker(p: Progress) -> None:
        if p.processed >= 2 and not killed:  # the first batch is committed; the others are in flight
            victim = multiprocessing.active_children()[0]
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)

    first = _run(settings, fast_step(), ids, batch_size=2, workers=2, on_progress=kill_a_worker)
    assert killed
    assert first.status == "failed" and "worker process died" in first.error
    stored, distinct, errors = _rows(settings)
    assert 2 <= stored < 16 and stored == distinct and errors == 0
    assert first.done == stored  # every batch counted as done was committed

    second = _run(settings, fast_step(), ids, batch_size=2, workers=2)
    assert (second.status, second.skipped, second.done, second.failed) == ("done", stored, 16 - stored, 0)
    assert _rows(settings) == (16, 16, 0)
    with session_scope(settings.db_url) as session:
        statuses = [j["status"] for j in list_jobs(session)]
    assert statuses == ["done", "failed"]


def test_killed_run_process_resumes_where_it_stopped(settings) -> None:
    """The whole CLI process is SIGKILLed mid-run (a closed terminal, an OOM kill)."""
    ids = _ingest(settings, 8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "ocr", "--workers", "1", "--batch-size", "1", "-q"],
        cwd=REPO_ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _rows(settings)[0] < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stored, distinct, _ = _rows(settings)
    assert 2 <= stored < 8 and stored == distinct
    with session_scope(settings.db_url) as session:
        job = list_jobs(session)[0]
        assert job["status"] == "interrupted" and job["done"] <= stored
    # the default CLI engine, resumed in-process (the file lock died with the process)
    from workbench.ocr import DEFAULT_ENGINE, make_engine

    resumed = _run(settings, OcrStep(make_engine(DEFAULT_ENGINE, settings)), ids)
    assert (resumed.status, resumed.skipped, resumed.done) == ("done", stored, 8 - stored)
    assert _rows(settings) == (8, 8, 0)


def test_rerun_skips_everything_and_force_redoes(settings) -> None:
    ids = _ingest(settings, 4)
    first = _run(settings, fast_step(), ids)
    assert (first.done, first.skipped) == (4, 0)
    with session_scope(settings.db_url) as session:
        before = {r.image_id: (r.id, r.created_at) for r in session.scalars(select(OcrResult))}
    again = _run(settings, fast_step(), ids)
    assert (again.status, again.done, again.skipped, again.failed) == ("done", 0, 4, 0)
    with session_scope(settings.db_url) as session:
        assert {r.image_id: (r.id, r.created_at) for r in session.scalars(select(OcrResult))} == before
        assert session.scalar(select(Job.done).where(Job.id == again.job_id)) == 0
    forced = _run(settings, fast_step(), ids, force=True)
    assert (forced.done, forced.skipped) == (4, 0)
    assert _rows(settings) == (4, 4, 0)
    # another config of the same engine is another result set, not a skip
    other = _run(settings, OcrStep(TesseractEngine(passes=("raw",), lang="rus+eng")), ids)
    assert other.done == 4 and _rows(settings)[0] == 8


def test_corrupt_file_fails_alone_and_is_retried(settings) -> None:
    ids = _ingest(settings, 6)
    with session_scope(settings.db_url) as session:
        bad_id, bad_path = session.execute(select(Image.id, Image.path).order_by(Image.id).offset(2)).first()
    (settings.memes_dir / bad_path).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)  # damaged after ingest
    summary = _run(settings, fast_step(), ids, batch_size=4)
    assert (summary.status, summary.done, summary.failed) == ("done", 5, 1)
    assert [i for i, _ in summary.errors] == [bad_id]
    with session_scope(settings.db_url) as session:
        row = session.scalars(select(OcrResult).where(OcrResult.image_id == bad_id)).one()
        assert row.error and row.text == ""
        job = session.get(Job, summary.job_id)
        assert (job.status, job.done, job.failed) == ("done", 5, 1)
    again = _run(settings, fast_step(), ids, batch_size=4)  # only the failed one is tried again
    assert (again.skipped, again.done, again.failed) == (5, 0, 1)
    assert _rows(settings) == (6, 6, 1)


def test_cancel_stops_after_the_current_batch(settings) -> None:
    ids = _ingest(settings, 6)
    summary = _run(settings, fast_step(), ids, batch_size=2, should_stop=lambda: True)
    assert (summary.status, summary.done) == ("cancelled", 2)
    assert _rows(settings)[0] == 2
    rest = _run(settings, fast_step(), ids, batch_size=2)
    assert (rest.skipped, rest.done) == (2, 4)


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_reports_every_batch(settings, workers: int) -> None:
    ids = _ingest(settings, 5)
    seen: list[tuple[int, int]] = []
    summary = _run(settings, fast_step(), ids, batch_size=2, workers=workers,
                   on_progress=lambda p: seen.append((p.processed, p.todo)))
    assert summary.done == 5
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    assert sorted(p for p, _ in seen) == [p for p, _ in seen]  # monotonic


def test_a_second_job_is_refused_naming_the_holder_until_the_holder_dies(settings) -> None:
    ids = _ingest(settings, 1)
    lock_dir = settings.artefacts_dir
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_JOB_LOCK, str(lock_dir)], cwd=REPO_ROOT,
                              env=os.environ.copy(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = rf"another job is running \(pid {holder.pid} since \d{{4}}-\d\d-\d\dT[\d:]+\); wait for it or cancel it first"
        with pytest.raises(JobBusy, match=busy):
            _run(settings, fast_step(), ids)
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.stdout.close()
    assert _rows(settings)[0] == 0
    # the OS dropped the dead holder's lock: the next job goes on, and names itself while it runs
    with heavy_job_lock(lock_dir), pytest.raises(JobBusy, match=rf"\(pid {os.getpid()} since "):
        _run(settings, fast_step(), ids)
    assert _run(settings, fast_step(), ids).done == 1  # released on exit


def test_a_step_without_prefetch_runs_as_before_whatever_prefetch_says(settings) -> None:
    """OCR does its own decoding (and its own process pool): the prefetch threads are only for
    steps that ask for them, and the job records what was asked."""
    ids = _ingest(settings, 3)
    step = fast_step()
    assert not step.prefetches
    summary = _run(settings, step, ids, prefetch=4)
    assert summary.done == 3
    with session_scope(settings.db_url) as session:
        assert session.get(Job, summary.job_id).params["prefetch"] == 4
