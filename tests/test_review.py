"""Disagreement queries on a hand-computed fixture: the A/B 2x2 with McNemar, label-error
candidates, the suspected-label-issue ranking, review cards, and the analysis CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar

from tests.support.synthetic_runs import Pred, add_images, add_labels, add_run
from workbench.analysis import outcomes, review
from workbench.cli import main as cli_main
from workbench.store.labels import add_label
from workbench.store.ocr_texts import save_correction

HUMAN = ["toxic", "toxic", "toxic", "toxic", "non_toxic", "non_toxic", "non_toxic", "non_toxic", "toxic", None]
#          R        R        W            W            R            W        W        unknown    R(no prob)  unlabeled
A = [("toxic", .9), ("toxic", .8), ("non_toxic", .3), ("non_toxic", .2), ("non_toxic", .1), ("toxic", .7),
     ("toxic", .6), ("unknown", None), ("toxic", None), ("toxic", .9)]
#          R          W             R          W             W          W          R            R          missing
B = ["toxic", "non_toxic", "toxic", "non_toxic", "toxic", "toxic", "non_toxic", "non_toxic", None, "non_toxic"]


@pytest.fixture
def fixture(session):
    ids = add_images(session, 10)
    add_labels(session, {i: h for i, h in zip(ids, HUMAN) if h}, "folder")
    run_a = add_run(session, "vlm", "A", {i: Pred(lab, prob, explanation=f"because {k}")
                                          for k, (i, (lab, prob)) in enumerate(zip(ids, A))})
    run_b = add_run(session, "clip", "B", {i: Pred(lab) for i, lab in zip(ids, B) if lab})
    session.commit()
    return ids, run_a, run_b


def test_pair_table_matches_hand_computed_cells(session, fixture):
    ids, run_a, run_b = fixture
    a, b = outcomes.load_runs(session, [run_a, run_b])
    table = review.pair_table(a, b)
    assert table.cells == {
        "both right": [ids[0]],
        "A right, B wrong": [ids[1], ids[4]],
        "A wrong, B right": [ids[2], ids[6]],
        "both wrong": [ids[3], ids[5]],
        review.AGREE_WRONG: [ids[3], ids[5]],
        review.EXCLUDED: [ids[7], ids[8]],
    }
    ref = mcnemar(np.array([[1, 2], [2, 2]]), exact=True)
    assert table.mcnemar.table == [[1, 2], [2, 2]] and table.mcnemar.pvalue == ref.pvalue
    assert table.mcnemar.n_excluded == 2


def test_suspected_label_issues_score_and_order(session, fixture):
    ids, run_a, run_b = fixture
    datas = outcomes.load_runs(session, [run_a, run_b])
    issues = review.suspected_label_issues(datas)
    # by hand: mean over runs of confidence in the other class (B has no probs: 1/0)
    assert [x.image_id for x in issues] == [ids[3], ids[5], ids[1], ids[4]]
    assert [x.score for x in issues] == pytest.approx([0.9, 0.85, 0.6, 0.55])
    assert [(x.n_runs, x.n_contradicting) for x in issues] == [(2, 2), (2, 2), (2, 1), (2, 1)]
    assert issues[0].human == "toxic" and issues[1].human == "non_toxic"
    everything = review.suspected_label_issues(datas, min_score=0.0)
    by_id = {x.image_id: x for x in everything}
    assert by_id[ids[7]].n_runs == 1 and by_id[ids[7]].score == 0.0  # A unknown: only B counts
    assert by_id[ids[8]].score == 0.0  # A's hard toxic label without prob counts as 1.0 toxic
    assert ids[9] not in by_id  # unlabeled
    assert review.suspected_label_issues(datas, limit=1)[0].image_id == ids[3]
    add_label(session, ids[3], "toxic", "alice")
    assert [x.image_id for x in review.without_reviewed(session, issues, "alice")] == [ids[5], ids[1], ids[4]]


def test_cards_show_labels_predictions_and_ocr(session, fixture):
    ids, run_a, run_b = fixture
    add_label(session, ids[8], "non_toxic", "alice")
    save_correction(session, ids[8], "<script>alert(1)</script>", "alice")
    (card,) = review.cards(session, [ids[8]], [run_a, run_b])
    assert card.consensus == "non_toxic"  # the human outranks the folder label
    assert card.human_labels == [("alice", "non_toxic"), ("folder", "toxic")]
    assert card.ocr_text == "<script>alert(1)</script>"
    assert [p.label for p in card.predictions] == ["toxic", None]
    assert card.predictions[0].explanation == "because 8"
    assert [c.image_id for c in review.cards(session, [ids[2], ids[0], ids[2]], [run_a])] == [ids[2], ids[0]]


def test_cli_metrics_json_and_disagreements(settings, fixture, capsys):
    ids, run_a, run_b = fixture
    assert cli_main(["metrics", str(run_a), str(run_b), "--json", "--n-boot", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    first = report["runs"][0]
    assert first["run_id"] == run_a
    for key in ("accuracy", "precision", "recall", "f1", "coverage", "roc_auc", "average_precision"):
        assert key in first
    assert set(first["ci"]) >= {"accuracy", "precision", "recall", "f1"}
    assert first["confusion_matrix"]["matrix"] == [[3, 2], [2, 1]]  # TP 0,1,8  FN 2,3  FP 5,6  TN 4
    assert (first["n_unknown"], first["n_unlabeled"]) == (1, 1)
    assert "roc_auc" not in report["runs"][1]  # B stores no probabilities
    (pair,) = report["pairs"]
    assert pair["mcnemar"]["table"] == [[1, 2], [2, 2]] and pair["kappa_n"] == 8  # both answered: 0-6 and unlabeled 9
    assert cli_main(["disagreements", str(run_a), str(run_b), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert counts["both wrong"] == 2 and counts[review.EXCLUDED] == 2
    assert cli_main(["label-issues", "--json"]) == 0
    assert [r["image_id"] for r in json.loads(capsys.readouterr().out)] == [ids[3], ids[5], ids[1], ids[4]]
    assert cli_main(["metrics", "999"]) == 2
    assert "no model run with id 999" in capsys.readouterr().err
