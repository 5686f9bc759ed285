"""The caches that keep the pages fast at a million memes (issue 25) give what the full
computation gives, after every kind of change: new labels, undos, adjudications, a rolled-back
label whose id is reused, new images, a scan that moves a file, replaced predictions."""

from __future__ import annotations

import shutil

import numpy as np
from sqlalchemy import event, select

from tests.support.synthetic_runs import Pred, add_images, add_run
from workbench.analysis.outcomes import load_runs
from workbench.predictors.base import PredictOutput, upsert_predictions
from workbench.store import adjudication, labels, overlap
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.schema import Image, Label


def _check_consensus(session) -> None:  # noqa: ANN001
    expected = labels._consensus_query(session, None)
    assert labels.consensus_labels(session) == expected
    codes = labels.consensus_codes(session)  # the array by image id, kept up to date with the map
    assert {int(i): "toxic" if codes[i] == 1 else "non_toxic" for i in np.flatnonzero(codes >= 0)} == expected


def test_consensus_cache_follows_labels_undos_adjudications_and_rollbacks(session) -> None:
    ids = add_images(session, 6)
    for i in ids:
        labels.add_label(session, i, "toxic", "folder")
    session.commit()
    _check_consensus(session)  # cached
    labels.add_label(session, ids[0], "non_toxic", "anna")  # a person outranks the folder
    session.commit()
    assert labels.consensus_labels(session)[ids[0]] == "non_toxic"
    _check_consensus(session)
    labels.undo_last(session, "anna", ids[0])  # an undo: back to the folder's label
    session.commit()
    assert labels.consensus_labels(session)[ids[0]] == "toxic"
    _check_consensus(session)
    labels.add_label(session, ids[1], "non_toxic", "boris")
    labels.add_label(session, ids[1], "toxic", "anna")
    session.commit()
    _check_consensus(session)
    adjudication.adjudicate(session, ids[1], "non_toxic", "rita")
    session.commit()
    assert labels.consensus_labels(session)[ids[1]] == "non_toxic"
    _check_consensus(session)
    # A label seen inside a transaction that is rolled back, its id then reused by another label.
    labels.add_label(session, ids[2], "non_toxic", "anna")
    assert labels.consensus_labels(session)[ids[2]] == "non_toxic"
    session.rollback()
    labels.add_label(session, ids[3], "non_toxic", "anna")
    session.commit()
    got = labels.consensus_labels(session)
    assert got[ids[2]] == "toxic" and got[ids[3]] == "non_toxic"
    _check_consensus(session)


def test_present_ids_cache_follows_new_images_and_scans(settings, session) -> None:
    write_sample_memes(settings.memes_dir, n=4, seed=1, size=(64, 64))
    scan_folder(session, settings.memes_dir)
    session.commit()
    by_name = labels.present_ids(session)
    paths = {i: p for i, p in session.execute(select(Image.id, Image.path))}
    assert [paths[i] for i in by_name] == sorted(paths.values())
    first = settings.memes_dir / paths[by_name[0]]
    moved = settings.memes_dir / "яяя" / first.name  # moved to the end of the file-name order
    moved.parent.mkdir()
    shutil.move(first, moved)
    scan_folder(session, settings.memes_dir)
    session.commit()
    assert labels.present_ids(session) == by_name[1:] + by_name[:1]
    new = add_images(session, 1, folder="aaa")  # inserted without a scan: a new max id
    session.commit()
    assert labels.present_ids(session)[0] == new[0]
    assert labels.present_ids(session, "aaa") == new


def test_people_per_image_and_progress_count_people_only(session) -> None:
    ids = add_images(session, 4)
    for image_id, who in [(ids[0], "anna"), (ids[0], "boris"), (ids[0], "folder"), (ids[1], "anna"), (ids[1], "anna"),
                          (ids[2], "import"), (ids[3], "boris")]:
        labels.add_label(session, image_id, "toxic", who)
    labels.undo_last(session, "boris", ids[3])
    session.commit()
    assert overlap.people_per_image(session) == {ids[0]: 2, ids[1]: 1}
    assert overlap.full_ids(session, 2) == {ids[0]}
    # cached, then brought up to date for the memes labelled or undone since
    labels.add_label(session, ids[3], "toxic", "boris")
    labels.add_label(session, ids[1], "toxic", "vera")
    labels.undo_last(session, "anna", ids[0])
    session.commit()
    assert overlap.people_per_image(session) == {ids[0]: 1, ids[1]: 2, ids[3]: 1}
    assert overlap.people_per_image(session) == overlap._people_per_image(session, None)
    got_ids, got_counts = overlap.people_counts(session)
    assert got_ids.tolist() == [ids[0], ids[1], ids[3]] and got_counts.tolist() == [1, 2, 1]
    labels.undo_last(session, "vera", ids[1])
    labels.undo_last(session, "boris", ids[3])
    labels.add_label(session, ids[0], "toxic", "anna")
    session.commit()
    progress = overlap.progress(session, 2)
    assert progress["annotators"] == [{"annotator": "anna", "labeled": 2}, {"annotator": "boris", "labeled": 1}]
    assert progress["labels"] == 3
    assert session.scalar(select(Label.id).where(Label.annotator == "folder")) is not None


