"""The job runner's prefetch pipeline (workbench/runs/pipeline.py) with real steps and tiny
real models: decoding, fitting and preprocessing in worker threads give exactly the results of
the sequential path; at most a bounded number of prepared images is held whatever the job's
size; per-batch commits, per-item errors, cancel and resume work as without it."""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from tests.support.tiny_models import tiny_model_dir
from workbench.features.embeddings import ClipImageEmbedder, EmbedStep, load_embeddings
from workbench.predictors import make_predictor
from workbench.predictors.base import PredictorStep
from workbench.runs.pipeline import BLOCKS_PER_THREAD, DEFAULT_DEPTH, SWITCH_INTERVAL_S, default_threads
from workbench.runs.runner import run_step
from workbench.runs.step import WorkItem
from workbench.store.demo_memes import write_sample_memes
from workbench.store.schema import Job, Prediction


@pytest.fixture
def memes(make_memes, settings) -> list[int]:
    """14 generated memes, the first with OCR text; two are large JPEGs, which the runner decodes
    at reduced scale for these models (`decode_side`)."""
    write_sample_memes(settings.memes_dir, n=2, seed=24, size=(1600, 1200), fmt="JPEG")
    return make_memes(n=12, seed=21, size=(200, 150))


def run(settings, step, ids, **kwargs):
    return run_step(settings.db_url, step, ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir,
                    **{"batch_size": 4, **kwargs})


def snapshot(session, run_id: int) -> list[tuple[Any, ...]]:
    """Every stored field of a run's predictions that the model decides (not the latency)."""
    session.expire_all()
    rows = [(p.image_id, p.label, p.prob_toxic, p.explanation, p.raw_output, p.error,
             {k: v for k, v in p.extra.items()})
            for p in session.scalars(select(Prediction).where(Prediction.run_id == run_id).order_by(Prediction.image_id))]
    session.commit()
    return rows


def corrupt_one(settings, session, image_id: int) -> None:
    from workbench.store.schema import Image

    path = settings.memes_dir / session.get(Image, image_id).path
    session.commit()
    path.write_bytes(path.read_bytes()[:200])  # truncated: decoding fails


@pytest.mark.parametrize(("kind", "options"), [
    ("clip", {"model": "clip", "dtype": "float32"}),
    ("clip", {"model": "siglip", "dtype": "float32", "use_ocr": False}),
    ("vlm", {"model": "qwen2_5_vl", "endpoint": "local", "mode": "label", "dtype": "float32", "max_pixels": 112 * 112}),
], ids=["clip", "siglip", "vlm-label"])
def test_pipelined_predictions_equal_the_sequential_path(settings, session, memes, kind, options) -> None:
    corrupt_one(settings, session, memes[5])
    options = dict(options, model=str(tiny_model_dir(options["model"])))
    sequential = run(settings, PredictorStep(make_predictor(kind, **options)), memes, prefetch=0)
    before = snapshot(session, sequential.run_id)
    pipelined = run(settings, PredictorStep(make_predictor(kind, **options)), memes, prefetch=2, force=True)
    after = snapshot(session, pipelined.run_id)
    assert pipelined.run_id == sequential.run_id and (pipelined.done, pipelined.failed) == (13, 1)
    assert after == before  # labels, probabilities (bit for bit), answers, errors, image_fit records
    decoded = [r[6]["image_fit"] for r in after if "decoded" in r[6].get("image_fit", {})]
    assert len(decoded) == 2 and all(fit["original"] == [1600, 1200] for fit in decoded)
    errors = [r[5] for r in after if r[5]]
    assert len(errors) == 1 and errors[0].startswith("cannot read image")
    with session.begin():
        params = [j.params for j in session.scalars(select(Job).order_by(Job.id))]
    assert [p["prefetch"] for p in params] == [0, 2]


