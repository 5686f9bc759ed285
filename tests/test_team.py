"""Team labeling on real databases: users and roles (library, CLI with --as, audit log),
adjudication outranking every label in the consensus (export and metrics follow), agreement
against scikit-learn's kappa and the krippendorff package's alpha, the sign-in gate on the
real pages (AppTest with st.user), and the team flow on PostgreSQL."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from sqlalchemy import insert, select
from streamlit.testing.v1 import AppTest

from tests.support.synthetic_runs import Pred, add_images, add_run
from workbench.analysis import agreement, queue_orders, review
from workbench.analysis.outcomes import load_runs, load_truth
from workbench.cli import main
from workbench.errors import PermissionDenied
from workbench.store import adjudication, audit, db, labels, overlap, users
from workbench.store.annotations import export_annotations, import_annotations
from workbench.store.catalog import meme_view
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder, store_uploads
from workbench.store.schema import Image, Label

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = REPO_ROOT / "streamlit_app.py"
ADMIN, REVIEWER, ANNA, BORIS = "admin@team.org", "rev@team.org", "anna@team.org", "boris@team.org"


@pytest.fixture
def signin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sign-in on (the roles apply); the session cookie itself is Streamlit's business."""
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")


@pytest.fixture
def team(session) -> None:
    """One user of each role, plus a second annotator."""
    for email, role in ((ADMIN, "admin"), (REVIEWER, "reviewer"), (ANNA, "annotator"), (BORIS, "annotator")):
        users.add_user(session, email, role)
    session.commit()


# ---- users, roles, permissions ---------------------------------------------------------------

def test_roles_and_the_permission_check(session, monkeypatch, team) -> None:
    assert users.list_users(session) == [{"email": ADMIN, "role": "admin"}, {"email": ANNA, "role": "annotator"},
                                         {"email": BORIS, "role": "annotator"}, {"email": REVIEWER, "role": "reviewer"}]
    assert users.add_user(session, "  Anna@Team.ORG ", "annotator") == "unchanged"  # emails are kept lower case
    assert users.add_user(session, BORIS, "reviewer") == "changed" and users.role_of(session, BORIS) == "reviewer"
    for bad_email, bad_role in (("not-an-email", "annotator"), ("os:root@x", "admin"), (ANNA, "owner")):
        with pytest.raises(ValueError):
            users.add_user(session, bad_email, bad_role)
    # sign-in off: nothing is checked, as in single-user use
    users.require(session, "stranger@x.org", users.ADMIN)
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    table = {ANNA: (True, False, False), BORIS: (True, True, False), ADMIN: (True, True, True)}
    for email, allowed in table.items():
        for permission, ok in zip((users.LABEL, users.ADJUDICATE, users.ADMIN), allowed):
            if ok:
                users.require(session, email, permission)
            else:
                with pytest.raises(PermissionDenied, match="needs the"):
                    users.require(session, email, permission)
    with pytest.raises(PermissionDenied, match="no role"):
        users.require(session, "stranger@x.org", users.LABEL)
    users.require(session, None, users.ADMIN)  # the operator at the command line
    users.require(session, "os:root", users.ADMIN)
    with pytest.raises(PermissionDenied):
        users.add_user(session, "new@team.org", "admin", actor=ANNA)
    assert users.remove_user(session, BORIS, actor=ADMIN) and users.role_of(session, BORIS) is None
    monkeypatch.setenv("WORKBENCH_AUTH", "yes")
    with pytest.raises(ValueError, match="WORKBENCH_AUTH"):  # a typo never leaves the app open
        users.signin_enabled()


def test_the_library_refuses_admin_actions_to_others(settings, session, signin, team, tmp_path) -> None:
    write_sample_memes(settings.memes_dir, n=2, size=(64, 64))
    csv = b"filename,label\n"
    for call in (lambda who: scan_folder(session, settings.memes_dir, actor=who),
                 lambda who: store_uploads(session, settings.memes_dir, [], actor=who),
                 lambda who: import_annotations(session, settings.memes_dir, csv, actor=who),
                 lambda who: overlap.set_labels_per_meme(session, 2, actor=who)):
        for who in (ANNA, REVIEWER, "stranger@x.org"):
            with pytest.raises(PermissionDenied):
                call(who)
            session.rollback()
    assert scan_folder(session, settings.memes_dir, actor=ADMIN).count("added") == 2
    session.commit()
    image_id = session.scalar(select(Image.id))
    with pytest.raises(PermissionDenied, match="no role"):  # the annotator must be a user with a role
        labels.add_label(session, image_id, "toxic", "stranger@x.org")
    labels.add_label(session, image_id, "toxic", ANNA)
    with pytest.raises(PermissionDenied):
        adjudication.adjudicate(session, image_id, "toxic", ANNA)
    session.commit()
    assert [(e["actor"], e["action"]) for e in audit.recent(session)][:1] == [(ADMIN, "scan")]


