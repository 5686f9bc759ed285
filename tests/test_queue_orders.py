"""The labeling queue's orders on a real SQLite file: unsure / disagree / label-issue against
hand-computed scores, the one-person orders unchanged, the team queue (k labels per meme)
and `python -m workbench queue --json`."""

from __future__ import annotations

import json
import random

import pytest

from tests.support.synthetic_runs import Pred, add_images, add_labels, add_run
from workbench.analysis import queue_orders
from workbench.analysis.outcomes import load_runs
from workbench.analysis.review import suspected_label_issues
from workbench.cli import main
from workbench.store import labels, overlap


@pytest.fixture
def six(session) -> list[int]:
    """Six images without files: two folders of three."""
    ids = add_images(session, 3, folder="a") + add_images(session, 3, folder="b")
    session.commit()
    return ids


def test_unsure_orders_by_distance_to_each_runs_threshold(session, six) -> None:
    a, b, c, d, e, f = six
    clip = add_run(session, "clip", "clip", {a: Pred("toxic", 0.9), b: Pred("toxic", 0.52), c: Pred("non_toxic", 0.1),
                                             d: Pred("non_toxic", 0.45), e: Pred("toxic", 0.7)})
    vlm = add_run(session, "vlm", "vlm", {a: Pred("toxic", 0.8), b: Pred("non_toxic", 0.3), c: Pred("unknown"),
                                          d: Pred("non_toxic"), e: Pred("toxic", 0.95, error="boom")},
                  params={"threshold": 0.4})
    session.commit()
    got = queue_orders.scored_ordering(session, "unsure", [clip, vlm])
    u = queue_orders.uncertainty
    want = {
        a: (u(0.9, 0.5) + u(0.8, 0.4)) / 2,
        b: (u(0.52, 0.5) + u(0.3, 0.4)) / 2,
        c: (u(0.1, 0.5) + 1.0) / 2,  # the VLM gave no class: as unsure as it gets
        d: (u(0.45, 0.5) + 0.0) / 2,  # a class without a probability: sure
        e: u(0.7, 0.5),  # the failed VLM answer does not count
    }
    assert got.scores == pytest.approx(want)
    assert got.ids == sorted(want, key=lambda i: -want[i])
    assert got.ids[0] == b and f not in got.scores
    assert f"#{clip} clip: toxic (0.52)" in got.reason(b) and "threshold" in got.reason(b)
    assert float(u(0.4, 0.4)) == 1.0 and float(u(0.0, 0.4)) == 0.0 and float(u(1.0, 0.5)) == 0.0


def test_disagree_puts_conflicts_first_furthest_apart_first(session, six) -> None:
    a, b, c, d, e, f = six
    clip = add_run(session, "clip", "clip", {a: Pred("toxic", 0.6), b: Pred("toxic", 0.9), c: Pred("non_toxic", 0.2),
                                             d: Pred("toxic"), e: Pred("toxic", 0.8)})
    vlm = add_run(session, "vlm", "vlm", {a: Pred("non_toxic", 0.4), b: Pred("non_toxic", 0.1),
                                          c: Pred("non_toxic", 0.45), d: Pred("non_toxic"), f: Pred("toxic", 0.9)})
    add_run(session, "head", "newer head", {a: Pred("toxic", 0.5)})  # newest run, but not VLM/CLIP
    session.commit()
    assert queue_orders.default_runs(session, "disagree") == [vlm, clip]
    got = queue_orders.scored_ordering(session, "disagree", None)
    # conflicts: d (two classes, no probabilities: as far apart as it gets), b (gap .8), a (gap .2); then c (agree)
    assert got.ids == [d, b, a, c]
    assert got.scores[b] == pytest.approx(1.8) and got.scores[d] == 2.0 and got.scores[c] == pytest.approx(0.25)
    assert got.reason(b).startswith("models disagree") and got.reason(c).startswith("models agree")
    with pytest.raises(ValueError, match="exactly two runs"):
        queue_orders.scored_ordering(session, "disagree", [clip])


def test_label_issue_follows_the_review_score(session, six) -> None:
    a, b, c, d, e, f = six
    add_labels(session, {a: "toxic", b: "toxic", c: "non_toxic", d: "non_toxic"}, "folder")
    clip = add_run(session, "clip", "clip", {a: Pred("non_toxic", 0.1), b: Pred("toxic", 0.9), c: Pred("toxic", 0.6),
                                             d: Pred("non_toxic", 0.2), e: Pred("toxic", 0.9)})
    session.commit()
    got = queue_orders.scored_ordering(session, "label-issue", [clip])
    issues = suspected_label_issues(load_runs(session, [clip]), min_score=0.0)
    assert got.ids == [x.image_id for x in issues] == [a, c, d, b]
    assert "1 of 1 runs say otherwise" in got.reason(a) and e not in got.scores  # e has no label to doubt


