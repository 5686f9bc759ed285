"""Team commands: users and roles, the labeling queue, labels per meme, adjudication, the
audit log. The same library calls as the Label and Adjudication pages.

Commands that change data take `--as EMAIL`: they run as that user (with sign-in on, the
role applies) and are recorded under that email; without it they run as the machine's
operator and are recorded as os:<login>.
"""

from __future__ import annotations

import argparse
import sys

from workbench.cli import CliError, in_session, print_json
from workbench.config import LABELS, Settings
from workbench.errors import PermissionDenied


def add_actor_option(parser: argparse.ArgumentParser) -> None:
    """`--as EMAIL` on a command that changes data."""
    parser.add_argument("--as", dest="actor", metavar="EMAIL", default=None,
                        help="act as this user (their role applies when sign-in is on; recorded in the audit log); "
                             "default: the operating-system user")


def actor_of(args: argparse.Namespace) -> str:
    """Who runs the command: the --as email (normalised), else os:<login>; CliError when --as is not an email."""
    from workbench.config import cli_operator_trusted
    from workbench.store.users import actor_name, normalize_email, signin_enabled

    if getattr(args, "actor", None) is None:
        return actor_name(None)
    try:
        email = normalize_email(args.actor)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if signin_enabled() and not cli_operator_trusted():
        # With sign-in on, a claim on the command line is checked by nobody: the operator acts
        # as themself (os:<login>) unless this machine's operator is configured as trusted.
        raise CliError(f"--as {email} is refused: with sign-in on the command line acts as the operating-system "
                       "user; set WORKBENCH_CLI_OPERATOR=trusted on a machine whose operator may act for others")
    return email


