"""A throwaway workbench workspace for benchmarks: a temporary folder holding the memes dir,
a SQLite database and the artefacts dir, with the WORKBENCH_* variables pointing at it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def temp_workspace(prefix: str) -> Path:
    """Create the folder (memes/ inside it) and point WORKBENCH_DB_URL, _MEMES_DIR and
    _ARTEFACTS_DIR at it; returns the folder."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    (tmp / "memes").mkdir()
    os.environ["WORKBENCH_DB_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["WORKBENCH_MEMES_DIR"] = str(tmp / "memes")
    os.environ["WORKBENCH_ARTEFACTS_DIR"] = str(tmp / "artefacts")
    return tmp


def remove_workspace(tmp: Path, keep: bool = False) -> None:
    """Close every database engine, then delete the folder unless `keep` (its path is kept for a look)."""
    from workbench.store import db

    db.dispose_all()
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
