"""Jobs that run on the server (workbench.runs.background) over real generated memes, real
Tesseract and a real SQLite file: the worker thread runs them one after another; cancel is
a flag in the job row that any process may set; a job a restart interrupted is marked so and
resumed from what its row stores, with every meme done once; the Run page follows a job,
drops Cancel when it ends, and offers Resume. Also the pieces of issue 21 point 7 that live
here: error text without markdown artefacts, and a failed job's headline."""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from workbench.ocr.step import OcrStep
from workbench.ocr.tesseract import TesseractEngine
from workbench.runs import background
from workbench.runs.listing import list_jobs, mark_interrupted
from workbench.runs.lock import heavy_job_lock
from workbench.runs.runner import id_ranges, ids_from_ranges, request_cancel
from workbench.runs.step import JobSummary
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.schema import Image, Job, OcrResult, utcnow

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_PAGE = REPO_ROOT / "pages" / "4_Run.py"
WAIT_S = 120


def fast_step(lang: str = "rus") -> OcrStep:
    """Plain Tesseract (one pass): the job machinery is under test, not accuracy."""
    return OcrStep(TesseractEngine(passes=("raw",), lang=lang))


def _ingest(settings, n: int) -> list[int]:
    write_sample_memes(settings.memes_dir, n=n, size=(256, 256))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        return list(session.scalars(select(Image.id).order_by(Image.id)))


def _ocr_rows(settings) -> tuple[int, int]:
    """(rows, distinct images) in ocr_results: equal when every meme was read once."""
    with session_scope(settings.db_url) as session:
        return (session.scalar(select(func.count()).select_from(OcrResult)),
                session.scalar(select(func.count(func.distinct(OcrResult.image_id)))))


def _submit(settings, step, ids, **kwargs) -> background.Ticket:
    return background.jobs().submit(settings.db_url, step, ids, memes_dir=settings.memes_dir,
                                    lock_dir=settings.artefacts_dir, **kwargs)


