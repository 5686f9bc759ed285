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
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
from tests.support.page_bench import (  # noqa: E402
    analyze,
    app,
    build_files,
    fill_db,
    time_labeling,
    time_page,
    timed,
)
from tests.support.workspace import remove_workspace, temp_workspace  # noqa: E402 - the repo root is on sys.path now


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
        at = app("pages/1_Label.py")
        at.session_state["annotator"] = f"learn{r}"
        firsts.append(timed(at))
        for _ in range(20):
            if len(nexts) >= 2 * (r + 1):
                break
            busy = refreshing()
            at.button(key="lbl_toxic").click()
            ms = timed(at)
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
                analyze(url)  # what autovacuum does to a settled database after a bulk load
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
