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


FRIDAY_CAPTION = "Когда пятница, а ты на работе"


@pytest.fixture
def make_memes(settings, session):
    """Builder: write `n` generated memes, scan them, and correct the first one's OCR text to
    FRIDAY_CAPTION (so prompts that carry OCR text can be checked); returns their ids."""
    from sqlalchemy import select

    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder
    from workbench.store.ocr_texts import save_correction
    from workbench.store.schema import Image

    def make(n: int, seed: int, size: tuple[int, int]) -> list[int]:
        write_sample_memes(settings.memes_dir, n=n, seed=seed, size=size)
        scan_folder(session, settings.memes_dir)
        session.commit()
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        save_correction(session, ids[0], FRIDAY_CAPTION, "anna")
        session.commit()
        return ids

    return make


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
