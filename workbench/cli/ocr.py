"""`python -m workbench ocr`: OCR a selection of images through the job runner."""

from __future__ import annotations

import argparse
import sys

from workbench.cli import CliError
from workbench.cli.jobs import add_cluster_option, cluster_of
from workbench.cli.team import add_actor_option, authorize_job
from workbench.config import Settings
from workbench.ocr import DEFAULT_ENGINE, ENGINE_HELP, ENGINES, LANGS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ocr", help="read meme captions (OCR) into the DB; resumes, skips what is done")
    p.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                   help="; ".join(f"{k}: {v}" for k, v in ENGINE_HELP.items()))
    p.add_argument("--lang", choices=LANGS, default="rus", help="Tesseract languages (rus+eng turns some Cyrillic Latin)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: CPU cores; Tesseract-based engines only)")
    p.add_argument("--batch-size", type=int, default=8, help="images per committed batch")
    p.add_argument("--force", action="store_true", help="redo images already read with this engine and config")
    p.add_argument("--selection", default="all", help="all | unlabeled | labeled | toxic | non_toxic")
    p.add_argument("--folder", default=None, help="only images in this top-level folder of the memes dir")
    p.add_argument("--limit", type=int, default=None, help="at most N images")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_cluster_option(p)
    add_actor_option(p)
    p.set_defaults(func=cmd_ocr)


def default_workers() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def cmd_ocr(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from workbench.ocr import make_engine
    from workbench.ocr.step import OcrStep
    from workbench.runs.lock import JobBusy
    from workbench.runs.runner import run_step
    from workbench.runs.step import Progress
    from workbench.store.catalog import SELECTIONS, image_ids
    from workbench.store.db import session_scope

    if args.selection not in SELECTIONS:
        raise CliError(f"--selection must be one of {', '.join(SELECTIONS)}")
    if args.workers is not None and args.workers < 1:
        raise CliError("--workers must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    with session_scope(settings.db_url) as session:
        ids = image_ids(session, args.selection, folder=args.folder, limit=args.limit)
    if not ids:
        print("no memes in this selection (ingest some first: python -m workbench ingest)", file=sys.stderr)
        return 1
    step = OcrStep(make_engine(args.engine, settings, lang=args.lang))
    authorize_job(args, settings, step.name, len(ids))
    workers = args.workers if args.workers is not None else default_workers()
    bar = tqdm(total=len(ids), unit="img", desc=step.name, disable=args.quiet)

    def on_progress(p: Progress) -> None:
        bar.n = p.skipped + p.processed
        bar.set_postfix(done=p.done, failed=p.failed, skipped=p.skipped, refresh=False)
        bar.refresh()

    try:
        summary = run_step(settings.db_url, step, ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir,
                           batch_size=args.batch_size, workers=workers, force=args.force, on_progress=on_progress,
                           cluster=cluster_of(args, settings))
    except JobBusy as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()
    for image_id, error in summary.errors:
        print(f"image {image_id}: {error}")
    print(f"ocr {args.engine} (job {summary.job_id}): {summary.describe()}")
    return 0 if summary.status == "done" and not summary.failed else 1
