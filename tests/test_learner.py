"""The learner refreshed on its own (issue 23, point 1), over generated memes whose OCR text
(stored as corrections: no OCR engine needed) carries the class, real human labels and a real
SQLite file: a refresh stores one `learner` run with out-of-fold P(toxic) for labeled memes
(the same numbers as the TF-IDF predictor's own out-of-fold path) and full-fit P(toxic) for
the others; too few labels or one class store nothing; the trigger submits a background
refresh at N labels and not before; the Label page does not wait for it; the CLI's JSON shape;
the learner and N are admin-only settings, audited."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from workbench.analysis import learner
from workbench.runs import background
from workbench.runs.step import ItemResult, Step
from workbench.store import users
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import add_label
from workbench.store.ocr_texts import save_correction
from workbench.store.schema import AuditEntry, Image, Job, ModelRun, Prediction, utcnow

LABEL_PAGE = Path(__file__).resolve().parent.parent / "pages" / "1_Label.py"
WAIT_S = 120
ANNA = "anna"


def _memes(settings, n: int) -> tuple[list[int], dict[int, str]]:
    """n generated memes outside the label folders (no folder labels), each with its caption as
    OCR text; returns their ids and each one's true class."""
    samples = write_sample_memes(settings.memes_dir, n=n, size=(64, 64), into_label_folders=False)
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        by_name = {im.original_name: im.id for im in session.scalars(select(Image))}
        truth = {}
        for s in samples:
            save_correction(session, by_name[s.path.name], s.caption, "tester")
            truth[by_name[s.path.name]] = s.label
    return sorted(truth), truth


def _label(settings, truth: dict[int, str], ids: list[int]) -> None:
    with session_scope(settings.db_url) as session:
        for i in ids:
            add_label(session, i, truth[i], ANNA)


@pytest.fixture(autouse=True)
def idle_worker():
    """The background worker is process-wide: no test leaves a job running into the next one."""
    assert background.jobs().wait_idle(WAIT_S)
    yield
    assert background.jobs().wait_idle(WAIT_S)


def test_a_refresh_stores_oof_probs_for_labeled_memes_and_full_fit_probs_for_the_rest(settings) -> None:
    from sklearn.metrics import f1_score

    from workbench.predictors.run import build_predictor, run_predictions

    ids, truth = _memes(settings, 30)
    labeled = ids[:24]
    _label(settings, truth, labeled)
    result = learner.refresh(settings)
    assert result.learner == "text-tfidf" and result.labels == 24 and result.seconds > 0
    with session_scope(settings.db_url) as session:
        run = session.get(ModelRun, result.run_id)
        assert run.kind == "learner" and run.status == "done" and run.params["learner"] == "text-tfidf"
        assert run.params["refresh"]["labels"] == 24
        preds = {p.image_id: p for p in session.scalars(select(Prediction).where(Prediction.run_id == run.id))}
    assert set(preds) == set(ids)
    assert all(preds[i].extra["out_of_fold"] and preds[i].extra["fold"] is not None for i in labeled)
    assert not any(preds[i].extra["out_of_fold"] for i in ids[24:])

    # The same numbers as the existing out-of-fold path: a hand-run TF-IDF predictor on the same labels.
    plain = run_predictions(settings, build_predictor("text-tfidf"), ids, batch_size=50)
    with session_scope(settings.db_url) as session:
        by_hand = dict(session.execute(select(Prediction.image_id, Prediction.prob_toxic)
                                       .where(Prediction.run_id == plain.run_id)).all())
    assert plain.run_id != result.run_id  # a learner run is a run of its own kind
    assert np.allclose([preds[i].prob_toxic for i in ids], [by_hand[i] for i in ids])

    y_true = [truth[i] == "toxic" for i in labeled]
    y_pred = [preds[i].prob_toxic >= 0.5 for i in labeled]
    assert result.oof_f1 == pytest.approx(f1_score(y_true, y_pred))
    lo, hi = result.oof_f1_ci
    assert 0 <= lo <= result.oof_f1 <= hi <= 1
    with session_scope(settings.db_url) as session:
        assert learner.latest_refresh(session).run_id == result.run_id
        assert learner.labels_since_refresh(session) == 0


