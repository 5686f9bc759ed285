"""Classification metrics over plain label lists, with honest uncertainty.

`toxic` is the positive class. Inputs are aligned lists: the human label of each item
(`toxic` | `non_toxic` | None = not labeled) and the run's answer for it (`toxic` |
`non_toxic` | `unknown` | `failed` | None = no prediction stored).

How missing things count (never silently dropped — each has its own counter):
- items without a human label are left out of every metric and counted in `n_unlabeled`;
- labeled items the run did not label (`unknown`, `failed`, missing) are counted in
  `n_unknown` / `n_failed` / `n_missing` and lower `coverage`;
- accuracy, precision, recall, F1 and the confusion matrix are computed on the *covered*
  items (human label and a toxic/non_toxic answer) and equal scikit-learn's on exactly
  those items; `accuracy_strict` counts every uncovered labeled item as wrong;
- ROC AUC / average precision use the labeled items that have a probability.
- Undefined precision/recall/F1 (no predicted / no true positives) are 0.0, like
  scikit-learn's default `zero_division`; metrics over zero items are None.

No plotting here: views build charts from the results (fiftyone's evaluation idea).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

POSITIVE = "toxic"
NEGATIVE = "non_toxic"
CLASSES = (POSITIVE, NEGATIVE)
# What a run can answer for an item besides a class; each is counted, none is dropped.
UNCOVERED = ("unknown", "failed", "missing")
HEADLINE = ("accuracy", "precision", "recall", "f1")
# Integer codes of the fast array path: human label -> 1/0 (-1 = none); answer -> 1/0/2/3/4.
TRUE_CODES = {POSITIVE: 1, NEGATIVE: 0}
PRED_CODES = {POSITIVE: 1, NEGATIVE: 0, "unknown": 2, "failed": 3, "missing": 4, None: 4}

# Outcome codes (also what review/outcomes use per image).
TP, FP, FN, TN = "TP", "FP", "FN", "TN"
DEFAULT_N_BOOT = 1000
# The item-level bootstrap of AUC costs O(n_boot * n); above this many items the AUC CI uses
# DeLong's variance (normal approximation, O(n log n)), which agrees closely at such sizes.
AUC_BOOTSTRAP_MAX_N = 2000


@dataclass(frozen=True)
class ThresholdMetrics:
    """Metrics of `prob >= threshold -> toxic` on the labeled items that have a probability."""

    threshold: float
    n: int
    tp: int
    fp: int
    fn: int
    tn: int
    accuracy: float | None
    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Evaluation:
    """One run (or any labeler) against the human labels: counts, metrics, CIs, curves."""

    n_items: int
    n_unlabeled: int
    n_labeled: int
    n_covered: int
    n_unknown: int
    n_failed: int
    n_missing: int
    tp: int
    fp: int
    fn: int
    tn: int
    accuracy: float | None
    accuracy_strict: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    coverage: float | None
    roc_auc: float | None
    average_precision: float | None
    n_prob: int
    ci: dict[str, tuple[float, float] | None]
    ci_level: float
    # Labeled items with a probability, for curves and the threshold slider (not serialised).
    y_prob_true: np.ndarray = field(repr=False, compare=False)
    y_prob: np.ndarray = field(repr=False, compare=False)
    curves: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)  # sklearn ROC/PR curves

    @property
    def confusion(self) -> list[list[int]]:
        """Rows = human (toxic, non_toxic), columns = run (toxic, non_toxic), as
        sklearn.metrics.confusion_matrix(labels=['toxic', 'non_toxic'])."""
        return [[self.tp, self.fn], [self.fp, self.tn]]

    @property
    def support(self) -> dict[str, int]:
        """Covered items per human class (sklearn's `support`)."""
        return {POSITIVE: self.tp + self.fn, NEGATIVE: self.fp + self.tn}

    @property
    def has_prob(self) -> bool:
        return self.n_prob > 0

    def at_threshold(self, threshold: float) -> ThresholdMetrics:
        """Metrics when the run's probability is cut at `threshold` (>= is toxic)."""
        return threshold_metrics(self.y_prob_true, self.y_prob, threshold)

    @cached_property
    def sweep(self) -> list[ThresholdMetrics]:
        """Metrics on a 0.00..1.00 grid of thresholds (101 points)."""
        return threshold_sweep(self.y_prob_true, self.y_prob)

    def roc_points(self, max_points: int = 400) -> dict[str, list[float]]:
        """ROC curve (fpr, tpr, threshold) as sklearn.metrics.roc_curve, thinned for charts."""
        if "fpr" not in self.curves:
            return {"fpr": [], "tpr": [], "threshold": []}
        fpr, tpr, thr = self.curves["fpr"], self.curves["tpr"], self.curves["roc_thr"]
        keep = _thin(len(fpr), max_points)
        return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(),
                "threshold": np.minimum(thr[keep], 1.0).tolist()}

    def pr_points(self, max_points: int = 400) -> dict[str, list[float]]:
        """Precision-recall curve as sklearn.metrics.precision_recall_curve, thinned for charts."""
        if "recall" not in self.curves:
            return {"recall": [], "precision": [], "threshold": []}
        precision, recall = self.curves["precision"], self.curves["recall"]
        thr = np.append(self.curves["pr_thr"], 1.0)  # the last point (recall 0, precision 1) has no threshold
        keep = _thin(len(recall), max_points)
        return {"recall": recall[keep].tolist(), "precision": precision[keep].tolist(),
                "threshold": thr[keep].tolist()}

    def calibration(self, n_bins: int = 10) -> list[dict[str, float]]:
        """Reliability curve: per probability bin, mean predicted prob, observed toxic rate, count."""
        return calibration_bins(self.y_prob_true, self.y_prob, n_bins)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what `python -m workbench metrics --json` prints per run)."""
        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in ("accuracy", "precision", "recall", "f1", "accuracy_strict", "coverage", "n_items",
                      "n_unlabeled", "n_labeled", "n_covered", "n_unknown", "n_failed", "n_missing", "n_prob")
        }
        out["ci"] = {k: (list(v) if v is not None else None) for k, v in self.ci.items()}
        out["ci_level"] = self.ci_level
        out["confusion_matrix"] = {"labels": list(CLASSES), "rows": "human", "columns": "run",
                                   "matrix": self.confusion}
        out["support"] = self.support
        if self.has_prob:
            out["roc_auc"] = self.roc_auc
            out["average_precision"] = self.average_precision
        return out


def evaluate(
    y_true: Sequence[str | None],
    y_pred: Sequence[str | None],
    prob: Sequence[float | None] | None = None,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    ci_level: float = 0.95,
) -> Evaluation:
    """Evaluate one run's answers against human labels (see the module docstring for how
    unlabeled items and unknown/failed/missing answers count)."""
    if len(y_true) != len(y_pred) or (prob is not None and len(prob) != len(y_true)):
        raise ValueError("y_true, y_pred (and prob) must have the same length")
    bad = set(y_pred) - set(PRED_CODES)
    if bad:
        raise ValueError(f"unexpected prediction values: {sorted(map(str, bad))}")
    true = np.fromiter((TRUE_CODES.get(t, -1) for t in y_true), dtype=np.int8, count=len(y_true))
    pred = np.fromiter((PRED_CODES[p] for p in y_pred), dtype=np.int8, count=len(y_pred))
    p = None if prob is None else np.fromiter((np.nan if v is None else v for v in prob), dtype=np.float64,
                                              count=len(prob))
    return evaluate_codes(true, pred, p, n_boot=n_boot, seed=seed, ci_level=ci_level)


def evaluate_codes(
    true: np.ndarray, pred: np.ndarray, prob: np.ndarray | None = None, *,
    n_boot: int = DEFAULT_N_BOOT, seed: int = 0, ci_level: float = 0.95,
) -> Evaluation:
    """`evaluate` on integer-coded arrays (TRUE_CODES / PRED_CODES; prob nan = none): the fast
    path the outcome queries use."""
    labeled = true >= 0
    pos, neg = true == 1, true == 0
    said_pos, said_neg = pred == 1, pred == 0
    tp, fn = int((pos & said_pos).sum()), int((pos & said_neg).sum())
    fp, tn = int((neg & said_pos).sum()), int((neg & said_neg).sum())
    unc_pos = int((pos & (pred >= 2)).sum())
    unc_neg = int((neg & (pred >= 2)).sum())
    n_labeled = int(labeled.sum())
    scores = _scores_from_counts(np.array([tp]), np.array([fp]), np.array([fn]), np.array([tn]),
                                 np.array([unc_pos + unc_neg]))
    point = {k: (None if np.isnan(v[0]) else float(v[0])) for k, v in scores.items()}

    y_prob_true, y_prob = _prob_arrays(true, prob)
    roc_auc = average_precision = None
    curves: dict[str, np.ndarray] = {}
    counts_at: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    if len(y_prob) and 0 < y_prob_true.sum() < len(y_prob_true):
        from sklearn.metrics import auc

        # One sort for the curves and DeLong's CI (three sorts each took ~0.1 s at 800,000 labels);
        # AUC and AP from the curves exactly as sklearn's roc_auc_score / average_precision_score.
        counts_at = ranked_counts(y_prob_true, y_prob)
        curves = curves_from_counts(*counts_at)
        roc_auc = float(auc(curves["fpr"], curves["tpr"]))
        average_precision = float(max(0.0, -np.sum(np.diff(curves["recall"]) * curves["precision"][:-1])))

    ci = bootstrap_count_ci([tp, fp, fn, tn, unc_pos, unc_neg], n_boot=n_boot, seed=seed, level=ci_level)
    ci = {k: ci[k] for k in (*HEADLINE, "accuracy_strict", "coverage")}
    if roc_auc is not None and n_boot > 0:
        if len(y_prob) <= AUC_BOOTSTRAP_MAX_N:
            ci["roc_auc"] = bootstrap_auc_ci(y_prob_true, y_prob, n_boot=n_boot, seed=seed, level=ci_level)
        else:
            ci["roc_auc"] = _delong_from_counts(counts_at[0], counts_at[1], ci_level)  # type: ignore[index]

    return Evaluation(
        n_items=len(true), n_unlabeled=int((~labeled).sum()), n_labeled=n_labeled, n_covered=tp + fp + fn + tn,
        n_unknown=int((labeled & (pred == PRED_CODES["unknown"])).sum()),
        n_failed=int((labeled & (pred == PRED_CODES["failed"])).sum()),
        n_missing=int((labeled & (pred == PRED_CODES[None])).sum()),
        tp=tp, fp=fp, fn=fn, tn=tn,
        accuracy=point["accuracy"], accuracy_strict=point["accuracy_strict"], precision=point["precision"],
        recall=point["recall"], f1=point["f1"], coverage=point["coverage"],
        roc_auc=roc_auc, average_precision=average_precision, n_prob=len(y_prob),
        ci=ci, ci_level=ci_level, y_prob_true=y_prob_true, y_prob=y_prob, curves=curves,
    )


def _prob_arrays(true: np.ndarray, prob: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(1 if toxic else 0, prob) for labeled items whose prob is a number."""
    if prob is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    keep = (true >= 0) & ~np.isnan(prob)
    return (true[keep] == 1).astype(np.int64), prob[keep]


