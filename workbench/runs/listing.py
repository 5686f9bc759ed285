"""Jobs as people see them: recent jobs as rows, and a status that tells a running job
from one whose process died."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.store.schema import Job

STALE_AFTER = timedelta(minutes=10)


STALE_AFTER = timedelta(minutes=10)


def job_status(job: Job, now: datetime | None = None) -> str:
    """The job's status, with a 'running' job whose process is gone shown as 'interrupted'."""
    if job.status != "running":
        return job.status
    now = now or datetime.now(UTC)
    beat = job.heartbeat_at or job.started_at
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=UTC)
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


def list_jobs(session: Session, limit: int | None = 50, step_kind: str | None = None) -> list[dict[str, Any]]:
    """Recent jobs as plain dicts (newest first) for tables in the UI and CLI; `limit=None`: all."""
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
