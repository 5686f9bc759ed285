"""Labeling that learns, the honest half: each label records how its meme was chosen (migration
0005 up and down, labels.csv, backup/restore), suggestions on and off (the Label page, overlap,
admin-only), anchoring, metrics restricted to the memes chosen at random (equal to sklearn on
that subset), the learning curve and the toxic memes still unlabeled (`learn --history`, the
Dashboard, the report)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score
from sqlalchemy import select, text

from tests.support.synthetic_runs import Pred, add_images, add_run
from workbench.analysis import dashboard, learning_progress, queue_orders, suggestions
from workbench.cli import main
from workbench.errors import PermissionDenied
from workbench.store import db, label_choice, overlap, users
from workbench.store.labels import LabelContext, add_label
from workbench.store.schema import AuditEntry, Label

REPO_ROOT = Path(__file__).resolve().parent.parent


def _learner_run(session, preds: dict[int, Pred], labels_used: int = 10, f1: float = 0.5,
                 ci: tuple[float, float] = (0.3, 0.7)) -> int:
    return add_run(session, "learner", "learner:text-tfidf", preds, model_id="tfidf",
                   params={"refresh": {"labels": labels_used, "learner": "text-tfidf", "oof_f1": f1,
                                       "oof_f1_ci": list(ci), "seconds": 0.5}})


# ---- the migration, export, backup ---------------------------------------------------------

def test_migration_0005_adds_and_drops_the_context_and_keeps_the_labels(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    try:
        db.upgrade(url, "0004")
        with db.get_engine(url).begin() as conn:
            conn.execute(text("INSERT INTO images (sha256, path, original_name, format, width, height, bytes, "
                              "n_frames, source, folder, missing, added_at) VALUES ('x', 'a.png', 'a.png', 'PNG', 1, 1, 1, 1, "
                              "'folder', '', 0, '2026-01-01')"))
            conn.execute(text("INSERT INTO labels (image_id, label, annotator, created_at) "
                              "VALUES (1, 'toxic', 'anna', '2026-01-01')"))
        db.upgrade(url, "0005")
        with db.session_scope(url) as session:
            old = session.scalar(select(Label))
            assert (old.queue_order, old.exploration, old.suggestion) == (None, None, None)  # unknown, not guessed
            add_label(session, 1, "non_toxic", "anna", context=LabelContext("unsure", 3, 0.9, False, "toxic", 0.55,
                                                                            True, 4.2))
        with db.get_engine(url).connect() as conn:
            row = conn.execute(text("SELECT queue_order, queue_rank, queue_score, exploration, suggestion, "
                                    "suggestion_prob, suggestion_shown, seconds_spent FROM labels WHERE id = 2")).one()
        assert tuple(row) == ("unsure", 3, 0.9, 0, "toxic", 0.55, 1, 4.2)
        db.dispose_all()
        _downgrade(url, "0004")
        with db.get_engine(url).connect() as conn:
            columns = {r[1] for r in conn.execute(text("PRAGMA table_info(labels)"))}
            assert "queue_order" not in columns and "seconds_spent" not in columns
            assert conn.execute(text("SELECT count(*) FROM labels")).scalar() == 2  # nothing lost
        db.upgrade(url)
    finally:
        db.dispose_all()


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(db._alembic_config(url), revision)


def test_labels_csv_and_backup_restore_keep_the_context(settings, session, tmp_path) -> None:
    from workbench.store.backup import backup, restore

    ids = add_images(session, 3)
    add_label(session, ids[0], "toxic", "anna", note="=SUM(A1)",
              context=LabelContext("likely-toxic", 1, 0.93, False, "toxic", 0.93, True, 2.5))
    add_label(session, ids[1], "non_toxic", "anna", context=LabelContext("unsure", 2, 0.8, True, "toxic", 0.6, False))
    add_label(session, ids[2], "toxic", "anna")
    session.commit()
    session.commit()  # release the write lock before the CLI writes
    assert main(["export", "labels", str(tmp_path / "labels.csv")]) == 0
    with open(tmp_path / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["queue_order"] for r in rows] == ["likely-toxic", "unsure", ""]
    assert rows[0]["note"] == "'=SUM(A1)"  # spreadsheet-safe
    assert (rows[0]["suggestion_shown"], rows[0]["seconds_spent"], rows[1]["exploration"]) == ("True", "2.5", "True")

    backup(session, tmp_path / "bundle.zip")
    url2 = f"sqlite:///{tmp_path / 'restored.sqlite3'}"
    db.upgrade(url2)
    with db.session_scope(url2) as s2:
        restore(s2, tmp_path / "bundle.zip")
    fields = (Label.image_id, Label.queue_order, Label.queue_rank, Label.queue_score, Label.exploration,
              Label.suggestion, Label.suggestion_prob, Label.suggestion_shown, Label.seconds_spent)
    with db.session_scope(url2) as s2:
        after = s2.execute(select(*fields).order_by(Label.id)).all()
    assert after == session.execute(select(*fields).order_by(Label.id)).all()
    assert after[0][1:] == ("likely-toxic", 1, 0.93, False, "toxic", 0.93, True, 2.5)


# ---- the Label page: context, suggestions ------------------------------------------------------

def _label_page(settings, session, n: int):
    from streamlit.testing.v1 import AppTest

    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Image

    write_sample_memes(settings.memes_dir, n=n, size=(64, 64), into_label_folders=False)
    scan_folder(session, settings.memes_dir)
    ids = list(session.scalars(select(Image.id).order_by(Image.path)).all())
    session.commit()
    at = AppTest.from_file(str(REPO_ROOT / "streamlit_app.py"), default_timeout=120)
    at.switch_page("pages/1_Label.py")
    at.session_state["annotator"] = "alice"
    return at, ids


def _latest(session) -> Label:
    session.expire_all()
    return session.scalars(select(Label).order_by(Label.id.desc())).first()


def test_label_page_records_the_choice_and_shows_suggestions_only_when_on(settings, session,
                                                                          clear_streamlit_cache) -> None:
    at, (a, b, c, d) = _label_page(settings, session, 4)
    _learner_run(session, {a: Pred("toxic", 0.7), b: Pred("non_toxic", 0.2), c: Pred("toxic", 0.9),
                           d: Pred("non_toxic", 0.4)})
    queue_orders.set_exploration_share(session, 0.0)
    session.commit()
    at.run()
    at.sidebar.selectbox(key="lbl_order").select("likely-toxic").run()
    assert int(at.query_params["image"]) == c
    # off by default: no suggestion, and the learner's row is not in the Models table either
    assert not at.info and not any(b.key == "lbl_accept" for b in at.button)
    assert not any("learner" in str(df.value) for df in at.dataframe)
    at.button(key="lbl_neutral").click().run()
    row = _latest(session)
    assert (row.image_id, row.label, row.queue_order, row.queue_rank, row.exploration) == (c, "non_toxic",
                                                                                          "likely-toxic", 1, False)
    assert row.queue_score == pytest.approx(0.9) and row.seconds_spent is not None and row.seconds_spent >= 0
    assert (row.suggestion, row.suggestion_prob, row.suggestion_shown) == ("toxic", 0.9, False)  # recorded, not shown

    suggestions.set_suggestions(session, True)
    session.commit()
    at.run()
    assert int(at.query_params["image"]) == a
    assert any("Suggestion" in i.value and "Toxic" in i.value and "0.70" in i.value for i in at.info)
    at.button(key="lbl_accept").click().run()  # the A key
    row = _latest(session)
    assert (row.image_id, row.label, row.suggestion, row.suggestion_shown, row.queue_rank) == (a, "toxic", "toxic",
                                                                                              True, 2)

    overlap.set_labels_per_meme(session, 2)  # overlap: off again unless an admin allows it there
    session.commit()
    at.sidebar.button(key="lbl_refresh").click().run()
    assert not at.exception and not any(b.key == "lbl_accept" for b in at.button)
    suggestions.set_suggestions(session, True, in_overlap=True)
    session.commit()
    at.run()
    assert any(b.key == "lbl_accept" for b in at.button)


def test_suggestion_settings_are_admin_only_audited_and_in_the_cli(settings, session, monkeypatch, capsys) -> None:
    assert suggestions.suggestion_setting(session) == {"on": False, "in_overlap": False}
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    users.add_user(session, "boss@x.org", "admin")
    users.add_user(session, "ann@x.org", "annotator")
    session.commit()
    with pytest.raises(PermissionDenied):
        suggestions.set_suggestions(session, True, actor="ann@x.org")
    session.rollback()
    suggestions.set_suggestions(session, True, in_overlap=True, actor="boss@x.org")
    session.commit()
    actions = [(e.actor, e.action, e.detail) for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert ("boss@x.org", "suggestions", {"on": True, "in_overlap": True}) in actions
    monkeypatch.delenv("WORKBENCH_AUTH")
    session.commit()  # release the write lock before the CLI writes
    assert main(["suggestions", "off", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"on": False, "in_overlap": False}
    assert not suggestions.suggestions_active(session, 1)


def test_anchoring_compares_labels_with_the_class_shown_and_not_shown(session, capsys) -> None:
    ids = add_images(session, 20)
    for i in ids[:10]:  # shown: 9 of 10 follow it
        add_label(session, i, "toxic" if i != ids[0] else "non_toxic", "anna",
                  context=LabelContext("unsure", suggestion="toxic", suggestion_prob=0.8, suggestion_shown=True))
    for n, i in enumerate(ids[10:]):  # not shown: 5 of 10 equal the learner's class
        add_label(session, i, "toxic" if n % 2 else "non_toxic", "anna",
                  context=LabelContext("unsure", suggestion="toxic", suggestion_prob=0.8, suggestion_shown=False))
    add_label(session, ids[0], "toxic", "folder", context=LabelContext("folder", suggestion="toxic"))  # not a person
    session.commit()
    result = suggestions.anchoring(session)
    assert (result["shown"]["n"], result["shown"]["rate"]) == (10, 0.9)
    assert (result["not_shown"]["n"], result["not_shown"]["rate"]) == (10, 0.5)
    assert result["difference"] == pytest.approx(0.4)
    lo, hi = result["shown"]["ci"]
    assert lo < 0.9 < hi
    session.commit()  # release the write lock before the CLI writes
    assert main(["agreement", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["anchoring"]["shown"]["equal"] == 9


# ---- honest metrics ----------------------------------------------------------------------------

def _mixed_labels(session, seed: int = 0) -> tuple[list[int], dict[int, str], dict[int, str], int]:
    """60 memes: 20 chosen at random (random order, exploration picks, folders), 30 by model-ranked
    queues, 10 by file name; a run predicting them all."""
    rng = np.random.default_rng(seed)
    ids = add_images(session, 60)
    truth, how = {}, {}
    contexts = ([LabelContext("random")] * 8 + [LabelContext("unsure", exploration=True)] * 6
                + [LabelContext("folder")] * 6 + [LabelContext("likely-toxic")] * 15 + [LabelContext("unsure")] * 15
                + [LabelContext("filename")] * 10)
    for i, ctx in zip(ids, contexts, strict=True):
        truth[i] = "toxic" if rng.random() < 0.5 else "non_toxic"
        add_label(session, i, truth[i], "folder" if ctx.order == "folder" else "anna", context=ctx)
        how[i] = label_choice.classify(ctx.order, ctx.exploration)
    preds = {i: Pred(lab if rng.random() < 0.7 else ("toxic" if lab == "non_toxic" else "non_toxic"),
                     float(rng.random())) for i, lab in truth.items()}
    run = add_run(session, "clip", "clip", preds)
    session.commit()
    return ids, truth, how, run


def test_random_only_metrics_equal_sklearn_on_the_random_subset(session, capsys) -> None:
    ids, truth, how, run = _mixed_labels(session)
    assert label_choice.how_chosen(session) == how
    some = np.array(sorted(ids)[5:50])
    assert label_choice.summarize_ids(session, some) == label_choice.summarize(how, some.tolist())
    from workbench.store.schema import Prediction

    said = dict(session.execute(select(Prediction.image_id, Prediction.label).where(Prediction.run_id == run)).all())
    sub = [i for i in ids if how[i] == "random"]
    assert len(sub) == 20
    y, p = [truth[i] == "toxic" for i in sub], [said[i] == "toxic" for i in sub]

    dash = dashboard.dashboard(session, [run], n_boot=200, random_only=True)
    ev = dash.evaluations[run]
    assert ev.n_labeled == 20
    assert ev.f1 == pytest.approx(f1_score(y, p)) and ev.accuracy == pytest.approx(accuracy_score(y, p))
    assert dash.choice is not None and (dash.choice.random, dash.choice.active, dash.choice.other) == (20, 0, 0)

    everything = dashboard.dashboard(session, [run], n_boot=200)
    assert everything.evaluations[run].n_labeled == 60 and not everything.random_only
    assert (everything.choice.random, everything.choice.active, everything.choice.other) == (20, 30, 10)
    assert everything.choice.mostly_active is False  # 30 of 60 is not "mostly"

    session.commit()  # release the write lock before the CLI writes

    assert main(["metrics", str(run), "--random-only", "--json", "--n-boot", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["random_only"] and out["runs"][0]["f1"] == pytest.approx(f1_score(y, p))
    assert out["labels_chosen"]["total"] == 20


def test_mostly_active_labels_are_said_plainly(session, capsys) -> None:
    ids = add_images(session, 10)
    for n, i in enumerate(ids):
        add_label(session, i, ("toxic", "non_toxic")[n % 2], "anna",
                  context=LabelContext("random" if n < 2 else "unsure"))
    run = add_run(session, "clip", "clip", {i: Pred("toxic", 0.6) for i in ids})
    session.commit()
    summary = label_choice.summarize(label_choice.how_chosen(session))
    assert summary.mostly_active and "Most labels were chosen actively" in summary.describe()
    session.commit()  # release the write lock before the CLI writes
    assert main(["metrics", str(run), "--n-boot", "100"]) == 0
    assert "Most labels were chosen actively" in capsys.readouterr().out


# ---- learning curve and the toxic memes still unlabeled -----------------------------------------

def test_learning_history_curve_and_toxic_estimate(settings, session, capsys) -> None:
    rng = np.random.default_rng(1)
    ids = add_images(session, 600)
    p_true = rng.uniform(0, 1, len(ids))
    toxic = rng.random(len(ids)) < p_true  # the learner's P is calibrated by construction
    labeled = ids[:200]
    for n, i in enumerate(labeled):
        add_label(session, i, "toxic" if toxic[n] else "non_toxic", "anna", context=LabelContext("random"))
    _learner_run(session, {i: Pred("toxic" if p > 0.5 else "non_toxic", float(p)) for i, p in zip(ids, p_true)},
                 labels_used=100, f1=0.6, ci=(0.5, 0.7))
    last = _learner_run(session, {i: Pred("toxic" if p > 0.5 else "non_toxic", float(p))
                                  for i, p in zip(ids, p_true)}, labels_used=200, f1=0.7, ci=(0.62, 0.78))
    session.commit()

    curve = learning_progress.learning_curve(session)
    assert [(r["labels"], r["oof_f1"], r["ci_low"]) for r in curve] == [(100, 0.6, 0.5), (200, 0.7, 0.62)]
    est = learning_progress.toxic_estimate(session)
    assert est is not None and est.run_id == last and (est.unlabeled, est.scored) == (400, 400)
    assert est.calibration == "random" and est.calibration_labels == 200
    actual = int(toxic[200:].sum())
    assert est.ci[0] <= actual <= est.ci[1]  # the interval covers the truth
    assert abs(est.expected - p_true[200:].sum()) < 0.1 * 400  # close to the calibrated sum
    assert est.ci[1] - est.ci[0] < 120  # and says something

    session.commit()  # release the write lock before the CLI writes

    assert main(["learn", "--history", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["labels"] for r in out["curve"]] == [100, 200]
    assert out["toxic_estimate"]["expected"] == pytest.approx(est.expected)
    assert out["labels_chosen"]["random"] == 200


def test_dashboard_and_report_show_the_curve_the_estimate_and_the_random_only_note(settings, session,
                                                                                   clear_streamlit_cache,
                                                                                   tmp_path) -> None:
    from streamlit.testing.v1 import AppTest

    ids, truth, how, run = _mixed_labels(session)
    extra = add_images(session, 40)
    _learner_run(session, {i: Pred("toxic", 0.3 + 0.4 * (n % 2)) for n, i in enumerate(ids + extra)},
                 labels_used=60)
    session.commit()
    at = AppTest.from_file(str(REPO_ROOT / "pages" / "6_Dashboard.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert any("Of 60 labelled memes, 20 were chosen at random" in c.value for c in at.caption)
    assert any("Toxic memes still unlabeled" in m.label for m in at.metric)
    at.checkbox(key="dash_random_only").check().run()
    assert not at.exception and any("labels chosen at random only" in c.value for c in at.caption)

    session.commit()  # release the write lock before the CLI writes

    assert main(["report", str(tmp_path / "r.html"), "--random-only", "--n-boot", "100"]) == 0
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Metrics below are over labels chosen at random only" in html
    assert "Learning curve" in html and "Toxic memes still unlabeled" in html


def test_how_chosen_in_sql_agrees_with_classify_for_every_order(session) -> None:
    """how_chosen classifies in SQL (a million memes); classify() is the rule it must follow."""
    orders = [None, "random", "folder", "import", "unsure", "likely-toxic", "label-issue", "disagree",
              "unlabeled", "filename", "link"]
    contexts = [LabelContext(o, exploration=e) for o in orders for e in (None, False, True)]
    ids = add_images(session, len(contexts))
    for i, ctx in zip(ids, contexts, strict=True):
        add_label(session, i, "toxic", "anna", context=ctx)
        add_label(session, i, "non_toxic", "boris", context=LabelContext("unsure"))  # not the first label
    session.commit()
    assert label_choice.how_chosen(session) == {
        i: label_choice.classify(c.order, c.exploration) for i, c in zip(ids, contexts, strict=True)}
