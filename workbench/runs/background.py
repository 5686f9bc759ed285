"""Jobs that run on the server, not in a page: one process-wide worker thread runs the jobs
the app submits, one after another, through the one runner (`run_step`).

A page submits a job and polls its `Ticket`; leaving the page, closing the tab or signing
out stops the polling, never the job. Jobs wait their turn in submission order (the runner's
file lock still keeps one heavy job at a time across processes: a job that finds a CLI job
holding it ends with that JobBusy message). Cancel is a flag the runner reads between
batches, set here for a queued or running job of this process and in the job row
(`request_cancel`) for a job of any process.

A job that a restart interrupted is resumed from its row: the step's recipe, the image ids
and the batch settings stored there (`job_params`) rebuild the same step over the same
selection, and the runner skips what is already done. The worker is a daemon thread: a
stopping server does not wait for a job; its row is marked `interrupted` at the next start
(`listing.mark_interrupted`).

    ticket = jobs().submit(settings.db_url, OcrStep(engine), ids, memes_dir=..., lock_dir=...)
    ticket.progress, ticket.finished, ticket.summary, ticket.cancel()
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workbench.runs.listing import RESUMABLE, job_status
from workbench.runs.lock import JobBusy
from workbench.runs.runner import ids_from_ranges, run_step
from workbench.runs.step import JobSummary, Progress, Step

log = logging.getLogger(__name__)

PROCESS_STARTED = datetime.now(UTC)  # jobs begun before this were not begun by this process
KIND_LABEL = {"ocr": "OCR", "predict": "Predict", "embed": "Embeddings", "cam": "CAM maps", "hash": "Hashes",
              "learn": "Learner refresh"}
KEEP_FINISHED = 50  # finished tickets kept for pages to read their summary


@dataclass
class Ticket:
    """A job submitted to this process's worker, as pages see it: queued, running or finished;
    its live progress; and at the end its summary, or the error that kept it from running."""

    step_name: str
    step_kind: str
    fingerprint: str
    image_ids: tuple[int, ...]
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "queued"  # queued | running | finished
    progress: Progress | None = None
    summary: JobSummary | None = None
    error: str | None = None  # JobBusy, or a failure outside the runner's own handling
    submitted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    resumes: int | None = None  # the stopped job this one resumes (its row turns `resumed` once this starts)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def job_id(self) -> int | None:
        """The jobs row, once the runner has made it."""
        if self.summary is not None:
            return self.summary.job_id
        return self.progress.job_id if self.progress is not None else None

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop after the batch in flight (a queued job never starts)."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (tests, the CLI); True when it did."""
        return self._finished.wait(timeout)

    @property
    def fraction(self) -> float:
        return self.progress.fraction if self.progress is not None else 0.0

    def describe(self) -> str:
        """"OCR 312/5,000" while it runs; "OCR queued" before."""
        label = KIND_LABEL.get(self.step_kind, self.step_name)
        if self.state == "queued":
            return f"{label} queued ({len(self.image_ids):,} memes)"
        p = self.progress
        if p is None:
            return f"{label} starting"
        return f"{label} {p.processed:,}/{p.todo:,}"


class BackgroundJobs:
    """One daemon worker thread and the tickets it runs (see the module docstring)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Ticket, dict[str, Any], Step]] = queue.Queue()
        self._tickets: dict[str, Ticket] = {}
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._loop, name="workbench-jobs", daemon=True)
        self._worker.start()

    def submit(
        self, db_url: str, step: Step, image_ids: Sequence[int], *, memes_dir: Path, lock_dir: Path,
        batch_size: int = 8, workers: int = 1, force: bool = False, prefetch: int | None = None,
        resumes: int | None = None, cluster: str | None = None,
    ) -> Ticket:
        """Queue `run_step(db_url, step, image_ids, ...)` on the worker; returns its ticket.
        The same step (fingerprint) over the same images already queued or running is not
        queued twice: its ticket is returned (a second Start press, a second tab)."""
        ids = tuple(dict.fromkeys(int(i) for i in image_ids))
        fingerprint = step.fingerprint()
        with self._lock:
            for ticket in self._tickets.values():
                if (not ticket.finished and not ticket.cancel_requested and ticket.fingerprint == fingerprint
                        and ticket.image_ids == ids):
                    return ticket
            ticket = Ticket(step.name, step.kind, fingerprint, ids, resumes=resumes)
            self._tickets[ticket.key] = ticket
            self._prune()
        kwargs = {"db_url": db_url, "memes_dir": memes_dir, "lock_dir": lock_dir, "batch_size": batch_size,
                  "workers": workers, "force": force, "prefetch": prefetch, "cluster": cluster}
        self._queue.put((ticket, kwargs, step))
        return ticket

    def ticket(self, key: str) -> Ticket | None:
        return self._tickets.get(key)

    def tickets(self) -> list[Ticket]:
        """This process's tickets, oldest first (finished ones too, the last KEEP_FINISHED)."""
        with self._lock:
            return list(self._tickets.values())

    def active(self) -> list[Ticket]:
        """Queued and running tickets, in the order they run."""
        return [t for t in self.tickets() if not t.finished]

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every ticket submitted so far has finished (tests, a clean shutdown)."""
        for ticket in self.active():
            if not ticket.wait(timeout):
                return False
        return True

    def _prune(self) -> None:
        finished = [k for k, t in self._tickets.items() if t.finished]
        for key in finished[:-KEEP_FINISHED] if len(finished) > KEEP_FINISHED else []:
            del self._tickets[key]

    def _loop(self) -> None:
        while True:
            ticket, kwargs, step = self._queue.get()
            try:
                self._run(ticket, kwargs, step)
            finally:
                ticket._finished.set()

    @staticmethod
    def _run(ticket: Ticket, kwargs: dict[str, Any], step: Step) -> None:
        if ticket.cancel_requested:
            ticket.error = "cancelled before it started"
            return
        ticket.state = "running"

        db_url = kwargs.pop("db_url")

        def on_progress(progress: Progress) -> None:
            if ticket.progress is None and ticket.resumes is not None and progress.job_id is not None:
                mark_resumed(db_url, ticket.resumes, progress.job_id)
            ticket.progress = progress  # the runner's own object: pages read it, nothing writes it

        try:
            ticket.summary = run_step(db_url, step, list(ticket.image_ids), on_progress=on_progress,
                                      should_stop=ticket._cancel.is_set, **kwargs)
        except JobBusy as exc:
            ticket.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - the worker must outlive any one job; the row says what ended it
            log.exception("background job %s failed", ticket.step_name)
            ticket.error = f"{type(exc).__name__}: {exc}"
        finally:
            ticket.state = "finished"


_JOBS: BackgroundJobs | None = None
_JOBS_LOCK = threading.Lock()


def jobs() -> BackgroundJobs:
    """This process's background worker (started on first use)."""
    global _JOBS
    with _JOBS_LOCK:
        if _JOBS is None:
            _JOBS = BackgroundJobs()
        return _JOBS


