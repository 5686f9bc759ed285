"""`python -m workbench predict KIND ...`: run any registered predictor over a selection,
through the job runner (skips images already predicted by the same config; resumes)."""

from __future__ import annotations

import argparse
import sys

from workbench.cli import CliError, report_job
from workbench.cli.jobs import add_cluster_option, cluster_of
from workbench.cli.team import add_actor_option, authorize_job
from workbench.config import Settings
from workbench.predictors import REGISTRY


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="run a predictor (clip, vlm, ...) over the memes and store its predictions",
        description="Run a predictor over a selection of memes. Each distinct config is one model run; "
                    "re-running the same config only predicts the images still missing. "
                    "List a predictor's options with: python -m workbench predict KIND --list-options",
    )
    p.add_argument("kind", choices=list(REGISTRY), metavar="KIND", help=f"one of: {', '.join(REGISTRY)}")
    p.add_argument("--model", help="model id or local folder (sets the 'model' option; default: the project's "
                                   "choice, see `models list`)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (sets the 'device' option)")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://host:8000/v1 (vlm only)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="NAME=VALUE",
                   help="any predictor option, repeatable (text options: \\n for a new line)")
    p.add_argument("--selection", default="all", help="all | unlabeled | labeled | toxic | non_toxic")
    p.add_argument("--folder", help="only memes in this folder (relative to the memes dir)")
    p.add_argument("--limit", type=int, help="at most N memes (after the selection)")
    p.add_argument("--batch-size", type=int, default=8, help="memes per committed batch (default 8)")
    p.add_argument("--force", action="store_true", help="predict again images this config already did")
    p.add_argument("--list-options", action="store_true", help="print the predictor's options and exit")
    add_cluster_option(p)
    add_actor_option(p)
    p.set_defaults(func=cmd_predict)


def _option_values(args: argparse.Namespace, spec) -> dict[str, str]:  # noqa: ANN001
    values: dict[str, str] = {}
    for flag in ("model", "device", "endpoint"):
        value = getattr(args, flag)
        if value is None:
            continue
        if spec.option(flag) is None:
            raise CliError(f"--{flag} does not apply to {spec.kind} (its options: "
                           f"{', '.join(o.name for o in spec.options) or 'none'})")
        values[flag] = value
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise CliError(f"--option expects NAME=VALUE, got {item!r}")
        values[name.strip()] = value
    return values


def _print_options(spec) -> None:  # noqa: ANN001
    print(f"{spec.kind}: {spec.title}")
    for o in spec.options:
        choices = f" [{' | '.join(map(str, o.choices))}]" if o.choices else ""
        default = str(o.default).replace("\n", "\\n")
        if len(default) > 60:
            default = default[:57] + "..."
        print(f"  {o.name} ({o.type}{choices}) = {default}\n      {o.help}")


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.errors import ModelUnavailable
    from workbench.predictors.model_defaults import resolved_spec, resolved_values
    from workbench.predictors.run import build_predictor
    from workbench.store.catalog import SELECTIONS, image_ids
    from workbench.store.db import session_scope

    with session_scope(settings.db_url) as session:  # model options default to the project's model choices
        spec = resolved_spec(session, args.kind)
    if not spec.available:
        raise CliError(f"predictor '{args.kind}' is not available here: {spec.unavailable}")
    if args.list_options:
        _print_options(spec)
        return 0
    if args.selection not in SELECTIONS:
        raise CliError(f"--selection must be one of {', '.join(SELECTIONS)}")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise CliError("--batch-size and --limit must be at least 1")
    try:
        values = _option_values(args, spec)
        with session_scope(settings.db_url) as session:
            values = resolved_values(session, args.kind, values)
        predictor = build_predictor(args.kind, values)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except ModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with session_scope(settings.db_url) as session:
        ids = image_ids(session, args.selection, folder=args.folder, limit=args.limit)
    if not ids:
        print(f"no memes in selection '{args.selection}'" + (f" folder '{args.folder}'" if args.folder else "")
              + " (ingest some first: python -m workbench ingest)", file=sys.stderr)
        return 1

    authorize_job(args, settings, predictor.run_name(), len(ids))
    if hasattr(predictor, "input_notice"):  # trained predictors: say up front which memes lack inputs
        with session_scope(settings.db_url) as session:
            notice = predictor.input_notice(session, ids)
        if notice:
            print(f"note: {notice}", file=sys.stderr)
    summary = _run_with_progress(settings, predictor, ids, args)
    run = f" (run {summary.run_id})" if summary.status != "failed" else ""  # a failed start keeps no run
    return report_job(f"{predictor.run_name()}{run}", summary)


def _run_with_progress(settings: Settings, predictor, ids: list[int], args: argparse.Namespace):  # noqa: ANN001
    from tqdm import tqdm

    from workbench.predictors.run import run_predictions
    from workbench.runs.lock import JobBusy

    bar = tqdm(total=len(ids), desc=predictor.run_name()[:40], unit="img", file=sys.stderr,
               disable=not sys.stderr.isatty())

    def on_progress(p) -> None:  # noqa: ANN001
        bar.total = p.todo
        bar.n = p.processed
        bar.set_postfix(failed=p.failed, skipped=p.skipped, refresh=False)
        bar.refresh()

    try:
        return run_predictions(settings, predictor, ids, batch_size=args.batch_size, force=args.force,
                               on_progress=on_progress, cluster=cluster_of(args, settings))
    except JobBusy as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()
