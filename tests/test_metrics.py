"""Metrics equal scikit-learn / statsmodels on hand-built cases with missing labels and
missing predictions; bootstrap CIs are honest and reproducible; outcome queries on a
real SQLite DB match hand-computed outcomes."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning
from statsmodels.stats.contingency_tables import mcnemar

from tests.support.synthetic_runs import Pred, add_images, add_labels, add_run
from workbench.analysis import metrics, outcomes
from workbench.store.labels import add_label

# Ten items: human labels with gaps (None), predictions with unknown/failed/missing (None).
HUMAN = ["toxic", "toxic", "toxic", "non_toxic", "non_toxic", "non_toxic", None, "toxic", "non_toxic", None]
RUN = ["toxic", "non_toxic", "unknown", "toxic", "non_toxic", None, "toxic", "toxic", "failed", None]
PROB = [0.9, 0.4, None, 0.7, 0.2, None, 0.8, 0.6, None, None]


def _covered(y_true, y_pred, prob=None):
    keep = [i for i, (t, p) in enumerate(zip(y_true, y_pred)) if t in metrics.CLASSES and p in metrics.CLASSES]
    out = [[y_true[i] for i in keep], [y_pred[i] for i in keep]]
    return out if prob is None else out + [[prob[i] for i in keep]]


def test_hand_built_case_counts_and_sklearn_equality():
    ev = metrics.evaluate(HUMAN, RUN, PROB)
    # by hand: TP items 0,7; FN item 1; FP item 3; TN item 4; unknown 2; failed 8; missing 5; unlabeled 6,9
    assert (ev.tp, ev.fn, ev.fp, ev.tn) == (2, 1, 1, 1)
    assert (ev.n_unknown, ev.n_failed, ev.n_missing, ev.n_unlabeled) == (1, 1, 1, 2)
    assert ev.n_labeled == 8 and ev.n_covered == 5 and ev.coverage == 5 / 8
    assert ev.accuracy == 3 / 5 and ev.accuracy_strict == 3 / 8
    t, p = _covered(HUMAN, RUN)
    assert ev.accuracy == skm.accuracy_score(t, p)
    assert ev.precision == skm.precision_score(t, p, pos_label="toxic")
    assert ev.recall == skm.recall_score(t, p, pos_label="toxic")
    assert ev.f1 == skm.f1_score(t, p, pos_label="toxic")
    assert ev.confusion == skm.confusion_matrix(t, p, labels=["toxic", "non_toxic"]).tolist()
    sup = skm.precision_recall_fscore_support(t, p, labels=["toxic", "non_toxic"])[3]
    assert [ev.support["toxic"], ev.support["non_toxic"]] == sup.tolist()
    # AUC/AP over labeled items that have a probability: items 0,1,3,4,7
    y = [1, 1, 0, 0, 1]
    s = [0.9, 0.4, 0.7, 0.2, 0.6]
    assert ev.n_prob == 5
    assert ev.roc_auc == skm.roc_auc_score(y, s)
    assert ev.average_precision == skm.average_precision_score(y, s)
    d = ev.to_dict()
    json.dumps(d)
    assert d["confusion_matrix"]["matrix"] == [[2, 1], [1, 1]] and d["n_missing"] == 1


@pytest.mark.parametrize("seed", range(8))
def test_random_cases_equal_sklearn(seed):
    rng = random.Random(seed)
    n = rng.randint(5, 300)
    y_true = [rng.choice(["toxic", "non_toxic", None]) for _ in range(n)]
    y_pred = [rng.choice(["toxic", "non_toxic", "toxic", "unknown", "failed", None]) for _ in range(n)]
    prob = [None if rng.random() < 0.2 else round(rng.random(), 2) for _ in range(n)]  # rounding makes ties
    ev = metrics.evaluate(y_true, y_pred, prob)
    t, p = _covered(y_true, y_pred)
    if not t:
        assert ev.accuracy is None
        return
    assert ev.accuracy == skm.accuracy_score(t, p)
    assert ev.precision == skm.precision_score(t, p, pos_label="toxic", zero_division=0)
    assert ev.recall == skm.recall_score(t, p, pos_label="toxic", zero_division=0)
    assert ev.f1 == skm.f1_score(t, p, pos_label="toxic", zero_division=0)
    assert ev.confusion == skm.confusion_matrix(t, p, labels=["toxic", "non_toxic"]).tolist()
    keep = [i for i in range(n) if y_true[i] and prob[i] is not None]
    yy, ss = [int(y_true[i] == "toxic") for i in keep], [prob[i] for i in keep]
    if 0 < sum(yy) < len(yy):
        assert ev.roc_auc == skm.roc_auc_score(yy, ss)
        assert ev.average_precision == skm.average_precision_score(yy, ss)


def test_undefined_metrics_follow_sklearn_zero_division_and_none_for_nothing():
    ev = metrics.evaluate(["toxic", "non_toxic"], ["non_toxic", "non_toxic"])  # no predicted positives
    assert ev.precision == skm.precision_score(["toxic", "non_toxic"], ["non_toxic", "non_toxic"],
                                               pos_label="toxic", zero_division=0) == 0.0
    empty = metrics.evaluate(["toxic", None], ["unknown", "toxic"])
    assert empty.n_covered == 0 and empty.accuracy is None and empty.f1 is None and empty.coverage == 0.0
    assert empty.ci["accuracy"] is None and empty.roc_auc is None
    with pytest.raises(ValueError):
        metrics.evaluate(["toxic"], ["maybe"])


def test_bootstrap_ci_contains_point_is_seeded_and_matches_item_resampling():
    rng = random.Random(3)
    y_true = [rng.choice(["toxic", "non_toxic"]) for _ in range(51)]
    y_pred = [t if rng.random() < 0.75 else rng.choice(["toxic", "non_toxic", "unknown"]) for t in y_true]
    a = metrics.evaluate(y_true, y_pred, n_boot=2000, seed=7)
    b = metrics.evaluate(y_true, y_pred, n_boot=2000, seed=7)
    c = metrics.evaluate(y_true, y_pred, n_boot=2000, seed=8)
    assert a.ci == b.ci and a.ci != c.ci
    for name in ("accuracy", "precision", "recall", "f1", "accuracy_strict", "coverage"):
        lo, hi = a.ci[name]
        assert lo <= getattr(a, name) <= hi and lo < hi
    # The multinomial shortcut is the item bootstrap: compare with scipy resampling items.
    from scipy.stats import bootstrap

    codes = np.array([metrics.TRUE_CODES[t] * 10 + metrics.PRED_CODES[p] for t, p in zip(y_true, y_pred)])

    def accuracy(sample, axis=-1):
        covered = (sample % 10) <= 1
        right = covered & ((sample // 10) == (sample % 10))
        return right.sum(axis=axis) / covered.sum(axis=axis)

    ref = bootstrap((codes,), accuracy, n_resamples=4000, method="percentile", random_state=1, vectorized=True)
    assert abs(ref.confidence_interval.low - a.ci["accuracy"][0]) < 0.03
    assert abs(ref.confidence_interval.high - a.ci["accuracy"][1]) < 0.03


def test_auc_ci_brackets_sklearn_auc_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1).round(1)  # rounding makes many ties
    ci1 = metrics.bootstrap_auc_ci(y, p, seed=4)
    assert ci1 == metrics.bootstrap_auc_ci(y, p, seed=4) and ci1 != metrics.bootstrap_auc_ci(y, p, seed=5)
    assert ci1[0] <= skm.roc_auc_score(y, p) <= ci1[1]
    # each resample's AUC equals sklearn's on that resample
    idx = metrics.resample_indices(60, 50, seed=4)
    values = metrics.bootstrap_auc_values(y, p, idx)
    for b in range(50):
        ys, ps = y[idx[b]], p[idx[b]]
        if 0 < ys.sum() < len(ys):
            assert values[b] == pytest.approx(skm.roc_auc_score(ys, ps), abs=1e-12)
        else:
            assert np.isnan(values[b])
    # DeLong's normal CI (used above AUC_BOOTSTRAP_MAX_N items) agrees with the bootstrap
    big_y = rng.integers(0, 2, 2500)
    big_p = np.clip(big_y * 0.2 + rng.random(2500) * 0.8, 0, 1).round(2)
    boot = metrics.bootstrap_auc_ci(big_y, big_p, n_boot=2000, seed=1)
    delong = metrics.delong_auc_ci(big_y, big_p)
    assert delong[0] == pytest.approx(boot[0], abs=0.005) and delong[1] == pytest.approx(boot[1], abs=0.005)
    ev = metrics.evaluate_codes(big_y.astype(np.int8), big_y.astype(np.int8), big_p, n_boot=100)
    assert ev.ci["roc_auc"] == delong  # above the bootstrap limit the evaluation uses DeLong
    one_class = metrics.bootstrap_auc_values(np.ones(5, dtype=int), np.arange(5.0), metrics.resample_indices(5, 3, 0))
    assert np.isnan(one_class).all()


def test_threshold_sweep_and_calibration_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = rng.random(200).round(2)
    sweep = metrics.threshold_sweep(y, p)
    assert len(sweep) == 101 and sweep[50].threshold == 0.5
    for row in sweep[::10]:
        said = (p >= row.threshold).astype(int)
        assert row == metrics.threshold_metrics(y, p, row.threshold)
        assert row.f1 == skm.f1_score(y, said, zero_division=0)
        assert row.accuracy == skm.accuracy_score(y, said)
    frac, mean = calibration_curve(y, p, n_bins=10)
    bins = metrics.calibration_bins(y, p, 10)
    assert [b["frac_toxic"] for b in bins] == frac.tolist()
    assert [b["mean_prob"] for b in bins] == mean.tolist()
    assert sum(b["count"] for b in bins) == 200


@pytest.mark.parametrize("table", [[[10, 3], [9, 4]], [[5, 0], [0, 5]], [[0, 12], [1, 0]], [[30, 7], [7, 2]],
                                   [[0, 0], [0, 0]], [[9, 500], [524, 1]], [[0, 300], [724, 0]],
                                   [[7, 3011], [2917, 2]], [[1, 50000], [50400, 1]], [[0, 0], [1025, 0]]])
def test_mcnemar_matches_statsmodels(table):
    got = metrics.mcnemar_from_table(table)
    ref = mcnemar(np.array(table), exact=True)
    # exact integer sums up to 1024 discordant items, log space above: equal to statsmodels within rounding
    assert got.pvalue == pytest.approx(ref.pvalue, rel=1e-10, abs=0)
    assert got.statistic == ref.statistic and got.n == sum(map(sum, table))
    # from per-item correctness, with items lacking a verdict excluded
    a, b = [], []
    for (ra, rb), k in (((True, True), table[0][0]), ((True, False), table[0][1]), ((False, True), table[1][0]),
                        ((False, False), table[1][1])):
        a += [ra] * k
        b += [rb] * k
    a += [None, True]
    b += [False, None]
    got2 = metrics.mcnemar_exact(a, b)
    assert got2.table == table and got2.pvalue == got.pvalue and got2.n_excluded == 2


@pytest.mark.parametrize("seed", range(6))
def test_kappa_matches_sklearn(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 80)
    a = [rng.choice(["toxic", "non_toxic", "unknown", None]) for _ in range(n)]
    b = [rng.choice(["toxic", "non_toxic", "non_toxic", None]) for _ in range(n)]
    got, used = metrics.cohen_kappa(a, b)
    pairs = [(x, y) for x, y in zip(a, b) if x in metrics.CLASSES and y in metrics.CLASSES]
    assert used == len(pairs)
    ref = skm.cohen_kappa_score([x for x, _ in pairs], [y for _, y in pairs], labels=["toxic", "non_toxic"],
                                replace_undefined_by=np.nan) if pairs else np.nan
    assert (got is None and np.isnan(ref)) or got == ref


@pytest.mark.parametrize("cells", [(a, b, c, d) for a in (0, 1, 4) for b in (0, 2) for c in (0, 3) for d in (0, 1, 5)])
def test_kappa_from_confusion_matches_sklearn_on_label_lists(cells):
    a = ["toxic"] * (cells[0] + cells[1]) + ["non_toxic"] * (cells[2] + cells[3])
    b = ["toxic"] * cells[0] + ["non_toxic"] * cells[1] + ["toxic"] * cells[2] + ["non_toxic"] * cells[3]
    got = metrics.kappa_from_confusion(np.array(cells).reshape(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # sklearn warns where kappa is undefined
        ref = skm.cohen_kappa_score(a, b, labels=["toxic", "non_toxic"], replace_undefined_by=np.nan) if a else np.nan
    assert (got is None and np.isnan(ref)) or got == ref


def test_kappa_undefined_is_none():
    assert metrics.cohen_kappa(["toxic"] * 4, ["toxic"] * 4) == (None, 4)
    assert metrics.cohen_kappa([], []) == (None, 0)


# --- outcome queries on a real DB -------------------------------------------------------


@pytest.fixture
def world(session):
    """8 images: folder labels, one human override, one unlabeled image, two runs."""
    ids = add_images(session, 8)
    folder = dict(zip(ids, ["toxic", "toxic", "toxic", "non_toxic", "non_toxic", "non_toxic", "toxic", "non_toxic"]))
    del folder[ids[7]]  # ids[7] unlabeled
    add_labels(session, folder, "folder")
    add_label(session, ids[6], "non_toxic", "alice")  # human outranks folder: ids[6] -> non_toxic
    add_label(session, ids[0], "toxic", "alice")
    add_label(session, ids[0], "non_toxic", "bob")  # tie among humans: the newest (bob) wins
    run_a = add_run(session, "vlm", "A", {
        ids[0]: Pred("toxic", 0.9, latency_ms=100), ids[1]: Pred("non_toxic", 0.3, latency_ms=200),
        ids[2]: Pred("unknown", latency_ms=300), ids[3]: Pred("toxic", 0.8, latency_ms=400),
        ids[4]: Pred("unknown", error="boom"), ids[6]: Pred("non_toxic", 0.1, latency_ms=500),
        ids[7]: Pred("toxic", 0.99, latency_ms=600)})
    run_b = add_run(session, "clip", "B", {
        ids[0]: Pred("non_toxic", 0.2), ids[1]: Pred("toxic", 0.7), ids[2]: Pred("toxic", 0.6),
        ids[3]: Pred("toxic", 0.9), ids[4]: Pred("non_toxic", 0.4), ids[5]: Pred("non_toxic", 0.3),
        ids[6]: Pred("toxic", 0.8)})
    session.commit()
    return ids, run_a, run_b


def test_run_outcomes_and_evaluation_from_db(session, world):
    ids, run_a, run_b = world
    got = outcomes.run_outcomes(session, run_a)
    assert got == {ids[0]: "FP", ids[1]: "FN", ids[2]: "unknown", ids[3]: "FP", ids[4]: "failed",
                   ids[5]: "missing", ids[6]: "TN", ids[7]: "unlabeled"}
    data_a, data_b = outcomes.load_runs(session, [run_a, run_b])
    human = [None if i == ids[7] else lab for i, lab in sorted(outcomes.load_truth(session).labels.items())]
    ev = data_a.evaluate(n_boot=200)
    ref = metrics.evaluate(
        [outcomes.load_truth(session).labels.get(i) for i in ids],
        ["toxic", "non_toxic", "unknown", "toxic", "failed", None, "non_toxic", "toxic"],
        [0.9, 0.3, None, 0.8, None, None, 0.1, 0.99], n_boot=200)
    assert ev.to_dict() == ref.to_dict()
    assert (ev.n_unknown, ev.n_failed, ev.n_missing, ev.n_unlabeled) == (1, 1, 1, 1)
    assert len(human) == 7
    assert outcomes.latency(data_a) == {"n": 6, "mean_ms": 350.0, "p95_ms": float(np.percentile(
        [100, 200, 300, 400, 500, 600], 95))}
    cells = {(c["human"], c["answer"]): c["count"] for c in outcomes.confusion_cells(data_a)}
    assert cells == {("toxic", "toxic"): 0, ("toxic", "non_toxic"): 1, ("toxic", "no class"): 1,
                     ("non_toxic", "toxic"): 2, ("non_toxic", "non_toxic"): 1, ("non_toxic", "no class"): 2}
    assert outcomes.cell_image_ids(data_a, "non_toxic", "no class") == [ids[4], ids[5]]


def test_compare_runs_matches_list_based_mcnemar_and_kappa(session, world):
    ids, run_a, run_b = world
    data_a, data_b = outcomes.load_runs(session, [run_a, run_b])
    labels = outcomes.load_truth(session).labels
    a = ["toxic", "non_toxic", "unknown", "toxic", "failed", None, "non_toxic", "toxic"]
    b = ["non_toxic", "toxic", "toxic", "toxic", "non_toxic", "non_toxic", "toxic", None]
    human = [labels.get(i) for i in ids]
    pair = outcomes.compare(data_a, data_b)
    ref = metrics.mcnemar_exact(metrics.correctness(human, a), metrics.correctness(human, b))
    assert pair.mcnemar.table == ref.table and pair.mcnemar.pvalue == ref.pvalue
    assert pair.mcnemar.n_excluded == 3  # labeled, but A unknown / failed / missing
    assert (pair.kappa, pair.kappa_n) == metrics.cohen_kappa(a, b)


def test_list_runs_breakdown_and_annotator_agreement(session, world):
    ids, run_a, run_b = world
    runs = outcomes.list_runs(session)
    assert [r.id for r in runs] == [run_b, run_a]
    a = runs[1]
    assert (a.n_predictions, a.n_unknown, a.n_failed) == (7, 1, 1)
    assert outcomes.latest_run_of_kind(runs, "clip").id == run_b
    (data_a,) = outcomes.load_runs(session, [run_a])
    rows = outcomes.breakdown(session, [data_a], by="folder", n_boot=0)
    assert [r["folder"] for r in rows] == ["synthetic"] and rows[0]["n_labeled"] == 7
    agreement = outcomes.annotator_agreement(session)
    by_name = {r["annotator"]: r for r in agreement["annotators"]}
    assert set(by_name) == {"alice", "bob"}  # people only at the top level
    assert by_name["alice"]["n_labels"] == 2 and by_name["alice"]["agreement_others"] == 0.0
    # folder vs consensus: 7 folder labels, consensus differs on ids[6] and ids[0]
    (folder,) = agreement["system"]["annotators"]
    assert folder["annotator"] == "folder" and folder["agreement_consensus"] == 5 / 7
    pair = {(p["a"], p["b"]): p for p in agreement["pairs"]}
    assert set(pair) == {("alice", "bob")}
    assert pair[("alice", "bob")]["n"] == 1 and pair[("alice", "bob")]["agreement"] == 0.0
    assert {(p["a"], p["b"]) for p in agreement["system"]["pairs"]} == {("alice", "folder"), ("bob", "folder")}


def test_relabel_changes_outcomes_and_data_version(session, world):
    ids, run_a, _ = world
    before = outcomes.data_version(session)
    add_label(session, ids[3], "toxic", "carol")  # human says toxic: run A's FP becomes TP
    session.commit()
    assert outcomes.data_version(session) != before
    assert outcomes.run_outcomes(session, run_a)[ids[3]] == "TP"


def test_curves_and_delong_from_one_sort_match_sklearn_and_the_midrank_form():
    """evaluate_codes sorts the probabilities once (a million labels: three sorts per run were
    most of the Dashboard's time); its curves equal sklearn's own, ties included, and its DeLong CI
    equals the midrank algorithm of Sun & Xu computed with scipy's rankdata."""
    from scipy.stats import norm, rankdata

    rng = np.random.default_rng(7)
    for n, digits in ((40, 1), (3000, 2), (20000, 3)):
        y = rng.integers(0, 2, n)
        p = np.clip(y * 0.25 + rng.random(n) * 0.75, 0, 1).round(digits)
        curves = metrics.curves_from_counts(*metrics.ranked_counts(y, p))
        fpr, tpr, thr = skm.roc_curve(y, p)
        np.testing.assert_array_equal(curves["fpr"], fpr)
        np.testing.assert_array_equal(curves["tpr"], tpr)
        np.testing.assert_array_equal(curves["roc_thr"], thr)
        precision, recall, pr_thr = skm.precision_recall_curve(y, p)
        np.testing.assert_array_equal(curves["precision"], precision)
        np.testing.assert_array_equal(curves["recall"], recall)
        np.testing.assert_array_equal(curves["pr_thr"], pr_thr)
        ev = metrics.evaluate_codes(y.astype(np.int8), (p >= 0.5).astype(np.int8), p, n_boot=10)
        assert ev.roc_auc == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
        assert ev.average_precision == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
        # DeLong's variance from midranks (Sun & Xu 2014)
        x_pos, x_neg = p[y == 1], p[y == 0]
        m, k = len(x_pos), len(x_neg)
        tz = rankdata(np.concatenate([x_pos, x_neg]))
        v01 = (tz[:m] - rankdata(x_pos)) / k
        v10 = 1.0 - (tz[m:] - rankdata(x_neg)) / m
        auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * k)
        se = np.sqrt(np.var(v01, ddof=1) / m + np.var(v10, ddof=1) / k)
        z = norm.ppf(0.975)
        expected = (max(0.0, auc - z * se), min(1.0, auc + z * se))
        assert metrics.delong_auc_ci(y, p) == pytest.approx(expected, abs=1e-12)
