"""One heavy job at a time per artefacts dir, so runs never fight over the CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

STALE_AFTER = timedelta(minutes=10)


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
