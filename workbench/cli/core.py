"""Core commands: db, ingest, import-annotations, export annotations, stats, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.cli import CliError, in_session, print_json
from workbench.cli.team import actor_of, add_actor_option, run_as
from workbench.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="database maintenance")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    up = dbsub.add_parser("upgrade", help="create/upgrade the schema (Alembic)")
    up.set_defaults(func=cmd_db_upgrade, needs_db=False)
    cur = dbsub.add_parser("current", help="print the schema revision")
    cur.set_defaults(func=cmd_db_current, needs_db=False)

    p = sub.add_parser("ingest", help="scan a memes folder (default: WORKBENCH_MEMES_DIR) into the DB")
    p.add_argument("dir", nargs="?", type=Path, help="the memes dir (or a folder inside it; the whole memes dir is scanned)")
    p.add_argument("--verbose", "-v", action="store_true", help="print every file, not only problems")
    add_actor_option(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("import-annotations", help="import labels from an annotations.csv or a Label Studio export")
    p.add_argument("csv", type=Path, help="annotations.csv, or with --format label-studio Label Studio's JSON export")
    p.add_argument("--format", choices=("csv", "label-studio"), default="csv")
    p.add_argument("--map", action="append", default=[], metavar="CHOICE=toxic",
                   help="label-studio: what a choice means (repeat); Toxic and Neutral are known")
    p.add_argument("--document-root", type=Path, default=None,
                   help="label-studio: LOCAL_FILES_DOCUMENT_ROOT, to match tasks by the sha256 of their local file")
    p.add_argument("--annotator", default="import",
                   help="whose labels these are (default: import); a user's email needs that user, or --reason")
    p.add_argument("--reason", help="why an admin imports labels under another user's name (recorded in the audit log)")
    p.add_argument("--partial", action="store_true", help="apply valid rows even if some rows have problems")
    add_actor_option(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export data")
    exsub = p.add_subparsers(dest="what", metavar="WHAT")
    ann = exsub.add_parser("annotations", help="annotations.csv (filename,label) with consensus labels")
    ann.add_argument("path", type=Path)
    ann.set_defaults(func=cmd_export_annotations)
    hist = exsub.add_parser("labels", help="labels.csv: every label row (undone ones too) with how its meme was "
                                          "chosen: queue order, rank, score, exploration pick, suggestion, seconds")
    hist.add_argument("path", type=Path)
    hist.set_defaults(func=cmd_export_labels)
    from workbench.cli.report import add_predictions_parser

    add_predictions_parser(exsub)  # `export predictions PATH` (also `export-predictions`)
    from workbench.cli.interop import add_export_parsers

    add_export_parsers(exsub)  # `export hf-dataset OUT_DIR`, `export label-studio OUT_DIR`

    p = sub.add_parser("stats", help="counts of images, labels, OCR, runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("demo", help="generate a demo set of memes into the memes dir and ingest it")
    p.add_argument("-n", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    add_actor_option(p)
    p.set_defaults(func=cmd_demo)


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.db import current_revision, upgrade

    upgrade(settings.db_url)
    print(f"database at revision {current_revision(settings.db_url)}")
    return 0


def cmd_db_current(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.db import current_revision

    print(current_revision(settings.db_url) or "empty (run: python -m workbench db upgrade)")
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.ingest import scan_folder

    memes_dir = settings.memes_dir
    if args.dir is not None:
        target = args.dir.expanduser().resolve()
        if not target.is_dir():
            raise CliError(f"{args.dir} is not a folder")
        if not target.is_relative_to(memes_dir):
            # Paths are stored relative to the memes dir: scanning elsewhere would mark the
            # catalogue's files missing and make the new ones unfindable by the app.
            raise CliError(
                f"{target} is outside the memes folder {memes_dir}. Point the workbench at it with "
                f"WORKBENCH_MEMES_DIR={target} (the app needs the same setting), or copy the files into "
                f"{memes_dir}.")
        if target != memes_dir:
            print(f"note: scanning the whole memes folder {memes_dir} (it contains {target})", file=sys.stderr)
    if not memes_dir.is_dir():
        raise CliError(f"memes folder {memes_dir} does not exist (set WORKBENCH_MEMES_DIR or pass DIR)")
    report = run_as(settings, scan_folder, memes_dir, actor=actor_of(args))
    for f in report.files:
        if args.verbose or f.status in ("rejected", "duplicate", "moved"):
            print(f"{f.status:10} {f.name}" + (f"  — {f.reason}" if f.reason else ""))
    print(f"ingest: {report.summary()}")
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.annotations import import_annotations

    if not args.csv.is_file():
        raise CliError(f"{args.csv} does not exist")
    if args.format == "label-studio":
        from workbench.cli.interop import cmd_import_label_studio

        return cmd_import_label_studio(args, settings)
    report = run_as(settings, import_annotations, settings.memes_dir, args.csv, args.annotator, reason=args.reason,
                    all_or_nothing=not args.partial, actor=actor_of(args))
    for issue in report.issues:
        print(f"line {issue.line}: {issue.filename!r}: {issue.problem}", file=sys.stderr)
    print(report.summary())
    return 0 if report.applied and not report.issues else 1


def cmd_export_annotations(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.annotations import write_annotations

    n = in_session(settings, write_annotations, args.path)
    print(f"wrote {n} rows to {args.path}")
    return 0


def cmd_export_labels(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.label_history import write_label_history

    n = in_session(settings, write_label_history, args.path)
    print(f"wrote {n} label rows to {args.path}")
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.catalog import stats

    counts = in_session(settings, stats)
    if not args.json:
        print("\n".join(f"{key:14} {value}" for key, value in counts.items()))
        return 0
    return print_json(counts)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder
    from workbench.store.users import ADMIN, require

    actor = actor_of(args)
    run_as(settings, require, actor, ADMIN)  # before any file is written
    written = write_sample_memes(settings.memes_dir, n=args.n, seed=args.seed)
    report = run_as(settings, scan_folder, settings.memes_dir, actor=actor)
    print(f"generated {len(written)} demo memes; ingest: {report.summary()}")
    return 0
