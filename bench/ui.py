"""Server-side render time of the labeling and gallery pages with N memes (default 10,000) +
labels in a temporary database: AppTest run time, median of several sessions, on SQLite and
on a throwaway PostgreSQL (skipped when no server binary is installed).

Measured per backend:
- labeling, one person: sign-in off, k = 1 (as a single user works) — the first open of a
  new session, and label → next (press Toxic, the page shows the next meme);
- labeling while the learner refreshes: N = 1, label -> next timed only while a refresh runs
  in the background worker (workbench.analysis.learner);
- labeling, team: sign-in on (WORKBENCH_AUTH=oidc), k = 2, a signed-in annotator — the same two;
- gallery: first open and a rerun.
Targets: labeling <= 300 ms, gallery <= 500 ms. AppTest compiles the page scripts again on
every run and scans installed components per AppTest; a server does both once per process,
so the bench shares one of each across runs and times our pages, not that.

    .venv/bin/python bench/ui.py [--n 10000] [--runs 5] [--db sqlite|postgres|both]

The N image rows point at hard links of a few hundred generated memes (real files, so
thumbnails and st.image do real work), each row with its own content hash. Labels: a
'folder' label on 60 %, two people on ~30 %, and OCR text on half, like a working project.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.support.workspace import remove_workspace, temp_workspace  # noqa: E402 - the repo root is on sys.path now

os.environ.setdefault("OMP_NUM_THREADS", "1")
TEAM = [f"annotator{i}@bench.org" for i in range(12)]


def build_files(tmp: Path, n: int, distinct_files: int = 200) -> list[tuple[str, str, str, int, float]]:
    """n hard links under WORKBENCH_MEMES_DIR to `distinct_files` generated memes:
    (relative path, label, caption, bytes, mtime) per image."""
    from workbench.config import load_settings
    from workbench.store.demo_memes import write_sample_memes

    memes_dir = load_settings().memes_dir
    pool = write_sample_memes(tmp / "pool", n=distinct_files, size=(384, 384), fmt="JPEG")
    files = []
    for i in range(n):
        sample = pool[i % len(pool)]
        folder = "Негативно" if sample.label == "toxic" else "Нейтрально"
        if i % 5 == 4:
            folder = "inbox"  # unlabeled by folder
        rel = f"{folder}/meme_{i:05d}.jpg"
        target = memes_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(sample.path, target)
        stat = target.stat()
        files.append((rel, sample.label, sample.caption, stat.st_size, stat.st_mtime))
    return files


def fill_db(db_url: str, files: list[tuple[str, str, str, int, float]]) -> None:
    """Migrate the database at db_url and insert the images, labels, OCR rows and the team's users."""
    from sqlalchemy import insert

    from workbench.store import db
    from workbench.store.schema import Image, Label, OcrResult, User

    db.upgrade(db_url)
    rng = random.Random(0)
    images, labels, ocr = [], [], []
    for i, (rel, label, caption, size, mtime) in enumerate(files):
        folder = rel.split("/", 1)[0]
        images.append(dict(id=i + 1, sha256=f"{i:064x}", path=rel, original_name=rel.rsplit("/", 1)[1], format="JPEG",
                           width=384, height=384, bytes=size, n_frames=1, source="folder", folder=folder, mtime=mtime,
                           missing=False))
        if folder != "inbox":
            labels.append(dict(image_id=i + 1, label=label, annotator="folder"))
        for person in ("alice", "bob"):
            if rng.random() < 0.3:
                labels.append(dict(image_id=i + 1, label=rng.choice(["toxic", "non_toxic"]), annotator=person))
        if i % 2 == 0:
            ocr.append(dict(image_id=i + 1, engine="tesseract", fingerprint="tesseract:bench", config={}, text=caption,
                            boxes=[]))
    with db.session_scope(db_url) as session:
        for table, rows in ((Image, images), (Label, labels), (OcrResult, ocr)):
            for start in range(0, len(rows), 10_000):
                session.execute(insert(table), rows[start:start + 10_000])
        session.execute(insert(User), [dict(email=e, role="annotator", added_by="bench") for e in TEAM])
    if not db_url.startswith("sqlite"):  # what autovacuum does to a settled database after a bulk load
        with db.get_engine(db_url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")


_COMPONENTS = []


def _components():  # noqa: ANN202
    if not _COMPONENTS:
        from streamlit.components.v2.component_manager import BidiComponentManager

        manager = BidiComponentManager()
        manager.discover_and_register_components(start_file_watching=False)
        _COMPONENTS.append(manager)
    return _COMPONENTS[0]


_SCRIPTS: dict = {}


def _share_script_cache() -> None:
    """A server compiles each script once per process (one ScriptCache); AppTest compiles them again
    on every run (~60 ms here). Share one cache, so a run measures our page, not the compiler."""
    from streamlit.runtime.scriptrunner import script_cache

    if getattr(script_cache.ScriptCache, "_bench_shared", False):
        return
    original = script_cache.ScriptCache.__init__

    def init(self) -> None:  # noqa: ANN001
        original(self)
        self._cache = _SCRIPTS

    script_cache.ScriptCache.__init__ = init
    script_cache.ScriptCache._bench_shared = True


def _app(page: str | None):  # noqa: ANN202
    from streamlit.testing.v1 import AppTest

    _share_script_cache()
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    # A server scans installed packages for components once per process; AppTest does it once
    # per AppTest (~1.4 s here). Share one scan so "first run" measures our page, not that.
    at._bidi_component_manager = _components()
    if page:
        at.switch_page(page)
    return at


def _timed(at) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    at.run()
    ms = (time.perf_counter() - t0) * 1000
    if at.exception:
        raise RuntimeError(at.exception[0].message)
    return ms


def time_page(page: str | None, runs: int, annotator: str = "alice") -> tuple[float, float, list[float]]:
    """(first run of a fresh session, median rerun) in ms for one page."""
    firsts, reruns = [], []
    for _ in range(runs):
        at = _app(page)
        at.session_state["annotator"] = annotator
        firsts.append(_timed(at))
        reruns.append(_timed(at))
    return statistics.median(firsts), statistics.median(reruns), firsts


def time_labeling(runs: int, team: bool) -> tuple[float, float]:
    """(median first open, median label -> next) of the Label page, one person or a signed-in team member."""
    firsts, nexts = [], []
    for r in range(runs):
        at = _app("pages/1_Label.py")
        if team:
            at.user = {"is_logged_in": True, "email": TEAM[r % len(TEAM)], "iat": int(time.time())}
        else:
            at.session_state["annotator"] = f"bench{r}"
        firsts.append(_timed(at))
        for _ in range(2):
            before = at.query_params.get("image")
            at.button(key="lbl_toxic").click()
            nexts.append(_timed(at))
            if at.query_params.get("image") == before:
                raise RuntimeError("the Label page did not move to the next meme")
    return statistics.median(firsts), statistics.median(nexts)


def time_labeling_while_refreshing(runs: int) -> tuple[float, float]:
    """(median first open, median label -> next while a learner refresh runs in the background
    worker) of the Label page, one person, with the learner refreshed after every label (N = 1):
    only the label presses made while a refresh was running count."""
    from workbench.analysis.learner import STEP_KIND
    from workbench.runs import background

    def refreshing() -> bool:
        return any(t.step_kind == STEP_KIND and t.state == "running" for t in background.jobs().active())

    firsts, nexts = [], []
    for r in range(runs):
        at = _app("pages/1_Label.py")
        at.session_state["annotator"] = f"learn{r}"
        firsts.append(_timed(at))
        for _ in range(20):
            if len(nexts) >= 2 * (r + 1):
                break
            busy = refreshing()
            at.button(key="lbl_toxic").click()
            ms = _timed(at)
            if busy and refreshing():  # a refresh ran through the whole label -> next
                nexts.append(ms)
            elif not busy:
                time.sleep(0.3)  # the refresh the press started is starting in the worker
    background.jobs().wait_idle(600)
    if not nexts:
        raise RuntimeError("no label press overlapped a running refresh")
    return statistics.median(firsts), statistics.median(nexts)


def measure(db_url: str, runs: int) -> dict[str, tuple[float, float, int]]:
    """{row: (first, second, target)} on one database (WORKBENCH_DB_URL points at it)."""
    from workbench.store import db, overlap

    os.environ["WORKBENCH_DB_URL"] = db_url
    os.environ.pop("WORKBENCH_AUTH", None)
    time_page("pages/2_Gallery.py", 1)  # warm-up: imports, migrations check, thumbnails of page 1
    time_page("pages/1_Label.py", 1)
    out = {"labeling, one person": (*time_labeling(runs, team=False), 300)}
    from workbench.analysis import learner

    with db.session_scope(db_url) as session:
        learner.set_refresh_every(session, 1)
    try:
        out["labeling, refresh running"] = (*time_labeling_while_refreshing(runs), 300)
    finally:
        with db.session_scope(db_url) as session:
            learner.set_refresh_every(session, 0)
    with db.session_scope(db_url) as session:
        overlap.set_labels_per_meme(session, 2)
    os.environ["WORKBENCH_AUTH"] = "oidc"
    try:
        time_labeling(1, team=True)  # warm-up of the team queue's queries
        out["labeling, team (k=2)"] = (*time_labeling(runs, team=True), 300)
    finally:
        os.environ.pop("WORKBENCH_AUTH", None)
    first, rerun, _ = time_page("pages/2_Gallery.py", runs)
    out["gallery"] = (first, rerun, 500)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="memes in the database")
    parser.add_argument("--runs", type=int, default=5, help="sessions timed per row (median reported)")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--keep", action="store_true", help="keep the temporary database and files")
    args = parser.parse_args()
    tmp = temp_workspace("wb-bench-ui-")
    t0 = time.perf_counter()
    files = build_files(tmp, args.n)
    print(f"wrote {args.n} meme files (hard links) in {time.perf_counter() - t0:.1f} s ({tmp})")
    results: dict[str, dict[str, tuple[float, float, int]]] = {}
    if args.db in ("sqlite", "both"):
        url = os.environ["WORKBENCH_DB_URL"]
        t0 = time.perf_counter()
        fill_db(url, files)
        print(f"sqlite: {args.n} memes + labels + OCR in {time.perf_counter() - t0:.1f} s")
        results["sqlite"] = measure(url, args.runs)
    if args.db in ("postgres", "both"):
        from tests.support.pgserver import PostgresUnavailable, temporary_postgres

        try:
            with temporary_postgres("bench_ui") as url:
                t0 = time.perf_counter()
                fill_db(url, files)
                print(f"postgres: {args.n} memes + labels + OCR in {time.perf_counter() - t0:.1f} s")
                results["postgres"] = measure(url, args.runs)
                from workbench.store import db

                db.dispose_all()
        except PostgresUnavailable as exc:
            print(f"postgres: skipped ({exc})")
    print(f"\n{args.n} memes, median of {args.runs} sessions (ms of server time)")
    print(f"{'db':9} {'page':26} {'first open':>10} {'label→next / rerun':>19} {'target':>7}")
    for backend, rows in results.items():
        for name, (first, second, target) in rows.items():
            verdict = "ok" if max(first, second) <= target else "SLOW"
            print(f"{backend:9} {name:26} {first:8.0f}ms {second:17.0f}ms {target:5d}ms  {verdict}")
    print("first open = a new browser session opening the page; label→next = press Toxic, the page shows the next "
          "meme (gallery: a rerun of the same session)")
    remove_workspace(tmp, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
