"""The cleanlab data audit and the cleanlab-ranked label-issue queue, on a real database: generated
memes labeled by folder, planted flipped labels (a person overrules the folder), a planted
near-duplicate and outlier in cached embeddings, and a real head trained on those embeddings
(its out-of-fold probabilities are what cleanlab ranks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from tests.support.synthetic_runs import Pred, add_run
from workbench.analysis import review
from workbench.analysis.data_audit import AuditError, run_audit, run_audit_isolated
from workbench.analysis.outcomes import load_runs
from workbench.cli import main as cli_main
from workbench.features.embeddings import ClipImageEmbedder, store_embeddings
from workbench.predictors.run import build_predictor, run_predictions
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import add_label, consensus_labels
from workbench.store.schema import Image

PAGES = Path(__file__).resolve().parent.parent / "pages"
MODEL = "audit-test-clip"  # embeddings are stored under this model's fingerprint; no weights are ever loaded
FLIP = {"toxic": "non_toxic", "non_toxic": "toxic"}


@pytest.fixture
def world(settings):
    """40 labeled memes with class-separated embeddings; 4 flipped labels, a near-duplicate pair,
    an outlier, 2 unlabeled memes; a logreg head run on the embeddings (out-of-fold)."""
    import torch

    torch.set_num_threads(1)
    write_sample_memes(settings.memes_dir, n=40, seed=31, size=(64, 64))
    write_sample_memes(settings.memes_dir, n=2, seed=32, size=(64, 64), into_label_folders=False)
    rng = np.random.default_rng(0)
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        truth = consensus_labels(session)
        labeled = [i for i in ids if i in truth]
        vectors = {}  # 4-d: a logreg on 32 memes cannot memorise the flipped labels in noise dimensions
        for i in ids:
            direction = np.zeros(4, np.float32)
            direction[0 if truth.get(i) == "toxic" else 1] = 3.0
            vectors[i] = direction + rng.normal(0, 0.6, 4).astype(np.float32)
        dup_a, dup_b, outlier = labeled[0], labeled[2], labeled[5]  # same class (alternating folders)
        vectors[dup_b] = vectors[dup_a] + 1e-3
        vectors[outlier] = np.array([0.0, 0.0, -5.0, 40.0], np.float32)
        flipped = [labeled[k] for k in (10, 17, 24, 31)]
        for i in flipped:
            add_label(session, i, FLIP[truth[i]], "alice")  # a person overrules the folder: a wrong label
        embedder = ClipImageEmbedder(MODEL)
        store_embeddings(session, embedder, [(i, embedder.fingerprint(), v) for i, v in vectors.items()])
    head = build_predictor("head", {"features": "image", "clip_model": MODEL, "head": "logreg", "epochs": 60,
                                    "lr": 0.01})
    summary = run_predictions(settings, head, ids)
    assert (summary.status, summary.failed) == ("done", 0), summary.error
    return {"ids": ids, "flipped": flipped, "dup": (dup_a, dup_b), "outlier": outlier, "head_run": summary.run_id,
            "labeled": labeled}


def test_audit_finds_flipped_labels_the_near_duplicate_the_outlier_and_reports_balance(settings, world):
    result = run_audit(settings.db_url)
    assert result.n_images == 40 and result.prob_runs == [world["head_run"]]
    assert result.embedding and result.embedding.startswith("clip-image")
    summary = {r["issue_type"]: r for r in result.summary}
    assert set(summary) == {"label", "near_duplicate", "outlier", "class_imbalance"}
    assert all(0.0 <= r["score"] <= 1.0 for r in summary.values())
    label_flags = {r["image_id"] for r in result.issues["label"] if r["is_issue"]}
    assert len(label_flags & set(world["flipped"])) >= 3 and len(label_flags - set(world["flipped"])) <= 2
    assert result.issues["label"][0]["image_id"] in world["flipped"]  # the worst label score is a planted flip
    dups = {r["image_id"] for r in result.issues["near_duplicate"] if r["is_issue"]}
    assert set(world["dup"]) <= dups
    assert result.issues["outlier"][0]["image_id"] == world["outlier"]
    assert summary["class_imbalance"]["num_issues"] == 0  # 20 / 20


FORKS: list[int] = []  # pids that forked since this module was imported (os.register_at_fork)
os.register_at_fork(before=lambda: FORKS.append(os.getpid()))


def test_the_audit_and_the_cleanlab_queue_fork_no_process(settings, world):
    """cleanlab's label filter used to fork a multiprocessing pool (n_jobs = physical cores): a fork of
    the threaded Streamlit server hung. Both cleanlab paths now run in this process."""
    before = len(FORKS)
    result = run_audit(settings.db_url)
    with session_scope(settings.db_url) as session:
        queue = review.label_issue_queue(session)
    assert result.issues["label"] and queue.method == "cleanlab"  # cleanlab's label filter did run
    assert FORKS[before:] == []


def test_quality_cli_json_and_clear_errors(settings, world, capsys):
    assert cli_main(["quality", "--json", "--top", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"n_images", "embedding", "prob_runs", "summary", "issues", "notes"}
    assert all(len(rows) <= 5 for rows in report["issues"].values())
    first = report["issues"]["label"][0]
    assert {"image_id", "path", "score", "is_issue", "given_label", "predicted_label"} <= set(first)
    # a run that is not out-of-fold is not used: cleanlab falls back to the embeddings' neighbours
    zero_shot = add_run_clip(settings, world)
    assert cli_main(["quality", "--run", str(zero_shot), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prob_runs"] == [] and any("out-of-fold" in n for n in report["notes"])
    assert cli_main(["quality", "--embedding", "vlm-pooled", "--run", str(zero_shot)]) == 2
    assert "nothing to audit" in capsys.readouterr().err


def test_audit_without_labels_is_refused(settings):
    with pytest.raises(AuditError, match="no labeled memes"):
        run_audit(settings.db_url)


def add_run_clip(settings, world) -> int:
    """A zero-shot run (no out-of-fold flags) that contradicts the flipped labels."""
    with session_scope(settings.db_url) as session:
        truth = consensus_labels(session)
        preds = {i: Pred(truth[i], 0.8 if truth[i] == "toxic" else 0.2) for i in world["labeled"]}
        for i in world["flipped"]:
            preds[i] = Pred(FLIP[truth[i]], 0.2 if truth[i] == "toxic" else 0.8)
        return add_run(session, "clip", "zero-shot", preds)


def _found(issues: list[review.LabelIssue], flipped: list[int]) -> tuple[int, int]:
    ids = {x.image_id for x in issues}
    return len(ids & set(flipped)), len(ids - set(flipped))


def test_label_issue_queue_ranks_with_cleanlab_where_out_of_fold_is_complete(settings, world, capsys):
    with session_scope(settings.db_url) as session:
        queue = review.label_issue_queue(session)
        assert queue.method == "cleanlab" and queue.prob_runs == [world["head_run"]]
        assert "cleanlab" in queue.describe()
        fallback = review.suspected_label_issues(load_runs(session, [world["head_run"]]))
    hits, false = _found(queue.issues, world["flipped"])
    old_hits, old_false = _found(fallback, world["flipped"])
    assert hits >= old_hits and hits >= 3  # not worse at finding the flipped labels
    assert [x.image_id for x in queue.issues[:hits]] == [x.image_id for x in queue.issues if x.image_id in world["flipped"]]
    assert false <= old_false + 2
    # label-issues --json keeps its shape and says on stderr how it ranked
    assert cli_main(["label-issues", "--json"]) == 0
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert rows and all(set(r) == {"image_id", "human", "score", "n_runs", "n_contradicting", "path"} for r in rows)
    assert "cleanlab" in out.err
    assert [r["image_id"] for r in rows] == [x.image_id for x in queue.issues]


def test_label_issue_queue_falls_back_when_out_of_fold_is_incomplete(settings, world, capsys):
    zero_shot = add_run_clip(settings, world)
    with session_scope(settings.db_url) as session:
        queue = review.label_issue_queue(session, [zero_shot])
        assert queue.method == "mean confidence" and queue.prob_runs == []
        assert _found(queue.issues, world["flipped"]) == (4, 0)
        unlabeled = next(i for i in world["ids"] if i not in world["labeled"])
        add_label(session, unlabeled, "toxic", "alice")  # labeled after the head was trained: not out of fold
    with session_scope(settings.db_url) as session:
        assert review.label_issue_queue(session).method == "mean confidence"
    assert cli_main(["label-issues", "--json"]) == 0
    assert "mean confidence" in capsys.readouterr().err


def test_pages_show_the_ranking_method_and_the_audit(settings, world, clear_streamlit_cache):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGES / "7_Disagreements.py"), default_timeout=120)
    at.session_state["annotator"] = "tester"
    at.session_state["dis_view"] = "Suspected label issues"  # only the open tab runs
    at.run()
    assert not at.exception
    at.multiselect(key="dis_queue_runs").set_value([world["head_run"]]).run()
    assert any(c.value.startswith("Ranking: cleanlab") for c in at.caption)
    page = AppTest.from_file(str(PAGES / "11_Duplicates.py"), default_timeout=120)
    page.session_state["annotator"] = "tester"
    page.run()
    page.button(key="audit_run").click().run()
    assert not page.exception
    summary = page.dataframe[0].value
    assert set(summary["issue_type"]) == {"label", "near_duplicate", "outlier", "class_imbalance"}


def test_the_audit_page_runs_cleanlab_in_its_own_process_holding_no_write_lock(settings, world, monkeypatch,
                                                                            clear_streamlit_cache):
    """The page held one BEGIN IMMEDIATE session through the whole audit: every other page waited for
    SQLite's write lock. Now the audit runs in a new Python process, and while it does, another
    connection takes the write lock at once."""
    import sqlite3
    import subprocess

    from sqlalchemy.engine import make_url
    from streamlit.testing.v1 import AppTest

    db_file = make_url(settings.db_url).database
    probes: list[str] = []
    original = subprocess.run

    def run_with_a_probe(argv, *args, **kwargs):  # noqa: ANN001, ANN202 - the subprocess boundary, not ours
        if argv[-1] == "workbench.analysis.data_audit":
            other = sqlite3.connect(db_file, timeout=0.2, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")  # what any other page's session does first
                other.execute("ROLLBACK")
                probes.append("free")
            except sqlite3.OperationalError as exc:
                probes.append(str(exc))
            finally:
                other.close()
        return original(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run_with_a_probe)
    page = AppTest.from_file(str(PAGES / "11_Duplicates.py"), default_timeout=180)
    page.session_state["annotator"] = "tester"
    page.run()
    page.button(key="audit_run").click().run()
    assert not page.exception and probes == ["free"]
    summary = page.dataframe[0].value
    assert set(summary["issue_type"]) == {"label", "near_duplicate", "outlier", "class_imbalance"}
    assert page.session_state["audit"] == run_audit(settings.db_url).to_dict()  # the same audit as in-process


def test_the_isolated_audit_says_why_there_is_nothing_to_audit(settings):
    with pytest.raises(AuditError, match="no labeled memes"):
        run_audit_isolated(settings.db_url)
