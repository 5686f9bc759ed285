"""Liveness across machines (issue 22): a running job's row gets a heartbeat during a batch,
however long the batch; a job from another host is shown with its host and judged by its
heartbeat (its pid means nothing here), and shown as interrupted once the heartbeat stops."""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
from sqlalchemy import select

from workbench.predictors.base import PredictInput, Predictor, PredictorStep, PredictOutput
from workbench.runs import runner
from workbench.runs.listing import STALE_AFTER, job_row
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.schema import Image, Job, utcnow


class SlowPredictor(Predictor):
    """Takes a while per batch and notes the job row's heartbeat before and after."""

    kind = "test-slow"

    def __init__(self, db_url: str, seconds: float) -> None:
        self.db_url, self.seconds, self.beats = db_url, seconds, []

    def config(self) -> dict:
        return {"model": "slow", "seconds": self.seconds}

    def _beat(self):
        with session_scope(self.db_url) as session:
            return session.scalar(select(Job.heartbeat_at).order_by(Job.id.desc()))

    def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        self.beats.append(self._beat())
        time.sleep(self.seconds)
        self.beats.append(self._beat())
        return [PredictOutput("toxic", float(np.float32(0.7))) for _ in batch]


def test_a_long_batch_keeps_beating(settings, monkeypatch) -> None:
    monkeypatch.setattr(runner, "HEARTBEAT_SECONDS", 0.2)  # the interval, not the behaviour, is shortened
    write_sample_memes(settings.memes_dir, n=2, seed=3, size=(64, 64))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        ids = list(session.scalars(select(Image.id)))
    predictor = SlowPredictor(settings.db_url, 1.0)
    summary = runner.run_step(settings.db_url, PredictorStep(predictor), ids, memes_dir=settings.memes_dir,
                              lock_dir=settings.artefacts_dir, batch_size=2, prefetch=0)
    assert summary.status == "done"
    before, after = predictor.beats
    assert after > before  # the row was touched while the batch ran


def test_a_job_from_another_host_shows_its_host_and_dies_with_its_heartbeat(settings) -> None:
    with session_scope(settings.db_url) as session:
        job = Job(step_kind="ocr", step_name="ocr: tesseract", fingerprint="f", total=10, status="running",
                  pid=1,  # alive here (init), but it is another machine's pid
                  params={"host": "gpu-box-7"}, heartbeat_at=utcnow())
        session.add(job)
        session.flush()
        row = job_row(job)
        assert (row["status"], row["host"]) == ("running", "gpu-box-7")
        job.heartbeat_at = utcnow() - STALE_AFTER - timedelta(seconds=5)
        assert job_row(job)["status"] == "interrupted"
