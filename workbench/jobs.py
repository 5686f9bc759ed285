"""The one job runner: runs any step (an OCR engine, a predictor, embeddings, CAM) over a
selection of images in batches.

Guarantees, for every step alike:
- each batch is saved and committed before the next starts, so a crash or a closed tab
  loses at most the batch in flight, and the next run resumes where it stopped;
- (image, step fingerprint) pairs already done are skipped (`force=True` redoes them);
  items that failed before are retried;
- a per-item failure is stored with its error and never stops the run;
- one heavy job at a time per artefacts dir (a file lock), so runs never oversubscribe
  the CPU; CPU-bound steps may use a process pool (`workers`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Iterator

import multiprocessing

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.db import get_sessionmaker
from workbench.schema import Image, Job, utcnow

STALE_AFTER = timedelta(minutes=10)


def fingerprint(obj: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-able config (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


@dataclass
class WorkItem:
    """One image handed to a step: its id, absolute path and best OCR text ('' if none)."""

    image_id: int
    path: Path
    ocr_text: str = ""


@dataclass
class ItemResult:
    """What a step produced for one image: a step-specific `value`, or an `error`."""

    image_id: int
    value: Any = None
    error: str | None = None
    duration_ms: float | None = None


class Step:
    """Base of every runnable step. Subclasses set kind/name and implement
    `fingerprint`, `done_ids`, `process` and `save`; `load` does heavy set-up once per
    process; `begin`/`finish` bracket a job (e.g. create/close a model_runs row)."""

    kind: ClassVar[str] = "step"
    name: str = "step"
    needs_ocr_text: bool = False
    # CPU-bound steps that are safe to run in worker processes set this.
    parallel_ok: bool = False

    def fingerprint(self) -> str:
        """Identity of this step's config: results are stored and skipped under it."""
        raise NotImplementedError

    def begin(self, session: Session) -> int | None:
        """Called once before work; may return a model_runs id stored on the job."""
        return None

    def done_ids(self, session: Session, image_ids: Sequence[int]) -> set[int]:
        """Images among `image_ids` that already have a successful result."""
        raise NotImplementedError

    def load(self) -> None:
        """Heavy initialisation (load a model). May raise workbench.errors.ModelUnavailable."""

    def process(self, items: list[WorkItem]) -> list[ItemResult]:
        """Compute results for a batch; must return one ItemResult per item, errors included."""
        raise NotImplementedError

    def save(self, session: Session, results: list[ItemResult], force: bool) -> None:
        """Store a batch's results (upsert: one row per image and fingerprint)."""
        raise NotImplementedError

    def finish(self, session: Session, status: str) -> None:
        """Called once after work with the job's final status."""


@dataclass
class Progress:
    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def processed(self) -> int:
        return self.done + self.failed

    @property
    def todo(self) -> int:
        return self.total - self.skipped

    @property
    def rate(self) -> float:
        """Images per second over this job so far."""
        elapsed = time.monotonic() - self.started
        return self.processed / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        return (self.todo - self.processed) / rate if rate > 0 else None

    @property
    def fraction(self) -> float:
        return 1.0 if self.todo == 0 else min(1.0, self.processed / self.todo)

    def describe(self) -> str:
        eta = f", ETA {self.eta_s:.0f} s" if self.eta_s is not None and self.processed < self.todo else ""
        return (
            f"{self.processed}/{self.todo} processed ({self.failed} failed, {self.skipped} already done)"
            f" · {self.rate:.2f} img/s{eta}"
        )


@dataclass
class JobSummary:
    job_id: int
    status: str  # done | failed | cancelled
    total: int
    done: int
    skipped: int
    failed: int
    run_id: int | None = None
    error: str | None = None
    seconds: float = 0.0
    errors: list[tuple[int, str]] = field(default_factory=list)  # first few per-item errors

    def describe(self) -> str:
        text = f"{self.status}: {self.done} done, {self.skipped} skipped, {self.failed} failed of {self.total} in {self.seconds:.1f} s"
        return text + (f" — {self.error}" if self.error else "")


class JobBusy(RuntimeError):
    """Another heavy job holds the lock."""


