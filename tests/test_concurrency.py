"""Concurrency and crash safety on a real SQLite file and a real PostgreSQL server.

Two annotator processes write 500 labels each (one transaction per click, as the Label
page does) while a prediction job writes batches: every row lands exactly once and no
"database is locked" reaches anyone. A job SIGKILLed in the middle of a batch and then
restarted leaves exactly one prediction per image for its run.

The worker processes run this file as a script (`python tests/test_concurrency.py ...`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # when run as a worker script
    sys.path.insert(0, str(REPO_ROOT))

from workbench.predictors.base import PredictInput, Predictor, PredictorStep, PredictOutput  # noqa: E402
from workbench.runs.listing import job_status  # noqa: E402
from workbench.runs.runner import run_step  # noqa: E402
from workbench.store import db  # noqa: E402
from workbench.store.schema import Image, Job, Label, ModelRun, Prediction  # noqa: E402

LABELS_PER_ANNOTATOR = 500
N_IMAGES = 40


class SlowMeanPredictor(Predictor):
    """Deterministic test predictor: dark images are 'toxic'. `delay_s` per batch makes
    the job overlap the annotators; `hang_on_batch` + `marker` let a test SIGKILL it
    while a batch is in flight."""

    kind = "test-mean"

    def __init__(self, delay_s: float = 0.0, hang_on_batch: int | None = None, marker: str | None = None,
                 overlap_with: tuple[str, ...] = ()) -> None:
        self.delay_s, self.hang_on_batch, self.marker = delay_s, hang_on_batch, marker
        self.overlap_with = overlap_with  # (db url, annotator, ...): wait for their first labels before batch 2
        self.batches = 0

    def config(self) -> dict:
        return {"model": "mean-brightness"}  # delay/hang do not change outputs: same run on restart

    def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        self.batches += 1
        if self.hang_on_batch is not None and self.batches == self.hang_on_batch:
            Path(self.marker or "").write_text(str(os.getpid()))
            time.sleep(600)  # killed here, mid-batch
        if self.overlap_with and self.batches == 2:
            _wait_for_writers(self.overlap_with[0], self.overlap_with[1:], prediction=False)
        time.sleep(self.delay_s)
        outs = []
        for item in batch:
            p = round(1 - float(np.asarray(item.image.convert("L")).mean()) / 255, 6)
            outs.append(PredictOutput("toxic" if p > 0.5 else "non_toxic", p))
        return outs


# ---- worker entry points (run in separate processes) ----------------------------------------

def annotate(url: str, annotator: str, n: int, go_file: str, others: tuple[str, ...] = ()) -> None:
    from workbench.store.labels import add_label

    with db.session_scope(url) as session:
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
    _wait_at_barrier(go_file, annotator)
    for i in range(n):
        if i == n // 2:
            # On 2 busy cores one writer can start after another has finished 500 quick clicks:
            # wait here until every other writer has committed something, so all of them overlap.
            _wait_for_writers(url, others, prediction=True)
        with db.session_scope(url) as session:  # one click = one transaction
            add_label(session, ids[i % len(ids)], "toxic" if (i + len(annotator)) % 2 else "non_toxic", annotator,
                      note=f"{annotator}-{i}")


def _wait_for_writers(url: str, annotators: tuple[str, ...], prediction: bool, timeout_s: float = 120) -> None:
    """Until each of `annotators` has committed a label and (if `prediction`) the job its first batch.
    Gives up after timeout_s; the test's overlap assertion then says what happened."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.session_scope(url) as session:
            seen = set(session.scalars(select(Label.annotator).where(Label.annotator.in_(annotators)).distinct()))
            predicted = not prediction or bool(session.scalar(select(func.count()).select_from(Prediction)))
        if predicted and seen == set(annotators):
            return
        time.sleep(0.01)


def predict_job(url: str, memes_dir: str, lock_dir: str, delay_s: float, hang_on_batch: int | None,
                marker: str | None, go_file: str | None, overlap_with: tuple[str, ...] = ()) -> None:
    if go_file:
        _wait_at_barrier(go_file, "predict")
    with db.session_scope(url) as session:
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
    predictor = SlowMeanPredictor(delay_s, hang_on_batch, marker, (url, *overlap_with) if overlap_with else ())
    step = PredictorStep(predictor)
    summary = run_step(url, step, ids, memes_dir=Path(memes_dir), lock_dir=Path(lock_dir), batch_size=4)
    print(summary.describe())
    if summary.status != "done":
        raise SystemExit(1)


def scan(url: str, memes_dir: str, go_file: str) -> None:
    from workbench.store.ingest import scan_folder

    _wait_at_barrier(go_file, f"scan-{os.getpid()}")
    with db.session_scope(url) as session:
        report = scan_folder(session, Path(memes_dir), commit_every=5)  # small batches: many chances to race
    print(" ".join(f"{f.status}:{f.name}" for f in report.files))