@pytest.mark.parametrize("labels, why", [(9, "have 9"), (12, "have 12 (12 non_toxic)")])
def test_too_few_labels_or_one_class_refuse_and_store_nothing(settings, labels: int, why: str) -> None:
    ids, truth = _memes(settings, 30)
    if labels == 12:  # one class only
        truth = {i: "non_toxic" for i in ids}
    _label(settings, truth, ids[:labels])
    with pytest.raises(learner.LearnerRefused, match=rf"at least 10 consensus labels of both classes.*{re.escape(why)}"):
        learner.refresh(settings)
    with session_scope(settings.db_url) as session:
        assert session.scalar(select(func.count()).select_from(ModelRun)) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_the_trigger_submits_a_background_refresh_at_n_labels_and_not_before(settings) -> None:
    ids, truth = _memes(settings, 30)
    _label(settings, truth, ids[:10])
    with session_scope(settings.db_url) as session:
        assert learner.refresh_every(session) == learner.DEFAULT_EVERY
        learner.set_refresh_every(session, 5)
        assert learner.labels_since_refresh(session) == 10
    ticket = learner.maybe_refresh(settings)  # 10 labels since no refresh at all: one starts
    assert ticket is not None and ticket.wait(WAIT_S) and ticket.summary.status == "done"
    first = ticket.summary.run_id
    for n, image_id in enumerate(ids[10:15], start=1):
        _label(settings, truth, [image_id])
        ticket = learner.maybe_refresh(settings)
        assert (ticket is not None) == (n == 5), n
    assert ticket.wait(WAIT_S) and ticket.summary.status == "done"
    with session_scope(settings.db_url) as session:
        run = session.get(ModelRun, ticket.summary.run_id)
        assert run.id != first and run.kind == "learner" and run.params["refresh"]["labels"] == 15
        assert learner.latest_refresh(session).run_id == run.id
        learner.set_refresh_every(session, 0)  # off: never on its own
    _label(settings, truth, ids[15:25])
    assert learner.maybe_refresh(settings) is None
    # A refresh the server's restart interrupted can be resumed from its job row.
    with session_scope(settings.db_url) as session:
        session.get(Job, ticket.summary.job_id).status = "interrupted"
    rebuilt = background.rebuild_job(settings, ticket.summary.job_id)
    assert isinstance(rebuilt.step, learner.LearnerStep) and rebuilt.image_ids == ids


def test_one_refresh_at_a_time_and_a_failed_one_is_shown_without_blocking_labels(settings) -> None:
    ids, truth = _memes(settings, 30)
    _label(settings, truth, ids[:12])
    with session_scope(settings.db_url) as session:
        learner.set_refresh_every(session, 1)
        learner.set_learner(session, "head")  # no embedding set is cached: this refresh fails
        live = Job(step_kind="learn", step_name="learner", fingerprint="x", status="running", pid=os.getpid(),
                   heartbeat_at=utcnow())  # a refresh of another process, alive
        session.add(live)
    assert learner.maybe_refresh(settings) is None  # another refresh is running
    with session_scope(settings.db_url) as session:
        session.delete(session.get(Job, live.id))
    ticket = learner.maybe_refresh(settings)
    assert ticket is not None and ticket.wait(WAIT_S)
    assert ticket.summary.status == "failed" and "no embedding set is cached" in ticket.summary.error
    with session_scope(settings.db_url) as session:
        job = session.get(Job, ticket.summary.job_id)
        assert job.status == "failed" and "no embedding set is cached" in job.error
        assert session.scalar(select(func.count()).select_from(ModelRun)) == 0
    _label(settings, truth, [ids[12]])  # labeling goes on; the next label starts the next try
    assert learner.maybe_refresh(settings) is not None


class _Gate(Step):
    """A job that holds the background worker until released: the refresh queued behind it
    is still unfinished while the Label page labels."""

    kind, name, needs_ocr_text = "gate", "gate", False

    def __init__(self) -> None:
        self.release = threading.Event()

    def fingerprint(self) -> str:
        return "gate"

    def process(self, items):  # noqa: ANN001, ANN201
        self.release.wait(WAIT_S)
        return [ItemResult(item.image_id) for item in items]


def test_the_label_page_does_not_wait_for_the_refresh(settings, clear_streamlit_cache) -> None:
    from streamlit.testing.v1 import AppTest

    ids, truth = _memes(settings, 20)
    _label(settings, truth, ids[:11])
    with session_scope(settings.db_url) as session:
        learner.set_refresh_every(session, 12)
    gate = _Gate()
    held = background.jobs().submit(settings.db_url, gate, ids[:1], memes_dir=settings.memes_dir,
                                    lock_dir=settings.artefacts_dir)
    try:
        at = AppTest.from_file(str(LABEL_PAGE), default_timeout=60)
        at.session_state["annotator"] = ANNA
        at.run()
        assert not at.exception
        shown = at.session_state["lbl_queue"][at.session_state["lbl_pos"]]
        t0 = time.perf_counter()
        at.button(key="lbl_toxic").click().run()
        seconds = time.perf_counter() - t0
        assert not at.exception, at.exception
        refreshes = [t for t in background.jobs().active() if t.step_kind == "learn"]
        assert len(refreshes) == 1 and not refreshes[0].finished  # queued behind the gate: the page went on
        assert at.session_state["lbl_queue"][at.session_state["lbl_pos"]] != shown
        assert seconds < 5, seconds
    finally:
        gate.release.set()
    assert held.wait(WAIT_S) and background.jobs().wait_idle(WAIT_S)
    assert refreshes[0].summary.status == "done"


