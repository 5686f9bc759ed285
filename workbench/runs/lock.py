"""One heavy job at a time per artefacts dir, so runs never fight over the CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

from filelock import FileLock, Timeout


class JobBusy(RuntimeError):
    """Another heavy job holds the lock."""


@contextmanager
def heavy_job_lock(lock_dir: Path) -> Iterator[None]:
    """One heavy job at a time per artefacts dir (an OS file lock, released on process death).

    The holder ("pid N since TIME") goes to a sidecar `.job.lock.holder` file written once the
    lock is ours, so a second job's JobBusy can name it; filelock owns `.job.lock` itself."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / ".job.lock"
    holder_file = lock_dir / ".job.lock.holder"
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = holder_file.read_text(encoding="utf-8").strip()
        except OSError:  # the holder has not written it yet
            holder = ""
        raise JobBusy(f"another job is running ({holder or 'another process'}); "
                      "wait for it or cancel it first") from None
    try:
        # A killed holder leaves a stale file behind; it is only read while the lock is taken,
        # and whoever takes the lock next overwrites it first.
        with suppress(OSError):
            holder_file.write_text(f"pid {os.getpid()} since {datetime.now().isoformat(timespec='seconds')}",
                                   encoding="utf-8")
        yield
    finally:
        with suppress(OSError):
            holder_file.write_text("", encoding="utf-8")
        lock.release()