def _wait_at_barrier(go_file: str, name: str) -> None:
    """Say this worker is ready (imports done), then wait for the test's go."""
    Path(f"{go_file}.{name}.ready").touch()
    while not Path(go_file).exists():
        time.sleep(0.01)


def _release(go: Path, workers: int, procs: list[subprocess.Popen]) -> None:
    """Start all workers at once: wait until each has reached the barrier, then touch `go`.
    (A fixed sleep let a slow-importing worker start after the others had finished.)"""
    deadline = time.monotonic() + 120
    while len(list(go.parent.glob(f"{go.name}.*.ready"))) < workers:
        assert all(p.poll() is None for p in procs), "a worker died before the start"
        assert time.monotonic() < deadline, "workers did not reach the barrier"
        time.sleep(0.02)
    go.touch()


def _spawn(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg_server():
    from tests.support.pgserver import PostgresUnavailable, find_pg_bin, temporary_postgres

    if find_pg_bin() is None:
        pytest.skip("no PostgreSQL server binary (initdb/pg_ctl) installed; `bash .ci/install --test` installs it")
    try:
        with temporary_postgres("postgres_tests") as url:
            yield url
            db.dispose_all()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL could not start: {exc}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request, settings, monkeypatch) -> str:
    """A fresh, migrated database of each backend (WORKBENCH_DB_URL points at it)."""
    if request.param == "sqlite":
        return settings.db_url
    from tests.support.pgserver import create_database

    server = request.getfixturevalue("pg_server")
    url = create_database(server, f"t_{os.getpid()}_{time.monotonic_ns()}")
    monkeypatch.setenv("WORKBENCH_DB_URL", url)
    db.upgrade(url)
    return url


@pytest.fixture
def memes(settings, backend_url):
    """N_IMAGES small generated memes, ingested without folder labels."""
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder

    write_sample_memes(settings.memes_dir, n=N_IMAGES, seed=7, into_label_folders=False, size=(64, 64))
    with db.session_scope(backend_url) as session:
        report = scan_folder(session, settings.memes_dir)
    assert report.count("added") == N_IMAGES
    return backend_url


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")


# ---- tests ---------------------------------------------------------------------------------

def test_two_annotators_and_a_job_write_at_once(memes, settings, tmp_path):
    url = memes
    go = tmp_path / "go"
    env = _env()
    procs = [
        _spawn("annotate", url, "anna", str(LABELS_PER_ANNOTATOR), str(go), "boris", env=env),
        _spawn("annotate", url, "boris", str(LABELS_PER_ANNOTATOR), str(go), "anna", env=env),
        _spawn("predict", url, str(settings.memes_dir), str(settings.artefacts_dir), "0.05", "", "", str(go),
               "anna,boris", env=env),
    ]
    _release(go, 3, procs)
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs):
        assert "database is locked" not in err and "could not serialize" not in err
        assert proc.returncode == 0, err[-3000:]

    with db.session_scope(url) as session:
        for who in ("anna", "boris"):
            notes = list(session.scalars(select(Label.note).where(Label.annotator == who)))
            assert len(notes) == LABELS_PER_ANNOTATOR  # nothing lost ...
            assert sorted(notes) == sorted(f"{who}-{i}" for i in range(LABELS_PER_ANNOTATOR))  # ... nothing doubled
        run_id = session.scalar(select(ModelRun.id))
        per_image = session.execute(select(Prediction.image_id, func.count()).where(Prediction.run_id == run_id)
                                    .group_by(Prediction.image_id)).all()
        assert len(per_image) == N_IMAGES and all(n == 1 for _, n in per_image)
        job = session.scalar(select(Job))
        assert (job.status, job.done, job.failed) == ("done", N_IMAGES, 0)
        # the three writers really overlapped in time (else this test proves nothing)
        spans = [session.execute(select(func.min(Label.created_at), func.max(Label.created_at))
                                 .where(Label.annotator == who)).one() for who in ("anna", "boris")]
        spans.append(session.execute(select(func.min(Prediction.created_at), func.max(Prediction.created_at))).one())
        assert max(lo for lo, _ in spans) < min(hi for _, hi in spans), spans
        # each annotator's current label is their last write on each image
        from workbench.store.labels import current_labels

        current = {(c.image_id, c.annotator): c.label for c in current_labels(session)}
        assert len(current) == 2 * N_IMAGES


