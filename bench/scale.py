"""A million memes on one box (issue 25): build N image rows with labels, three model runs, OCR
text and cached perceptual hashes, then time what people do at that size, on SQLite and on a
throwaway PostgreSQL (skipped when no server binary is installed).

    .venv/bin/python bench/scale.py [--n 1000000] [--db sqlite|postgres|both] [--runs 3] [--smoke]

Data: N image rows pointing at hard links of a few thousand generated memes (each row with its
own content hash); a folder label outside inbox/ (4 in 5), people's labels on 30 % (two people,
k = 2, on a tenth of those), three runs (VLM, CLIP, head) predicting every meme, OCR text on half,
and perceptual hashes of every meme with near-copies planted on 5 % (the grouping step stores
them as duplicate groups before the pages are timed, so the Label page shows near-copies).

Measured, in a fresh process per database (the app's process: its peak RSS is reported), through
the library functions the pages and the CLI call (pages through AppTest, as bench/ui.py does):

| what | target |
| a rescan of the unchanged tree (`scan_folder`) | >= 5,000 files/s |
| near-duplicate grouping from the cached hashes (`regroup`) | <= 5 min |
| Label page, first open and label -> next (one person; team k = 2) | <= 300 ms |
| Gallery, first open and a filter change | <= 500 ms |
| Dashboard: three runs with bootstrap CIs (`dashboard.dashboard`): cold, after the start-up warm-up, after a new label | <= 2 s |
| Disagreements: run A vs run B (`load_runs` + `pair_table`), cold and after a new label | <= 2 s |
| `export annotations` (`write_annotations`) | <= 30 s |
| backup + restore into an empty database | <= 15 min |

Cold: a new process with nothing cached; after the start-up warm-up: another new process, after
`warmup.warm_caches` (what the app starts in the background at its first page view).

`--smoke` runs everything at N = 300 (the test suite runs it so the bench cannot rot).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
from tests.support.page_bench import (  # noqa: E402 - the repo root is on sys.path now
    add_hashes,
    add_runs,
    analyze,
    app,
    build_files,
    fill_db,
    time_labeling,
    timed,
)
from tests.support.workspace import remove_workspace, temp_workspace  # noqa: E402

# (row, target, unit, higher is better)
TARGETS = {
    "rescan of the unchanged tree": (5000, "files/s", True),
    "near-duplicate grouping (cached hashes)": (300, "s", False),
    "Label, one person: first open": (300, "ms", False),
    "Label, one person: label → next": (300, "ms", False),
    "Label, team k=2: first open": (300, "ms", False),
    "Label, team k=2: label → next": (300, "ms", False),
    "Gallery: first open": (500, "ms", False),
    "Gallery: filter change": (500, "ms", False),
    "Dashboard, 3 runs with CIs": (2000, "ms", False),
    "Dashboard, after the start-up warm-up": (2000, "ms", False),
    "Disagreements, run A vs run B": (2000, "ms", False),
    "Dashboard, after a new label": (2000, "ms", False),
    "Disagreements, after a new label": (2000, "ms", False),
    "export annotations": (30, "s", False),
    "backup + restore": (900, "s", False),
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_ms(fn, runs: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def time_gallery(runs: int) -> tuple[float, float]:
    """(median first open, median filter change: label → toxic, then folder → inbox) of the gallery."""
    firsts, changes = [], []
    for _ in range(runs):
        at = app("pages/2_Gallery.py")
        at.session_state["annotator"] = "bench"
        firsts.append(timed(at))
        changes.append(timed(at, lambda at=at: at.selectbox(key="gal_label").set_value("toxic")))
        changes.append(timed(at, lambda at=at: at.selectbox(key="gal_folder").set_value("inbox")))
    return statistics.median(firsts), statistics.median(changes)


def measure(db_url: str, tmp: Path, runs: int, restore_url: str) -> dict:
    """Every row of TARGETS on one database, in this process (the app's); {row: value, ...} plus
    RSS and details."""
    from workbench.analysis import learner, outcomes, review
    from workbench.config import load_settings
    from workbench.features.near_duplicates import GroupingParams, regroup
    from workbench.store import db, overlap
    from workbench.store.annotations import write_annotations
    from workbench.store.backup import backup, restore, snapshot_session
    from workbench.store.ingest import scan_folder

    os.environ["WORKBENCH_DB_URL"] = db_url
    os.environ.pop("WORKBENCH_AUTH", None)
    settings = load_settings()
    out: dict = {"values": {}, "details": {}}
    values, details = out["values"], out["details"]

    t0 = time.perf_counter()
    with db.session_scope(db_url) as session:
        report = scan_folder(session, settings.memes_dir)
    seconds = time.perf_counter() - t0
    counts = report.counts
    if counts.get("unchanged", 0) != len(report.files):
        raise RuntimeError(f"the rescan changed something: {counts}")
    values["rescan of the unchanged tree"] = len(report.files) / seconds
    details["rescan"] = f"{len(report.files)} files in {seconds:.1f} s"

    t0 = time.perf_counter()
    result, saved = regroup(db_url, GroupingParams())
    values["near-duplicate grouping (cached hashes)"] = time.perf_counter() - t0
    details["grouping"] = (f"{result.n_hashes} hashes, {len(result.groups)} groups, "
                           f"{result.n_candidates} candidate pairs; "
                           + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    out["groups"] = len(result.groups)

    run_ids, dash = _dashboard_opener(db_url)

    def disagreements() -> None:
        with db.read_scope(db_url) as session:
            outcomes.data_version(session)
            data_a, data_b = outcomes.load_runs(session, run_ids[:2])
        review.pair_table(data_a, data_b)

    # Cold: a new server process with no warm-up (the app warms these caches in the background at
    # its first page view: the "after the start-up warm-up" row, measured in another new process).
    values["Dashboard, 3 runs with CIs"] = _median_ms(dash, 1)
    values["Disagreements, run A vs run B"] = _median_ms(disagreements, 1)
    with db.session_scope(db_url) as session:
        # The learner's background refresh (every 50 labels by default) would retrain on every
        # meme while the pages are timed: off, so the rows time the pages alone (bench/ui.py times that case).
        learner.set_refresh_every(session, 0)
    app("pages/1_Label.py")  # imports
    timed(app("pages/2_Gallery.py"))  # warm-up: imports, migrations check, thumbnails of page 1
    first, nxt = time_labeling(runs, team=False)
    values["Label, one person: first open"], values["Label, one person: label → next"] = first, nxt
    with db.session_scope(db_url) as session:
        overlap.set_labels_per_meme(session, 2)
    os.environ["WORKBENCH_AUTH"] = "oidc"
    try:
        time_labeling(1, team=True, presses=1)  # warm-up of the team queue's queries
        first, nxt = time_labeling(runs, team=True)
    finally:
        os.environ.pop("WORKBENCH_AUTH", None)
        with db.session_scope(db_url) as session:
            overlap.set_labels_per_meme(session, 1)
    values["Label, team k=2: first open"], values["Label, team k=2: label → next"] = first, nxt
    first, change = time_gallery(runs)
    values["Gallery: first open"], values["Gallery: filter change"] = first, change

    # The pages cache per data version; after a new label they compute again in the same process.
    from workbench.store.labels import add_label

    with db.session_scope(db_url) as session:
        add_label(session, 7, "toxic", "bench-dashboard")
    values["Dashboard, after a new label"] = _median_ms(dash, 1)
    with db.session_scope(db_url) as session:
        add_label(session, 8, "toxic", "bench-dashboard")
    values["Disagreements, after a new label"] = _median_ms(disagreements, 1)
    out["rss_app_mb"] = _peak_rss_mb()

    t0 = time.perf_counter()
    with db.read_scope(db_url) as session:
        n_rows = write_annotations(session, tmp / "annotations.csv")
    values["export annotations"] = time.perf_counter() - t0
    details["export"] = f"{n_rows} rows"

    t0 = time.perf_counter()
    with snapshot_session(db_url) as session:
        made = backup(session, tmp / "backup")
    t_backup = time.perf_counter() - t0
    db.upgrade(restore_url)
    with db.session_scope(restore_url) as session:
        restored = restore(session, tmp / "backup", memes_dir=settings.memes_dir)
    values["backup + restore"] = time.perf_counter() - t0
    details["backup"] = f"backup {t_backup:.0f} s ({made.summary()}); restore {values['backup + restore'] - t_backup:.0f} s"
    if restored.files_missing:
        raise RuntimeError(f"restore found {len(restored.files_missing)} files missing")
    out["rss_peak_mb"] = _peak_rss_mb()
    out["db_mb"] = db_size_mb(db_url)
    return out


def measure_warm(db_url: str) -> dict:
    """In a new process (the app's after a start): the background warm-up (warmup.warm_caches,
    seconds per part), then the Dashboard's first open."""
    from workbench.analysis import warmup

    t0 = time.perf_counter()
    parts = warmup.warm_caches(db_url)
    warm_s = time.perf_counter() - t0
    _run_ids, dash = _dashboard_opener(db_url)
    return {"warm_s": warm_s, "parts": parts, "dashboard_ms": _median_ms(dash, 1)}


def _dashboard_opener(db_url: str) -> tuple[list[int], Callable[[], None]]:
    """The bench's three runs, and what the Dashboard page computes when it opens on them."""
    from workbench.analysis import dashboard, outcomes
    from workbench.store import db

    with db.read_scope(db_url) as session:
        run_ids = sorted(r.id for r in outcomes.list_runs(session) if r.model_id.startswith("bench/"))

    def dash() -> None:
        with db.read_scope(db_url) as session:
            outcomes.data_version(session)
            dashboard.dashboard(session, run_ids)

    return run_ids, dash


def db_size_mb(db_url: str) -> float:
    """The database's size on disk: the SQLite file (+ WAL), or pg_database_size."""
    from sqlalchemy.engine import make_url

    from workbench.store import db

    if db_url.startswith("sqlite"):
        path = Path(make_url(db_url).database)
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists()) / 2**20
    with db.get_engine(db_url).connect() as conn:
        return conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar() / 2**20


