"""AppTest of the Dashboard and Disagreements pages on real sample memes (folder labels)
and two inserted runs whose outcomes are designed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sklearn.metrics import f1_score
from statsmodels.stats.contingency_tables import mcnemar

from tests.support.synthetic_runs import Pred, add_run
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import consensus_labels

PAGES = Path(__file__).resolve().parent.parent / "pages"
FLIP = {"toxic": "non_toxic", "non_toxic": "toxic"}
# Per image k (sorted ids): how run A / run B answer. R = right, W = wrong, U = unknown, - = not predicted.
DESIGN_A = "RRRRWWUR"
DESIGN_B = "RRWWWRR-"


def _answer(truth: str, code: str, sure: float, unsure: float) -> Pred | None:
    if code == "-":
        return None
    if code == "U":
        return Pred("unknown", explanation="could not decide", latency_ms=120.0)
    label = truth if code == "R" else FLIP[truth]
    p = sure if code == "R" else unsure
    return Pred(label, p if label == "toxic" else 1 - p, explanation=f"looks {label}", latency_ms=100.0)


@pytest.fixture
def world(settings, clear_streamlit_cache):
    """8 real sample memes (alternating toxic/non_toxic folders) and runs A (vlm), B (clip)."""
    write_sample_memes(settings.memes_dir, n=8, seed=3, size=(96, 96))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        truth = consensus_labels(session)
        ids = sorted(truth)
        preds = {}
        for name, design, sure, unsure in (("A", DESIGN_A, 0.8, 0.6), ("B", DESIGN_B, 0.9, 0.7)):
            preds[name] = {i: p for i, c in zip(ids, design) if (p := _answer(truth[i], c, sure, unsure))}
        run_a = add_run(session, "vlm", "A", preds["A"])
        run_b = add_run(session, "clip", "B", preds["B"])
    return {"ids": ids, "truth": truth, "run_a": run_a, "run_b": run_b, "preds": preds}


def _app(name: str, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGES / name), default_timeout=120)
    at.session_state["annotator"] = "tester"
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def _specs(at) -> list[dict]:
    """Each chart's Vega-Lite spec with its data rows under "rows" (Streamlit ships the
    datasets beside the spec as Arrow; inline spec datasets are included too)."""
    import pyarrow as pa

    out = []
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        rows = [r for values in spec.get("datasets", {}).values() for r in values]
        for named in chart.proto.datasets:
            rows += pa.ipc.open_stream(named.data.data).read_all().to_pylist()
        if chart.proto.data.data:
            rows += pa.ipc.open_stream(chart.proto.data.data).read_all().to_pylist()
        spec["rows"] = rows
        out.append(spec)
    return out


def _rows(spec: dict) -> list[dict]:
    return spec["rows"]


def _expected_confusion(world: dict, run: str) -> dict[tuple[str, str], int]:
    design = DESIGN_A if run == "A" else DESIGN_B
    out: dict[tuple[str, str], int] = {}
    for i, code in zip(world["ids"], design):
        human = world["truth"][i]
        answer = {"R": human, "W": FLIP[human]}.get(code, "no class")
        out[(human, answer)] = out.get((human, answer), 0) + 1
    return out


def test_dashboard_renders_two_runs_with_expected_chart_data(world):
    at = _app("6_Dashboard.py")
    assert not at.exception
    assert at.multiselect(key="dash_runs").value == [world["run_b"], world["run_a"]]
    table = at.dataframe[0].value
    assert sorted(table.index.tolist()) == sorted([world["run_a"], world["run_b"]])
    assert table.loc[world["run_a"], "unknown"] == 1 and table.loc[world["run_b"], "missing"] == 1
    assert table.loc[world["run_a"], "accuracy"].startswith(f"{5 / 7:.3f} [")  # 5 right of 7 covered

    specs = _specs(at)
    heat = next(s for s in specs if "facet" in s)
    for run, run_id in (("A", world["run_a"]), ("B", world["run_b"])):
        got = {(r["human"], r["answer"]): r["count"] for r in _rows(heat) if r["run_id"] == run_id}
        expected = _expected_confusion(world, run)
        assert {k: v for k, v in got.items() if v} == expected
    roc = next(s for s in specs if any("fpr" in r for r in _rows(s)))
    assert {r["run"] for r in _rows(roc) if "fpr" in r} == {f"#{world['run_a']} vlm · A", f"#{world['run_b']} clip · B"}
    calibration = next(s for s in specs if any("frac_toxic" in r for r in _rows(s)))
    assert sum(r["count"] for r in _rows(calibration) if "count" in r) == 7 + 7  # labeled items with a prob

    # threshold slider: the table follows it, equal to sklearn at that cut
    at.slider(key="dash_threshold").set_value(0.75).run()
    rows = {r["run"]: r for r in at.dataframe[1].value.to_dict("records")}
    a_ids = [i for i, c in zip(world["ids"], DESIGN_A) if c in "RW"]
    y = [int(world["truth"][i] == "toxic") for i in a_ids]
    said = [int(world["preds"]["A"][i].prob >= 0.75) for i in a_ids]
    assert rows[f"#{world['run_a']} vlm · A"]["f1"] == f"{f1_score(y, said, zero_division=0):.3f}"
    sweep = next(s for s in _specs(at) if any("metric" in r for r in _rows(s)))
    at_075 = {r["value"] for r in _rows(sweep)
              if r.get("metric") == "f1" and r.get("threshold") == 0.75 and r.get("run", "").endswith("· A")}
    assert at_075 == {f1_score(y, said, zero_division=0)}
    assert any(r.get("threshold") == 0.75 and "metric" not in r for r in _rows(sweep))  # the slider's rule

    # choosing a confusion cell lists those memes as thumbnails
    fp_cell = f"{world['run_a']}|non_toxic|toxic"
    n_fp = _expected_confusion(world, "A").get(("non_toxic", "toxic"), 0)
    at.selectbox(key="dash_cell").set_value(fp_cell).run()
    assert not at.exception
    assert len(at.get("image")) == n_fp > 0

    at.toggle(key="dash_agreement").set_value(True).run()
    assert any(c.value.startswith("System annotators") for c in at.caption)  # folder labels only: no people
    agreement = next(d.value for d in at.dataframe if "annotator" in d.value.columns)
    row = agreement.to_dict("records")[0]
    assert (row["annotator"], row["n_labels"], row["agreement_consensus"]) == ("folder", 8, "1.000")


def test_disagreements_2x2_matches_hand_count_and_relabel_updates_it(world, settings):
    at = _app("7_Disagreements.py")
    assert not at.exception
    assert at.selectbox(key="dis_a").value == world["run_a"]  # latest vlm
    assert at.selectbox(key="dis_b").value == world["run_b"]  # latest clip

    def counts() -> dict[str, int]:
        frame = next(d.value for d in at.dataframe if list(d.value.columns) == ["cell", "memes"])
        return dict(zip(frame["cell"], frame["memes"]))

    # by hand from DESIGN_A / DESIGN_B: both right k=0,1; A right B wrong k=2,3; A wrong B right k=5;
    # both wrong k=4; excluded k=6 (A unknown), k=7 (B missing)
    assert counts() == {"both right": 2, "A right, B wrong": 2, "A wrong, B right": 1, "both wrong": 1,
                        "A and B agree, both differ from human": 1, "A or B gave no class": 2}
    assert at.metric[0].value == f"{mcnemar([[2, 2], [1, 1]], exact=True).pvalue:.4g}"
    pair = next(s for s in _specs(at) if any("cell" in r for r in _rows(s)))
    assert {r["cell"]: r["count"] for r in _rows(pair)}["both wrong"] == 1

    # the default cell is the label-error candidates: image k=4, both runs say the opposite
    suspect = world["ids"][4]
    new_label = FLIP[world["truth"][suspect]]
    assert at.radio(key=f"dis_cell_{world['run_a']}_{world['run_b']}").value == "A and B agree, both differ from human"
    at.button(key=f"pair_{suspect}_{new_label}").click().run()
    assert not at.exception
    with session_scope(settings.db_url) as session:
        assert consensus_labels(session)[suspect] == new_label
    assert counts()["both right"] == 3 and counts()["both wrong"] == 0


def test_suspected_label_issue_queue_reviews_one_by_one(world, settings):
    at = _app("7_Disagreements.py", dis_view="Suspected label issues")
    caption = next(c.value for c in at.caption if c.value.startswith("Suspect "))
    # scores by hand: k=4 (0.6 + 0.7) / 2 = 0.65; k=2,3 (0.2 + 0.7) / 2 = 0.45 and k=5 (0.6 + 0.1) / 2 stay below 0.5
    assert caption.startswith("Suspect 1 of 1 · score 0.650")
    first = world["ids"][4]  # both runs contradict it: the top suspect
    at.button(key=f"dis_keep_{first}").click().run()  # keep the human label: leaves this reviewer's queue
    assert not at.exception
    with session_scope(settings.db_url) as session:
        assert consensus_labels(session)[first] == world["truth"][first]
    assert any("No suspected label issues" in i.value for i in at.info)
    at.slider(key="dis_min_score").set_value(0.4).run()
    caption = next(c.value for c in at.caption if c.value.startswith("Suspect "))
    assert caption.startswith("Suspect 1 of 2")  # k=2, k=3 (0.45); k=5 (0.35) stays out; k=4 is reviewed by this annotator


@pytest.fixture
def scattered(settings, clear_streamlit_cache):
    """8 sample memes; the newest VLM and CLIP runs judged no labeled meme in common, an older head
    run judged them all (all right), and a TF-IDF run has out-of-fold probabilities for all of them."""
    from sqlalchemy import update

    from workbench.store.schema import Prediction

    write_sample_memes(settings.memes_dir, n=8, seed=3, size=(96, 96))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        truth = consensus_labels(session)
        ids = sorted(truth)

        def right(subset):
            return {i: Pred(truth[i], 0.9 if truth[i] == "toxic" else 0.1) for i in subset}

        tfidf = add_run(session, "text-tfidf", "tfidf", right(ids))
        session.execute(update(Prediction).where(Prediction.run_id == tfidf).values(extra={"out_of_fold": True}))
        head = add_run(session, "head", "head", right(ids))
        vlm = add_run(session, "vlm", "vlm", right(ids[:1]))
        clip = add_run(session, "clip", "clip", right(ids[1:]))
    return {"ids": ids, "tfidf": tfidf, "head": head, "vlm": vlm, "clip": clip}


def test_disagreements_opens_on_a_pair_and_cell_that_show_memes(scattered):
    at = _app("7_Disagreements.py")
    assert not at.exception
    # latest VLM vs latest CLIP share no labeled meme: the newest pair that shares the most instead
    assert (at.selectbox(key="dis_a").value, at.selectbox(key="dis_b").value) == (scattered["head"], scattered["tfidf"])
    assert at.metric[0].label == "McNemar exact p"
    # no label-error candidates (both runs always right): the cell with the most memes, with its cards
    cell = at.radio(key=f"dis_cell_{scattered['head']}_{scattered['tfidf']}")
    assert cell.value == "both right"
    assert any(c.value == "8 memes · page 1 of 2" for c in at.caption)
    assert len(at.get("image")) == 5  # one page of cards
    # the queue tab does not run while it is closed
    assert not any(c.value.startswith("Ranking:") for c in at.caption)

    # a pair without a labeled meme in common: a clear empty state, not "McNemar p = 1, n = 0"
    at.selectbox(key="dis_a").set_value(scattered["vlm"])
    at.selectbox(key="dis_b").set_value(scattered["clip"]).run()
    assert not at.exception
    assert not at.metric
    assert any("no labeled meme that both gave a class" in i.value for i in at.info)
    assert at.radio(key=f"dis_cell_{scattered['vlm']}_{scattered['clip']}").value == "A or B gave no class"


def test_the_label_issue_queue_starts_with_the_out_of_fold_runs(scattered):
    at = _app("7_Disagreements.py", dis_view="Suspected label issues")
    assert not at.exception
    assert at.multiselect(key="dis_queue_runs").value == [scattered["tfidf"], scattered["head"]]
    assert any(c.value.startswith("Ranking: cleanlab") for c in at.caption)
    at.multiselect(key="dis_queue_runs").set_value([scattered["head"]]).run()
    ranking = next(c.value for c in at.caption if c.value.startswith("Ranking:"))
    assert ranking.startswith("Ranking: mean confidence") and f"Run #{scattered['tfidf']} has them" in ranking
    assert "train the TF-IDF" not in ranking  # it exists: never ask for it


def test_dashboard_opens_with_the_newest_run_of_each_kind_and_tidy_tables(world, settings):
    import re

    import pandas as pd

    with session_scope(settings.db_url) as session:  # three newer runs: the CLIP run is no longer among the 3 newest
        ids = world["ids"]
        newer = [add_run(session, kind, kind, {i: Pred("unknown", latency_ms=None) for i in ids[:2]})
                 for kind in ("nudenet", "text-toxicity", "head")]
        empty = add_run(session, "head", "failed to start", {})
    at = _app("6_Dashboard.py")
    assert not at.exception
    assert at.multiselect(key="dash_runs").value == [*reversed(newer), world["run_b"], world["run_a"]]
    assert empty not in at.multiselect(key="dash_runs").value
    at.toggle(key="dash_agreement").set_value(True).run()
    assert not at.exception
    decimals = re.compile(r"^-?\d+\.(\d+)$")
    for frame in (d.value for d in at.dataframe):
        for column in frame.columns:
            for value in frame[column]:
                assert not (value is None or (isinstance(value, float) and pd.isna(value))), (column, frame)
                assert not isinstance(value, float), (column, value)  # numbers are formatted, alike
                found = decimals.match(str(value))
                if found and column not in ("McNemar p", "mean_ms", "p95_ms"):
                    assert len(found.group(1)) == 3, (column, value)