def test_cli_learn_json_and_admin_only_audited_settings(settings, session, monkeypatch, capsys) -> None:
    from workbench.cli import main
    from workbench.errors import PermissionDenied

    ids, truth = _memes(settings, 24)
    _label(settings, truth, ids[:20])
    assert main(["learn", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"run_id", "labels", "learner", "oof_f1", "oof_f1_ci", "seconds"}
    assert (out["labels"], out["learner"]) == (20, "text-tfidf")
    assert isinstance(out["run_id"], int) and isinstance(out["oof_f1"], float) and isinstance(out["seconds"], float)
    assert len(out["oof_f1_ci"]) == 2 and out["oof_f1_ci"][0] <= out["oof_f1"] <= out["oof_f1_ci"][1]

    assert main(["learn", "--every", "7"]) == 0
    assert "learner refresh every: 7" in capsys.readouterr().out
    assert main(["learn", "--every", "-1"]) == 2
    assert main(["learn", "--learner", "text-tfidf", "--embedding", "both", "--every", "7"]) == 2

    # With sign-in on: only admins change the learner or N, and each change is in the audit log.
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    users.add_user(session, "admin@team.org", "admin")
    users.add_user(session, "rev@team.org", "reviewer")
    session.commit()
    for call in (lambda who: learner.set_refresh_every(session, 3, actor=who),
                 lambda who: learner.set_learner(session, "text-tfidf", actor=who)):
        with pytest.raises(PermissionDenied):
            call("rev@team.org")
        session.rollback()
        call("admin@team.org")
        session.commit()
    assert learner.refresh_every(session) == 3 and learner.learner_setting(session) == ("text-tfidf", None)
    actions = [(e.actor, e.action, e.detail) for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert ("admin@team.org", "learner refresh every", {"every": 3}) in actions
    assert ("admin@team.org", "learner", {"learner": "text-tfidf", "embedding": None}) in actions
    assert any(a == "learner refresh every" and d == {"every": 7} for _, a, d in actions)  # the CLI's, as the OS user


def test_the_default_learner_is_the_head_on_the_largest_embedding_set_and_counts_memes_without_one(settings) -> None:
    import torch

    from tests.support.tiny_models import tiny_model_dir
    from workbench.features.embeddings import EmbedStep, make_embedders
    from workbench.models.choices import set_choice
    from workbench.runs.runner import run_step

    ids, truth = _memes(settings, 16)
    _label(settings, truth, ids[:12])
    with session_scope(settings.db_url) as session:
        assert learner.choose_learner(session).learner == "text-tfidf"  # nothing cached yet
        clip = set_choice(session, "embedding", str(tiny_model_dir("clip")))
    embedded = ids[:14]  # two unlabeled memes are never embedded
    for embedder in make_embedders("clip", clip, dtype="float32"):
        summary = run_step(settings.db_url, EmbedStep(embedder), embedded, memes_dir=settings.memes_dir,
                           lock_dir=settings.artefacts_dir, batch_size=8)
        assert summary.status == "done"
    with session_scope(settings.db_url) as session:
        assert learner.embedding_sets(session) == {"both": 14, "image": 14, "text": 14}
        choice = learner.choose_learner(session)
        assert (choice.learner, choice.embedding, choice.model) == ("head", "both", clip)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = learner.refresh(settings)
    finally:
        torch.set_num_threads(threads)
    assert (result.learner, result.labels, result.lacking) == ("head", 12, 2)
    with session_scope(settings.db_url) as session:
        preds = {p.image_id: p for p in session.scalars(select(Prediction).where(Prediction.run_id == result.run_id))}
    assert all(preds[i].prob_toxic is not None and preds[i].extra["out_of_fold"] for i in ids[:12])
    assert all(preds[i].prob_toxic is not None and not preds[i].extra["out_of_fold"] for i in ids[12:14])
    assert all(preds[i].prob_toxic is None and "embedding" in preds[i].error for i in ids[14:])
