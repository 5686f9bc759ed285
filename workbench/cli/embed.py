"""`python -m workbench embed clip|vlm` (cache frozen-model embeddings through the job
runner; `--status` prints fresh / stale / missing counts, `--stale` re-embeds only stale
ones) and `python -m workbench head list|show|copy` (saved classification heads).

Training a head or the TF-IDF baseline is a predictor run:
`python -m workbench predict head -o features=both -o head=mlp` / `predict text-tfidf`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.cli import CliError, in_session, print_json, report_job
from workbench.cli.jobs import add_cluster_option, cluster_of
from workbench.cli.team import add_actor_option, authorize_job
from workbench.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="extract and cache CLIP / VLM embeddings (for trained heads)",
                       description="clip: CLIP image embedding + CLIP text embedding of the OCR text; "
                                   "vlm: the VLM's last hidden state mean-pooled over the attention mask. "
                                   "Re-running skips images whose embedding is current and re-embeds stale ones "
                                   "(a text embedding whose OCR text changed since) and missing ones.")
    p.add_argument("source", nargs="?", choices=("clip", "vlm"), help="required unless --status")
    p.add_argument("--model", help="model id or local folder (default: the project's embedding / vlm "
                                   "choice, see `models list`)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--vlm-with-ocr", action="store_true", help="vlm: put the OCR text into the prompt")
    p.add_argument("--selection", default="all", help="all | unlabeled | labeled | toxic | non_toxic")
    p.add_argument("--folder", help="only memes in this folder")
    p.add_argument("--limit", type=int, help="at most N memes")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--force", action="store_true", help="recompute embeddings that are already cached")
    p.add_argument("--stale", action="store_true",
                   help="re-embed only stale embeddings (their OCR text changed since), not never-embedded memes")
    p.add_argument("--status", action="store_true",
                   help="print fresh / stale / missing counts (of SOURCE's embedders, or of every cached set) "
                        "and embed nothing")
    p.add_argument("--json", action="store_true", help="--status as JSON")
    add_cluster_option(p)
    add_actor_option(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("head", help="saved classification heads (list, show, copy)")
    hsub = p.add_subparsers(dest="head_command", metavar="ACTION")
    ls = hsub.add_parser("list", help="heads saved under artefacts/heads")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_head_list, needs_db=False)
    show = hsub.add_parser("show", help="config, feature model and out-of-fold metrics of a saved head")
    show.add_argument("head", help="folder, or a name listed by `head list`")
    show.set_defaults(func=cmd_head_show, needs_db=False)
    cp = hsub.add_parser("copy", help="copy a saved head to a folder (to keep or share it)")
    cp.add_argument("head", help="folder, or a name listed by `head list`")
    cp.add_argument("dest", type=Path)
    cp.set_defaults(func=cmd_head_copy, needs_db=False)


def cmd_embed(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.features.embeddings import EmbedStep, embedder_staleness, make_embedders
    from workbench.runs.lock import JobBusy
    from workbench.runs.runner import run_step
    from workbench.store.catalog import SELECTIONS, image_ids
    from workbench.store.db import session_scope

    if args.selection not in SELECTIONS:
        raise CliError(f"--selection must be one of {', '.join(SELECTIONS)}")
    if args.batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    if args.source is None and not args.status:
        raise CliError("name a source (clip or vlm), or pass --status")
    if args.stale and args.force:
        raise CliError("--stale and --force exclude each other")
    from workbench.models.choices import embedder_model

    extra = {"use_ocr_text": True} if args.vlm_with_ocr and args.source == "vlm" else {}
    model = args.model or (in_session(settings, embedder_model, args.source) if args.source else None)
    try:
        embedders = make_embedders(args.source, model, args.device, args.dtype, **extra) if args.source else []
    except ValueError as exc:
        raise CliError(str(exc)) from None
    with session_scope(settings.db_url) as session:
        ids = image_ids(session, args.selection, folder=args.folder, limit=args.limit)
    if args.status:
        return _print_status(settings, embedders, ids, args.json)
    if not ids:
        print("no memes in this selection (ingest some first: python -m workbench ingest)", file=sys.stderr)
        return 1
    authorize_job(args, settings, f"embed {args.source}", len(ids))
    code = 0
    for embedder in embedders:
        todo = ids
        if args.stale:
            with session_scope(settings.db_url) as session:
                todo = embedder_staleness(session, embedder, ids).stale
            if not todo:
                print(f"{embedder.describe()} [{embedder.fingerprint()}]: no stale embeddings")
                continue
        try:
            summary = run_step(settings.db_url, EmbedStep(embedder), todo, memes_dir=settings.memes_dir,
                               lock_dir=settings.artefacts_dir, batch_size=args.batch_size, force=args.force,
                               cluster=cluster_of(args, settings))
        except JobBusy as exc:
            raise CliError(str(exc)) from None
        code = max(code, report_job(f"{embedder.describe()} [{embedder.fingerprint()}]", summary))
        if summary.status == "failed":
            return code
    return code


def _print_status(settings: Settings, embedders: list, ids: list[int], as_json: bool) -> int:  # noqa: ANN001
    """Fresh / stale / missing counts over `ids`: of the given embedders' sets, or of every cached set."""
    from workbench.features.embeddings import embedder_staleness, embedding_status
    from workbench.store.db import session_scope

    with session_scope(settings.db_url) as session:
        if embedders:
            rows = [{**embedder_staleness(session, e, ids).counts(), "embedder": e.describe()} for e in embedders]
        else:
            rows = embedding_status(session, ids)
    if as_json:
        return print_json(rows)
    if not rows:
        print("no embeddings cached yet (python -m workbench embed clip)")
    for r in rows:
        changes = f"  text changed: {r['text_changes']}" if r["text_changes"] else ""
        print(f"{r['kind']:10} {r['fingerprint']}  {r['fresh']} fresh, {r['stale']} stale, {r['missing']} missing"
              f"{changes}")
    if any(r["stale"] or r["missing"] for r in rows):
        print("refresh: python -m workbench embed clip|vlm --model MODEL (re-embeds stale and missing ones)")
    return 0


