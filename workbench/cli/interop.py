"""Formats shared with other tools: `import-predictions`, `export label-studio|hf-dataset`,
`import hf-dataset`, `import-annotations --format label-studio` (workbench.store.interop)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.cli import CliError
from workbench.cli.team import actor_of, add_actor_option, run_as
from workbench.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-predictions", help="import predictions computed elsewhere (CSV or JSONL) as a run")
    p.add_argument("file", type=Path, help="CSV or JSONL: image, label, prob_toxic (optional), explanation (optional)")
    p.add_argument("--name", help="the run's name (default: the file's name)")
    p.add_argument("--model", help="the model that made them (default: the name)")
    p.add_argument("--partial", action="store_true", help="store valid rows even if some rows have problems")
    add_actor_option(p)
    p.set_defaults(func=cmd_import_predictions)


def print_issues(issues: list, what: str = "line") -> None:  # noqa: ANN001 - RowIssue list
    """Each refused row on stderr: its line (or task), what it named, the reason."""
    for issue in issues:
        print(f"{what} {issue.line}: {issue.filename!r}: {issue.problem}", file=sys.stderr)


def cmd_import_predictions(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.interop.predictions import import_predictions

    if not args.file.is_file():
        raise CliError(f"{args.file} does not exist")
    report, run_id = run_as(settings, import_predictions, args.file, name=args.name, model=args.model,
                            all_or_nothing=not args.partial, actor=actor_of(args))
    print_issues(report.issues)
    if run_id is not None and report.unchanged and not report.imported:
        print(f"already imported as run #{run_id} ({report.unchanged} predictions); nothing added")
        return 0
    where = f" as run #{run_id}" if run_id is not None else ""
    print(f"{report.rows} rows: {report.imported} predictions imported{where}, {report.problems} problems "
          f"({'applied' if report.applied else 'NOT applied'}, {report.mode})")
    return 0 if report.applied and not report.issues else 1