def test_two_scans_of_one_folder_at_once(settings, backend_url, tmp_path):
    """Two tabs (or a tab and the CLI) press Scan together: both finish, each file is stored once."""
    from workbench.store.demo_memes import write_sample_memes

    write_sample_memes(settings.memes_dir, n=30, seed=8, size=(32, 32))
    go = tmp_path / "go"
    procs = [_spawn("scan", backend_url, str(settings.memes_dir), str(go), env=_env()) for _ in range(2)]
    _release(go, 2, procs)
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    statuses = [dict(item.split(":", 1)[::-1] for item in out.split()) for out, _ in outputs]
    assert all(len(s) == 30 for s in statuses)
    for name in statuses[0]:  # exactly one scan added each file; the other found it stored
        assert sorted([statuses[0][name], statuses[1][name]]) == ["added", "unchanged"], name
    with db.session_scope(backend_url) as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 30
        assert session.scalar(select(func.count()).select_from(Label)) == 30  # one folder label each


def test_sigkilled_job_resumes_with_exactly_one_prediction_per_image(memes, settings, tmp_path):
    url = memes
    marker = tmp_path / "in-batch-3"
    proc = _spawn("predict", url, str(settings.memes_dir), str(settings.artefacts_dir), "0", "3", str(marker), "",
                  env=_env())
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the job never reached its third batch"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of batch 3: batches 1-2 are committed
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with db.session_scope(url) as session:
        run_id = session.scalar(select(ModelRun.id))
        assert session.scalar(select(func.count()).select_from(Prediction)) == 8
        killed = session.scalar(select(Job))
        assert job_status(killed) == "interrupted"

    # restart: the same config is the same run; only the missing images are predicted
    with db.session_scope(url) as session:
        ids = list(session.scalars(select(Image.id)))
    step = PredictorStep(SlowMeanPredictor())
    summary = run_step(url, step, ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir, batch_size=4)
    assert (summary.status, summary.run_id, summary.skipped, summary.done) == ("done", run_id, 8, N_IMAGES - 8)
    with db.session_scope(url) as session:
        per_image = dict(session.execute(select(Prediction.image_id, func.count()).where(Prediction.run_id == run_id)
                                         .group_by(Prediction.image_id)).all())
        assert sorted(per_image) == sorted(ids) and set(per_image.values()) == {1}
        assert session.scalar(select(func.count()).select_from(ModelRun)) == 1


def _other_writer_can_begin(settings) -> bool:
    """Whether another connection gets SQLite's write lock at once (no waiting)."""
    import sqlite3

    from sqlalchemy.engine import make_url

    other = sqlite3.connect(make_url(settings.db_url).database, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        other.close()


def test_a_read_scope_takes_no_write_lock_and_waits_for_no_writer(memes, settings):
    """Every session_scope begins IMMEDIATE, so one left open through slow work (the Duplicates page's
    audit) held the write lock and every page waited. A read_scope's transaction is deferred."""
    if not memes.startswith("sqlite"):
        pytest.skip("SQLite's write lock (PostgreSQL readers never take one)")
    with db.session_scope(memes) as session:
        assert session.scalar(select(func.count()).select_from(Image)) == N_IMAGES
        assert not _other_writer_can_begin(settings)  # a reading session_scope holds the write lock
    with db.read_scope(memes) as session:
        assert session.scalar(select(func.count()).select_from(Image)) == N_IMAGES
        assert _other_writer_can_begin(settings)  # a read_scope does not
    with db.session_scope(memes) as writer:  # a writer holds the lock: a reader does not wait for it
        writer.add(Label(image_id=1, label="toxic", annotator="w"))
        writer.flush()
        t0 = time.monotonic()
        with db.read_scope(memes) as reader:
            assert reader.scalar(select(func.count()).select_from(Label).where(Label.annotator == "w")) == 0
        assert time.monotonic() - t0 < 5  # the busy timeout is 60 s


def test_a_read_scope_refuses_to_write(memes, settings):
    from workbench.store.labels import add_label

    with db.read_scope(memes) as session, pytest.raises(RuntimeError, match="read_scope"):
        add_label(session, 1, "toxic", "reader")
        session.flush()
    with db.session_scope(memes) as session:
        assert session.scalar(select(func.count()).select_from(Label).where(Label.annotator == "reader")) == 0


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "scan":
        scan(*rest)
    elif command == "annotate":
        annotate(rest[0], rest[1], int(rest[2]), rest[3], tuple(rest[4].split(",")) if len(rest) > 4 else ())
    elif command == "predict":
        url_, memes_dir_, lock_dir_, delay, hang, marker_, go_, *overlap = rest
        predict_job(url_, memes_dir_, lock_dir_, float(delay), int(hang) if hang else None, marker_ or None,
                    go_ or None, tuple(overlap[0].split(",")) if overlap else ())
    else:
        raise SystemExit(f"unknown worker command {command}")
