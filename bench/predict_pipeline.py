"""Pipeline benchmark: the job runner with its prefetch threads vs without (the sequential
path), next to the raw single-core decode rate of the same files, with a tiny CLIP so the run
is decode-bound (the case where a fast accelerator would otherwise wait on the CPU).

For generated memes (512×512 PNG) and the real memes (../shared/datasets/vlmemes, when
present; the files are read where they are, never copied), side by side, interleaved,
`--pipeline-reps` times (medians):
  - decode, 1 core: PIL open+load, and `load_rgb` (the workbench's loader: + EXIF, RGB);
  - decode, 2 processes: PIL open+load of half the files each, the most any 2-core pipeline
    could reach here ("of ceiling" is each row against it);
  - runner, prefetch=0: decode, fit, preprocess, model and commits one after another;
  - runner, prefetch threads (one per core): the same, decode/fit/preprocess in threads,
    with Python's and Pillow's defaults, and with the thread-friendly settings (Pillow's block
    cache and a 0.5 ms GIL switch interval: workbench/runs/pipeline.py; PNG image data read
    in large pieces, not a chunk per decoder call: `load_rgb`);
and whether both runner paths stored identical predictions. The tiny model runs with one torch
thread (intra-op threads only add overhead to its tiny matrices). A two-process CPU probe
shows how many cores the machine really gave (shared machines vary).

`--flat-n N` also runs the pipelined runner over N memes (database rows cycling over the
generated files) and samples the process RSS, to show memory stays flat.

Usage: .venv/bin/python bench/predict.py --only pipeline [--pipeline-n 600] [--pipeline-reps 3] [--flat-n 100000]
       .venv/bin/python bench/predict_pipeline.py (same options)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REAL_MEMES = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "vlmemes" / "memes"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline-n", type=int, default=600, help="pipeline: generated memes (default 600)")
    p.add_argument("--pipeline-reps", type=int, default=3, help="pipeline: interleaved repetitions (default 3)")
    p.add_argument("--flat-n", type=int, default=0, help="pipeline: memes for the flat-memory run (0 = skip)")


def _spin(_: int) -> float:
    t0, x = time.perf_counter(), 0
    for i in range(3_000_000):
        x += i
    return time.perf_counter() - t0


def parallel_capacity() -> float:
    """How many times faster two CPU-bound processes finish than one after the other (≈2 on 2 free cores)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.map(_spin, [0, 0])  # start-up
        one = sum(pool.map(_spin, [0]))
        t0 = time.perf_counter()
        pool.map(_spin, [0, 1])
        return 2 * one / (time.perf_counter() - t0)


def _decode_all(paths: list[Path]) -> int:
    from PIL import Image as PILImage

    for path in paths:
        with PILImage.open(path) as im:
            im.load()
    return len(paths)