def _scores_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray,
                        uncovered: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised metrics from outcome counts, written the way scikit-learn computes them
    (same operations, so the floats are identical); nan = over zero items."""
    tp, fp, fn, tn, uncovered = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn, uncovered))
    covered = tp + fp + fn + tn
    labeled = covered + uncovered
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.where(covered > 0, (tp + tn) / covered, np.nan)
        accuracy_strict = np.where(labeled > 0, (tp + tn) / labeled, np.nan)
        coverage = np.where(labeled > 0, covered / labeled, np.nan)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fn + fp > 0, 2 * tp / (2 * tp + fn + fp), 0.0)
    empty = covered == 0
    precision, recall, f1 = (np.where(empty, np.nan, a) for a in (precision, recall, f1))
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
            "accuracy_strict": accuracy_strict, "coverage": coverage}


# Hand-written, not scipy.stats.bootstrap: a multinomial draw of the counts stays O(n_boot) at 100k predictions.
def bootstrap_count_ci(
    counts: Sequence[int], *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95,
) -> dict[str, tuple[float, float] | None]:
    """Percentile bootstrap CIs of the count-based metrics.

    `counts` = [tp, fp, fn, tn, uncovered_toxic, uncovered_non_toxic] over the labeled items.
    Resampling n labeled items with replacement and counting their outcomes is exactly a
    multinomial draw of n over these six outcome frequencies, so we draw the counts
    directly: the same bootstrap distribution as resampling items, in O(n_boot) instead
    of O(n_boot * n) — which keeps the dashboard fast at 100,000 predictions.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    names = (*HEADLINE, "accuracy_strict", "coverage")
    if n == 0 or n_boot <= 0:
        return {k: None for k in names}
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=n_boot)
    scores = _scores_from_counts(draws[:, 0], draws[:, 1], draws[:, 2], draws[:, 3], draws[:, 4] + draws[:, 5])
    return {k: _percentile_interval(scores[k], level) for k in names}


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float] | None:
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) item indices drawn with replacement — the item-level bootstrap."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


