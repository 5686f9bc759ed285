"""Data-centric review commands: `duplicates` (hash new images through the job runner, then
group near-duplicates and store the groups), `quality` (cleanlab's Datalab audit) and `map`
(compute the cached 2-D projection of an embedding set) — the library calls of the
Duplicates and Map pages."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from workbench.cli import CliError, in_session, print_json, report_job
from workbench.cli.jobs import add_cluster_option, cluster_of
from workbench.cli.team import actor_of, add_actor_option, authorize_job
from workbench.config import Settings
from workbench.errors import PermissionDenied


def register(sub: argparse._SubParsersAction) -> None:
    from workbench.features.image_hashes import HASH_BATCH
    from workbench.features.near_duplicates import DEFAULT_THRESHOLD, THRESHOLD_RANGE

    p = sub.add_parser("duplicates", help="near-duplicate groups: hash new images, group them, list the groups",
                       description="Hashes images not hashed yet (job runner: progress, resumable), groups "
                                   "near-duplicates by perceptual hashes of the whole image and its inner crops (and "
                                   "CLIP image embeddings where cached) and stores the groups.")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"largest fraction of differing hash bits that still joins ({THRESHOLD_RANGE[0]}–"
                        f"{THRESHOLD_RANGE[1]}, default {DEFAULT_THRESHOLD})")
    p.add_argument("--no-embeddings", action="store_true", help="ignore cached CLIP image embeddings")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="hashing processes (default: one per core)")
    p.add_argument("--batch-size", type=int, default=HASH_BATCH, help=f"images per stored batch (default {HASH_BATCH})")
    p.add_argument("--list", action="store_true", help="only list the stored groups (no hashing, no grouping)")
    add_cluster_option(p)
    p.add_argument("--json", action="store_true",
                   help='print {"groups": [{"id", "members": [{"image_id", "path", "label"}, ...]}, ...]}')
    add_actor_option(p)
    p.set_defaults(func=cmd_duplicates)

    p = sub.add_parser("quality", help="cleanlab data audit: label issues, near-duplicates, outliers, class imbalance")
    p.add_argument("--run", dest="run_ids", type=int, nargs="+", action="extend", metavar="ID",
                   help="runs whose out-of-fold probabilities to use (default: every learned run that covers all labels)")
    p.add_argument("--embedding", help="embedding kind to audit on: clip-image (default) | clip-text | vlm-pooled")
    p.add_argument("--top", type=int, default=20, help="memes listed per issue type")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quality)

    p = sub.add_parser("map", help="2-D projection (UMAP; PCA for tiny sets) of a cached embedding set, cached per set")
    p.add_argument("--embedding", help="embedding kind (default: the largest set)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_map)


def cmd_duplicates(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.analysis.duplicates import groups_report
    from workbench.features.image_hashes import HashStep
    from workbench.features.near_duplicates import GroupingError, GroupingParams, regroup
    from workbench.runs.lock import JobBusy, heavy_job_lock
    from workbench.runs.runner import run_step
    from workbench.store.catalog import image_ids

    try:
        params = GroupingParams(threshold=args.threshold, use_embeddings=not args.no_embeddings)
    except GroupingError as exc:
        raise CliError(str(exc)) from None
    if args.workers < 1 or args.batch_size < 1:
        raise CliError("--workers and --batch-size must be at least 1")
    code = 0
    if not args.list:
        ids = in_session(settings, image_ids)
        authorize_job(args, settings, "hash", len(ids))  # admins run jobs; the start is recorded
        try:
            summary = run_step(settings.db_url, HashStep(), ids, memes_dir=settings.memes_dir,
                               lock_dir=settings.artefacts_dir, batch_size=args.batch_size, workers=args.workers,
                               cluster=cluster_of(args, settings))
        except JobBusy as exc:
            raise CliError(str(exc)) from None
        with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
            code = report_job("hash", summary)
        if summary.status == "failed":
            return code
        try:
            with heavy_job_lock(settings.artefacts_dir):  # one grouping at a time: no group stored twice
                result, saved = regroup(settings.db_url, params, actor=actor_of(args))
        except JobBusy as exc:
            raise CliError(str(exc)) from None
        except PermissionDenied as exc:
            raise CliError(str(exc)) from None
        print(f"grouped {result.n_hashes} hashed images in {result.seconds:.2f} s "
              f"({result.n_candidates} candidate pairs, {result.n_joined_pairs} joined): {saved.describe()}",
              file=sys.stderr if args.json else sys.stdout)
    report = in_session(settings, groups_report)
    if args.json:
        print_json(report)
        return code
    for group in report["groups"]:
        print(f"group #{group['id']} ({len(group['members'])} memes)")
        for m in group["members"]:
            gone = "  [file missing]" if m["missing"] else ""
            print(f"  {m['image_id']:>7}  {m['label'] or 'unlabeled':9}  {m['path']}{gone}")
    if not report["groups"]:
        print("no near-duplicate groups")
    return code


def cmd_quality(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.analysis.data_audit import AuditError, run_audit

    if args.top < 1:
        raise CliError("--top must be at least 1")
    try:
        result = run_audit(settings.db_url, args.run_ids, args.embedding, args.top)
    except AuditError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        return print_json(result.to_dict())
    runs = ", ".join(f"#{r}" for r in result.prob_runs) or "none"
    print(f"{result.n_images} labeled memes · embeddings: {result.embedding or 'none'} · out-of-fold runs: {runs}")
    for note in result.notes:
        print(f"note: {note}")
    for row in result.summary:
        print(f"{row['issue_type']:16} score {row['score']:.3f}  {row['num_issues']} flagged")
    for issue_type, rows in result.issues.items():
        flagged = [r for r in rows if r["is_issue"]]
        if flagged:
            print(f"\n{issue_type}:")
            for r in flagged:
                print(f"  {r['score']:.3f}  {r['image_id']:>7}  {r['path']}")
    return 0


def cmd_map(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.analysis.embedding_map import MapError, compute_map, embedding_sets
    from workbench.store.db import read_scope

    with read_scope(settings.db_url) as session:
        sets = [s for s in embedding_sets(session) if not args.embedding or s.kind == args.embedding]
    if not sets:
        raise CliError("no cached embeddings" + (f" of kind {args.embedding}" if args.embedding else "")
                       + " (python -m workbench embed clip)")
    try:
        data = compute_map(settings.db_url, settings.artefacts_dir, sets[0])  # no transaction open while it projects
    except MapError as exc:
        raise CliError(str(exc)) from None
    info = {"set": sets[0].title, "method": data.method, "points": len(data.image_ids), "seconds": data.seconds}
    if args.json:
        return print_json(info)
    print(f"{info['set']}: {info['method']} of {info['points']} points in {info['seconds']:.1f} s")
    return 0
