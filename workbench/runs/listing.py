"""Jobs as people see them: recent jobs as rows with progress, throughput and ETA, a status
that tells a running job from one whose process died, and the start-up sweep that marks
such jobs `interrupted` in the database."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.store.schema import Job, utcnow

# A running job's row gets a heartbeat every 15 s (runs.runner); eight missed beats and it is dead.
STALE_AFTER = timedelta(minutes=2)
ACTIVE = ("running", "cancelling")  # a job row a live runner still owns
INTERRUPTED = "interrupted"
RESUMABLE = (INTERRUPTED, "cancelled", "failed")  # a job that stopped early, resumed from its stored recipe


def job_status(job: Job, now: datetime | None = None) -> str:
    """The job's status, with a running (or cancelling) job whose process is gone shown as
    'interrupted'. On the host that ran it (a team's PostgreSQL serves several) its pid tells;
    elsewhere, or without a pid, a heartbeat older than STALE_AFTER does."""
    if job.status not in ACTIVE:
        return job.status
    if job.pid and (job.params or {}).get("host") in (None, socket.gethostname()):
        return job.status if _pid_alive(job.pid) else INTERRUPTED
    beat = _aware(job.heartbeat_at or job.started_at)
    if (now or datetime.now(UTC)) - beat > STALE_AFTER:
        return INTERRUPTED
    return job.status


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_interrupted(session: Session, process_started: datetime) -> list[int]:
    """Store `interrupted` on every job a dead process left running (`job_status`), and on a
    job with this process's pid (reused after a restart, as in a container) that began before
    this process did. A live local job with a slow batch is left alone (and the runner sets
    `running` again at its next batch anyway). Returns their ids; the caller commits."""
    marked = []
    for job in session.scalars(select(Job).where(Job.status.in_(ACTIVE))):
        reused_pid = (job.pid == os.getpid() and (job.params or {}).get("host") in (None, socket.gethostname())
                      and _aware(job.started_at) < _aware(process_started))
        if reused_pid or job_status(job) == INTERRUPTED:
            job.status, job.finished_at = INTERRUPTED, utcnow()
            job.error = job.error or "the process running it ended (a restart?); resume it from the Run page"
            marked.append(job.id)
    return marked


def job_row(job: Job, now: datetime | None = None) -> dict[str, Any]:
    """One job as a plain dict: counts, status, and while it runs its throughput
    (memes per second since it started) and ETA in seconds."""
    now = now or datetime.now(UTC)
    status = job_status(job, now)
    processed, todo = job.done + job.failed, job.total - job.skipped
    rate = eta = None
    if status in ACTIVE and processed:
        elapsed = ((_aware(job.heartbeat_at) if job.heartbeat_at else now) - _aware(job.started_at)).total_seconds()
        if elapsed > 0:
            rate = processed / elapsed
            eta = max(0.0, (todo - processed) / rate)
    return {
        "job": job.id, "step": job.step_kind, "name": job.step_name, "run": job.run_id,
        "status": status, "total": job.total, "done": job.done, "skipped": job.skipped,
        "failed": job.failed, "progress": min(1.0, processed / todo) if todo > 0 else 1.0,
        "per_s": round(rate, 2) if rate is not None else None, "eta_s": round(eta) if eta is not None else None,
        "started": job.started_at, "finished": job.finished_at, "error": job.error,
        "host": (job.params or {}).get("host"), "pid": job.pid,
        "resumable": status in RESUMABLE and bool((job.params or {}).get("step")),
    }


def list_jobs(session: Session, limit: int | None = 50, step_kind: str | None = None) -> list[dict[str, Any]]:
    """Recent jobs as plain dicts (`job_row`, newest first) for tables in the UI and CLI; `limit=None`: all."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if step_kind:
        query = query.where(Job.step_kind == step_kind)
    now = datetime.now(UTC)
    return [job_row(job, now) for job in session.scalars(query)]


def active_jobs(session: Session) -> list[dict[str, Any]]:
    """Jobs running now, in any process (the sidebar's "running: OCR 312/5,000")."""
    now = datetime.now(UTC)
    rows = [job_row(job, now) for job in session.scalars(select(Job).where(Job.status.in_(ACTIVE)).order_by(Job.id))]
    return [row for row in rows if row["status"] in ACTIVE]
