"""The labeling queue's orders on a real SQLite file: unsure / disagree / label-issue /
likely-toxic against hand-computed scores, the learner run as their default, the exploration
share, the one-person orders unchanged, the team queue (k labels per meme), `python -m
workbench queue --json`, and the Label page re-ranking without losing the meme on screen."""

from __future__ import annotations

import json

import numpy as np
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
    shuffled = queue_orders.build_queue(session, "alice", "random", seed=3).ids
    assert sorted(shuffled) == sorted(six) and shuffled != six  # this seed does move them
    assert queue_orders.build_queue(session, "alice", "random", seed=3).ids == shuffled  # repeatable
    assert labels.labeling_queue(session, "alice", "random", seed=3) == shuffled
    assert queue_orders.build_queue(session, "alice", "random", seed=4).ids != shuffled
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
    assert set(rows[0]) == {"image_id", "path", "reason", "score", "random_pick"} and rows[0]["path"] == "a/img_000001.png"
    assert rows[0]["random_pick"] is False
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


def _learner_run(session, preds: dict[int, Pred], labels_used: int = 10) -> int:
    """A finished learner refresh as the runner stores it: a run of kind learner with its record."""
    return add_run(session, "learner", "learner:text-tfidf", preds, model_id="tfidf",
                   params={"refresh": {"labels": labels_used, "learner": "text-tfidf", "oof_f1": 0.5}})


