"""Jobs on a Dask cluster (issue 25): a real `dask scheduler` and two real `dask worker`
processes on localhost, started here (tests.support.dask_cluster), that know nothing of the
memes folder or the database. The runner sends them each batch's bytes and the step, and
commits what comes back: OCR, tiny-CLIP and hash results equal the in-process run's; a worker
killed with SIGKILL mid-job still leaves exactly one result per meme; a scheduler stopped
mid-job fails the job clearly and it resumes; a worker without a package fails its batches
naming it; an unreachable scheduler fails at once; two machines never run one job twice."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support.dask_cluster import LocalDask
from tests.support.ports import free_port
from workbench.ocr import make_engine
from workbench.ocr.step import OcrStep
from workbench.runs.runner import run_step
from workbench.store.db import session_scope
from workbench.store.schema import ImageHash, Job, OcrResult, Prediction

REPO = Path(__file__).resolve().parent.parent
MISSING_PACKAGE = "workbench_test_absent_package"


@pytest.fixture(scope="module")
def cluster():
    with LocalDask(workers=2) as running:
        yield running


def _ocr_rows(settings, fingerprint: str) -> dict[int, tuple]:
    with session_scope(settings.db_url) as session:
        return {r.image_id: (r.text, r.confidence, r.boxes, r.error) for r in session.scalars(
            select(OcrResult).where(OcrResult.fingerprint == fingerprint))}


def _run(settings, step, ids, **kwargs):
    kwargs.setdefault("memes_dir", settings.memes_dir)
    kwargs.setdefault("lock_dir", settings.artefacts_dir)
    return run_step(settings.db_url, step, ids, **kwargs)


def test_ocr_on_the_cluster_equals_the_in_process_run(settings, make_memes, cluster):
    ids = make_memes(8, 3, (240, 160))
    step = OcrStep(make_engine("tesseract", settings))
    here = _run(settings, step, ids, batch_size=2, workers=1)
    assert (here.status, here.done) == ("done", 8), here.errors
    expected = _ocr_rows(settings, step.fingerprint())
    seen = []
    remote = _run(settings, OcrStep(make_engine("tesseract", settings)), ids, batch_size=2, force=True,
                  cluster=cluster.address, on_progress=lambda p: seen.append((p.workers, p.bytes_sent)))
    assert (remote.status, remote.done, remote.failed) == ("done", 8, 0), remote.errors
    assert _ocr_rows(settings, step.fingerprint()) == expected
    assert any(text for text, *_ in expected.values())  # the memes carry captions: a real comparison
    assert seen[-1][0] == 2 and seen[-1][1] > sum(p.stat().st_size for p in settings.memes_dir.rglob("*.png"))
    with session_scope(settings.db_url) as session:
        job = session.get(Job, remote.job_id)
        assert job.params["cluster"] == cluster.address and (job.status, job.done) == ("done", 8)


def test_tiny_clip_on_the_cluster_equals_the_in_process_run(settings, make_memes, cluster):
    from tests.support.tiny_models import tiny_model_dir
    from workbench.predictors.run import build_predictor, run_predictions

    ids = make_memes(6, 4, (120, 96))
    options = {"model": str(tiny_model_dir("clip")), "device": "cpu", "dtype": "float32"}
    here = run_predictions(settings, build_predictor("clip", options), ids, batch_size=4)
    assert (here.status, here.done) == ("done", 6), here.errors

    def rows() -> dict[int, tuple]:
        with session_scope(settings.db_url) as session:
            return {p.image_id: (p.label, p.prob_toxic, p.error, p.extra) for p in session.scalars(
                select(Prediction).where(Prediction.run_id == here.run_id))}

    expected = rows()
    remote = run_predictions(settings, build_predictor("clip", options), ids, batch_size=6, force=True,
                             cluster=cluster.address)
    assert (remote.status, remote.done, remote.run_id) == ("done", 6, here.run_id), remote.errors
    got = rows()
    assert {i: r[0] for i, r in got.items()} == {i: r[0] for i, r in expected.items()}
    for image_id, (_, prob, error, extra) in got.items():  # equal up to float32 rounding: torch's threads differ
        assert error is None and extra.keys() == expected[image_id][3].keys()
        assert prob == pytest.approx(expected[image_id][1], abs=1e-6)
        assert extra["similarity"] == pytest.approx(expected[image_id][3]["similarity"], abs=1e-6)


def test_hashes_on_the_cluster_equal_the_in_process_run(settings, make_memes, cluster):
    from workbench.features.image_hashes import HashStep

    ids = make_memes(6, 5, (200, 150))

    def rows() -> dict[int, tuple]:
        with session_scope(settings.db_url) as session:
            return {r.image_id: (r.short_hashes, r.long_hashes, r.flat, r.error)
                    for r in session.scalars(select(ImageHash))}

    assert _run(settings, HashStep(), ids, workers=1).done == 6
    expected = rows()
    remote = _run(settings, HashStep(), ids, force=True, cluster=cluster.address, batch_size=2)
    assert (remote.status, remote.done) == ("done", 6), remote.errors
    assert rows() == expected


def test_a_worker_killed_mid_job_leaves_exactly_one_result_per_meme(settings, make_memes, cluster):
    ids = make_memes(16, 6, (320, 200))
    killed: list[int] = []
    step = OcrStep(make_engine("tesseract", settings))

    def kill_one(progress) -> None:
        if progress.processed and not killed:  # a batch is in; others are in flight on both workers
            pid = next(iter(cluster.worker_pids().values()))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    summary = _run(settings, step, ids, batch_size=1, cluster=cluster.address, on_progress=kill_one)
    assert killed
    # done counts each recorded result: a batch saved twice would count its memes twice
    assert (summary.status, summary.done, summary.failed) == ("done", 16, 0), summary.errors
    with session_scope(settings.db_url) as session:
        rows = session.execute(select(OcrResult.image_id, OcrResult.error)
                               .where(OcrResult.fingerprint == step.fingerprint())).all()
    assert sorted(i for i, _ in rows) == sorted(ids) and all(e is None for _, e in rows)
    cluster.wait_for_workers(2)  # the killed worker's nanny starts a new one


def test_cancel_stops_the_job_and_its_futures(settings, make_memes, cluster):
    ids = make_memes(12, 7, (240, 160))
    summary = _run(settings, OcrStep(make_engine("tesseract", settings)), ids, batch_size=1,
                   cluster=cluster.address, should_stop=lambda: True)
    assert summary.status == "cancelled" and 1 <= summary.done < 12
    with cluster.client() as client:
        deadline = time.monotonic() + 10
        while any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(client.processing().values())  # nothing left running for the cancelled job


def test_a_worker_without_a_package_fails_its_batches_naming_it(settings, make_memes, cluster):
    ids = make_memes(4, 8, (160, 120))
    started = time.monotonic()
    summary = _run(settings, NeedsAbsentPackage(make_engine("tesseract", settings)), ids, batch_size=2,
                   cluster=cluster.address)
    assert time.monotonic() - started < 30  # no hang
    assert (summary.done, summary.failed) == (0, 4)
    assert all(MISSING_PACKAGE in error and "lacks the Python package" in error for _, error in summary.errors)


class NeedsAbsentPackage(OcrStep):
    """An OCR step whose engine needs a package no worker has (as a worker without tesserocr)."""

    def load(self) -> None:
        importlib.import_module(MISSING_PACKAGE)
        super().load()


def test_version_skew_between_here_and_a_worker_is_an_error_naming_the_package(tmp_path, cluster):
    """A third worker whose installed imagehash is another version (its metadata first on its
    path, as after installing another release there): connecting names the package."""
    from workbench.runs.cluster import ClusterError, connect

    info = tmp_path / "site" / "imagehash-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: imagehash\nVersion: 0.0.1\n", encoding="utf-8")
    worker = cluster.add_worker(path_first=tmp_path / "site")
    try:
        cluster.wait_for_workers(3)
        with pytest.raises(ClusterError) as failed:
            connect(cluster.address)
    finally:
        cluster.remove_worker(worker)
    here = importlib.metadata.version("imagehash")
    assert f"imagehash {here} here, 0.0.1 on tcp://127.0.0.1:" in str(failed.value)
    assert "version skew" in str(failed.value) and "requirements.lock" in str(failed.value)


def test_an_unreachable_scheduler_fails_at_once_saying_how_to_start_one(settings, make_memes):
    make_memes(2, 9, (96, 96))
    address = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, WORKBENCH_DASK_SCHEDULER=address)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "workbench", "ocr", "--engine", "tesseract", "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"cannot reach the Dask scheduler at {address}" in proc.stdout
    assert "`dask scheduler`" in proc.stdout
    assert time.monotonic() - started < 20  # the interpreter's start-up included


def test_a_scheduler_stopped_mid_job_fails_it_clearly_and_it_resumes(settings, make_memes):
    from workbench.runs.background import rebuild_job

    ids = make_memes(12, 10, (320, 200))
    with LocalDask(workers=1) as own:
        def stop_scheduler(progress) -> None:
            if progress.processed and own.scheduler is not None:
                own.stop_scheduler()

        summary = _run(settings, OcrStep(make_engine("tesseract", settings)), ids, batch_size=1,
                       cluster=own.address, on_progress=stop_scheduler)
    assert summary.status == "failed" and 1 <= summary.done < 12, summary.describe()
    assert f"lost the Dask scheduler at {own.address}" in summary.error and "resume" in summary.error
    job = rebuild_job(settings, summary.job_id)
    again = _run(settings, job.step, job.image_ids, batch_size=4, workers=1)
    assert (again.status, again.skipped, again.done + again.skipped) == ("done", summary.done, 12)


@pytest.mark.postgres
def test_one_cluster_job_on_two_machines_reads_each_meme_once(tmp_path, cluster):
    """Two machines sharing one PostgreSQL start the same OCR job on the cluster at once: the
    advisory job lock refuses the second (or it finds everything done); each meme read once."""
    import shutil

    from tests.support.pgserver import PostgresUnavailable, find_pg_bin, temporary_postgres
    from tests.test_two_machines import machine_env
    from workbench.store import db
    from workbench.store.demo_memes import write_sample_memes

    if find_pg_bin() is None:
        pytest.skip("no PostgreSQL server binary (initdb/pg_ctl) installed")
    try:
        with temporary_postgres("cluster_jobs") as url:
            db.upgrade(url)
            source = tmp_path / "source"
            write_sample_memes(source, n=16, seed=23, size=(240, 160))
            envs = [machine_env(tmp_path, name, url) for name in ("a", "b")]
            for env in envs:
                shutil.copytree(source, env["WORKBENCH_MEMES_DIR"])
            assert subprocess.run([sys.executable, "-m", "workbench", "ingest"], cwd=REPO, env=envs[0],
                                  capture_output=True).returncode == 0
            command = [sys.executable, "-m", "workbench", "ocr", "--engine", "tesseract", "--batch-size", "1",
                       "--quiet", "--cluster", cluster.address]
            procs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for env in envs]
            results = [p.communicate(timeout=300) for p in procs]
            for proc, (_out, err) in zip(procs, results):
                assert "Traceback" not in err, err[-3000:]
                assert proc.returncode == 0 or "already running" in err, err[-2000:]
            with db.session_scope(url) as session:
                rows = session.execute(select(OcrResult.image_id, OcrResult.fingerprint)).all()
                jobs = session.execute(select(Job.status, Job.done, Job.failed)).all()
            db.dispose_all()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    assert len(rows) == 16 and len(set(rows)) == 16
    assert all(status == "done" for status, _, _ in jobs), jobs
    assert sum(done + failed for _, done, failed in jobs) == 16


def test_the_run_pages_cluster_field_runs_the_job_on_the_cluster(settings, make_memes, cluster,
                                                                 clear_streamlit_cache):
    from streamlit.testing.v1 import AppTest

    make_memes(3, 11, (200, 120))
    at = AppTest.from_file(str(REPO / "pages" / "4_Run.py"), default_timeout=120).run()
    at.selectbox(key="run_engine").set_value("tesseract")
    at.text_input(key="run_cluster").set_value(cluster.address)
    at.button(key="run_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("3 done" in s.value for s in at.success), [s.value for s in at.success]
    with session_scope(settings.db_url) as session:
        params = session.scalars(select(Job.params)).one()
    assert params["cluster"] == cluster.address


def test_cam_maps_on_the_cluster_come_back_to_this_machines_artefacts(settings, make_memes, cluster):
    """The workers write maps into a folder of their own; the bytes come back and are stored
    here, at the path a local job uses, with the same map (8-bit PNG)."""
    import numpy as np

    from tests.support.tiny_models import tiny_model_dir
    from workbench.explain.cam import CamRequest, CamStep, read_cam

    ids = make_memes(3, 12, (120, 96))
    request = CamRequest.for_class(str(tiny_model_dir("clip")), "eigencam", "toxic", dtype="float32")
    here = _run(settings, CamStep(request, settings.artefacts_dir), ids, batch_size=3)
    assert (here.status, here.done) == ("done", 3), here.errors
    maps = sorted((settings.artefacts_dir / "cam").rglob("*.png"))
    expected = {p: read_cam(p) for p in maps}
    for path in maps:
        path.unlink()
    remote = _run(settings, CamStep(request, settings.artefacts_dir), ids, batch_size=3, cluster=cluster.address)
    assert (remote.status, remote.done) == ("done", 3), remote.errors
    assert sorted((settings.artefacts_dir / "cam").rglob("*.png")) == maps and len(maps) == 3
    for path, cam in expected.items():
        assert np.allclose(read_cam(path), cam, atol=1.5 / 255)