def test_cli_users_and_who_ran_what(settings, capsys, monkeypatch) -> None:
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("users", "add", "Admin@Team.org", "--role", "admin")  # the operator bootstraps the first admin
    assert code == 0 and out.strip() == "added: admin@team.org (admin)"
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    # With sign-in on, --as is a claim nobody checks: refused unless this operator is trusted.
    code, _, err = run("users", "add", "mallory@evil.org", "--role", "admin", "--as", ADMIN)
    assert code == 2 and "WORKBENCH_CLI_OPERATOR=trusted" in err
    monkeypatch.setenv("WORKBENCH_CLI_OPERATOR", "trusted")
    assert run("users", "add", ANNA, "--role", "annotator", "--as", ADMIN)[0] == 0
    code, _, err = run("users", "add", BORIS, "--role", "admin", "--as", ANNA)
    assert code == 2 and "may not" in err and "admin role" in err
    code, out, _ = run("users", "list", "--json")
    assert json.loads(out) == [{"email": ADMIN, "role": "admin"}, {"email": ANNA, "role": "annotator"}]
    write_sample_memes(settings.memes_dir, n=2, size=(64, 64))
    code, _, err = run("ingest", "--as", ANNA)
    assert code == 2 and "may not" in err
    assert run("ingest", "--as", ADMIN)[0] == 0
    assert run("labels-per-meme", "2", "--as", ADMIN)[1].strip() == "labels per meme: 2"
    assert run("demo", "-n", "2", "--as", ANNA)[0] == 2
    assert run("users", "remove", ANNA, "--as", "not an email")[0] == 2
    assert run("users", "remove", ANNA)[0] == 0  # the operator, recorded as the OS user
    code, out, _ = run("audit", "--json")
    log = json.loads(out)
    for e in log:  # stored UTC, serialised with the offset (SQLite itself keeps none)
        at = datetime.fromisoformat(e["at"])
        assert e["at"].endswith("+00:00") and at.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - at) < timedelta(minutes=10)
    code, text, _ = run("audit")
    assert text.splitlines()[0].startswith(datetime.fromisoformat(log[0]["at"]).strftime("%Y-%m-%d %H:%M:%S+00:00"))
    entries = [(e["actor"], e["action"]) for e in log]
    assert entries[0][0].startswith("os:") and entries[0][1] == "user remove"
    assert (ADMIN, "labels per meme") in entries and (ADMIN, "scan") in entries and (ADMIN, "user add") in entries
    assert not any(actor == ANNA for actor, _ in entries)  # refused actions leave nothing behind
    assert "mallory@evil.org" not in out
    # An entry made under --as also names the OS user who ran the command.
    claimed = [e for e in json.loads(out) if e["actor"] == ADMIN]
    assert claimed and all(e["detail"]["operator"].startswith("os:") for e in claimed)


# ---- adjudication ------------------------------------------------------------------------------