def test_unsure_and_label_issue_default_to_the_newest_learner_run(settings, session, six, capsys) -> None:
    a, b, c, d, e, f = six
    clip = add_run(session, "clip", "clip", {i: Pred("toxic", 0.5) for i in six})
    old = _learner_run(session, {a: Pred("toxic", 0.5), b: Pred("toxic", 0.9)})
    newest = _learner_run(session, {i: Pred("toxic" if p >= 0.5 else "non_toxic", p)
                                    for i, p in zip(six, (0.95, 0.9, 0.55, 0.2, 0.6, 0.02))})
    bare = add_run(session, "learner", "learner:bare", {a: Pred("toxic", 0.5)})  # no refresh record: not a refresh
    add_labels(session, {a: "non_toxic", b: "toxic"}, "folder")
    session.commit()
    assert queue_orders.latest_learner_run(session) == newest
    for order in ("unsure", "label-issue", "likely-toxic"):
        assert queue_orders.default_runs(session, order) == [newest]
    assert queue_orders.default_runs(session, "unsure", learner=False) == [clip, bare]  # as before: newest of each kind
    assert queue_orders.default_runs(session, "disagree") == [bare, newest]  # as before: no VLM, the two newest runs
    q = queue_orders.build_queue(session, "alice", "unsure")
    assert q.runs == [newest] and q.ids[:3] == [c, e, d]  # 0.55, 0.6, 0.2 are nearest the threshold
    assert queue_orders.build_queue(session, "alice", "unsure", run_ids=[clip]).runs == [clip]  # a pick still wins
    assert queue_orders.build_queue(session, "alice", "label-issue").ids[0] == a  # labeled non_toxic, learner says 0.95
    assert old not in q.runs
    session.commit()  # the queue drops expired claims: a write; the CLI opens its own session
    # the CLI, also with --folder
    assert main(["queue", "--annotator", "alice", "--order", "unsure", "--folder", "b", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image_id"] for r in rows] == [e, d, f] and f"#{newest} learner" in rows[0]["reason"]


def test_likely_toxic_puts_the_most_probable_toxic_first_and_unscored_last(settings, session, six, capsys) -> None:
    a, b, c, d, e, f = six
    with pytest.raises(ValueError, match="no learner run yet"):
        queue_orders.build_queue(session, "alice", "likely-toxic")
    session.rollback()
    assert main(["queue", "--annotator", "alice", "--order", "likely-toxic"]) == 2
    assert "no learner run yet" in capsys.readouterr().err
    # d has no embedding: the head learner stores an error for it; f was never scored
    run = _learner_run(session, {a: Pred("non_toxic", 0.1), b: Pred("toxic", 0.8), c: Pred("toxic", 0.97),
                                 d: Pred("unknown", error="no cached embedding"), e: Pred("non_toxic", 0.4)})
    session.commit()
    q = queue_orders.build_queue(session, "alice", "likely-toxic")
    assert q.ids == [c, b, e, a, d, f] and q.unscored == 2 and not q.random_picks
    assert q.scores == pytest.approx({a: 0.1, b: 0.8, c: 0.97, e: 0.4})
    assert q.reason(c) == f"likely toxic: #{run} learner: toxic (0.97)"
    assert "not scored" in q.reason(d)
    session.commit()
    assert main(["queue", "--annotator", "alice", "--order", "likely-toxic", "--top", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["image_id"], r["score"]) for r in rows] == [(c, pytest.approx(0.97)), (b, pytest.approx(0.8))]
    assert main(["queue", "--annotator", "alice", "--order", "likely-toxic"]) == 0
    out, err = capsys.readouterr()
    assert [int(line.split()[0]) for line in out.splitlines()] == [c, b, e, a, d, f]
    assert "2 memes have no score" in err and "follow the scored ones" in err


def test_the_exploration_share_is_random_marked_stable_and_admin_only(settings, session, monkeypatch, capsys) -> None:
    from sqlalchemy import select

    from workbench.errors import PermissionDenied
    from workbench.store import users
    from workbench.store.schema import AuditEntry

    ids = add_images(session, 50)
    probs = dict(zip(ids, np.linspace(0.01, 0.99, 50).tolist()))
    _learner_run(session, {i: Pred("toxic", p) for i, p in probs.items()})
    session.commit()
    assert queue_orders.exploration_share(session) == 0.1  # the default
    ranked = sorted(ids, key=lambda i: -probs[i])
    q = queue_orders.build_queue(session, "alice", "likely-toxic")
    assert len(q.random_picks) == 5 and sorted(q.ids) == sorted(ids)  # floor(0.1 * 50); no meme lost or doubled
    assert [i for i in q.ids if i not in q.random_picks] == [i for i in ranked if i not in q.random_picks]
    assert all(q.reason(i).startswith("random pick") for i in q.random_picks)
    assert not any(q.reason(i).startswith("random pick") for i in set(ids) - q.random_picks)
    # seeded per queue: the same queue while someone labels (and in another process: a str seed), another for bob
    assert queue_orders.build_queue(session, "alice", "likely-toxic").ids == q.ids
    assert queue_orders.build_queue(session, "bob", "likely-toxic").random_picks != q.random_picks
    session.commit()
    assert main(["exploration", "0.3"]) == 0 and "exploration share: 0.3" in capsys.readouterr().out
    q = queue_orders.build_queue(session, "alice", "unsure")
    assert len(q.random_picks) == 15
    session.commit()
    assert main(["queue", "--annotator", "alice", "--order", "unsure", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["image_id"] for r in rows if r["random_pick"]} == q.random_picks
    assert main(["queue", "--annotator", "alice", "--order", "unsure", "--top", "50"]) == 0
    out, err = capsys.readouterr()
    assert sum("random pick" in line for line in out.splitlines()) == 15 and "15 of 50" in err
    queue_orders.set_exploration_share(session, 0.0)
    assert queue_orders.build_queue(session, "alice", "likely-toxic").ids == ranked  # 0: by score only
    session.commit()
    assert main(["exploration", "1.5"]) == 2 and "between 0 and 1" in capsys.readouterr().err

    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    users.add_user(session, "admin@team.org", "admin")
    users.add_user(session, "rev@team.org", "reviewer")
    session.commit()
    with pytest.raises(PermissionDenied):
        queue_orders.set_exploration_share(session, 0.2, actor="rev@team.org")
    session.rollback()
    queue_orders.set_exploration_share(session, 0.2, actor="admin@team.org")
    session.commit()
    assert queue_orders.exploration_share(session) == 0.2
    actions = [(e.actor, e.action, e.detail) for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert ("admin@team.org", "queue exploration share", {"share": 0.2}) in actions
    assert any(a == "queue exploration share" and d == {"share": 0.3} for _, a, d in actions)  # the CLI's


def test_explore_keeps_the_rank_order_of_the_rest() -> None:
    ranked = list(range(100, 120))
    mixed, picks = queue_orders.explore(ranked, 0.25, "seed")
    assert len(picks) == 5 and sorted(mixed) == ranked
    assert [i for i in mixed if i not in picks] == [i for i in ranked if i not in picks]
    assert queue_orders.explore(ranked, 0.25, "seed") == (mixed, picks)
    assert queue_orders.explore(ranked, 0.0, "seed") == (ranked, [])
    assert queue_orders.explore(ranked[:9], 0.1, "seed") == (ranked[:9], [])  # floor(0.9): none


def _label_page(settings, session, n: int):
    from pathlib import Path

    from sqlalchemy import select
    from streamlit.testing.v1 import AppTest

    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Image

    write_sample_memes(settings.memes_dir, n=n, size=(64, 64), into_label_folders=False)
    scan_folder(session, settings.memes_dir)
    ids = list(session.scalars(select(Image.id).order_by(Image.path)).all())
    session.commit()
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"), default_timeout=120)
    at.switch_page("pages/1_Label.py")
    at.session_state["annotator"] = "alice"
    return at, ids


def test_label_page_likely_toxic_marks_random_picks_and_counts_unscored(settings, session,
                                                                        clear_streamlit_cache) -> None:
    at, (a, b, c, d) = _label_page(settings, session, 4)
    at.run()
    at.sidebar.selectbox(key="lbl_order").select("likely-toxic").run()
    assert not at.exception and any("no learner run yet" in w.value for w in at.sidebar.warning)
    run = _learner_run(session, {a: Pred("toxic", 0.7), b: Pred("non_toxic", 0.2), c: Pred("toxic", 0.9),
                                 d: Pred("unknown", error="no cached embedding")})
    session.commit()
    at.sidebar.button(key="lbl_refresh").click().run()
    assert not at.exception and at.sidebar.checkbox(key="lbl_follow_learner").value is True
    assert int(at.query_params["image"]) == c
    assert any("likely toxic:" in cap.value and "learner: toxic (0.90)" in cap.value for cap in at.caption)
    assert any("No score from the chosen runs" in cap.value and "1 meme in this queue" in cap.value
               for cap in at.caption)
    at.button(key="lbl_toxic").click().run()
    assert int(at.query_params["image"]) == a
    # unticked: the runs multiselect is back (its default: the newest run of each kind)
    at.sidebar.checkbox(key="lbl_follow_learner").uncheck().run()
    assert not at.exception and at.sidebar.multiselect(key="lbl_runs_likely-toxic").value == [run]

    queue_orders.set_exploration_share(session, 1.0)  # every meme at random: each is marked
    session.commit()
    at.sidebar.checkbox(key="lbl_follow_learner").check().run()
    at.sidebar.button(key="lbl_refresh").click().run()
    assert not at.exception and any("random pick" in cap.value for cap in at.caption)


def test_label_page_re_ranks_on_a_new_learner_run_and_keeps_the_meme_on_screen(settings, session,
                                                                              clear_streamlit_cache) -> None:
    at, ids = _label_page(settings, session, 8)
    first = dict(zip(ids, (0.99, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65)))
    _learner_run(session, {i: Pred("toxic", p) for i, p in first.items()})
    session.commit()
    at.run()
    at.sidebar.selectbox(key="lbl_order").select("likely-toxic").run()
    for want in ids[:3]:
        assert int(at.query_params["image"]) == want
        at.button(key="lbl_toxic").click().run()
    on_screen = int(at.query_params["image"])
    assert on_screen == ids[3]
    # a refresh finishes: the new run ranks the last meme first
    newest = _learner_run(session, {i: Pred("toxic", 1.0 - first[i]) for i in ids}, labels_used=13)
    session.commit()
    at.run()
    assert not at.exception and int(at.query_params["image"]) == on_screen  # the meme on screen stays
    assert any(f"Learner run #{newest}" in cap.value for cap in at.sidebar.caption)
    at.button(key="lbl_neutral").click().run()
    assert int(at.query_params["image"]) == ids[-1]  # the rest re-ranked by the new run (the old next: ids[4])
    at.button(key="lbl_neutral").click().run()
    assert int(at.query_params["image"]) == ids[-2]


def test_a_real_refresh_becomes_the_default_and_likely_toxic_finds_toxic_memes(settings, capsys) -> None:
    """A TF-IDF refresh over generated memes whose OCR text carries the class (no OCR engine:
    stored corrections), then `queue` without --run: the orders rank by that learner run."""
    from sqlalchemy import select

    from workbench.analysis import learner
    from workbench.store.db import session_scope
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder
    from workbench.store.ocr_texts import save_correction
    from workbench.store.schema import Image

    samples = write_sample_memes(settings.memes_dir, n=40, size=(64, 64), into_label_folders=False)
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        by_name = {im.original_name: im.id for im in session.scalars(select(Image))}
        truth = {by_name[s.path.name]: s.label for s in samples}
        for s in samples:
            save_correction(session, by_name[s.path.name], s.caption, "tester")
        queue_orders.set_exploration_share(session, 0.0)
        for i in sorted(truth)[:24]:
            labels.add_label(session, i, truth[i], "anna")
    result = learner.refresh(settings)
    unlabeled = sorted(truth)[24:]
    toxic_left = sum(truth[i] == "toxic" for i in unlabeled)
    assert 0 < toxic_left < len(unlabeled)

    assert main(["queue", "--annotator", "anna", "--order", "likely-toxic", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image_id"] for r in rows] and {r["image_id"] for r in rows} == set(unlabeled)
    assert all(f"#{result.run_id} learner" in r["reason"] for r in rows)
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    found = sum(truth[r["image_id"]] == "toxic" for r in rows[:toxic_left])
    assert found >= 0.75 * toxic_left, (found, toxic_left)  # the caption carries the class
    assert main(["queue", "--annotator", "anna", "--order", "unsure", "--json"]) == 0
    assert all(f"#{result.run_id} learner" in r["reason"] for r in json.loads(capsys.readouterr().out))
