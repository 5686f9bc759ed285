"""`bench/predict.py --cluster`: the job runner on a real local Dask cluster (`dask
scheduler` + 1 or 2 `dask worker` processes, one thread each, started here), OCR (tesseract)
and tiny CLIP over the same generated memes, 1 worker vs 2.

Each variant: a warm-up job (every worker loads its step once) and then the measured job
(force=True, so every meme is computed again). Reported: memes/s and the 2-vs-1 ratio; bytes
sent to the workers per meme (image bytes + the pickled step once per job); where the time
goes: the workers' compute seconds per meme (the durations the steps store), the starting
process's CPU seconds per meme (reading files, pickling, the database), and what is left
of workers × wall (the scheduler, transfers, idle)."""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

from sqlalchemy import func, select


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", action="store_true", help="run only the Dask cluster section (1 vs 2 local workers)")
    p.add_argument("--cluster-n", type=int, default=48, help="cluster: generated 512² memes (default 48)")
    p.add_argument("--cluster-clip-n", type=int, default=400, help="cluster: memes for tiny CLIP (default 400)")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _model_s(settings: Any, kind: str, job_id: int, run_id: int | None) -> float:
    """Seconds of model work (the durations the step stored; decoding excluded for CLIP)."""
    from workbench.store.db import session_scope
    from workbench.store.schema import Job, OcrResult, Prediction

    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        if kind == "ocr":
            ms = session.scalar(select(func.sum(OcrResult.duration_ms)).where(OcrResult.fingerprint == job.fingerprint))
        else:
            ms = session.scalar(select(func.sum(Prediction.latency_ms)).where(Prediction.run_id == run_id))
    return float(ms or 0.0) / 1000.0


def _task_seconds(records: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per action (compute, transfer, deserialize...) over the scheduler's task stream."""
    out: dict[str, float] = {}
    for record in records:
        for part in record.get("startstops", ()):
            out[part["action"]] = out.get(part["action"], 0.0) + part["stop"] - part["start"]
    return out


def _one(settings: Any, make_step: Any, kind: str, ids: list[int], cluster: Any, workers: int,
         batch_size: int) -> dict[str, Any]:
    from workbench.runs.runner import run_step

    def run(some: list[int]) -> tuple[Any, Any, float, float]:
        sent: list[Any] = []
        cpu0, t0 = _cpu_s(), time.perf_counter()
        summary = run_step(settings.db_url, make_step(), some, memes_dir=settings.memes_dir,
                           lock_dir=settings.artefacts_dir, batch_size=batch_size, force=True, cluster=cluster.address,
                           on_progress=sent.append)
        return summary, sent[-1], time.perf_counter() - t0, _cpu_s() - cpu0

    run(ids[: 2 * workers * batch_size])  # warm-up: each worker loads the step once
    with cluster.client() as watcher:
        watcher.get_task_stream()  # the scheduler records every task's start/stop from now on
        start = time.time()
        summary, progress, wall, cpu = run(ids)
        tasks = _task_seconds(watcher.get_task_stream(start=start))
    assert summary.status == "done" and summary.failed == 0, summary.describe()
    n = len(ids)
    compute = tasks.get("compute", 0.0)
    return {"step": kind, "workers": workers, "memes": n, "wall s": wall, "memes/s": n / wall,
            "KB sent/meme": progress.bytes_sent / n / 1024,
            "worker task s/meme": compute / n,
            "of it model s/meme": _model_s(settings, kind, summary.job_id, summary.run_id) / n,
            "deserialize+transfer s/meme": (tasks.get("deserialize", 0.0) + tasks.get("transfer", 0.0)) / n,
            "parent CPU s/meme": cpu / n,
            "workers idle s/meme": max(0.0, workers * wall - compute) / n,
            "workers busy %": 100.0 * compute / (workers * wall)}


def bench_cluster(args: argparse.Namespace, peaks: dict[str, float]) -> None:
    import tempfile
    from pathlib import Path

    from predict import print_table, temp_workspace  # bench/ is on sys.path as a script
    from predict_pipeline import parallel_capacity

    from tests.support.dask_cluster import LocalDask
    from tests.support.tiny_models import tiny_model_dir
    from workbench.ocr import make_engine
    from workbench.ocr.step import OcrStep
    from workbench.predictors.base import PredictorStep
    from workbench.predictors.run import build_predictor

    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    n = max(args.cluster_n, args.cluster_clip_n)
    settings, ids, paths = temp_workspace(n, root)
    clip = {"model": str(tiny_model_dir("clip")), "device": "cpu", "dtype": "float32", "use_ocr": False}
    variants = [
        ("ocr", lambda: OcrStep(make_engine("tesseract", settings)), ids[: args.cluster_n], 2),
        ("clip", lambda: PredictorStep(build_predictor("clip", clip)), ids[: args.cluster_clip_n], 16),
    ]
    rows = []
    ceilings = [parallel_capacity()]
    for workers in (1, 2):
        with LocalDask(workers=workers) as cluster:
            for kind, make_step, some, batch in variants:
                rows.append(_one(settings, make_step, kind, some, cluster, workers, batch))
                print(rows[-1], flush=True)
    ceilings.append(parallel_capacity())
    print_table("Jobs on a local Dask cluster: 1 vs 2 workers (one thread each), 2-core machine", rows)
    for kind, *_ in variants:
        one, two = (r["memes/s"] for r in rows if r["step"] == kind)
        print(f"{kind}: 2 workers = {two / one:.2f}x 1 worker")
    print("the machine's two-process ceiling (two spinning processes vs one) before / after: "
          + " / ".join(f"{c:.2f}x" for c in ceilings) + " (2.00x on two free cores)")
    print(f"mean file size {sum(p.stat().st_size for p in paths) / len(paths) / 1024:.0f} KB")
