"""Database access: one cached engine per URL, sessions, and Alembic migrations.

SQLite runs in WAL mode with a busy timeout and BEGIN IMMEDIATE transactions, so the
UI in two tabs and a CLI job can write at once without "database is locked"
(a deferred transaction that reads then writes fails at once under WAL if another
writer committed meanwhile; IMMEDIATE takes the write lock up front and waits).

IMMEDIATE takes the one write lock even for a session that only reads, so a session that
stays open while something slow runs blocks every writer (and every other IMMEDIATE reader).
`read_scope` is for reading: a deferred transaction, which under WAL neither takes the write
lock nor waits for a writer. Slow work reads in a `read_scope`, computes with no session open,
and writes its result in one short `session_scope`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

from sqlalchemy import Engine, Select, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from workbench.config import REPO_ROOT

SQLITE_BUSY_TIMEOUT_MS = 60_000
T = TypeVar("T")
IN_BATCH = 900  # ids per `IN (...)`: SQLite allows 999 bound parameters in older builds
MIGRATIONS_DIR = REPO_ROOT / "db"
READ_ONLY = "workbench_read_only"  # execution option of read_scope's connections: BEGIN deferred on SQLite


def in_batches(items: Iterable[T], size: int = IN_BATCH) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` items: for `IN (...)` queries over many ids, and for job batches."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs (psycopg2 is not a dependency)."""
    try:
        parsed = make_url(url)
    except ArgumentError:  # not a URL: create_engine will say so
        return url
    if parsed.drivername not in ("postgresql", "postgres"):
        return url
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


UNPARSEABLE_URL = "<unparseable database URL>"


def mask_password(url: str) -> str:
    """`url` fit to show: the password replaced by ***; a URL without one (SQLite) as it is."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # it may still hold a password: show none of it (ValueError: a bad port)
        return UNPARSEABLE_URL
    if "@" in (parsed.host or ""):  # a raw '@' in the password leaves part of it in the host
        return UNPARSEABLE_URL
    if parsed.password is None and "password" not in parsed.query:
        return url  # nothing to hide; rendering would %-encode a Cyrillic path
    if "password" in parsed.query:  # libpq also takes ?password=...
        parsed = parsed.update_query_dict({"password": "***"})
    return unquote(parsed.render_as_string(hide_password=True))  # for reading only, never to connect


def _make_engine(url: str) -> Engine:
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        db_file = parsed.database
        if db_file and db_file != ":memory:":
            Path(db_file).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                                     "check_same_thread": False})

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
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    return create_engine(parsed, pool_pre_ping=True)


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


class ReadOnlySession(Session):
    """What read_scope yields: flushing a change raises (nothing it holds is ever written)."""

    def flush(self, objects=None) -> None:  # noqa: ANN001
        if self.new or self.dirty or self.deleted:
            raise RuntimeError("a read_scope session is for reading: write in a session_scope")
        super().flush(objects)


@functools.cache
def _read_sessionmaker(url: str) -> sessionmaker[ReadOnlySession]:
    return sessionmaker(get_engine(url).execution_options(**{READ_ONLY: True}), class_=ReadOnlySession,
                        expire_on_commit=False)


@contextmanager
def read_scope(url: str) -> Iterator[Session]:
    """A session for reading only, closed (rolled back) at the end. On SQLite its transaction is
    deferred: it takes no write lock, so it neither waits for a writer nor holds one up."""
    session = _read_sessionmaker(url)()
    try:
        yield session
    finally:
        session.rollback()
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
    _read_sessionmaker.cache_clear()


def database_full(exc: BaseException) -> bool:
    """Whether `exc` is the database refusing to grow: SQLite's "database or disk is full",
    PostgreSQL's disk_full (53100)."""
    text = str(getattr(exc, "orig", exc)).lower()
    return "database or disk is full" in text or "no space left on device" in text or \
        getattr(getattr(exc, "orig", None), "sqlstate", None) == "53100"


def fetch_tuples(session: Session, stmt: Select) -> list[tuple]:
    """Run a select of plain numbers/strings on the session's DBAPI cursor: skips
    SQLAlchemy's per-row Row objects, ~3x faster at 100k rows (values are inlined as
    literals by the dialect's own compiler, so only use this for trusted ints/strings)."""
    conn = session.connection()
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        cursor.close()