# Hand-written: scipy.stats.bootstrap would re-sort and call roc_auc_score per resample (too slow at 100k).
def bootstrap_auc_values(y_true01: np.ndarray, prob: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """ROC AUC of each resample (rows of `idx`); nan where a resample holds one class.

    Mann-Whitney form (equal to sklearn's roc_auc_score, ties counted half), computed from
    per-item resample counts over the items sorted once by score: O(n_boot * n) with no
    per-resample sort."""
    y = np.asarray(y_true01, dtype=np.int64)
    p = np.asarray(prob, dtype=np.float64)
    n_boot, n = idx.shape
    counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
    counts = counts.reshape(n_boot, n).astype(np.float64)
    order = np.argsort(p, kind="stable")
    p_sorted, y_sorted, counts = p[order], y[order], counts[:, order]
    pos = counts * y_sorted
    neg = counts - pos
    starts = np.flatnonzero(np.concatenate([[True], p_sorted[1:] != p_sorted[:-1]]))  # one group per score
    if len(starts) < n:  # tied scores: pool each group (ties count half)
        pos, neg = np.add.reduceat(pos, starts, axis=1), np.add.reduceat(neg, starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def bootstrap_auc_ci(
    y_true01: np.ndarray, prob: np.ndarray, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of ROC AUC, resampling items (pairs of label and prob);
    resamples holding one class only are skipped."""
    n = len(y_true01)
    if n == 0 or n_boot <= 0:
        return None
    return _percentile_interval(bootstrap_auc_values(y_true01, prob, resample_indices(n, n_boot, seed)), level)


def ranked_counts(y_true01: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, threshold) at each distinct probability, highest first:
    sklearn.metrics.confusion_matrix_at_thresholds, the one sort the curves and DeLong share."""
    from sklearn.metrics import confusion_matrix_at_thresholds

    _tns, fps, _fns, tps, thresholds = confusion_matrix_at_thresholds(np.asarray(y_true01), np.asarray(prob))
    return fps, tps, thresholds


def curves_from_counts(fps: np.ndarray, tps: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """The ROC curve (fpr, tpr, roc_thr) and the precision-recall curve (precision, recall, pr_thr)
    as sklearn's roc_curve and precision_recall_curve build them from the same counts (both
    classes present)."""
    f, t, thr = fps, tps, thresholds
    if len(f) > 2:  # roc_curve's drop_intermediate: points on a straight segment go
        keep = np.r_[True, np.logical_or(np.diff(f, 2), np.diff(t, 2)), True]
        f, t, thr = f[keep], t[keep], thr[keep]
    f, t = np.r_[0.0, f], np.r_[0.0, t]
    ps = tps + fps
    precision = np.where(ps != 0, tps / np.where(ps != 0, ps, 1), 0.0)
    return {"fpr": f / f[-1], "tpr": t / t[-1], "roc_thr": np.r_[np.inf, thr.astype(np.float64)],
            "precision": np.r_[precision[::-1], 1.0], "recall": np.r_[(tps / tps[-1])[::-1], 0.0],
            "pr_thr": thresholds[::-1]}


# Hand-written: neither scikit-learn, scipy nor statsmodels offers DeLong's AUC variance.
def delong_auc_ci(y_true01: np.ndarray, prob: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Normal-approximation CI of ROC AUC with DeLong's variance, clipped to [0, 1]; for large
    sets where the bootstrap is costly."""
    y = np.asarray(y_true01, dtype=bool)
    if y.sum() < 2 or (~y).sum() < 2:
        return None
    fps, tps, _ = ranked_counts(y.astype(np.int8), prob)
    return _delong_from_counts(fps, tps, level)


def _delong_from_counts(fps: np.ndarray, tps: np.ndarray, level: float) -> tuple[float, float] | None:
    """DeLong's CI from the cumulative counts at each distinct probability (highest first). The
    structural components of Sun & Xu (2014) are equal within a group of tied probabilities, so
    they are computed per group: a positive's is (negatives below + half the tied ones) / n, a
    negative's 1 - (positives below + half the tied ones) / m."""
    from scipy.stats import norm

    m, n = float(tps[-1]), float(fps[-1])
    if m < 2 or n < 2:
        return None
    pos_here, neg_here = np.diff(np.r_[0.0, tps]), np.diff(np.r_[0.0, fps])
    v01 = (n - fps + neg_here / 2) / n  # per group, for each of its pos_here positives
    v10 = 1.0 - (m - tps + pos_here / 2) / m  # per group, for each of its neg_here negatives
    auc = float((pos_here * v01).sum() / m)
    var01 = float((pos_here * (v01 - auc) ** 2).sum() / (m - 1))
    mean10 = float((neg_here * v10).sum() / n)
    var10 = float((neg_here * (v10 - mean10) ** 2).sum() / (n - 1))
    se = math.sqrt(var01 / m + var10 / n)
    z = float(norm.ppf(1 - (1 - level) / 2))
    return max(0.0, auc - z * se), min(1.0, auc + z * se)


def threshold_metrics(y_true01: np.ndarray, prob: np.ndarray, threshold: float) -> ThresholdMetrics:
    """Metrics of `prob >= threshold -> toxic` (sklearn's roc_curve convention)."""
    y = np.asarray(y_true01, dtype=bool)
    said = np.asarray(prob) >= threshold
    tp, fp = int((y & said).sum()), int((~y & said).sum())
    fn, tn = int((y & ~said).sum()), int((~y & ~said).sum())
    return _threshold_row(threshold, tp, fp, fn, tn)


def _threshold_row(threshold: float, tp: int, fp: int, fn: int, tn: int) -> ThresholdMetrics:
    s = _scores_from_counts(np.array([tp]), np.array([fp]), np.array([fn]), np.array([tn]), np.array([0]))
    acc = s["accuracy"][0]
    return ThresholdMetrics(float(threshold), tp + fp + fn + tn, tp, fp, fn, tn,
                            None if np.isnan(acc) else float(acc), float(np.nan_to_num(s["precision"][0])),
                            float(np.nan_to_num(s["recall"][0])), float(np.nan_to_num(s["f1"][0])))


def threshold_sweep(y_true01: np.ndarray, prob: np.ndarray,
                    thresholds: Sequence[float] | None = None) -> list[ThresholdMetrics]:
    """Metrics at many thresholds at once (sorted probabilities + searchsorted: O(n log n))."""
    grid = np.round(np.linspace(0, 1, 101), 2) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    y = np.asarray(y_true01, dtype=bool)
    p = np.asarray(prob, dtype=np.float64)
    pos_sorted, neg_sorted = np.sort(p[y]), np.sort(p[~y])
    # items with prob >= t = those not strictly below t
    tp = len(pos_sorted) - np.searchsorted(pos_sorted, grid, side="left")
    fp = len(neg_sorted) - np.searchsorted(neg_sorted, grid, side="left")
    fn, tn = len(pos_sorted) - tp, len(neg_sorted) - fp
    return [_threshold_row(float(t), int(a), int(b), int(c), int(d)) for t, a, b, c, d in zip(grid, tp, fp, fn, tn)]


def calibration_bins(y_true01: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Uniform-width reliability bins (non-empty only), binned like
    sklearn.calibration.calibration_curve(strategy='uniform')."""
    y = np.asarray(y_true01, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    if not len(p):
        return []
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], p)  # right-closed bins, as sklearn
    count = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    return [
        {"bin_low": float(edges[b]), "bin_high": float(edges[b + 1]), "mean_prob": float(sum_p[b] / count[b]),
         "frac_toxic": float(sum_y[b] / count[b]), "count": int(count[b])}
        for b in range(n_bins) if count[b] > 0
    ]


def _thin(n: int, max_points: int) -> np.ndarray:
    """Indices of at most max_points evenly spread points, endpoints kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


# --- agreement between two labelers (runs or annotators) -------------------------------


@dataclass(frozen=True)
class McNemar:
    """Paired exact McNemar test of two runs' correctness on the same labeled items.

    table = [[both right, A right & B wrong], [A wrong & B right, both wrong]]."""

    table: list[list[int]]
    statistic: float
    pvalue: float
    n: int
    n_excluded: int  # labeled items where A or B gave no class (unless counted as wrong)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def correctness(y_true: Sequence[str | None], y_pred: Sequence[str | None],
                unknown_as_wrong: bool = False) -> list[bool | None]:
    """Per item: True/False = the run's class is right/wrong; None = no human label, or no
    class from the run (unless `unknown_as_wrong`)."""
    out: list[bool | None] = []
    for t, p in zip(y_true, y_pred):
        if t not in CLASSES:
            out.append(None)
        elif p in CLASSES:
            out.append(p == t)
        else:
            out.append(False if unknown_as_wrong else None)
    return out


def mcnemar_exact(a_correct: Sequence[bool | None], b_correct: Sequence[bool | None]) -> McNemar:
    """Exact (binomial) McNemar test on items where both have a verdict."""
    table = [[0, 0], [0, 0]]
    excluded = 0
    for a, b in zip(a_correct, b_correct):
        if a is None or b is None:
            excluded += 1
            continue
        table[0 if a else 1][0 if b else 1] += 1
    return mcnemar_from_table(table, excluded)


def mcnemar_from_table(table: Sequence[Sequence[int]], n_excluded: int = 0) -> McNemar:
    """The exact McNemar test on a ready 2x2 correctness table (see McNemar): statsmodels'
    `mcnemar(table, exact=True)` (statistic = the smaller discordant count, p = the two-sided
    binomial test of it at 1/2), computed here without importing scipy.stats (over 1 s, the
    largest part of the Disagreements page's first load)."""
    table = [[int(table[0][0]), int(table[0][1])], [int(table[1][0]), int(table[1][1])]]
    small, discordant = min(table[0][1], table[1][0]), table[0][1] + table[1][0]
    return McNemar(table=table, statistic=float(small), pvalue=binomial_two_sided(small, discordant),
                   n=sum(map(sum, table)), n_excluded=int(n_excluded))


EXACT_BINOMIAL_MAX_N = 1024  # up to here the tail is summed in integers (exact); above, in log space


def binomial_two_sided(k: int, n: int) -> float:
    """min(1, 2 P(X <= k)) for X ~ Binomial(n, 1/2), k <= n / 2: the exact McNemar p-value."""
    if n <= 0:
        return 1.0
    if n <= EXACT_BINOMIAL_MAX_N:  # int / int divides correctly rounded, however large the ints
        return min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n)
    j = np.arange(k, dtype=np.longdouble)  # extended precision where the platform has it: the running sum
    log_comb = np.concatenate([[0.0], np.cumsum(np.log((n - j) / (j + 1)))]).astype(np.float64)  # log C(n, 0..k)
    top = float(log_comb.max())
    log_tail = top + math.log(float(np.exp(log_comb - top).sum())) - n * math.log(2.0)
    return min(1.0, 2.0 * math.exp(log_tail))


def cohen_kappa(a: Sequence[str | None], b: Sequence[str | None]) -> tuple[float | None, int]:
    """Cohen's kappa over the items where both gave toxic/non_toxic, and that item count.

    sklearn.metrics.cohen_kappa_score(labels=['toxic', 'non_toxic']) on those items;
    None where it is undefined (no items, or only one class used by both)."""
    confusion = np.zeros((2, 2), dtype=np.int64)
    for x, y in zip(a, b):
        if x in CLASSES and y in CLASSES:
            confusion[CLASSES.index(x), CLASSES.index(y)] += 1
    return kappa_from_confusion(confusion), int(confusion.sum())


def kappa_from_confusion(confusion: np.ndarray) -> float | None:
    """Cohen's kappa of a 2x2 agreement table (rows: rater a, columns: rater b), by sklearn's
    cohen_kappa_score with the four cells as sample weights; None = undefined."""
    from sklearn.metrics import cohen_kappa_score

    cells = np.asarray(confusion, dtype=np.int64).ravel()
    # Undefined, and answered None without sklearn's warning: no items, or every item in one
    # diagonal cell (both raters used the same single class, so chance agreement is 1).
    if cells.sum() == 0 or cells[0] == cells.sum() or cells[3] == cells.sum():
        return None
    return float(cohen_kappa_score([0, 0, 1, 1], [0, 1, 0, 1], labels=[0, 1], sample_weight=cells))
