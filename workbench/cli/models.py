"""`python -m workbench models list|set|unset`: the project's model choices (the CLIP, VLM,
VLM server, text model and embedding model every page and command defaults to), as the
Models page sets them. Setting one is for admins (`--as EMAIL`) and is recorded in the audit log."""

from __future__ import annotations

import argparse

from workbench.cli import in_session, print_json
from workbench.cli.team import actor_of, add_actor_option, run_as
from workbench.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    from workbench.models.choices import BY_NAME

    names = list(BY_NAME)
    p = sub.add_parser("models", help="the project's model choices: list, set, unset",
                       description="Which model every page and command uses unless a run names another: "
                                   + "; ".join(f"{c.name} = {c.help}" for c in BY_NAME.values()))
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = msub.add_parser("list", help="every model choice, the value in use and whether it is set")
    ls.add_argument("--json", action="store_true",
                    help='[{"name", "value" (in use), "stored" (null = unset), "default", "help"}]')
    ls.set_defaults(func=cmd_models_list)
    st = msub.add_parser("set", help="set a model choice (a hub id, a local folder, or for vlm-endpoint a URL)")
    st.add_argument("name", choices=names)
    st.add_argument("value", help="hub id (org/name), local folder (must exist), or http(s) URL for vlm-endpoint")
    add_actor_option(st)
    st.set_defaults(func=cmd_models_set)
    un = msub.add_parser("unset", help="go back to the default for a model choice")
    un.add_argument("name", choices=names)
    add_actor_option(un)
    un.set_defaults(func=cmd_models_unset)
    p.set_defaults(func=cmd_models_list, json=False)  # `models` alone: the list


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.models.choices import list_choices

    rows = in_session(settings, list_choices)
    if args.json:
        return print_json(rows)
    for r in rows:
        source = "set" if r["stored"] else f"default: {r['default']}" if r["default"] else "default"
        print(f"{r['name']:13} {r['value'] or '(none)'}  ({source})")
    return 0


def cmd_models_set(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.models.choices import set_choice

    stored = run_as(settings, set_choice, args.name, args.value, actor_of(args))
    print(f"{args.name} = {stored}")
    return 0


def cmd_models_unset(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.models.choices import get_choice, unset_choice

    changed = run_as(settings, unset_choice, args.name, actor_of(args))
    value = in_session(settings, get_choice, args.name)
    print(f"{args.name} = {value or '(none)'} ({'back to the default' if changed else 'was not set'})")
    return 0
