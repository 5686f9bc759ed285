"""Every library function that changes data checks the caller's role (issue 22). The test reads
the library's source: a public function that writes through the schema's tables (session.add,
add_all, delete, merge, or Core insert/update/delete), itself or through a private helper of its
module, must call `require` / `authorize`, or be a building block listed below with the reason
its callers are the ones that check. A new writer without a check fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from workbench.errors import PermissionDenied

LIBRARY = Path(__file__).resolve().parent.parent / "workbench"
WRITE_METHODS = {"add", "add_all", "delete", "merge"}
WRITE_STATEMENTS = {"insert", "update", "delete"}
CHECKS = {"require", "authorize"}

# Writers that check nothing themselves: each is called only by functions that do, or writes
# nothing anyone owns.
BUILDING_BLOCKS = {
    "workbench/runs/runner.py:run_step": "the job runner: every page and command authorizes a job before it starts "
                                         "(ui.run_job_widget, cli.team.authorize_job)",
    "workbench/runs/runner.py:request_cancel": "called by the Run page and `jobs cancel`, which check the admin role",
    "workbench/predictors/base.py:get_or_create_run": "a job step's begin(), inside an authorized job",
    "workbench/predictors/base.py:upsert_predictions": "a job step's save(), inside an authorized job",
    "workbench/features/embeddings.py:store_embeddings": "a job step's save(), inside an authorized job",
    "workbench/features/near_duplicates.py:save_groups": "called by store_grouping, called by regroup (checked)",
    "workbench/store/audit.py:record": "the audit log itself: what authorize() writes",
    "workbench/store/ingest.py:store_upload": "one file of store_uploads (checked)",
    "workbench/store/labels.py:set_setting": "the settings table: callers that change shared settings check "
                                             "(labels per meme, model choices); the UI's remembered annotator name "
                                             "is a personal preference",
    "workbench/store/ocr_texts.py:save_correction": "a person's own text correction, like a label: the Label and "
                                                    "Gallery pages pass the signed-in annotator",
    "workbench/store/overlap.py:claim": "the queue's claim on the meme on someone's own screen",
    "workbench/store/overlap.py:release": "releases the caller's own claim",
}


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def _closure(name: str, flags: dict[str, bool], calls: dict[str, set[str]], seen: frozenset = frozenset()) -> bool:
    """Whether `name` or a private helper it calls (transitively, in its module) has the flag."""
    return flags[name] or any(_closure(c, flags, calls, seen | {name}) for c in calls[name] - seen - {name})


def writers_without_checks() -> tuple[dict[str, bool], set[str]]:
    """{'path:function': checks} for every public writer, and every public writer's name."""
    found: dict[str, bool] = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        rel = path.relative_to(LIBRARY.parent).as_posix()
        if rel.startswith(("workbench/ui/", "workbench/cli/")):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        direct_write, direct_check, calls = {}, {}, {}
        for name, fn in funcs.items():
            names = [(_call_name(c), c) for c in ast.walk(fn) if isinstance(c, ast.Call)]
            direct_write[name] = any(
                (n in WRITE_METHODS and isinstance(c.func, ast.Attribute) and getattr(c.func.value, "id", "") == "session")
                or (n in WRITE_STATEMENTS and isinstance(c.func, ast.Name)) for n, c in names)
            direct_check[name] = any(n in CHECKS for n, _ in names)
            calls[name] = {n for n, _ in names if n in funcs and n.startswith("_")}

        for name in funcs:
            if not name.startswith("_") and _closure(name, direct_write, calls):
                found[f"{rel}:{name}"] = _closure(name, direct_check, calls)
    return found, set(found)


def test_every_public_writer_checks_the_role_or_is_a_listed_building_block() -> None:
    found, _ = writers_without_checks()
    unchecked = sorted(k for k, checks in found.items() if not checks and k not in BUILDING_BLOCKS)
    assert not unchecked, f"writers without a role check: {unchecked}"
    checked = [k for k, checks in found.items() if checks]
    assert len(checked) >= 8  # the enumeration sees the checked ones too (scan, users, adjudicate, restore, …)


def test_the_building_blocks_list_does_not_rot() -> None:
    _, writers = writers_without_checks()
    assert set(BUILDING_BLOCKS) <= writers, sorted(set(BUILDING_BLOCKS) - writers)


def test_dismissing_a_group_and_regrouping_need_their_roles(settings, session, monkeypatch) -> None:
    from workbench.features import near_duplicates as nd
    from workbench.store import users
    from workbench.store.schema import DuplicateGroup, DuplicateMember, Image

    users.add_user(session, "ann@lab.org", "annotator")
    users.add_user(session, "rev@lab.org", "reviewer")
    for i in range(2):
        session.add(Image(id=i + 1, sha256=str(i) * 64, path=f"{i}.png", original_name="x", format="PNG", width=1,
                          height=1, bytes=1, n_frames=1, source="folder", folder="", missing=False))
    group = DuplicateGroup(status="active", params={})
    session.add(group)
    session.flush()
    session.add_all([DuplicateMember(group_id=group.id, image_id=1, distance=0.0),
                     DuplicateMember(group_id=group.id, image_id=2, distance=0.1)])
    session.commit()
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    with pytest.raises(PermissionDenied):
        nd.dismiss_group(session, group.id, "ann@lab.org", actor="ann@lab.org")
    session.rollback()
    assert nd.dismiss_group(session, group.id, "rev@lab.org", actor="rev@lab.org") == 1
    session.commit()
    with pytest.raises(PermissionDenied):
        nd.regroup(settings.db_url, nd.GroupingParams(), actor="rev@lab.org")