def test_adjudication_outranks_every_label_and_the_exports_follow(settings, session) -> None:
    write_sample_memes(settings.memes_dir, n=4, size=(64, 64))
    scan_folder(session, settings.memes_dir)  # folder labels on all four
    ids = list(session.scalars(select(Image.id).order_by(Image.path)))
    paths = dict(session.execute(select(Image.id, Image.path)).all())
    x, y, z, w = ids
    overlap.set_labels_per_meme(session, 2)
    labels.add_label(session, x, "toxic", "anna")
    labels.add_label(session, x, "non_toxic", "boris")  # tie: the most recent (boris) wins for now
    labels.add_label(session, y, "toxic", "anna")  # only one person so far: not yet a conflict at k = 2
    for person, label in (("anna", "toxic"), ("boris", "toxic"), ("carol", "non_toxic")):
        labels.add_label(session, z, label, person)  # 2 : 1
    session.commit()
    assert [c.image_id for c in adjudication.conflicts(session, 2)] == [x, z]  # the tie first
    assert labels.consensus_labels(session)[x] == "non_toxic"
    run = add_run(session, "clip", "clip", {x: Pred("toxic", 0.9), z: Pred("non_toxic", 0.2)})
    (before,) = load_runs(session, [run])
    assert before.evaluate(n_boot=0).accuracy == 0.0  # x: run toxic, consensus non_toxic; z: run non_toxic, 2 : 1 toxic
    adjudication.adjudicate(session, x, "toxic", "rev", note="the caption insults")
    adjudication.adjudicate(session, z, "non_toxic", "rev")  # outranks a 2 : 1 majority too
    session.commit()
    consensus = labels.consensus_labels(session)
    assert consensus[x] == "toxic" and consensus[z] == "non_toxic"
    assert meme_view(session, x).consensus == "toxic"
    assert [c.consensus for c in review.cards(session, [x, z], [run])] == ["toxic", "non_toxic"]  # review cards too
    truth = load_truth(session).labels
    assert truth[x] == "toxic" and truth[z] == "non_toxic"
    (after,) = load_runs(session, [run])
    assert after.evaluate(n_boot=0).accuracy == 1.0 and after.outcome_map()[x] == "TP"
    rows = dict(line.split(",") for line in export_annotations(session).splitlines()[1:])
    assert rows[paths[x]] == "toxic" and rows[paths[z]] == "non_toxic"
    assert adjudication.conflicts(session, 2) == []
    labels.undo_last(session, "anna", x)  # even with a label undone, the decision stands
    session.commit()
    assert labels.consensus_labels(session)[x] == "toxic"
    assert adjudication.undo_adjudication(session, x, "rev") is not None
    session.commit()
    assert labels.consensus_labels(session)[x] == "non_toxic"  # boris's label, folder labels rank below people
    assert [d.label for d in adjudication.decisions(session, x)] == ["toxic"]
    assert adjudication.conflicts(session, 2) == []  # x has one person's label again: nothing to decide


# ---- agreement ---------------------------------------------------------------------------------