def rebuild_step(spec: dict[str, Any], settings: Any) -> Step:
    """The step a job row's params["step"] describes ({"class": "module:Class", "recipe": {...}}),
    built again. Only Step classes of the workbench package are accepted (the row is data, and
    a team's database is shared): a layer-neutral plugin lookup, like pickle's, by name."""
    module_name, _, qualname = str(spec.get("class", "")).partition(":")
    if not module_name.startswith("workbench.") or not qualname.isidentifier():
        raise ValueError(f"not a workbench step: {spec.get('class')!r}")
    cls = getattr(importlib.import_module(module_name), qualname, None)
    if not (isinstance(cls, type) and issubclass(cls, Step)):
        raise ValueError(f"not a workbench step: {spec.get('class')!r}")
    return cls.from_recipe(dict(spec.get("recipe") or {}), settings)


@dataclass(frozen=True)
class RebuiltJob:
    """A stopped job made runnable again from its row: what `run_step` takes."""

    job_id: int
    step: Step
    image_ids: list[int]
    batch_size: int
    workers: int
    prefetch: int | None


def rebuild_job(settings: Any, job_id: int) -> RebuiltJob:
    """The job `job_id` (interrupted, cancelled or failed) rebuilt from its row: the same step
    (checked by its fingerprint), the same images and batch settings. Raises ValueError when
    it cannot be resumed, saying why. Resuming skips what is done (no `force`), as every
    re-run does."""
    from workbench.store.db import session_scope
    from workbench.store.schema import Job

    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise ValueError(f"no job {job_id}")
        status, params, fingerprint = job_status(job), dict(job.params or {}), job.fingerprint
        if status not in RESUMABLE:
            raise ValueError(f"job {job_id} is {status}; only {', '.join(RESUMABLE)} jobs can be resumed")
        if not params.get("step"):
            raise ValueError(f"job {job_id} ({job.step_name}) keeps no recipe to rebuild it: start it again from its page")
        step = rebuild_step(params["step"], settings)
        if step.fingerprint() != fingerprint:
            raise ValueError(f"job {job_id} cannot be rebuilt as it was (config {fingerprint}, now "
                             f"{step.fingerprint()}): start it again from its page")
    prefetch = params.get("prefetch")
    return RebuiltJob(job_id, step, ids_from_ranges(params.get("image_ids") or []),
                      int(params.get("batch_size") or 8), int(params.get("workers") or 1),
                      None if prefetch is None else int(prefetch))


def mark_resumed(db_url: str, job_id: int, by_job: int) -> None:
    """The stopped job `job_id` is resumed by job `by_job`, which has started: no Resume for it any more."""
    from workbench.store.db import session_scope
    from workbench.store.schema import Job

    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        if job is not None:
            job.status = "resumed"
            job.params = {**(job.params or {}), "resumed_by": by_job}


def resume(settings: Any, job_id: int) -> Ticket:
    """Submit again the job `job_id` to this process's worker (`rebuild_job`); returns its ticket.
    The old row turns `resumed` when the new job starts (not if it never does: then Resume stays)."""
    job = rebuild_job(settings, job_id)
    return jobs().submit(settings.db_url, job.step, job.image_ids, memes_dir=settings.memes_dir,
                         lock_dir=settings.artefacts_dir, batch_size=job.batch_size, workers=job.workers,
                         prefetch=job.prefetch, resumes=job_id)
