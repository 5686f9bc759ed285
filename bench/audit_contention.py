"""Label → next while a data audit runs: the Label page's server time (as bench/ui.py measures it:
press Toxic, the page shows the next meme) alone, and while cleanlab's data audit runs over the
same N memes (default 10,000), on SQLite. Target: label → next <= 300 ms.

The audit runs, over and over until the clicks are timed:
- in another process: how the Duplicates page runs it (`run_audit_isolated`), and the CLI's
  `quality` beside the app: only the database and the cores are shared;
- in a thread of this process: how a page would run it in the server (a thread per session), so
  the clicks also compete for the GIL;
- (with --old) in a thread, the way the Duplicates page ran it before: inside one committing
  session, which on SQLite holds the write lock (BEGIN IMMEDIATE) for the whole audit.

    .venv/bin/python bench/audit_contention.py [--n 10000] [--clicks 10] [--old]

Each meme has a cached 512-d embedding and an out-of-fold probability from one learned run, so
the audit runs every issue type (label issues, near-duplicates, outliers, class imbalance).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from tests.support.workspace import remove_workspace, temp_workspace  # noqa: E402 - the repo root is on sys.path now

os.environ.setdefault("OMP_NUM_THREADS", "1")
DIM = 512


def add_audit_inputs(db_url: str, seed: int = 0) -> None:
    """A cached CLIP-image-like embedding for every meme and one out-of-fold run over the labeled ones."""
    import numpy as np
    from sqlalchemy import select, update

    from tests.support.synthetic_runs import Pred, add_run
    from workbench.features.embeddings import ClipImageEmbedder, store_embeddings
    from workbench.store import db
    from workbench.store.labels import consensus_labels
    from workbench.store.schema import Image, Prediction

    rng = np.random.default_rng(seed)
    with db.session_scope(db_url) as session:
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        labels = consensus_labels(session)
        centres = rng.normal(0, 1, (40, DIM)).astype(np.float32)
        embedder = ClipImageEmbedder("bench-audit")
        store_embeddings(session, embedder, [(i, embedder.fingerprint(),
                                              centres[k % 40] + rng.normal(0, 0.7, DIM).astype(np.float32))
                                             for k, i in enumerate(ids)])
        probs = {i: Pred(lab, float(np.clip((0.75 if lab == "toxic" else 0.25) + rng.normal(0, 0.2), 0.01, 0.99)))
                 for i, lab in labels.items()}
        run = add_run(session, "head", "bench out-of-fold", probs)
        session.execute(update(Prediction).where(Prediction.run_id == run).values(extra={"out_of_fold": True}))


def audit_once(db_url: str, old: bool = False) -> float:
    """One audit; seconds. `old`: inside one committing session (the Duplicates page before the fix)."""
    from workbench.analysis import data_audit
    from workbench.store import db

    t0 = time.perf_counter()
    if old:
        with db.session_scope(db_url) as session:
            data_audit.audit(data_audit.audit_inputs(session))
    else:
        data_audit.run_audit(db_url)
    return time.perf_counter() - t0


class AuditLoop:
    """Audits over and over in a thread or a process until stopped (the old way: one audit, since
    back-to-back write transactions starve the Label page until "database is locked"); each audit's
    seconds are appended to a progress file."""

    def __init__(self, db_url: str, where: str, work_dir: Path) -> None:
        self.db_url, self.where = db_url, where
        name = where.replace(", ", "-")
        self.stop_file, self.progress = work_dir / f"stop-{name}", work_dir / f"audits-{name}.txt"
        self.started = work_dir / f"started-{name}"
        self.thread: threading.Thread | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def seconds(self) -> list[float]:
        return [float(x) for x in self.progress.read_text().split()] if self.progress.exists() else []

    def __enter__(self) -> AuditLoop:
        if self.where == "process":
            self.proc = subprocess.Popen([sys.executable, __file__, "--audit-worker", self.db_url, str(self.stop_file),
                                          str(self.progress), str(self.started)], cwd=REPO)
        else:
            self.thread = threading.Thread(target=audit_worker, daemon=True,
                                           args=(self.db_url, self.stop_file, self.progress, self.started,
                                                 self.where == "thread, old"))
            self.thread.start()
        deadline = time.monotonic() + 600
        while not self.started.exists():  # imports done: the audit is computing now
            assert time.monotonic() < deadline and (self.proc is None or self.proc.poll() is None), "no audit started"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_file.touch()
        if self.thread is not None:
            self.thread.join()
        if self.proc is not None:
            self.proc.wait(timeout=600)


def audit_worker(db_url: str, stop_file: str | Path, progress: str | Path, started: str | Path,
                 old: bool = False) -> None:
    """Audit until `stop_file` exists, appending each audit's seconds to `progress`; a first audit
    (imports) runs before `started` is touched. `old`: one audit inside one write transaction."""
    stop, progress, started = Path(stop_file), Path(progress), Path(started)
    if not old:
        audit_once(db_url)  # cleanlab's imports: not what is measured
    started.touch()
    while not stop.exists():
        seconds = audit_once(db_url, old)
        with progress.open("a") as fh:
            fh.write(f"{seconds:.3f}\n")
        if old:
            return


def open_label_page():  # noqa: ANN201
    """The Label page, opened once by a new annotator (AppTest; bench/ui.py's shared script cache)."""
    from ui import _app, _timed

    at = _app("pages/1_Label.py")
    at.session_state["annotator"] = f"bench{time.monotonic_ns()}"
    _timed(at)
    return at


def time_clicks(at, clicks: int, min_audits: int = 0, loop: AuditLoop | None = None,  # noqa: ANN001
                min_seconds: float = 0.0) -> list[float | None]:
    """Server time (ms) of label → next on the open Label page: `clicks` of them, and more until
    `loop` has finished `min_audits` audits and `min_seconds` have passed. None: the click failed
    (database is locked)."""
    from ui import _timed

    times: list[float | None] = []
    t0 = time.monotonic()
    while (len(times) < clicks or (loop is not None and len(loop.seconds) < min_audits)
           or time.monotonic() - t0 < min_seconds):
        before = at.query_params.get("image")
        at.button(key="lbl_toxic").click()
        try:
            times.append(_timed(at))
        except RuntimeError as exc:
            if "database is locked" not in str(exc):
                raise
            times.append(None)
            at = open_label_page()  # a person reloads
            continue
        if at.query_params.get("image") == before:
            raise RuntimeError("the Label page did not move to the next meme")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="memes in the database")
    parser.add_argument("--clicks", type=int, default=10, help="label → next timed per row")
    parser.add_argument("--old", action="store_true", help="also time the audit inside one write transaction "
                        "(each click then waits for a whole audit: few clicks)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary database and files")
    parser.add_argument("--audit-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.audit_worker:
        audit_worker(*args.audit_worker)
        return 0
    from ui import build_files, fill_db

    tmp = temp_workspace("wb-bench-audit-")
    url = os.environ["WORKBENCH_DB_URL"]
    t0 = time.perf_counter()
    fill_db(url, build_files(tmp, args.n))
    add_audit_inputs(url)
    print(f"sqlite: {args.n} memes + labels + {DIM}-d embeddings + an out-of-fold run in "
          f"{time.perf_counter() - t0:.1f} s")
    alone_audit = audit_once(url)
    print(f"one audit alone: {alone_audit:.1f} s")
    time_clicks(open_label_page(), 2)  # warm-up: imports, the queue's queries
    # alone for as long as two audits take: the same span as the rows beside an audit
    rows: dict[str, tuple[list[float | None], list[float]]] = {
        "alone": (time_clicks(open_label_page(), args.clicks, min_seconds=2 * alone_audit), [])}
    for where in ["process", "thread"] + (["thread, old"] if args.old else []):
        at = open_label_page()  # before the audit starts: only clicks are timed
        with AuditLoop(url, where, tmp) as loop:
            times = time_clicks(at, args.clicks if where != "thread, old" else 3, 0 if where == "thread, old" else 2,
                                loop)
        rows[f"audit in a {where}"] = (times, loop.seconds)
    print(f"\n{args.n} memes, SQLite: label → next server time (ms); at least {args.clicks} clicks per row, and "
          "clicks go on until two audits have run beside them (alone: as long as two audits take)")
    print(f"{'while':26} {'clicks':>6} {'median':>7} {'p95':>6} {'max':>6} {'>300ms':>6} {'locked':>6} {'audits':>6} "
          f"{'s/audit':>7}")
    for name, (times, audits) in rows.items():
        ok = sorted(t for t in times if t is not None)
        p95 = ok[min(len(ok) - 1, int(0.95 * len(ok)))]
        per = f"{statistics.median(audits):7.1f}" if audits else f"{'':7}"
        print(f"{name:26} {len(times):6} {statistics.median(ok):7.0f} {p95:6.0f} {ok[-1]:6.0f} "
              f"{sum(t > 300 for t in ok):6} {len(times) - len(ok):6} {len(audits) or '':>6} {per}")
    print("target: label → next <= 300 ms; >300ms = clicks slower than that; "
          "locked = clicks that failed with 'database is locked' (after SQLite's 60 s busy timeout)")
    remove_workspace(tmp, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