def _head_dir(name: str) -> Path:
    from workbench.predictors.head import heads_dir

    path = Path(name).expanduser()
    if path.is_dir():
        return path
    candidate = heads_dir() / name
    if candidate.is_dir():
        return candidate
    raise CliError(f"no saved head {name!r} (a folder, or a name from `python -m workbench head list`)")


def cmd_head_list(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.predictors.head import saved_heads

    rows = saved_heads()
    if args.json:
        return print_json(rows)
    if not rows:
        print("no saved heads yet (train one: python -m workbench predict head -o features=both)")
    for r in rows:
        f1 = f"{r['oof_f1']:.3f}" if r["oof_f1"] is not None else "-"
        auc = f"{r['oof_auroc']:.3f}" if r["oof_auroc"] is not None else "-"
        print(f"{r['name']}  {r['head']:6} {r['features']}  n={r['n_train']}  out-of-fold F1={f1} AUROC={auc}")
    return 0


def cmd_head_show(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.features.head_training import HeadError, read_head_info

    try:
        info = read_head_info(_head_dir(args.head))
    except HeadError as exc:
        raise CliError(str(exc)) from None
    meta = dict(info.get("meta") or {})
    meta.pop("oof", None)  # per-image values: too long for a summary
    print(json.dumps({"config": info["config"], "dim": info["dim"], "feature_model": info.get("feature_model"),
                      "meta": meta, "epochs_recorded": len(info.get("curves") or [])}, ensure_ascii=False, indent=1))
    return 0


def cmd_head_copy(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.features.head_training import HeadError
    from workbench.predictors.head import copy_head

    try:
        dest = copy_head(_head_dir(args.head), args.dest)
    except HeadError as exc:
        raise CliError(str(exc)) from None
    print(f"copied to {dest} (predict with it: python -m workbench predict head -o head_path={dest})")
    return 0
