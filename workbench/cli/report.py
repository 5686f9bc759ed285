"""Report, export and CAM commands: `report OUT.html [--pdf]`, `export-predictions PATH`,
`cam [--method ...] [--selection ...]` (thin wrappers over workbench.analysis.report.render / exports / explain).

`export-predictions` is its own command: argparse has no public way to add a sub-command
to the `export` parser that workbench/cli/core.py owns; `add_predictions_parser(exsub)`
lets that parser offer `export predictions` too with one call.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.cli import CliError, in_session
from workbench.cli.jobs import add_cluster_option, cluster_of
from workbench.cli.team import add_actor_option, authorize_job
from workbench.config import Settings
from workbench.explain.cam import METHODS
from workbench.store.catalog import SELECTIONS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the self-contained HTML report (and optionally a PDF of it)")
    p.add_argument("out", type=Path, help="the .html file to write")
    p.add_argument("--pdf", action="store_true", help="also write OUT.pdf (needs Chromium or weasyprint)")
    p.add_argument("--run", type=int, action="append", dest="runs", metavar="ID",
                   help="report on this run id (repeat; default: every run with predictions)")
    p.add_argument("--top", type=int, default=20, help="disagreement cards to include (default 20)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--random-only", action="store_true",
                   help="metrics over the memes chosen at random only (random order, exploration picks, folders, "
                        "imports)")
    p.add_argument("--cams", type=int, default=0, metavar="N",
                   help="first compute EigenCAM + the toxic Grad-CAM for the top N disagreements (with --model)")
    p.add_argument("--model", help="CLIP model for --cams (hub id or local folder; default: the project's clip choice)")
    p.set_defaults(func=cmd_report)

    add_predictions_parser(sub, "export-predictions")

    p = sub.add_parser("cam", help="compute and cache CAM explanation maps for a selection of memes")
    p.add_argument("--method", choices=METHODS, default="eigencam",
                   help="eigencam (not class-specific) or a class-specific map on the class prompt")
    p.add_argument("--selection", choices=SELECTIONS, default="all", help="which images (default all)")
    p.add_argument("--image", type=int, action="append", dest="images", metavar="ID",
                   help="explain these image ids instead of a selection (repeat)")
    p.add_argument("--limit", type=int, help="at most this many images")
    p.add_argument("--model", help="CLIP model id or local folder (default: the project's clip choice, see "
                                   "`models list`)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto = bfloat16 on CPUs with native bf16, else float32")
    p.add_argument("--class", dest="target", choices=("toxic", "non_toxic"), default="toxic",
                   help="class whose prompt the class-specific map explains (default toxic)")
    p.add_argument("--toxic-prompt", help="prompt of the toxic class (default: the CLIP predictor's)")
    p.add_argument("--neutral-prompt", help="prompt of the non_toxic class (default: the CLIP predictor's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--force", action="store_true", help="recompute maps that are already cached")
    add_cluster_option(p)
    add_actor_option(p)
    p.set_defaults(func=cmd_cam)


def add_predictions_parser(sub: argparse._SubParsersAction, name: str = "predictions") -> argparse.ArgumentParser:
    """Add the predictions.csv export as `name` to a sub-parsers action (top level or `export`)."""
    p = sub.add_parser(name, help="predictions.csv: one row per image x run (spreadsheet-safe)")
    p.add_argument("path", type=Path)
    p.add_argument("--run", type=int, action="append", dest="runs", metavar="ID", help="only this run id (repeat)")
    p.set_defaults(func=cmd_export_predictions)
    return p


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.analysis.report.render import PdfUnavailable, ReportOptions, html_to_pdf, write_report
    from workbench.store.db import read_scope

    if args.out.suffix.lower() not in (".html", ".htm"):
        raise CliError(f"{args.out} should end in .html")
    if args.top < 0 or args.n_boot < 0:
        raise CliError("--top and --n-boot must not be negative")
    options = ReportOptions(run_ids=tuple(args.runs) if args.runs else None, top_n=args.top, n_boot=args.n_boot,
                            random_only=args.random_only)
    if args.cams > 0:
        _cams_for_report(settings, options, args.cams, args.model or _clip_choice(settings))
    with read_scope(settings.db_url) as session:  # reads only: no write lock while the report is computed
        out = write_report(session, settings, args.out, options)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    if args.pdf:
        pdf = args.out.with_suffix(".pdf")
        try:
            html_to_pdf(out.read_text(encoding="utf-8"), pdf)
        except PdfUnavailable as exc:
            print(f"PDF not written: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {pdf} ({pdf.stat().st_size / 1024:.0f} KB)")
    return 0


def _cams_for_report(settings: Settings, options, n: int, model: str) -> None:  # noqa: ANN001
    """Cache EigenCAM and the toxic-class Grad-CAM of the top-n disagreement images; a model
    that cannot load is reported and the report is built without the overlays."""
    from workbench.analysis.report.render import top_disagreement_ids
    from workbench.explain.cam import CamRequest, CamStep
    from workbench.runs.lock import JobBusy
    from workbench.runs.runner import run_step
    from workbench.store.db import session_scope

    with session_scope(settings.db_url) as session:
        ids = top_disagreement_ids(session, options)[:n]
    for method in ("eigencam", "gradcam"):
        step = CamStep(CamRequest.for_class(model, method, "toxic"), settings.artefacts_dir)
        try:
            summary = run_step(settings.db_url, step, ids, memes_dir=settings.memes_dir,
                               lock_dir=settings.artefacts_dir)
        except JobBusy as exc:
            print(f"CAMs skipped: {exc}", file=sys.stderr)
            return
        print(f"{step.name}: {summary.describe()}", file=sys.stderr)
        if summary.status == "failed":
            return


def _clip_choice(settings: Settings) -> str:
    """The project's CLIP choice (`python -m workbench models set clip ...`)."""
    from workbench.models.choices import get_choice

    return in_session(settings, get_choice, "clip")