def test_labellers_of_a_few_memes_are_read_through_the_image_index(session) -> None:
    """The team queue re-checks the next memes' labellers at every label: on SQLite, with no
    statistics, a full revoked_at index made the planner read every current label (0.17 s at a
    million memes); the partial index (migration 0007) leaves it the image_id index."""
    ids = add_images(session, 60)
    for image_id in ids:
        labels.add_label(session, image_id, "toxic", "anna")
    labels.undo_last(session, "anna", ids[0])
    session.commit()
    seen: list[tuple[str, tuple]] = []

    def keep(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT") and "FROM labels" in statement:
            seen.append((statement, parameters))

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", keep)
    try:
        labellers = overlap.human_labelers(session, ids[:50])
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    assert labellers[ids[1]] == {"anna"} and labellers[ids[0]] == set()
    assert len(seen) == 1
    plan = " ".join(str(row[-1]) for row in session.connection().exec_driver_sql(
        "EXPLAIN QUERY PLAN " + seen[0][0], seen[0][1]))
    assert "ix_labels_image_annotator" in plan and "ix_labels_revoked_at" not in plan, plan


def test_run_arrays_cache_sees_replaced_predictions(session) -> None:
    ids = add_images(session, 3)
    for i in ids:
        labels.add_label(session, i, "toxic", "anna")
    run_id = add_run(session, "clip", "r", {i: Pred("toxic", 0.9) for i in ids})
    session.commit()
    (data,) = load_runs(session, [run_id])
    assert data.pred.tolist() == [1, 1, 1]
    upsert_predictions(session, run_id, [(ids[1], PredictOutput("non_toxic", 0.1))])  # same count, new row id
    session.commit()
    (data,) = load_runs(session, [run_id])
    assert data.pred.tolist() == [1, 0, 1] and data.prob[1] == 0.1


def test_consensus_over_every_meme_follows_the_rule_meme_by_meme(session) -> None:
    """The whole-collection consensus (numpy, for a million labels) equals the rule applied to each
    meme's current labels (consensus_from): relabels, undos, ties, people over folder / import
    labels, adjudications."""
    import random

    rng = random.Random(11)
    ids = add_images(session, 120)
    who = ["anna", "boris", "vera", "folder", "import"]
    for _ in range(700):
        image_id, annotator = rng.choice(ids), rng.choice(who)
        labels.add_label(session, image_id, rng.choice(["toxic", "non_toxic"]), annotator)
        if rng.random() < 0.15:
            labels.undo_last(session, annotator, image_id)
    for image_id in rng.sample(ids, 10):
        adjudication.adjudicate(session, image_id, rng.choice(["toxic", "non_toxic"]), "rita")
    session.commit()
    current: dict[int, list] = {}
    for c in labels.current_labels(session):
        current.setdefault(c.image_id, []).append(c)
    decided = labels.adjudicated_labels(session)
    expected = {i: labels.consensus_from(current.get(i, []), decided.get(i)) for i in set(current) | set(decided)}
    expected = {i: lab for i, lab in expected.items() if lab is not None}
    assert labels._consensus_query(session, None) == expected
    some = ids[:30]
    assert labels.consensus_labels(session, some) == {i: lab for i, lab in expected.items() if i in some}
    # ties do happen in this draw, so the newest-vote rule is exercised
    assert any(len(cs) % 2 == 0 and len({c.label for c in cs}) == 2 for cs in current.values())


def test_warm_up_fills_what_the_dashboard_reads(settings, session) -> None:
    """After the start-up warm-up the Dashboard reads neither every label nor every prediction."""
    from workbench.analysis import dashboard, warmup
    from workbench.store import db

    ids = add_images(session, 30)
    for n, image_id in enumerate(ids):
        labels.add_label(session, image_id, "toxic" if n % 3 else "non_toxic", "folder" if n % 2 else "anna")
    run = add_run(session, "clip", "clip", {i: Pred("toxic" if n % 2 else "non_toxic", n / 30) for n, i in enumerate(ids)})
    session.commit()
    assert not warmup.worth_warming(settings.db_url)  # 30 memes: the app does not bother
    took = warmup.warm_caches(settings.db_url)
    assert {"consensus", "how chosen", "people per meme", "predictions", "metrics code"} <= set(took)
    seen: list[str] = []

    def traced(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.set_trace_callback(seen.append)  # every statement, raw cursors' included

    db.dispose_all()  # new connections, each traced (the caches live on in this process)
    engine = db.get_engine(settings.db_url)
    event.listen(engine, "connect", traced)
    try:
        with db.read_scope(settings.db_url) as s:
            board = dashboard.dashboard(s, [run])
    finally:
        event.remove(engine, "connect", traced)
        db.dispose_all()
    assert board.evaluations[run].n_labeled == 30
    assert any("FROM predictions" in q for q in seen)  # the trace does see the queries
    whole = [q for q in seen if "labels.image_id IN" not in q and (
        "labels.revoked_at IS NULL AND labels.label IN" in q or "min(labels.id)" in q)]
    whole += [q for q in seen if "ORDER BY predictions.image_id" in q]
    assert not whole, whole
