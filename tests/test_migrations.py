"""Alembic migrations: upgrade from an empty database, and the ORM metadata matches it."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from workbench.store import db
from workbench.store.schema import Base

EXPECTED_TABLES = {"images", "labels", "ocr_results", "model_runs", "predictions", "embeddings", "jobs", "settings"}


def head_revision() -> str:
    return ScriptDirectory.from_config(db._alembic_config("sqlite://")).get_current_head()


def test_upgrade_from_empty(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    try:
        assert db.current_revision(url) is None
        db.upgrade(url)
        assert db.current_revision(url) == head_revision()
        assert EXPECTED_TABLES <= set(db.table_names(url))
        db.upgrade(url)  # idempotent: the app runs it on every start
        assert db.current_revision(url) == head_revision()
    finally:
        db.dispose_all()


def test_orm_metadata_matches_migrated_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cmp.sqlite3'}"
    try:
        db.upgrade(url)
        with db.get_engine(url).connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True,
                                                                   "compare_server_default": True})
            diffs = compare_metadata(context, Base.metadata)
        assert diffs == [], f"schema.py and db/versions disagree: {diffs}"
    finally:
        db.dispose_all()


def test_sqlite_runs_in_wal_mode_with_busy_timeout(settings) -> None:
    with db.get_engine(settings.db_url).connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