def test_one_person_orders_are_unchanged(session, six) -> None:
    """Sign-in off and k = 1: unlabeled / random / filename walk every meme, as before."""
    a, b, c, d, e, f = six
    labels.add_label(session, b, "toxic", "alice")
    labels.add_label(session, c, "toxic", "bob")
    session.commit()
    q = queue_orders.build_queue(session, "alice", "unlabeled")
    assert q.ids == [a, c, d, e, f, b]
    assert q.reason(b) == "labeled by you (after the rest)" and q.reason(a) == "not labeled by you yet"
    assert queue_orders.build_queue(session, "alice", "filename").ids == six
    shuffled = six.copy()
    random.Random(3).shuffle(shuffled)
    assert queue_orders.build_queue(session, "alice", "random", seed=3).ids == shuffled
    assert queue_orders.build_queue(session, "alice", "unlabeled", folder="b").ids == [d, e, f]
    assert labels.labeling_queue(session, "alice", "unlabeled first") == [a, c, d, e, f, b]


def test_scored_orders_keep_only_memes_that_need_the_annotator(session, six) -> None:
    a, b, c, d, e, f = six
    clip = add_run(session, "clip", "clip", {i: Pred("toxic", p) for i, p in zip(six, (0.5, 0.55, 0.6, 0.7, 0.8, 0.9))})
    labels.add_label(session, a, "toxic", "bob")  # k = 1: a has its label
    labels.add_label(session, b, "toxic", "folder")  # a folder label is not a person's
    session.commit()
    q = queue_orders.build_queue(session, "alice", "unsure", run_ids=[clip])
    assert q.ids == [b, c, d, e, f]
    q = queue_orders.build_queue(session, "alice", "unsure", run_ids=[clip], folder="b")
    assert q.ids == [d, e, f]


def test_team_queue_spreads_k_labels_over_different_people(session, six) -> None:
    a, b, c, d, e, f = six
    overlap.set_labels_per_meme(session, 2)
    labels.add_label(session, c, "toxic", "alice")
    labels.add_label(session, d, "toxic", "alice")
    labels.add_label(session, d, "non_toxic", "bob")  # d has its two labels
    session.commit()
    k = overlap.labels_per_meme(session)
    assert k == 2 and overlap.team_queue(k)
    # bob: c first (alice started it, it reaches k sooner), then the untouched memes; never d (done) or his own
    assert queue_orders.build_queue(session, "bob", "unlabeled").ids == [c, a, b, e, f]
    assert queue_orders.build_queue(session, "alice", "unlabeled").ids == [a, b, e, f]
    # carol opens a: alice and bob hold it on screen, so with k = 2 carol is given b first
    overlap.claim(session, a, "alice")
    overlap.claim(session, a, "bob")
    session.commit()
    assert queue_orders.build_queue(session, "carol", "unlabeled").ids == [c, b, e, f]
    assert overlap.still_needed(session, [a, b, c, d], "carol", k) == [b, c]
    overlap.release(session, a, "bob")
    session.commit()
    assert overlap.still_needed(session, [a], "carol", k) == [a]
    progress = overlap.progress(session, k, complete=True)
    assert progress["complete"] == 1 and progress["labels"] == 3 and progress["annotators"] == [{"annotator": "alice", "labeled": 2},
                                                                     {"annotator": "bob", "labeled": 1}]


def test_queue_cli_prints_what_the_page_shows(settings, session, six, capsys) -> None:
    a, b, c, d, e, f = six
    clip = add_run(session, "clip", "clip", {a: Pred("toxic", 0.9), b: Pred("toxic", 0.51), c: Pred("non_toxic", 0.3)})
    session.commit()
    code = main(["queue", "--annotator", "alice", "--order", "unsure", "--run", str(clip), "--top", "3", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["image_id"] for r in rows] == [b, c, a]
    assert set(rows[0]) == {"image_id", "path", "reason", "score"} and rows[0]["path"] == "a/img_000001.png"
    assert rows[0]["score"] == pytest.approx(float(queue_orders.uncertainty(0.51)))
    code = main(["queue", "--annotator", "alice", "--order", "filename", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["image_id"] for r in rows] == six and rows[0]["score"] is None
    code = main(["queue", "--annotator", "alice", "--order", "unsure", "--run", "999"])
    assert code == 2 and "no model run with id 999" in capsys.readouterr().err


def test_label_page_walks_the_unsure_order_and_says_why(settings, session, clear_streamlit_cache) -> None:
    from pathlib import Path

    from sqlalchemy import select
    from streamlit.testing.v1 import AppTest

    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Image

    write_sample_memes(settings.memes_dir, n=3, size=(64, 64), into_label_folders=False)
    scan_folder(session, settings.memes_dir)
    a, b, c = session.scalars(select(Image.id).order_by(Image.path)).all()
    clip = add_run(session, "clip", "clip", {a: Pred("toxic", 0.95), b: Pred("toxic", 0.55), c: Pred("non_toxic", 0.3)})
    session.commit()
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"), default_timeout=120)
    at.switch_page("pages/1_Label.py")
    at.session_state["annotator"] = "alice"
    at.run()
    at.sidebar.selectbox(key="lbl_order").select("unsure").run()
    assert not at.exception
    assert at.sidebar.multiselect(key="lbl_runs_unsure").value == [clip]
    assert int(at.query_params["image"]) == b
    assert any("models unsure" in cap.value and "0.55" in cap.value for cap in at.caption)  # no escaping artefact
    at.button(key="lbl_neutral").click().run()
    assert int(at.query_params["image"]) == c  # then the next least sure
