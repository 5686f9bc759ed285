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

    p = sub.add_parser("import", help="import memes and labels from another tool's format")
    imsub = p.add_subparsers(dest="what", metavar="FORMAT")
    hf = imsub.add_parser("hf-dataset", help="a local Hugging Face dataset (Parquet, or a save_to_disk folder)")
    hf.add_argument("path", type=Path, help="a .parquet file, a folder of them, or a save_to_disk folder")
    hf.add_argument("--image-column", default="image")
    hf.add_argument("--label-column", default="label", help="'' for no labels")
    hf.add_argument("--map", action="append", default=[], metavar="VALUE=toxic",
                    help="what a label value means (repeat), e.g. --map 1=toxic --map 0=non_toxic")
    hf.add_argument("--name", help="the annotator becomes import:NAME (default: the folder's name)")
    hf.add_argument("--partial", action="store_true", help="store valid rows even if some rows have problems")
    add_actor_option(hf)
    hf.set_defaults(func=cmd_import_hf)


def add_export_parsers(exsub: argparse._SubParsersAction) -> None:
    """`export hf-dataset` and `export label-studio` (under core's `export`)."""
    p = exsub.add_parser("hf-dataset", help="a Hugging Face dataset: Parquet shards + a dataset card")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--runs", type=int, nargs="+", default=[], metavar="ID", help="add these runs' predictions")
    p.add_argument("--test-size", type=float, default=0.2, help="share of memes in the test split (default 0.2)")
    p.add_argument("--no-split", action="store_true", help="one train split with every meme (no test split)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_export_hf)

    p = exsub.add_parser("label-studio", help="Label Studio: tasks.json, label_config.xml and how to import them")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--runs", type=int, nargs="+", default=[], metavar="ID", help="these runs' predictions as predictions")
    p.add_argument("--image-url-prefix", help="image URLs = PREFIX + the path in the memes folder "
                                              "(default: Label Studio's local-files URL)")
    p.set_defaults(func=cmd_export_label_studio)


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


def people_alpha(session) -> float | None:  # noqa: ANN001 - a Session
    """Krippendorff's alpha of people's labels, for the dataset card."""
    from workbench.analysis.agreement import agreement_report

    return agreement_report(session)["overall"]["alpha"]


def cmd_export_hf(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.interop.hf_dataset import export_hf_dataset

    def export(session):  # noqa: ANN001, ANN202
        return export_hf_dataset(session, settings.memes_dir, args.out_dir, args.runs,
                                 test_size=None if args.no_split else args.test_size, seed=args.seed,
                                 alpha=people_alpha(session))

    done = run_as(settings, export)
    sizes = ", ".join(f"{side} {n}" for side, n in done.splits.items())
    print(f"wrote {len(done.files)} Parquet shards ({sizes}) and README.md to {args.out_dir}")
    return 0


def cmd_import_hf(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.interop.common import parse_mapping
    from workbench.store.interop.hf_dataset import import_hf_dataset

    if not args.path.exists():
        raise CliError(f"{args.path} does not exist")
    try:
        mapping = parse_mapping(args.map)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    report = run_as(settings, import_hf_dataset, settings.memes_dir, args.path, args.image_column,
                    args.label_column or None, mapping, name=args.name, all_or_nothing=not args.partial,
                    actor=actor_of(args))
    print_issues(report.issues, "row")
    print(report.summary())
    return 0 if report.applied and not report.issues else 1


def cmd_export_label_studio(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.interop.label_studio import export_label_studio

    done = run_as(settings, export_label_studio, settings.memes_dir, args.out_dir, args.runs,
                  image_url_prefix=args.image_url_prefix)
    print(f"wrote {done.tasks} tasks ({done.predictions} predictions, {done.annotations} annotations), "
          f"label_config.xml and README.md to {args.out_dir}")
    return 0


def cmd_import_label_studio(args: argparse.Namespace, settings: Settings) -> int:
    """`import-annotations --format label-studio EXPORT.json` (registered by workbench.cli.core)."""
    from workbench.store.interop.common import parse_mapping
    from workbench.store.interop.label_studio import import_label_studio

    try:
        mapping = parse_mapping(args.map)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    report = run_as(settings, import_label_studio, args.csv, mapping, document_root=args.document_root,
                    all_or_nothing=not args.partial, actor=actor_of(args))
    print_issues(report.issues, "task")
    print(f"{report.rows} annotations: {report.imported} labels imported, {report.unchanged} unchanged, "
          f"{report.problems} problems ({'applied' if report.applied else 'NOT applied'}, {report.mode})")
    return 0 if report.applied and not report.issues else 1
