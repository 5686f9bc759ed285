"""Backup commands: `backup OUT` writes a portable bundle, `restore IN` loads one into an
empty database (workbench.store.backup does the work)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.cli import CliError
from workbench.cli.team import add_actor_option
from workbench.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backup", help="write a portable backup bundle (folder, or OUT.zip)")
    p.add_argument("out", type=Path, help="a new folder, or a file name ending in .zip")
    p.add_argument("--embeddings", action="store_true", help="include cached embeddings (can be large)")
    p.add_argument("--files", action="store_true", help="include the image files themselves")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="restore a backup bundle into an EMPTY database (WORKBENCH_DB_URL)")
    p.add_argument("bundle", type=Path, help="a backup folder or .zip")
    p.add_argument("--no-files", action="store_true", help="do not write image files stored in the bundle")
    p.add_argument("--with-users", action="store_true",
                   help="also restore the bundle's users and roles (who may sign in, and as what)")
    add_actor_option(p)
    p.set_defaults(func=cmd_restore)


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.backup import BackupError, backup, snapshot_session

    try:
        with snapshot_session(settings.db_url) as session:  # people can keep labeling meanwhile
            report = backup(session, args.out, memes_dir=settings.memes_dir, include_embeddings=args.embeddings,
                            include_files=args.files)
    except BackupError as exc:
        raise CliError(str(exc)) from exc
    print(report.summary())
    for rel in report.skipped_files[:20]:
        print(f"skipped (outside the memes folder): {rel}", file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.backup import BackupError, restore
    from workbench.store.db import session_scope

    try:
        with session_scope(settings.db_url) as session:
            report = restore(session, args.bundle, memes_dir=settings.memes_dir, restore_files=not args.no_files,
                             with_users=args.with_users, actor=args.actor)
    except BackupError as exc:
        raise CliError(str(exc)) from exc
    print(report.summary())
    for rel in report.files_missing[:20]:
        print(f"missing file: {rel}", file=sys.stderr)
    if len(report.files_missing) > 20:
        print(f"... and {len(report.files_missing) - 20} more missing files", file=sys.stderr)
    return 0