def cmd_export_predictions(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.db import session_scope
    from workbench.store.predictions_csv import write_predictions

    with session_scope(settings.db_url) as session:
        n = write_predictions(session, args.path, args.runs)
    print(f"wrote {n} rows to {args.path}")
    return 0


def cmd_cam(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.explain.cam import CamRequest, CamStep, class_prompts
    from workbench.runs.lock import JobBusy
    from workbench.runs.runner import run_step
    from workbench.store.catalog import image_ids
    from workbench.store.db import session_scope

    prompts = class_prompts()
    if args.toxic_prompt:
        prompts["toxic"] = args.toxic_prompt
    if args.neutral_prompt:
        prompts["non_toxic"] = args.neutral_prompt
    try:
        request = CamRequest.for_class(args.model or _clip_choice(settings), args.method, args.target, prompts, dtype=args.dtype)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    with session_scope(settings.db_url) as session:
        ids = list(args.images) if args.images else image_ids(session, args.selection)
    ids = ids[: args.limit] if args.limit else ids
    if not ids:
        raise CliError("no images to explain (ingest memes first, or check --selection / --image)")
    step = CamStep(request, settings.artefacts_dir)
    authorize_job(args, settings, step.name, len(ids))

    def progress(p) -> None:  # noqa: ANN001
        print(f"\r{step.name}: {p.describe()}", end="", file=sys.stderr, flush=True)

    try:
        summary = run_step(settings.db_url, step, ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir,
                           batch_size=args.batch_size, force=args.force, on_progress=progress,
                           cluster=cluster_of(args, settings))
    except JobBusy as exc:
        raise CliError(str(exc)) from exc
    print(file=sys.stderr)
    for image_id, error in summary.errors:
        print(f"image {image_id}: {error}", file=sys.stderr)
    print(summary.describe())
    print(f"maps cached under {settings.artefacts_dir / 'cam'}")
    return 0 if summary.status == "done" and not summary.failed else 1