@contextmanager
def heavy_job_lock(lock_dir: Path) -> Iterator[None]:
    """One heavy job at a time per artefacts dir (advisory flock; released on process death)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / ".job.lock"
    try:
        import fcntl
    except ImportError:  # Windows: no lock, run anyway
        yield
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise JobBusy(f"another job is running ({holder}); wait for it or cancel it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {datetime.now().isoformat(timespec='seconds')}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


# Worker-process side of the pool: the step is loaded once per worker.
_worker_step: Step | None = None


def _init_worker(step: Step) -> None:
    global _worker_step
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    _worker_step = step
    step.load()


def _work(items: list[WorkItem]) -> list[ItemResult]:
    assert _worker_step is not None
    return safe_process(_worker_step, items)


def safe_process(step: Step, items: list[WorkItem]) -> list[ItemResult]:
    """step.process, with an unexpected batch-level exception turned into per-item errors."""
    try:
        results = step.process(items)
    except Exception as exc:  # noqa: BLE001 - one bad batch must not end the run
        return [ItemResult(it.image_id, error=f"{type(exc).__name__}: {exc}") for it in items]
    got = {r.image_id for r in results}
    missing = [ItemResult(it.image_id, error="step returned no result") for it in items if it.image_id not in got]
    return results + missing


def _chunks(seq: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(seq), size):
        yield list(seq[start : start + size])


def _work_items(session: Session, ids: list[int], memes_dir: Path, with_text: bool) -> list[WorkItem]:
    rows = session.execute(select(Image.id, Image.path).where(Image.id.in_(ids))).all()
    paths = {i: memes_dir / p for i, p in rows}
    texts: dict[int, str] = {}
    if with_text:
        from workbench.texts import best_texts

        texts = best_texts(session, ids)
    return [WorkItem(i, paths[i], texts.get(i, "")) for i in ids if i in paths]


def run_step(
    db_url: str,
    step: Step,
    image_ids: Iterable[int],
    *,
    memes_dir: Path,
    lock_dir: Path,
    batch_size: int = 8,
    workers: int = 1,
    force: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> JobSummary:
    """Run `step` over `image_ids`; see the module docstring for the guarantees.

    `on_progress` is called after each committed batch; `should_stop` is polled between
    batches (Cancel). A model that cannot load ends the job as `failed` with its message;
    nothing is raised for it. KeyboardInterrupt and other BaseExceptions mark the job
    `cancelled` and propagate.
    """
    Session_ = get_sessionmaker(db_url)
    ids = list(dict.fromkeys(image_ids))
    t0 = time.monotonic()
    with heavy_job_lock(lock_dir):
        with Session_() as session:
            try:
                run_id = step.begin(session)
            except Exception as exc:  # noqa: BLE001 - a step that cannot even begin fails its job, visibly
                session.rollback()
                return _failed_before_start(session, step, ids, exc, t0)
            job = Job(
                step_kind=step.kind, step_name=step.name, fingerprint=step.fingerprint(), run_id=run_id,
                params={"batch_size": batch_size, "workers": workers, "force": force},
                total=len(ids), pid=os.getpid(), heartbeat_at=utcnow(),
            )
            session.add(job)
            session.commit()
            job_id = job.id
            already = set() if force else step.done_ids(session, ids)
        todo = [i for i in ids if i not in already]
        progress = Progress(total=len(ids), skipped=len(ids) - len(todo))
        summary = JobSummary(job_id, "done", len(ids), 0, progress.skipped, 0, run_id=run_id)

        def record(results: list[ItemResult]) -> None:
            with Session_() as session:
                step.save(session, results, force)
                n_failed = sum(1 for r in results if r.error)
                progress.failed += n_failed
                progress.done += len(results) - n_failed
                for r in results:
                    if r.error and len(summary.errors) < 20:
                        summary.errors.append((r.image_id, r.error))
                _update_job(session, job_id, progress, "running")
                session.commit()
            if on_progress:
                on_progress(progress)

        status, error = "done", None
        try:
            if on_progress:
                on_progress(progress)
            if todo:
                status, error = _drive(Session_, step, todo, memes_dir, batch_size, workers, record, should_stop)
        except BaseException:
            _close_job(Session_, step, job_id, progress, "cancelled", "interrupted")
            raise
        _close_job(Session_, step, job_id, progress, status, error)
        summary.status, summary.error = status, error
        summary.done, summary.failed = progress.done, progress.failed
        summary.seconds = time.monotonic() - t0
        return summary


def _drive(Session_, step, todo, memes_dir, batch_size, workers, record, should_stop) -> tuple[str, str | None]:  # noqa: ANN001
    from workbench.errors import ModelUnavailable

    def items_for(batch_ids: list[int]) -> list[WorkItem]:
        with Session_() as session:
            return _work_items(session, batch_ids, memes_dir, step.needs_ocr_text)

    batches = _chunks(todo, batch_size)
    try:
        step.load()  # in this process too: a missing model or engine fails here, clearly, before any pool
    except ModelUnavailable as exc:
        return "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - a step that cannot start fails the job, not the app
        return "failed", f"{step.name} could not start: {type(exc).__name__}: {exc}"
    if workers > 1 and step.parallel_ok:
        ctx = multiprocessing.get_context("spawn")  # never fork a threaded (Streamlit/torch) process
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(step,)) as pool:
            pending: set[Future] = set()
            try:
                for batch_ids in batches:
                    pending.add(pool.submit(_work, items_for(batch_ids)))
                    if len(pending) >= workers * 2:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            record(fut.result())
                        if should_stop and should_stop():
                            return "cancelled", "cancelled by user"
                for fut in pending:
                    record(fut.result())
            except BrokenProcessPool as exc:
                return "failed", f"a worker process died: {exc}"
            finally:
                for fut in pending:
                    fut.cancel()
        return "done", None
    for batch_ids in batches:
        record(safe_process(step, items_for(batch_ids)))
        if should_stop and should_stop():
            return "cancelled", "cancelled by user"
    return "done", None


def _failed_before_start(session: Session, step: Step, ids: list[int], exc: Exception, t0: float) -> JobSummary:
    from workbench.errors import ModelUnavailable

    error = str(exc) if isinstance(exc, ModelUnavailable) else f"{step.name} could not start: {type(exc).__name__}: {exc}"
    job = Job(step_kind=step.kind, step_name=step.name, fingerprint="-", status="failed", total=len(ids),
              pid=os.getpid(), error=error, finished_at=utcnow())
    session.add(job)
    session.commit()
    return JobSummary(job.id, "failed", len(ids), 0, 0, 0, error=error, seconds=time.monotonic() - t0)


def _update_job(session: Session, job_id: int, progress: Progress, status: str) -> None:
    job = session.get(Job, job_id)
    if job is None:
        return
    job.done, job.failed, job.skipped = progress.done, progress.failed, progress.skipped
    job.status = status
    job.heartbeat_at = utcnow()


def _close_job(Session_, step: Step, job_id: int, progress: Progress, status: str, error: str | None) -> None:  # noqa: ANN001
    with Session_() as session:
        _update_job(session, job_id, progress, status)
        job = session.get(Job, job_id)
        if job is not None:
            job.error = error
            job.finished_at = utcnow()
        step.finish(session, status)
        session.commit()


def job_status(job: Job, now: datetime | None = None) -> str:
    """The job's status, with a 'running' job whose process is gone shown as 'interrupted'."""
    if job.status != "running":
        return job.status
    now = now or datetime.now(timezone.utc)
    beat = job.heartbeat_at or job.started_at
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=timezone.utc)
    if job.pid and not _pid_alive(job.pid):
        return "interrupted"
    if now - beat > STALE_AFTER:
        return "interrupted"
    return "running"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_jobs(session: Session, limit: int = 50, step_kind: str | None = None) -> list[dict[str, Any]]:
    """Recent jobs as plain dicts (newest first) for tables in the UI and CLI."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if step_kind:
        query = query.where(Job.step_kind == step_kind)
    rows = []
    for job in session.scalars(query):
        rows.append({
            "job": job.id, "step": job.step_kind, "name": job.step_name, "run": job.run_id,
            "status": job_status(job), "total": job.total, "done": job.done, "skipped": job.skipped,
            "failed": job.failed, "started": job.started_at, "finished": job.finished_at, "error": job.error,
        })
    return rows
