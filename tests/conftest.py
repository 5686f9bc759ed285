"""Shared fixtures: every test gets its own real SQLite file, memes dir and artefacts dir
(sqlite-utils' fresh_db idea), configured through the same env vars users set."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_MEMES = REPO_ROOT.parent / "shared" / "datasets" / "vlmemes" / "memes"

os.environ["HF_HUB_OFFLINE"] = "1"  # no hub here: fail fast instead of retrying
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# An empty model cache: tests that name real hub ids (to check the "cannot be loaded" message)
# must not find weights a developer happens to have cached.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="workbench-tests-hf-")
os.environ.pop("WORKBENCH_HF_CACHE", None)
os.environ.setdefault("OMP_THREAD_LIMIT", "1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: heavy check (real models/OCR on many images); CI runs it")
    config.addinivalue_line("markers", "browser: real Chromium through Playwright; CI runs it")
    config.addinivalue_line("markers", "postgres: needs a PostgreSQL server binary; skipped when absent")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings on a fresh, migrated SQLite file under tmp_path (env vars set for subprocesses too)."""
    from workbench.config import load_settings
    from workbench.store import db

    memes = tmp_path / "memes"
    memes.mkdir()
    monkeypatch.setenv("WORKBENCH_DB_URL", f"sqlite:///{tmp_path / 'wb.sqlite3'}")
    monkeypatch.setenv("WORKBENCH_MEMES_DIR", str(memes))
    monkeypatch.setenv("WORKBENCH_ARTEFACTS_DIR", str(tmp_path / "artefacts"))
    s = load_settings()
    db.upgrade(s.db_url)
    yield s
    db.dispose_all()


@pytest.fixture
def session(settings):
    from workbench.store.db import get_sessionmaker

    with get_sessionmaker(settings.db_url)() as s:
        yield s


@pytest.fixture
def real_memes() -> Path:
    """The 51 real memes in ../shared (skip when absent, e.g. on a user's machine)."""
    if not REAL_MEMES.is_dir():
        pytest.skip("../shared/datasets/vlmemes is not present")
    return REAL_MEMES


@pytest.fixture
def clear_streamlit_cache():
    """st.cache_resource is shared by every AppTest in the process: clear around each test."""
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()