def _wait_until(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def idle_worker():
    """The worker is process-wide: no test leaves a job running into the next one's files."""
    assert background.jobs().wait_idle(WAIT_S)
    yield
    for ticket in background.jobs().active():
        ticket.cancel()
    assert background.jobs().wait_idle(WAIT_S)


def test_a_submitted_job_runs_on_the_worker_thread_and_reads_every_meme_once(settings) -> None:
    ids = _ingest(settings, 5)
    ticket = _submit(settings, fast_step(), ids, batch_size=2)
    assert _submit(settings, fast_step(), ids, batch_size=2) is ticket  # a second Start press: the same job
    assert ticket.wait(WAIT_S) and ticket.error is None
    assert (ticket.summary.status, ticket.summary.done, ticket.job_id) == ("done", 5, ticket.summary.job_id)
    assert ticket.describe() == "OCR 5/5"
    assert _ocr_rows(settings) == (5, 5)
    with session_scope(settings.db_url) as session:
        job = session.get(Job, ticket.job_id)
        assert job.pid == os.getpid() and job.params["host"]
        # what rebuilds it after a restart: the step's recipe and the ids (as ranges)
        assert job.params["step"]["class"] == "workbench.ocr.step:OcrStep"
        assert ids_from_ranges(job.params["image_ids"]) == ids and len(job.params["image_ids"]) == 1


def test_id_ranges_keep_order_and_gaps() -> None:
    ids = [5, 6, 7, 9, 3, 4, 10]
    assert id_ranges(ids) == [[5, 7], [9, 9], [3, 4], [10, 10]]
    assert ids_from_ranges(id_ranges(ids)) == ids
    assert id_ranges([]) == [] and ids_from_ranges([]) == []


def test_jobs_wait_their_turn_and_a_queued_job_cancelled_never_starts(settings) -> None:
    ids = _ingest(settings, 6)
    first = _submit(settings, fast_step(), ids, batch_size=1)
    second = _submit(settings, fast_step("rus+eng"), ids, batch_size=1)
    third = _submit(settings, fast_step("eng"), ids[:2], batch_size=1)
    assert second is not first and second.state == "queued"
    second.cancel()
    assert third.wait(WAIT_S) and first.finished
    assert first.summary.status == "done" and third.summary.status == "done"
    assert (second.summary, second.error) == (None, "cancelled before it started")
    with session_scope(settings.db_url) as session:
        assert [j["name"] for j in list_jobs(session)] == ["ocr:tesseract"] * 2  # no row for the cancelled one
        assert session.get(Job, third.job_id).started_at >= session.get(Job, first.job_id).finished_at


def test_a_cancel_request_in_the_job_row_stops_the_job_and_resume_finishes_it(settings) -> None:
    ids = _ingest(settings, 8)
    ticket = _submit(settings, fast_step(), ids, batch_size=1)
    _wait_until(lambda: ticket.progress is not None and ticket.progress.processed >= 1, "the first batch")
    with session_scope(settings.db_url) as session:  # as the Run page, or another process, does
        assert request_cancel(session, ticket.job_id)
    assert ticket.wait(WAIT_S)
    assert ticket.summary.status == "cancelled" and 1 <= ticket.summary.done < 8
    with session_scope(settings.db_url) as session:
        assert not request_cancel(session, ticket.job_id)  # only a running job can be cancelled
        row = list_jobs(session)[0]
    assert (row["status"], row["resumable"]) == ("cancelled", True)

    with heavy_job_lock(settings.artefacts_dir):  # a CLI job holds the lock: the resume cannot start
        busy = background.resume(settings, ticket.job_id)
        assert busy.wait(WAIT_S)
    assert busy.summary is None and busy.error.startswith("another job is running")
    with session_scope(settings.db_url) as session:
        assert list_jobs(session)[0]["resumable"]  # still offered

    resumed = background.resume(settings, ticket.job_id)
    assert resumed.wait(WAIT_S)
    assert (resumed.summary.status, resumed.summary.skipped, resumed.summary.done) == (
        "done", ticket.summary.done, 8 - ticket.summary.done)
    assert _ocr_rows(settings) == (8, 8)
    with session_scope(settings.db_url) as session:
        assert session.get(Job, ticket.job_id).status == "resumed"
    with pytest.raises(ValueError, match="only interrupted, cancelled, failed jobs"):
        background.resume(settings, resumed.job_id)


def test_a_restart_marks_the_dead_job_interrupted_and_resume_does_every_meme_once(settings) -> None:
    """The serving process dies mid-job (here a CLI job, SIGKILLed: the same row a killed server leaves)."""
    ids = _ingest(settings, 8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "ocr", "--engine", "tesseract", "--workers", "1", "--batch-size", "1",
         "-q"], cwd=REPO_ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until(lambda: _ocr_rows(settings)[0] >= 2 or proc.poll() is not None, "two memes read")
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stored = _ocr_rows(settings)[0]
    assert 2 <= stored < 8
    with session_scope(settings.db_url) as session:
        # a row left by an earlier process that had this very pid (a container restart): also interrupted
        session.add(Job(step_kind="ocr", step_name="ocr:old", fingerprint="x", status="running", total=1,
                        pid=os.getpid(), started_at=background.PROCESS_STARTED - timedelta(hours=1),
                        heartbeat_at=utcnow()))
        # a live process's job with a slow batch (no heartbeat for an hour) is left alone
        session.add(Job(step_kind="ocr", step_name="ocr:slow", fingerprint="y", status="running", total=1,
                        pid=os.getppid(), started_at=utcnow() - timedelta(hours=2),
                        heartbeat_at=utcnow() - timedelta(hours=1)))
        # another host's job (a team's PostgreSQL): its pid means nothing here, its stale heartbeat does
        session.add(Job(step_kind="ocr", step_name="ocr:remote", fingerprint="z", status="running", total=1,
                        pid=os.getppid(), params={"host": "another-host"}, started_at=utcnow() - timedelta(hours=2),
                        heartbeat_at=utcnow() - timedelta(hours=1)))
        session.commit()
        killed = session.scalars(select(Job.id).where(Job.step_name == "ocr:tesseract")).one()
        marked = mark_interrupted(session, background.PROCESS_STARTED)
        session.commit()
        assert len(marked) == 3 and killed in marked
        rows = {r["job"]: r for r in list_jobs(session)}
    assert (rows[killed]["status"], rows[killed]["resumable"]) == ("interrupted", True)
    with session_scope(settings.db_url) as session:
        statuses = dict(session.execute(select(Job.step_name, Job.status)).all())
    assert statuses == {"ocr:tesseract": "interrupted", "ocr:old": "interrupted", "ocr:slow": "running",
                        "ocr:remote": "interrupted"}
    assert [r["status"] for r in rows.values()] == ["interrupted", "running", "interrupted", "interrupted"]
    assert not any(r["resumable"] for j, r in rows.items() if j != killed)  # the others keep no recipe

    resumed = background.resume(settings, killed)
    assert resumed.image_ids == tuple(ids)  # the CLI's whole selection, from the row
    assert resumed.wait(WAIT_S)
    assert (resumed.summary.status, resumed.summary.skipped, resumed.summary.done) == ("done", stored, 8 - stored)
    assert _ocr_rows(settings) == (8, 8)


def test_a_model_job_resumes_from_its_row_too(settings) -> None:
    """A predictor built from its kind and options (the Models page, `predict`) keeps them as its recipe."""
    from tests.support.tiny_models import tiny_model_dir
    from workbench.predictors.base import PredictorStep
    from workbench.predictors.run import build_predictor
    from workbench.runs.runner import run_step
    from workbench.store.schema import Prediction

    ids = _ingest(settings, 4)
    step = PredictorStep(build_predictor("clip", {"model": str(tiny_model_dir("clip")), "device": "cpu"}))
    first = run_step(settings.db_url, step, ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir,
                     batch_size=1, should_stop=lambda: True)
    assert (first.status, first.done) == ("cancelled", 1)
    resumed = background.resume(settings, first.job_id)
    assert resumed.wait(WAIT_S)
    assert (resumed.summary.status, resumed.summary.skipped, resumed.summary.done) == ("done", 1, 3)
    assert resumed.summary.run_id == first.run_id  # the same model run, not a new one
    with session_scope(settings.db_url) as session:
        assert sorted(session.scalars(select(Prediction.image_id))) == ids


def test_run_page_follows_the_job_drops_cancel_when_it_ends_and_offers_resume(settings, clear_streamlit_cache) -> None:
    from streamlit.testing.v1 import AppTest

    ids = _ingest(settings, 3)
    at = AppTest.from_file(str(RUN_PAGE), default_timeout=WAIT_S).run()
    at.selectbox(key="run_engine").set_value("tesseract")
    at.number_input(key="run_workers").set_value(1)
    at.button(key="run_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("3 done" in s.value for s in at.success), [s.value for s in at.success]
    keys = [b.key for b in at.button]
    assert "run_job_cancel" not in keys and not any(k.startswith("jobs_cancel") for k in keys), keys
    with session_scope(settings.db_url) as session:
        job_id = session.scalars(select(Job.id)).one()
        session.get(Job, job_id).status = "cancelled"  # as if cancelled before the end (one meme not read)
        session.execute(OcrResult.__table__.delete().where(OcrResult.image_id == ids[-1]))
    at.run()
    at.button(key=f"jobs_resume_{job_id}").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(f"Job {job_id} resumed" in s.value for s in at.success), [s.value for s in at.success]
    assert background.jobs().wait_idle(WAIT_S)
    assert _ocr_rows(settings) == (3, 3)
    with session_scope(settings.db_url) as session:
        assert [(j["status"], j["done"], j["skipped"]) for j in list_jobs(session)] == [("done", 1, 2), ("resumed", 3, 0)]


def test_the_command_line_lists_cancels_and_resumes_jobs(settings, capsys) -> None:
    """`python -m workbench jobs`: what the Run page does, in the foreground."""
    import json

    from workbench.cli import main

    ids = _ingest(settings, 6)
    ticket = _submit(settings, fast_step(), ids, batch_size=1)
    _wait_until(lambda: ticket.progress is not None and ticket.progress.processed >= 1, "the first batch")
    assert main(["jobs", "cancel", str(ticket.job_id)]) == 0  # as from another terminal: through the row
    assert ticket.wait(WAIT_S) and ticket.summary.status == "cancelled"
    assert main(["jobs", "cancel", str(ticket.job_id)]) == 1
    assert "is not running" in capsys.readouterr().err
    assert main(["jobs", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["job"], row["status"], row["resumable"]) == (ticket.job_id, "cancelled", True)

    assert main(["jobs", "resume", str(ticket.job_id), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"job {ticket.job_id} resumed as job {ticket.job_id + 1}: done: {6 - ticket.summary.done} done" in out
    assert _ocr_rows(settings) == (6, 6)
    assert main(["jobs", "resume", str(ticket.job_id)]) == 2  # resumed already
    assert f"job {ticket.job_id} is resumed; only interrupted, cancelled, failed" in capsys.readouterr().err
    assert main(["jobs", "list"]) == 0
    assert "resumed" in capsys.readouterr().out


def test_worker_processes_do_not_run_the_main_script(settings, tmp_path, monkeypatch) -> None:
    """Under `streamlit run`, `__main__` is the page script; spawned OCR workers used to import
    it first, running the whole page once per worker (the flood of "missing ScriptRunContext")."""
    import types

    from workbench.runs.runner import run_step

    ids = _ingest(settings, 4)
    marker = tmp_path / "page_ran_in_a_worker"
    page = tmp_path / "a_page.py"
    page.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n", encoding="utf-8")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(page)  # as Streamlit's script module: a file, no __spec__
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    summary = run_step(settings.db_url, fast_step(), ids, memes_dir=settings.memes_dir,
                       lock_dir=settings.artefacts_dir, batch_size=1, workers=2)
    assert (summary.status, summary.done) == ("done", 4)
    assert not marker.exists()
    assert sys.modules["__main__"] is fake_main  # put back after the workers started


def test_a_failed_jobs_headline_does_not_contradict_itself() -> None:
    failed = JobSummary(7, "failed", 52, 0, 0, 0, error="no model", seconds=0.4)
    assert failed.describe() == "failed before any meme was processed (52 selected, 0 already done) in 0.4 s — no model"
    stopped = JobSummary(7, "cancelled", 52, 8, 4, 1, seconds=2.0)
    assert stopped.describe() == ("cancelled after 9 of 48 memes to do (8 done, 1 with errors, 4 already done) "
                                  "in 2.0 s")
    assert JobSummary(7, "done", 2, 1, 1, 0).describe() == "done: 1 done, 1 skipped, 0 failed of 2 in 0.0 s"


HOSTILE = [
    "**bold** _it_ `code` [link](http://x) ![i](y) <b>tag</b> # head | a | ~~s~~ $x^2$ \\ back",
    "- item\n+ item\n1. one\n2) two\n===\n---\n> quote",
    "3.14 is fine, so is a-b (c) {d}! and C++",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_md_escape_leaves_no_markdown_and_no_artefacts(text: str) -> None:
    """CommonMark (markdown-it) renders the escaped text as exactly the text: no element but
    paragraphs and line breaks, and no backslash that was not in the text."""
    from markdown_it import MarkdownIt

    from workbench.ui import md_escape

    rendered = MarkdownIt("commonmark").render(md_escape(text))
    tags = set(re.findall(r"</?([a-z0-9]+)", rendered))
    assert tags <= {"p", "br"}, (tags, rendered)
    plain = html.unescape(re.sub(r"<[^>]+>", " ", rendered))
    assert re.sub(r"\s+", " ", plain).strip() == re.sub(r"\s+", " ", text).strip()


def test_md_escape_keeps_urls_as_they_are() -> None:
    """Streamlit links a bare URL, and a backslash in one shows (issue 21: `https://huggingface\\.co`)."""
    from workbench.ui import md_escape

    text = ("cannot reach https://huggingface.co/openai/clip_vit-b (see "
            "https://huggingface.co/docs/transformers/installation#offline-mode').")
    escaped = md_escape(text)
    assert "https://huggingface.co/openai/clip_vit-b " in escaped
    assert "https://huggingface.co/docs/transformers/installation#offline-mode'" in escaped
    assert "\\" not in escaped
