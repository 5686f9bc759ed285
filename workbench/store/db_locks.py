"""Locks that hold across machines sharing one database.

A file lock only holds on the machine that takes it. When several machines share one
PostgreSQL server, work that must not run twice at once (a scan of the memes folder, a job
with a given step fingerprint) takes a PostgreSQL session-level advisory lock instead: held
by a connection of its own for as long as the work runs, released when it ends or when its
process dies (the server drops the connection). On SQLite, which one machine serves, the
callers' file locks are what hold, and `advisory_lock` yields at once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine


class LockBusy(RuntimeError):
    """Another process (on any machine) holds the advisory lock."""


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (PostgreSQL advisory locks take a bigint)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


@contextmanager
def advisory_lock(bind: Engine | Connection, name: str, wait: bool = True, poll: float = 0.2) -> Iterator[None]:
    """Hold the database-wide lock `name` for the block (PostgreSQL; a no-op elsewhere), on a
    connection of its own from `bind`'s engine (a session's `get_bind()` will do).

    wait=True waits for it (polling, so a Ctrl-C or a job's cancel still gets through);
    wait=False raises LockBusy at once when someone else holds it."""
    engine = getattr(bind, "engine", bind)
    if engine.dialect.name != "postgresql":
        yield
        return
    key = lock_key(name)
    with engine.connect() as conn:
        while not conn.execute(select(func.pg_try_advisory_lock(key))).scalar():
            conn.rollback()  # no transaction left open while waiting
            if not wait:
                raise LockBusy(name)
            time.sleep(poll)
        conn.commit()
        try:
            yield
        finally:
            conn.execute(select(func.pg_advisory_unlock(key)))
            conn.commit()
