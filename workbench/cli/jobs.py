"""`python -m workbench jobs`: every job with its progress, cancel a running one (in any
process: the Run page's server, another terminal), resume a stopped one in the foreground."""

from __future__ import annotations

import argparse
import sys

from workbench.cli import CliError, print_json, report_job
from workbench.cli.team import actor_of, add_actor_option, run_as
from workbench.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="jobs (OCR, models, embeddings, CAM, hashes): list, cancel, resume")
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    ls = jsub.add_parser("list", help="recent jobs, newest first, with progress, img/s and ETA while running")
    ls.add_argument("--limit", type=int, default=20, help="at most N jobs (0: all)")
    ls.add_argument("--json", action="store_true", help="print the rows as JSON")
    ls.set_defaults(func=cmd_list)
    cancel = jsub.add_parser("cancel", help="ask a running job to stop after its current batch")
    cancel.add_argument("job", type=int)
    add_actor_option(cancel)
    cancel.set_defaults(func=cmd_cancel)
    resume = jsub.add_parser("resume", help="run an interrupted, cancelled or failed job again here (skips what is done)")
    resume.add_argument("job", type=int)
    resume.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_cluster_option(resume)
    add_actor_option(resume)
    resume.set_defaults(func=cmd_resume)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.runs.listing import list_jobs
    from workbench.store.db import session_scope

    with session_scope(settings.db_url) as session:
        rows = list_jobs(session, limit=args.limit or None)
    if args.json:
        return print_json([{k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in r.items()} for r in rows])
    for r in rows:
        rate = f" · {r['per_s']:.2f} img/s · ETA {r['eta_s']} s" if r["per_s"] else ""
        print(f"{r['job']:>5}  {r['status']:<11} {r['name']}  {r['done'] + r['failed']}/{r['total'] - r['skipped']}"
              f" ({r['failed']} failed, {r['skipped']} already done){rate}" + ("  [resumable]" if r["resumable"] else ""))
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.runs.runner import request_cancel
    from workbench.store.users import ADMIN, authorize

    run_as(settings, authorize, actor_of(args), ADMIN, "job cancel", {"job": args.job})
    if not run_as(settings, request_cancel, args.job):
        print(f"job {args.job} is not running", file=sys.stderr)
        return 1
    print(f"job {args.job} stops after its current batch")
    return 0


def add_cluster_option(p: argparse.ArgumentParser) -> None:
    """`--cluster tcp://HOST:8786`: run the job's batches on a Dask cluster (README: Jobs on a Dask cluster)."""
    p.add_argument("--cluster", metavar="tcp://HOST:8786",
                   help="run the batches on this Dask scheduler's workers (default: WORKBENCH_DASK_SCHEDULER; "
                        "'local': here); this machine still reads the memes and writes the database")


def cluster_of(args: argparse.Namespace, settings: Settings) -> str | None:
    """The scheduler a job runs on: --cluster, else WORKBENCH_DASK_SCHEDULER; None (here) for 'local'."""
    value = (getattr(args, "cluster", None) or settings.dask_scheduler or "").strip()
    return None if value in ("", "local") else value


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from workbench.runs.background import mark_resumed, rebuild_job
    from workbench.runs.lock import JobBusy
    from workbench.runs.runner import run_step
    from workbench.runs.step import Progress
    from workbench.store.users import ADMIN, authorize

    run_as(settings, authorize, actor_of(args), ADMIN, "job resume", {"job": args.job})
    try:
        job = rebuild_job(settings, args.job)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    bar = tqdm(total=len(job.image_ids), unit="img", desc=job.step.name, disable=args.quiet)

    started: list[int] = []

    def on_progress(p: Progress) -> None:
        if not started and p.job_id is not None:  # it started: the old row is resumed (not if this never starts)
            started.append(p.job_id)
            mark_resumed(settings.db_url, args.job, p.job_id)
        bar.n = p.skipped + p.processed
        bar.refresh()

    try:
        summary = run_step(settings.db_url, job.step, job.image_ids, memes_dir=settings.memes_dir,
                           lock_dir=settings.artefacts_dir, batch_size=job.batch_size, workers=job.workers,
                           prefetch=job.prefetch, on_progress=on_progress, cluster=cluster_of(args, settings))
    except JobBusy as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()
    return report_job(f"job {args.job} resumed as job {summary.job_id}", summary)