def test_kappa_and_alpha_match_the_libraries(session) -> None:
    rng = np.random.default_rng(4)
    ids = add_images(session, 30, folder="a") + add_images(session, 20, folder="b")
    truth = rng.integers(0, 2, size=len(ids))
    people = ("anna", "boris", "carol")
    matrix = np.full((3, len(ids)), np.nan)
    rows = []
    week_one = datetime(2026, 11, 2, 12, tzinfo=UTC)  # 2026-W45
    for p, person in enumerate(people):
        for col, image_id in enumerate(ids):
            if rng.random() < 0.25:
                continue  # not everybody labels everything
            value = truth[col] if rng.random() < 0.8 else 1 - truth[col]
            matrix[p, col] = value
            at = week_one + timedelta(days=7 * (col % 2))  # odd memes are labeled a week later
            rows.append({"image_id": image_id, "label": ("toxic", "non_toxic")[int(value)], "annotator": person,
                         "created_at": at})
    rows.append({"image_id": ids[0], "label": "toxic", "annotator": "folder"})  # never counted
    session.execute(insert(Label), rows)
    session.commit()

    report = agreement.agreement_report(session)
    pairable = (~np.isnan(matrix)).sum(axis=0) >= 2
    want = krippendorff.alpha(reliability_data=matrix[:, pairable], level_of_measurement="nominal")
    assert report["overall"]["alpha"] == pytest.approx(want)
    assert report["overall"]["n_memes"] == int(pairable.sum()) and report["overall"]["n_people"] == 3
    for pair in report["pairs"]:
        a, b = people.index(pair["a"]), people.index(pair["b"])
        both = ~np.isnan(matrix[a]) & ~np.isnan(matrix[b])
        assert pair["n"] == int(both.sum())
        assert pair["kappa"] == pytest.approx(cohen_kappa_score(matrix[a, both], matrix[b, both]))
    in_a = np.arange(len(ids)) < 30
    by_folder = {r["folder"]: r for r in report["by_folder"]}
    assert by_folder["a"]["alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=matrix[:, pairable & in_a], level_of_measurement="nominal"))
    assert [r["week"] for r in report["by_week"]] == ["2026-W45", "2026-W46"]
    odd = np.arange(len(ids)) % 2 == 1
    assert report["by_week"][1]["alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=matrix[:, pairable & odd], level_of_measurement="nominal"))
    # a hand-computed case: 2 people, 4 memes (1,1) (1,0) (0,0) (0,0) -> 1 - 7 * 2 / 30
    assert agreement.krippendorff_alpha({1: {"a": "toxic", "b": "toxic"}, 2: {"a": "toxic", "b": "non_toxic"},
                                         3: {"a": "non_toxic", "b": "non_toxic"},
                                         4: {"a": "non_toxic", "b": "non_toxic"}}) == pytest.approx(1 - 14 / 30)
    assert agreement.krippendorff_alpha({1: {"a": "toxic", "b": "toxic"}, 2: {"a": "toxic", "b": "toxic"}}) is None


def test_agreement_json_is_people_only_with_the_system_annotators_apart(settings, session, capsys) -> None:
    ids = add_images(session, 4)
    folder = ["toxic", "toxic", "non_toxic", "non_toxic"]
    session.execute(insert(Label), [{"image_id": i, "label": lab, "annotator": "folder"} for i, lab in zip(ids, folder)]
                    + [{"image_id": i, "label": lab, "annotator": "anna"} for i, lab in zip(ids, folder)]
                    + [{"image_id": i, "label": lab, "annotator": "boris"}
                       for i, lab in zip(ids, ["toxic", "non_toxic", "non_toxic", "toxic"])])
    session.commit()
    assert main(["agreement", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["annotator"] for r in report["annotators"]] == ["anna", "boris"]
    assert [(p["a"], p["b"]) for p in report["pairs"]] == [("anna", "boris")]  # not anna–folder (kappa 1.0)
    assert report["pairs"][0]["kappa"] == pytest.approx(cohen_kappa_score(folder, ["toxic", "non_toxic", "non_toxic",
                                                                                   "toxic"]))
    assert [r["annotator"] for r in report["system"]["annotators"]] == ["folder"]
    system_pairs = {(p["a"], p["b"]): p["kappa"] for p in report["system"]["pairs"]}
    assert set(system_pairs) == {("anna", "folder"), ("boris", "folder")} and system_pairs[("anna", "folder")] == 1.0
    assert report["alpha"]["overall"]["n_people"] == 2
    assert main(["agreement"]) == 0
    text = capsys.readouterr().out
    assert text.index("people:") < text.index("anna × boris") < text.index("system annotators") < text.index("\n  folder ")


@pytest.mark.parametrize(("host", "redirect_uri", "want"), [
    ("127.0.0.1:8501", "http://localhost:8501/oauth2callback", "http://localhost:8501"),
    ("localhost:8501", "http://localhost:8501/oauth2callback", None),
    ("LOCALHOST:8501", "http://localhost:8501/oauth2callback", None),
    ("localhost:8502", "http://localhost:8501/oauth2callback", "http://localhost:8501"),
    ("memes.example.org", "https://memes.example.org/oauth2callback", None),  # a proxy keeps the host, no port
    ("memes.example.org:443", "https://memes.example.org/oauth2callback", None),
    ("10.0.0.5:8501", "https://memes.example.org/oauth2callback", "https://memes.example.org"),
    (None, "http://localhost:8501/oauth2callback", None),
    ("127.0.0.1:8501", None, None),
    ("[::1]:8501", "http://localhost:8501/oauth2callback", "http://localhost:8501"),
    ("localhost:port", "http://localhost:8501/oauth2callback", None),  # malformed: nothing to compare
])
def test_sign_in_detects_a_host_the_redirect_uri_does_not_name(host, redirect_uri, want) -> None:
    from workbench.ui.auth import host_mismatch

    assert host_mismatch(host, redirect_uri) == want


def test_sign_in_returns_to_the_page_it_started_from_once() -> None:
    from streamlit.web.server.starlette.starlette_app_utils import generate_xsrf_token_string

    from workbench.ui import auth

    token = os.urandom(16)
    first, second = generate_xsrf_token_string(token, 1), generate_xsrf_token_string(token, 1)
    assert first != second  # Streamlit masks the token anew in every response ...
    key = auth.browser_key(first)
    assert key == auth.browser_key(second) and key == auth.browser_key(f'"{second}"')  # ... the key stays
    assert auth.browser_key(generate_xsrf_token_string(os.urandom(16), 1)) != key
    assert auth.browser_key(None) is None and auth.browser_key("2|zz|zz|1") is None and auth.browser_key("x") is None
    auth.remember_return(key, "/app/pages/1_Label.py", {"image": "12"}, now=1000.0)
    assert auth.take_return(key, now=1010.0) == ("/app/pages/1_Label.py", {"image": "12"})
    assert auth.take_return(key, now=1011.0) is None  # once
    auth.remember_return(key, "/app/pages/1_Label.py", {}, now=1000.0)
    assert auth.take_return(key, now=1000.0 + auth.RETURN_TTL_S + 1) is None  # a sign-in that took too long
    auth.remember_return(None, "/app/pages/1_Label.py", {})  # no cookie (sign-in not configured): nothing kept
    assert auth.take_return(None) is None


# ---- the sign-in gate on the real pages ------------------------------------------------------------

def open_as(page: str | None, email: str | None, **claims) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    if page:
        at.switch_page(page)
    at.user = ({"is_logged_in": True, "email": email, "iat": int(time.time()) - 60, **claims} if email
               else {"is_logged_in": False})
    return at.run()


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


def shows_meme(at: AppTest) -> bool:
    return bool(at.get("imgs")) or any(b.key == "lbl_toxic" for b in at.button)


@pytest.fixture
def memes(settings, session, team) -> list[int]:
    write_sample_memes(settings.memes_dir, n=3, size=(64, 64))
    scan_folder(session, settings.memes_dir)
    ids = list(session.scalars(select(Image.id).order_by(Image.path)))
    session.commit()  # every SQLite transaction here takes the write lock: never hold one while a page runs
    return ids


def test_pages_need_sign_in_and_a_role(settings, session, memes, signin, clear_streamlit_cache) -> None:
    at = open_as("pages/1_Label.py", None)
    no_exception(at)
    assert at.button(key="auth_sign_in") and not shows_meme(at)
    assert "Sign in to continue" in at.info[0].value and not at.sidebar.get("page_link")
    at = open_as("pages/1_Label.py", "stranger@x.org")
    assert at.title[0].value == "Not allowed" and "stranger@x.org" in at.error[0].value and not shows_meme(at)
    at = open_as("pages/1_Label.py", ANNA, iat=int(time.time()) - 3 * 86400)  # signed in three days ago
    assert not shows_meme(at) and at.user == {"is_logged_in": False}  # signed out
    at = open_as("pages/1_Label.py", ANNA, email_verified=False)
    assert not shows_meme(at) and at.user == {"is_logged_in": False}

    at = open_as("pages/1_Label.py", ANNA.upper())
    no_exception(at)
    assert shows_meme(at) and not at.sidebar.text_input  # the annotator is the signed-in user: no name field
    assert any(f"**{ANNA}** (annotator)".replace("_", "\\_") in c.value for c in at.sidebar.caption)
    first = int(at.query_params["image"][0] if isinstance(at.query_params["image"], list) else at.query_params["image"])
    at.button(key="lbl_toxic").click().run()
    no_exception(at)
    assert session.scalar(select(Label.annotator).where(Label.image_id == first, Label.annotator != "folder")) == ANNA
    session.commit()

    at = open_as("pages/13_Adjudication.py", ANNA)  # annotators cannot adjudicate
    assert at.title[0].value == "Not allowed"
    users.add_user(session, ANNA, "reviewer")  # a role change applies at the next page load
    session.commit()
    at.run()
    no_exception(at)
    assert at.title[0].value == "Adjudication"
    users.remove_user(session, ANNA)  # a removed user loses access at the next page load
    session.commit()
    at.run()
    assert at.title[0].value == "Not allowed"


def test_admin_actions_are_off_for_others_and_a_reviewer_decides(settings, session, memes, signin,
                                                                 clear_streamlit_cache) -> None:
    at = open_as("pages/3_Data.py", ANNA)
    no_exception(at)
    assert at.button(key="data_scan").disabled and at.button(key="data_demo").disabled
    at = open_as("pages/3_Data.py", ADMIN)
    assert not at.button(key="data_scan").disabled
    at = open_as("pages/4_Run.py", ANNA)
    assert at.button(key="run_start").disabled
    at = open_as(None, ANNA)
    assert at.button(key="home_rescan").disabled

    x = memes[0]
    labels.add_label(session, x, "toxic", ANNA)
    labels.add_label(session, x, "non_toxic", BORIS)
    session.commit()
    at = open_as("pages/13_Adjudication.py", REVIEWER)
    no_exception(at)
    assert "1 meme to decide" in at.subheader[0].value
    assert "adj_save_k" not in [b.key for b in at.button]  # k is for admins
    at.button(key="adj_toxic").click().run()
    no_exception(at)
    assert labels.consensus_labels(session)[x] == "toxic"
    assert "0 memes to decide" in at.subheader[0].value
    session.commit()
    at = open_as("pages/13_Adjudication.py", ADMIN)
    at.number_input(key="adj_k").set_value(2).run()
    at.button(key="adj_save_k").click().run()
    no_exception(at)
    assert overlap.labels_per_meme(session) == 2
    session.commit()


def test_deciding_and_undoing_filter_the_queue_without_rescanning_every_label(settings, session,
                                                                              clear_streamlit_cache) -> None:
    """Undo took 3.6 s: every decision and undo rescanned every label for the queue and recomputed
    the agreement. Now the disputed memes are kept until a label changes, and decisions only filter them."""
    from sqlalchemy import event

    rng = np.random.default_rng(2)
    ids = add_images(session, 300)
    session.execute(insert(Label), [{"image_id": i, "label": ("toxic", "non_toxic")[int(rng.integers(2))],
                                     "annotator": person} for person in ("anna", "boris", "carol") for i in ids])
    overlap.set_labels_per_meme(session, 2)
    session.commit()
    expected = adjudication.conflicts(session, 2)
    session.commit()  # every SQLite transaction here takes the write lock: never hold one while a page runs
    at = AppTest.from_file(str(REPO_ROOT / "pages" / "13_Adjudication.py"), default_timeout=120)
    at.session_state["annotator"] = "rev"
    at.run()
    no_exception(at)
    first = expected[0].image_id
    assert f"#{first}**" in at.markdown[0].value
    at.button(key="adj_toxic").click().run()
    assert f"{len(expected) - 1} memes to decide" in at.subheader[0].value

    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:  # noqa: ANN001 - SQLAlchemy's event signature
        statements.append(statement)

    engine = db.get_engine(settings.db_url)
    event.listen(engine, "before_cursor_execute", seen)
    try:
        at.button(key="adj_undo").click().run()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    no_exception(at)
    assert f"{len(expected)} memes to decide" in at.subheader[0].value
    assert f"#{first}**" in at.markdown[0].value  # back at the head of the queue
    assert adjudication.conflicts(session, 2) == expected
    session.commit()
    every_label = [s for s in statements if "FROM labels" in s and "labels.label" in s  # not one meme's labels
                   and "labels.image_id = " not in s and "labels.image_id IN" not in s]
    assert not every_label, every_label  # neither the queue nor the agreement read every label again


# ---- PostgreSQL ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg_server():
    from tests.support.pgserver import postgres_or_skip

    with postgres_or_skip("team_tests") as url:
        yield url
        db.dispose_all()


@pytest.mark.postgres
def test_team_queue_adjudication_and_agreement_on_postgres(pg_server, monkeypatch) -> None:
    from tests.support.pgserver import create_database

    url = create_database(pg_server, f"t_{os.getpid()}_{time.monotonic_ns()}")
    db.upgrade(url)
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    with db.session_scope(url) as s:
        users.add_user(s, ANNA, "annotator")
        users.add_user(s, BORIS, "annotator")
        users.add_user(s, REVIEWER, "reviewer")
        ids = add_images(s, 4, folder="a")
        overlap.set_labels_per_meme(s, 2)
        run = add_run(s, "clip", "clip", {i: Pred("toxic", p) for i, p in zip(ids, (0.9, 0.5, 0.7, 0.1))})
    a, b, c, d = ids
    with db.session_scope(url) as s:
        assert labels.present_ids(s) == ids
        assert queue_orders.build_queue(s, ANNA, "unsure", run_ids=[run]).ids == [b, c, a, d]
        labels.add_label(s, b, "toxic", ANNA)
        overlap.claim(s, c, ANNA)
    with db.session_scope(url) as s:
        assert queue_orders.build_queue(s, BORIS, "unlabeled").ids == [b, a, c, d]
        labels.add_label(s, b, "non_toxic", BORIS)
    with db.session_scope(url) as s:
        assert [x.image_id for x in adjudication.conflicts(s, 2)] == [b]
        adjudication.adjudicate(s, b, "toxic", REVIEWER)
    with db.session_scope(url) as s:
        assert labels.consensus_labels(s)[b] == "toxic" and adjudication.conflicts(s, 2) == []
        assert agreement.agreement_report(s)["pairs"][0]["n"] == 1
        assert [e["actor"] for e in audit.recent(s)][0] == REVIEWER
        assert audit.recent(s)[0]["at"].endswith("+00:00")  # timestamptz in the server's zone, shown in UTC


def test_job_commands_check_the_role_and_record_who_ran_them(settings, session, monkeypatch, capsys) -> None:
    """ocr / predict / embed / cam take --as like the other data-changing commands: with sign-in on
    the role applies (only admins run jobs), and every start is in the audit log."""
    write_sample_memes(settings.memes_dir, n=2, seed=4, size=(96, 64))
    scan_folder(session, settings.memes_dir)
    session.commit()
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    monkeypatch.setenv("WORKBENCH_CLI_OPERATOR", "trusted")  # --as stands for a user
    assert main(["users", "add", "boss@example.org", "--role", "admin"]) == 0
    assert main(["users", "add", "ann@example.org", "--role", "annotator"]) == 0
    capsys.readouterr()

    assert main(["ocr", "--engine", "tesseract", "--quiet", "--as", "ann@example.org"]) == 2
    assert "may not" in capsys.readouterr().err
    assert main(["predict", "nudenet", "--as", "stranger@example.org"]) == 2
    assert "not allowed" in capsys.readouterr().err
    assert main(["ocr", "--engine", "tesseract", "--quiet", "--as", "boss@example.org"]) == 0

    with db.session_scope(settings.db_url) as s:
        jobs = audit.recent(s, action="job")
    assert [(e["actor"], e["detail"]["images"]) for e in jobs] == [("boss@example.org", 2)]
    assert "tesseract" in jobs[0]["detail"]["step"]


def test_labels_under_a_users_name_need_that_user_or_a_recorded_reason(settings, session, capsys, monkeypatch) -> None:
    """import-annotations --annotator EMAIL stores human labels as that person's: refused for
    anyone else unless an admin (or the operator) gives a reason, which the audit log keeps."""
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    write_sample_memes(settings.memes_dir, n=2, size=(64, 64))
    assert run("ingest")[0] == 0
    assert run("users", "add", ADMIN, "--role", "admin")[0] == 0
    assert run("users", "add", BORIS, "--role", "reviewer")[0] == 0
    paths = sorted(session.scalars(select(Image.path)))
    session.commit()  # no transaction left open while the command writes
    csv_file = settings.memes_dir.parent / "a.csv"
    csv_file.write_text("filename,label\n" + "".join(f"{p},toxic\n" for p in paths), encoding="utf-8")
    code, _, err = run("import-annotations", str(csv_file), "--annotator", BORIS)
    assert code == 2 and f"only {BORIS} may import them" in err
    code, _, err = run("import-annotations", str(csv_file), "--annotator", BORIS, "--reason", "his sheet from Slack")
    assert code == 0, err
    code, out, _ = run("audit", "--json")
    entry = next(e for e in json.loads(out) if e["action"] == "import annotations")
    assert entry["actor"].startswith("os:") and entry["detail"]["reason"] == "his sheet from Slack"
    assert entry["detail"]["annotator"] == BORIS
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    monkeypatch.setenv("WORKBENCH_CLI_OPERATOR", "trusted")
    code, _, err = run("import-annotations", str(csv_file), "--annotator", BORIS, "--as", ADMIN)
    assert code == 2 and f"only {BORIS} may import them" in err  # an admin too needs a reason
    code, _, err = run("import-annotations", str(csv_file), "--annotator", BORIS, "--as", BORIS)
    assert code == 2 and "may not" in err  # his own labels, but importing is for admins


def test_a_bad_auth_setting_stops_the_app_with_its_message(monkeypatch, clear_streamlit_cache) -> None:
    """WORKBENCH_AUTH=bogus is refused (the app never opens unguarded) with one message, not a traceback."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_AUTH", "bogus")
    assert main(["stats"]) == 2  # the CLI: one line on stderr, exit 2, no traceback
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "The workbench is not configured correctly: WORKBENCH_AUTH must be one of off, oidc, not 'bogus'"]
    assert not at.button  # nothing to press: no meme, no upload, no scan