def test_pipelined_embeddings_equal_the_sequential_path(settings, session, memes) -> None:
    embedder = ClipImageEmbedder(str(tiny_model_dir("clip")), dtype="float32")
    first = run(settings, EmbedStep(embedder), memes, prefetch=0)
    sequential = load_embeddings(session, embedder, memes)
    session.commit()
    again = run(settings, EmbedStep(embedder), memes, prefetch=2, force=True)
    pipelined = load_embeddings(session, embedder, memes)
    session.commit()
    assert first.done == again.done == 14
    assert sequential.keys() == pipelined.keys()
    assert all(np.array_equal(sequential[i], pipelined[i]) for i in memes)


class CountingStep(PredictorStep):
    """The real CLIP step, instrumented: how many prefetched images wait for the model at most."""

    def __init__(self, predictor) -> None:
        super().__init__(predictor)
        self.lock = threading.Lock()
        self.prefetched = self.processed = self.most_waiting = 0
        self.threads: set[str] = set()
        self.switch_intervals: set[float] = set()
        self.blocks_max: set[int] = set()

    def prefetch_batch(self, items: list[WorkItem]) -> list[Any]:
        out = super().prefetch_batch(items)
        with self.lock:
            self.switch_intervals.add(sys.getswitchinterval())
            self.blocks_max.add(PILImage.core.get_blocks_max())
            self.prefetched += len(items)
            self.most_waiting = max(self.most_waiting, self.prefetched - self.processed)
            self.threads.add(threading.current_thread().name)
        return out

    def process(self, items: list[WorkItem]) -> list:
        results = super().process(items)
        with self.lock:
            self.processed += len(items)
        return results


def test_prefetching_is_bounded_whatever_the_job_size(settings, session, make_memes) -> None:
    ids = make_memes(n=40, seed=22, size=(96, 96))
    step = CountingStep(make_predictor("clip", model=str(tiny_model_dir("clip")), dtype="float32", use_ocr=False))
    interval, blocks = sys.getswitchinterval(), PILImage.core.get_blocks_max()
    summary = run(settings, step, ids, batch_size=2, prefetch=2)
    assert summary.done == 40 and step.prefetched == 40
    assert step.switch_intervals == {SWITCH_INTERVAL_S} and SWITCH_INTERVAL_S < interval  # shorter while it ran
    assert step.blocks_max == {max(blocks, 2 * BLOCKS_PER_THREAD)}  # Pillow kept image memory for reuse
    assert sys.getswitchinterval() == interval  # and Python's own again after
    assert PILImage.core.get_blocks_max() == blocks and PILImage.core.get_stats()["blocks_cached"] <= blocks
    assert step.most_waiting <= (DEFAULT_DEPTH + 1) * 2  # never more than the batch with the model + `depth` ahead
    assert step.threads and all(name.startswith("prefetch") for name in step.threads)  # not the model's thread


def test_cancel_and_interrupt_with_prefetch_keep_committed_batches_and_resume(settings, session, memes) -> None:
    predictor = make_predictor("clip", model=str(tiny_model_dir("clip")), dtype="float32")
    threads_before = threading.active_count()
    interval = sys.getswitchinterval()
    batches: list[int] = []

    def stop_after_two() -> bool:
        batches.append(1)
        return len(batches) >= 2

    cancelled = run(settings, PredictorStep(predictor), memes, prefetch=2, should_stop=stop_after_two)
    assert (cancelled.status, cancelled.done) == ("cancelled", 8)
    assert len(snapshot(session, cancelled.run_id)) == 8
    assert threading.active_count() == threads_before  # the prefetch threads are gone

    def interrupt(progress) -> None:
        if progress.processed >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(settings, PredictorStep(predictor), memes, prefetch=2, on_progress=interrupt)
    assert threading.active_count() == threads_before
    assert sys.getswitchinterval() == interval  # restored however the job ended
    resumed = run(settings, PredictorStep(predictor), memes, prefetch=2)
    assert (resumed.done, resumed.skipped) == (2, 12)  # 8 + 4 were committed before; only the rest is done
    rows = snapshot(session, resumed.run_id)
    assert len(rows) == 14 and len({r[0] for r in rows}) == 14


def test_default_prefetch_threads_follow_the_cores() -> None:
    import os

    assert default_threads() == len(os.sched_getaffinity(0))
