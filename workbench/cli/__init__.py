"""Command-line interface: `python -m workbench <command>`.

Each area registers its commands from its own module (thin wrappers over the library,
like sqlite-utils' cli.py). A command returns an exit code; bad input gives a clear
message on stderr and a non-zero code.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import json
import sys
from typing import Any

from workbench.config import load_settings

# Area modules, in help order. Each defines register(subparsers) and sets `func` on its parsers.
AREAS = ("core", "ocr", "predict", "embed", "models", "learn", "analysis", "review", "team", "report", "backup", "jobs",
         "interop")


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def in_session(settings: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(session, *args, **kwargs)` in one session (one transaction) of the configured database."""
    from workbench.store.db import session_scope

    with session_scope(settings.db_url) as session:
        return fn(session, *args, **kwargs)


def print_json(value: Any) -> int:
    """Print `value` as one line of JSON, Cyrillic kept readable (what every `--json` prints); exit code 0."""
    print(json.dumps(value, ensure_ascii=False))
    return 0


def report_job(title: str, summary) -> int:  # noqa: ANN001 - a workbench.runs.JobSummary
    """Print a job's summary line and first per-image errors; the exit code it deserves."""
    print(f"{title}: {summary.describe()}")
    for image_id, error in summary.errors[:10]:
        print(f"  image {image_id}: {error}", file=sys.stderr)
    if summary.status == "failed":
        print(f"error: {summary.error}", file=sys.stderr)
    return 0 if summary.failed == 0 and summary.status == "done" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description="VLMemes Workbench command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in AREAS:
        name = f"workbench.cli.{area}"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings()
    except ValueError as exc:  # a bad WORKBENCH_* value: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from workbench.store import audit
    from workbench.store.users import actor_name

    audit.set_operator(actor_name(None))  # entries made under --as also name who ran the command
    try:
        return _run(args, settings)
    finally:
        audit.set_operator(None)


def _run(args: argparse.Namespace, settings: Any) -> int:
    try:
        if getattr(args, "needs_db", True):
            from workbench.store.db import upgrade

            upgrade(settings.db_url)
        return int(args.func(args, settings) or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"error: disk full: {exc.filename or exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from workbench.store.db import database_full

        if not database_full(exc):
            raise
        print(f"error: disk full: the database {settings.db_url.split('///')[-1]} cannot grow", file=sys.stderr)
        return 2