def two_process_decode_rate(paths: list[Path]) -> float:
    """img/s of two processes each decoding half of `paths` (PIL open + load): what this machine's
    two cores can decode at most, the ceiling of any pipeline here (started before timing)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.map(_decode_all, [paths[:4], paths[4:8]])
        t0 = time.perf_counter()
        done = sum(pool.map(_decode_all, [paths[0::2], paths[1::2]]))
        return done / (time.perf_counter() - t0)


def decode_rates(paths: list[Path]) -> tuple[float, float]:
    """(raw PIL decode, load_rgb) img/s on one core over `paths`."""
    from workbench.store.images import load_rgb

    t0 = time.perf_counter()
    raw = _decode_all(paths) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for path in paths:
        load_rgb(path)
    return raw, len(paths) / (time.perf_counter() - t0)


def runner_rate(settings: Any, predictor: Any, ids: list[int], prefetch: int | None) -> tuple[float, float, int]:
    """(img/s, CPU cores used on average, run id) of one forced run over `ids`."""
    from workbench.predictors.base import PredictorStep
    from workbench.runs.runner import run_step

    t0, c0 = time.perf_counter(), time.process_time()
    summary = run_step(settings.db_url, PredictorStep(predictor), ids, memes_dir=settings.memes_dir,
                       lock_dir=settings.artefacts_dir, batch_size=32, force=True, prefetch=prefetch)
    wall = time.perf_counter() - t0
    assert summary.failed == 0, summary.errors
    return summary.done / wall, (time.process_time() - c0) / wall, summary.run_id


def stored(settings: Any, run_id: int) -> list[tuple[Any, ...]]:
    from sqlalchemy import select

    from workbench.store.db import session_scope
    from workbench.store.schema import Prediction

    with session_scope(settings.db_url) as session:
        return [tuple(r) for r in session.execute(
            select(Prediction.image_id, Prediction.label, Prediction.prob_toxic, Prediction.error)
            .where(Prediction.run_id == run_id).order_by(Prediction.image_id))]


def measure(title: str, settings: Any, predictor: Any, ids: list[int], paths: list[Path],
            reps: int) -> list[dict[str, Any]]:
    """Interleaved repetitions of the measurements; medians."""
    from workbench.runs import pipeline
    from workbench.store import images

    tuned = pipeline.SWITCH_INTERVAL_S, pipeline.BLOCKS_PER_THREAD, images.PNG_READ_BYTES
    rates: dict[str, list[float]] = {}
    cores: dict[str, list[float]] = {}
    identical = True
    runner_rate(settings, predictor, ids[:32], 0)  # warm-up (first batches, page cache)
    for _ in range(reps):
        raw, loader = decode_rates(paths)
        rates.setdefault("raw", []).append(raw)
        rates.setdefault("load_rgb", []).append(loader)
        rates.setdefault("raw2", []).append(two_process_decode_rate(paths))
        for name, prefetch in (("sequential", 0), ("pipelined, plain", None), ("pipelined", None)):
            plain = name == "pipelined, plain"  # 5 ms switch interval, no block cache, PNG read chunk by chunk
            pipeline.SWITCH_INTERVAL_S, pipeline.BLOCKS_PER_THREAD, images.PNG_READ_BYTES = (
                (0.005, 0, 0) if plain else tuned)
            rate, used, run_id = runner_rate(settings, predictor, ids, prefetch)
            rates.setdefault(name, []).append(rate)
            cores.setdefault(name, []).append(used)
            result = stored(settings, run_id)
            if name == "sequential":
                reference = result
            identical &= result == reference
    med = {k: statistics.median(v) for k, v in rates.items()}
    rows = []
    for name, what in (("raw", "decode, 1 core: PIL open + load"), ("load_rgb", "decode, 1 core: load_rgb"),
                       ("raw2", "decode, 2 processes (this machine's ceiling)"),
                       ("sequential", "job runner, prefetch=0 (sequential)"),
                       ("pipelined, plain", "job runner, prefetch threads, Python's and Pillow's defaults"),
                       ("pipelined", "job runner, prefetch threads, thread-friendly settings")):
        rows.append({"memes": title, "variant": what, "img/s": med[name],
                     "× load_rgb": med[name] / med["load_rgb"], "× raw decode": med[name] / med["raw"],
                     "of ceiling": med[name] / med["raw2"],
                     "cores used": statistics.median(cores[name]) if name in cores else (2.0 if name == "raw2" else 1.0),
                     "runs": ", ".join(f"{r:.0f}" for r in rates[name]), "same results": ""})
    rows[-1]["same results"] = "yes" if identical else "NO"  # pipelined vs sequential predictions
    return rows


def flat_memory(settings: Any, predictor: Any, paths: list[Path], n: int) -> list[dict[str, Any]]:
    """RSS while the pipelined runner goes over `n` image rows that cycle over `paths`."""
    from sqlalchemy import insert

    from workbench.predictors.base import PredictorStep
    from workbench.runs.runner import run_step
    from workbench.store.db import session_scope
    from workbench.store.schema import Image

    rel = [str(p.relative_to(settings.memes_dir)) for p in paths]
    with session_scope(settings.db_url) as session:
        first = session.execute(insert(Image).returning(Image.id), [
            {"sha256": f"{i:064x}", "path": rel[i % len(rel)], "original_name": "x.png", "format": "PNG",
             "width": 512, "height": 512, "bytes": 1, "source": "demo"} for i in range(10**9, 10**9 + n)]).all()
    ids = [r[0] for r in first]
    samples: list[tuple[int, float]] = []
    page = os.sysconf("SC_PAGE_SIZE")

    def sample(progress: Any) -> None:
        with open("/proc/self/statm") as fh:
            samples.append((progress.processed, int(fh.read().split()[1]) * page / 2**20))

    t0 = time.perf_counter()
    summary = run_step(settings.db_url, PredictorStep(predictor), ids, memes_dir=settings.memes_dir,
                       lock_dir=settings.artefacts_dir, batch_size=32, on_progress=sample)
    seconds = time.perf_counter() - t0
    marks = [samples[min(len(samples) - 1, max(1, round(f * (len(samples) - 1))))] for f in (0.1, 0.5, 1.0)]
    return [{"memes": n, "done": summary.done, "img/s": summary.done / seconds,
             "RSS MB at 10% / 50% / 100%": " / ".join(f"{m:.0f}" for _, m in marks),
             "max RSS MB": max(m for _, m in samples[1:])}]


def real_workspace(root: Path, copies: int) -> tuple[Any, list[int], list[Path]]:
    """A database of its own over the real memes folder, scanned where it is (scanning only
    reads it), each meme listed `copies` times (rows with their own ids, the same file), so
    one job goes over them all as over a folder of that size; returns (settings, ids, paths)."""
    from sqlalchemy import insert, select

    from workbench.config import load_settings
    from workbench.store import db
    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Image

    root.mkdir(parents=True)
    os.environ["WORKBENCH_DB_URL"] = f"sqlite:///{root / 'bench.sqlite3'}"
    os.environ["WORKBENCH_MEMES_DIR"] = str(REAL_MEMES)
    os.environ["WORKBENCH_ARTEFACTS_DIR"] = str(root / "artefacts")
    settings = load_settings()
    db.upgrade(settings.db_url)
    with db.session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
    with db.session_scope(settings.db_url) as session:
        rows = session.execute(select(Image.id, Image.path, Image.width, Image.height).order_by(Image.id)).all()
        session.execute(insert(Image), [
            {"sha256": f"{copy:032x}{image_id:032x}", "path": path, "original_name": Path(path).name,
             "format": "PNG", "width": w, "height": h, "bytes": 1, "source": "demo"}
            for copy in range(1, copies) for image_id, path, w, h in rows])
    with db.session_scope(settings.db_url) as session:
        listed = session.execute(select(Image.id, Image.path).order_by(Image.id)).all()
    return settings, [i for i, _ in listed], [settings.memes_dir / p for _, p in listed]


def bench_pipeline(args: argparse.Namespace, peaks: dict[str, float]) -> None:
    """Pipelined vs sequential job runner vs raw decode, tiny CLIP, generated and real memes."""
    import torch
    from predict import print_table, temp_workspace

    from tests.support.tiny_models import tiny_model_dir
    from workbench.predictors.run import build_predictor

    n = getattr(args, "pipeline_n", 600)
    reps = getattr(args, "pipeline_reps", 3)
    print(f"\nparallel capacity now: two CPU-bound processes run {parallel_capacity():.2f}× as fast as one")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        settings, ids, paths = temp_workspace(n, Path(tmp))
        predictor = build_predictor("clip", {"model": str(tiny_model_dir("clip")), "device": "cpu",
                                             "dtype": "float32", "use_ocr": False})
        predictor.load()
        torch.set_num_threads(1)  # after load(), which sets one per core
        rows = measure(f"{n} generated 512×512 PNG", settings, predictor, ids, paths, reps)
        if REAL_MEMES.is_dir():
            n_real = sum(1 for p in REAL_MEMES.rglob("*") if p.is_file())
            copies = max(1, n // max(1, n_real))
            real_settings, real_ids, real_paths = real_workspace(Path(tmp) / "real", copies)
            rows += measure(f"{n_real} real memes, each listed {copies}×", real_settings, predictor, real_ids,
                            real_paths, reps)
        else:
            print(f"(real memes not found at {REAL_MEMES}: generated memes only)")
        print_table("Pipeline: job runner with prefetch threads vs sequential vs decode on one core "
                    "(tiny CLIP, 1 torch thread, batch 32, medians)", rows)
        flat_n = getattr(args, "flat_n", 0)
        if flat_n:
            print_table(f"Memory over {flat_n} memes (pipelined runner)", flat_memory(settings, predictor, paths, flat_n))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    bench_pipeline(p.parse_args(argv), {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
