"""Database access: one cached engine per URL, sessions, and Alembic migrations.

SQLite runs in WAL mode with a busy timeout and BEGIN IMMEDIATE transactions, so the
UI in two tabs and a CLI job can write at once without "database is locked"
(a deferred transaction that reads then writes fails at once under WAL if another
writer committed meanwhile; IMMEDIATE takes the write lock up front and waits).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

from workbench.config import REPO_ROOT

SQLITE_BUSY_TIMEOUT_MS = 60_000
T = TypeVar("T")
IN_BATCH = 900  # ids per `IN (...)`: SQLite allows 999 bound parameters in older builds
MIGRATIONS_DIR = REPO_ROOT / "db"


def in_batches(items: Iterable[T], size: int = IN_BATCH) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` items: for `IN (...)` queries over many ids, and for job batches."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs (psycopg2 is not a dependency)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        db_file = url.split("///", 1)[-1]
        if db_file and db_file != ":memory:":
            Path(db_file).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


_engines: dict[str, Engine] = {}


def get_engine(url: str) -> Engine:
    """The one engine for `url` in this process."""
    if url not in _engines:
        _engines[url] = _make_engine(url)
    return _engines[url]


@functools.cache
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(url: str):  # noqa: ANN202
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Create or upgrade the schema to `revision` with the Alembic migrations in db/."""
    from alembic import command

    cfg = _alembic_config(url)
    with get_engine(url).begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def table_names(url: str) -> list[str]:
    return sorted(inspect(get_engine(url)).get_table_names())


def dispose_all() -> None:
    """Close every cached engine (tests, forked workers)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    get_sessionmaker.cache_clear()