def build(db_url: str, files: list, n_hashes: int) -> dict:
    """Fill one database; seconds per part."""
    timings = {}
    t0 = time.perf_counter()
    fill_db(db_url, files, people="team")
    timings["images, labels, OCR"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    add_runs(db_url, files)
    timings["3 runs of predictions"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    add_hashes(db_url, n_hashes)
    timings["hashes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    analyze(db_url)
    timings["analyze"] = time.perf_counter() - t0
    return timings


def run_measure(db_url: str, tmp: Path, runs: int, restore_url: str) -> dict:
    """measure() in a fresh process (the app's process, alone: its peak RSS is the app's)."""
    env = dict(os.environ, WORKBENCH_DB_URL=db_url)
    done = subprocess.run([sys.executable, __file__, "--measure", db_url, "--tmp", str(tmp), "--runs", str(runs),
                           "--restore-url", restore_url], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-6000:])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    done = subprocess.run([sys.executable, __file__, "--measure-warm", db_url], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-6000:])
    warm = json.loads(done.stdout.strip().splitlines()[-1])
    out["values"]["Dashboard, after the start-up warm-up"] = warm["dashboard_ms"]
    out["details"]["start-up warm-up"] = (f"{warm['warm_s']:.1f} s in the background ("
                                          + ", ".join(f"{k} {v:.1f} s" for k, v in warm["parts"].items()) + ")")
    return out


def verdict(row: str, value: float) -> str:
    target, _unit, higher = TARGETS[row]
    return "ok" if (value >= target if higher else value <= target) else "MISSED"


def print_table(n: int, results: dict[str, dict]) -> None:
    backends = list(results)
    print(f"\n{n:,} memes; pages: median of the sessions (server time)")
    print("| what | target | " + " | ".join(backends) + " |")
    print("|---|---|" + "---|" * len(backends))
    for row, (target, unit, higher) in TARGETS.items():
        cells = []
        for b in backends:
            v = results[b]["values"][row]
            shown = f"{v:,.0f} {unit}" if v >= 10 else f"{v:.1f} {unit}"
            cells.append(shown + ("" if verdict(row, v) == "ok" else " **missed**"))
        print(f"| {row} | {'≥' if higher else '≤'} {target:,} {unit} | " + " | ".join(cells) + " |")
    print("| database on disk | | " + " | ".join(f"{results[b]['db_mb']:,.0f} MB" for b in backends) + " |")
    print("| peak RSS of the app process (pages, rescan, grouping) | | "
          + " | ".join(f"{results[b]['rss_app_mb']:,.0f} MB" for b in backends) + " |")
    print("| peak RSS incl. export, backup + restore | | "
          + " | ".join(f"{results[b]['rss_peak_mb']:,.0f} MB" for b in backends) + " |")
    for b in backends:
        for k, v in {**results[b]["build"], **results[b]["details"]}.items():
            print(f"  {b} {k}: {v if isinstance(v, str) else f'{v:.0f} s'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="memes in the database")
    parser.add_argument("--files", type=int, default=2000, help="distinct generated files behind the hard links")
    parser.add_argument("--runs", type=int, default=3, help="sessions timed per page row (median reported)")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--smoke", action="store_true", help="N = 300, 40 files, 1 session: a quick check")
    parser.add_argument("--keep", action="store_true", help="keep the temporary database and files")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the measuring process
    parser.add_argument("--measure-warm", help=argparse.SUPPRESS)  # internal: a new process, warmed
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--restore-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.tmp), args.runs, args.restore_url)))
        return 0
    if args.measure_warm:
        print(json.dumps(measure_warm(args.measure_warm)))
        return 0
    if args.smoke:
        args.n, args.files, args.runs = 300, 40, 1
    tmp = temp_workspace("wb-bench-scale-")
    t0 = time.perf_counter()
    files = build_files(tmp, args.n, distinct_files=args.files, size=(320, 320))
    print(f"wrote {args.n:,} meme files (hard links of {args.files}) in {time.perf_counter() - t0:.1f} s ({tmp})",
          flush=True)
    results: dict[str, dict] = {}
    if args.db in ("sqlite", "both"):
        url = os.environ["WORKBENCH_DB_URL"]
        timings = build(url, files, args.n)
        print("sqlite built: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), flush=True)
        (tmp / "sqlite").mkdir()
        results["sqlite"] = run_measure(url, tmp / "sqlite", args.runs, f"sqlite:///{tmp / 'restored.sqlite3'}")
        results["sqlite"]["build"] = timings
        print(f"sqlite measured: {json.dumps(results['sqlite']['values'])}", flush=True)
    if args.db in ("postgres", "both"):
        from tests.support.pgserver import PostgresUnavailable, create_database, temporary_postgres
        from workbench.store import db

        try:
            with temporary_postgres("bench_scale") as url:
                timings = build(url, files, args.n)
                print("postgres built: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), flush=True)
                db.dispose_all()
                (tmp / "postgres").mkdir()
                results["postgres"] = run_measure(url, tmp / "postgres", args.runs,
                                                  create_database(url, "bench_restored"))
                results["postgres"]["build"] = timings
                print(f"postgres measured: {json.dumps(results['postgres']['values'])}", flush=True)
        except PostgresUnavailable as exc:
            print(f"postgres: skipped ({exc})")
    print_table(args.n, results)
    remove_workspace(tmp, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