def run_as(settings: Settings, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    """in_session, with a refused permission or a bad value turned into a CLI error."""
    try:
        return in_session(settings, fn, *args, **kwargs)
    except (PermissionDenied, ValueError) as exc:
        raise CliError(str(exc)) from exc


def authorize_job(args: argparse.Namespace, settings: Settings, step: str, n_images: int) -> None:
    """Before a job command (ocr, predict, embed, cam) runs: the caller (`--as`, else the OS
    user) must be allowed to run jobs, and the start is recorded in the audit log, as the
    Run and Models pages record theirs."""
    from workbench.store.users import ADMIN, authorize

    run_as(settings, authorize, actor_of(args), ADMIN, "job", {"step": step, "images": n_images})


def register(sub: argparse._SubParsersAction) -> None:
    from workbench.analysis.queue_orders import ORDERS
    from workbench.store.users import ROLES

    p = sub.add_parser("users", help="people and roles for sign-in (annotator | reviewer | admin)")
    usub = p.add_subparsers(dest="users_command", metavar="ACTION")
    add = usub.add_parser("add", help="add a user, or change a user's role")
    add.add_argument("email")
    add.add_argument("--role", required=True, choices=ROLES)
    add_actor_option(add)
    add.set_defaults(func=cmd_users_add)
    ls = usub.add_parser("list", help="every user and role")
    ls.add_argument("--json", action="store_true", help='[{"email": ..., "role": ...}]')
    ls.set_defaults(func=cmd_users_list)
    rm = usub.add_parser("remove", help="remove a user (their labels stay)")
    rm.add_argument("email")
    add_actor_option(rm)
    rm.set_defaults(func=cmd_users_remove)
    p.set_defaults(func=lambda args, settings, parser=p: parser.print_help() or 2)  # `users` alone: its help

    p = sub.add_parser("queue", help="the labeling queue the Label page would show an annotator")
    p.add_argument("--annotator", required=True, help="the annotator (their email when sign-in is on)")
    p.add_argument("--order", default="unlabeled", choices=ORDERS)
    p.add_argument("--run", dest="runs", type=int, action="append", default=[], metavar="ID",
                   help="model runs for unsure / disagree / label-issue / likely-toxic (repeat; disagree takes "
                        "two; default: the newest learner run, except disagree)")
    p.add_argument("--folder", default=None, help="only this folder")
    p.add_argument("--seed", type=int, default=0, help="the random order's seed")
    p.add_argument("--top", type=int, default=None, help="only the first N")
    p.add_argument("--json", action="store_true", help='[{"image_id", "path", "reason", "score", "random_pick"}]')
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("exploration", help="show or set the share of a scored queue drawn at random (0..1)")
    p.add_argument("share", nargs="?", type=float)
    add_actor_option(p)
    p.set_defaults(func=cmd_exploration)

    p = sub.add_parser("labels-per-meme", help="show or set k: how many different people label each meme")
    p.add_argument("k", nargs="?", type=int)
    add_actor_option(p)
    p.set_defaults(func=cmd_labels_per_meme)

    p = sub.add_parser("adjudication", help="memes whose people disagree (the reviewers' queue)")
    p.add_argument("--top", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adjudication)

    p = sub.add_parser("adjudicate", help="decide a meme's label as a reviewer (outranks every label)")
    p.add_argument("image_id", type=int)
    p.add_argument("label", choices=[*LABELS, "undo"])
    p.add_argument("--note", default=None)
    add_actor_option(p)
    p.set_defaults(func=cmd_adjudicate)

    p = sub.add_parser("audit", help="who changed what, newest first (times in UTC, with their offset)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)


def cmd_users_add(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.users import add_user

    outcome = run_as(settings, add_user, args.email, args.role, actor_of(args))
    print(f"{outcome}: {args.email.strip().lower()} ({args.role})")
    return 0


def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.users import list_users

    rows = in_session(settings, list_users)
    text = "\n".join(f"{r['role']:10} {r['email']}" for r in rows)
    return print_json(rows) if args.json else print_text(text or "no users (add one: users add EMAIL --role admin)")


def print_text(text: str) -> int:
    """Print `text`; exit code 0."""
    print(text)
    return 0


def cmd_users_remove(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.users import remove_user

    if not run_as(settings, remove_user, args.email, actor_of(args)):
        raise CliError(f"no user {args.email.strip().lower()}")
    print(f"removed: {args.email.strip().lower()}")
    return 0


def cmd_queue(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.analysis.queue_orders import queue_listing

    items, ordering = run_as(settings, queue_listing, args.annotator.strip(), args.order, run_ids=args.runs or None,
                             folder=args.folder, seed=args.seed, top=args.top)
    if args.json:
        return print_json([x.to_dict() for x in items])
    for x in items:
        score = f"{x.score:.3f}" if x.score is not None else "—"
        mark = "*" if x.random_pick else " "
        print(f"{x.image_id:8} {score:>6}{mark} {x.path}  ({x.reason})")
    if ordering.random_picks:
        print(f"* random pick: {len(ordering.random_picks)} of {len(ordering.ids)} memes (the exploration share)",
              file=sys.stderr)
    if ordering.unscored:
        print(f"{ordering.unscored} memes have no score from run(s) {', '.join(map(str, ordering.runs))} "
              "(e.g. no embedding for the learner): they follow the scored ones", file=sys.stderr)
    return 0


def cmd_exploration(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.analysis.queue_orders import exploration_share, set_exploration_share

    if args.share is not None:
        run_as(settings, set_exploration_share, args.share, actor_of(args))
    print(f"exploration share: {in_session(settings, exploration_share):g}")
    return 0


def cmd_labels_per_meme(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.overlap import labels_per_meme, set_labels_per_meme

    if args.k is not None:
        run_as(settings, set_labels_per_meme, args.k, actor_of(args))
    print(f"labels per meme: {in_session(settings, labels_per_meme)}")
    return 0


def cmd_adjudication(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.adjudication import conflicts
    from workbench.store.overlap import labels_per_meme

    rows = in_session(settings, lambda s: [c.to_dict() for c in conflicts(s, labels_per_meme(s), limit=args.top)])
    if args.json:
        return print_json(rows)
    for r in rows:
        votes = ", ".join(f"{a['annotator']}={a['label']}" for a in r["labels"])
        print(f"{r['image_id']:8}  {r['path']}  {votes}")
    return 0


def cmd_adjudicate(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.adjudication import adjudicate, undo_adjudication

    reviewer = actor_of(args)
    if args.label == "undo":
        row = run_as(settings, undo_adjudication, args.image_id, reviewer)
        print(f"undid the decision on {args.image_id}" if row else f"no decision on {args.image_id} to undo")
        return 0
    run_as(settings, adjudicate, args.image_id, args.label, reviewer, args.note)  # LabelError is a ValueError
    print(f"adjudicated {args.image_id}: {args.label} (by {reviewer})")
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import datetime

    from workbench.store.audit import recent

    rows = in_session(settings, recent, args.limit)
    if args.json:
        return print_json(rows)
    for r in rows:
        at = datetime.fromisoformat(r["at"]).isoformat(sep=" ", timespec="seconds")  # with its +00:00
        print(f"{at}  {r['actor']:30} {r['action']:20} {r['detail']}")
    return 0
