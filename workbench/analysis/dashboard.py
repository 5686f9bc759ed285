"""Everything the Dashboard page shows, computed in one call as plain rows (lists of
dicts) ready for tables and Altair charts — no plotting here. bench/metrics.py times
exactly this call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from workbench.analysis.metrics import DEFAULT_N_BOOT, HEADLINE, Evaluation
from workbench.analysis.outcomes import (
    RunData,
    RunInfo,
    breakdown,
    compare,
    confusion_cells,
    latency,
    load_runs,
    load_truth,
)
from workbench.store.label_choice import ChoiceSummary, summarize_ids


@dataclass(frozen=True)
class Dashboard:
    """The dashboard's data for a set of runs."""

    datas: list[RunData]
    evaluations: dict[int, Evaluation]
    metrics_rows: list[dict[str, Any]]
    confusion_rows: list[dict[str, Any]]
    roc_rows: list[dict[str, Any]]
    pr_rows: list[dict[str, Any]]
    calibration_rows: list[dict[str, Any]]
    latency_rows: list[dict[str, Any]]
    folder_rows: list[dict[str, Any]]
    source_rows: list[dict[str, Any]]
    pair_rows: list[dict[str, Any]]
    choice: ChoiceSummary | None = None  # how the labels behind these metrics were chosen
    random_only: bool = False  # metrics over the memes chosen at random only

    def data(self, run_id: int) -> RunData:
        return next(d for d in self.datas if d.run.id == run_id)

    def sweep_rows(self) -> list[dict[str, Any]]:
        """Precision, recall, F1 and accuracy of every probabilistic run on a 0..1 threshold
        grid (long form: run, threshold, metric, value) for the threshold-sweep chart."""
        rows = []
        for d in self.datas:
            ev = self.evaluations[d.run.id]
            if ev.has_prob:
                for t in ev.sweep:
                    rows += [{"run": d.run.title, "threshold": t.threshold, "metric": m, "value": getattr(t, m)}
                             for m in ("precision", "recall", "f1", "accuracy")]
        return rows

    def threshold_rows(self, threshold: float) -> list[dict[str, Any]]:
        """Metrics of every probabilistic run with its probability cut at `threshold`."""
        rows = []
        for d in self.datas:
            ev = self.evaluations[d.run.id]
            if ev.has_prob:
                rows.append({"run": d.run.title, **ev.at_threshold(threshold).to_dict()})
        return rows


MISSING = "—"  # how every table shows an undefined or absent value (never None / nan)
DIGITS = 3  # decimals of every rate, score and probability in the tables
TABLE_FORMATS = {"McNemar p": ".3g", "mean_ms": ".1f", "p95_ms": ".1f"}  # columns read otherwise


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def display_rows(rows: Sequence[Mapping[str, Any]], formats: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Rows made uniform for a table: a column holding any float or missing value becomes text,
    its numbers with DIGITS decimals (or the column's format in `formats` / TABLE_FORMATS: p-values
    keep their significant digits) and missing values (None, nan, or no such key in a row) as
    MISSING; whole-number and text columns are left as they are."""
    specs = {**TABLE_FORMATS, **(formats or {})}
    columns = list(dict.fromkeys(k for row in rows for k in row))
    as_text = {c for c in columns for row in rows
               if _is_missing(row.get(c)) or isinstance(row.get(c), float | np.floating)}
    out = []
    for row in rows:
        shown = {c: row.get(c) for c in columns}  # a row without a column shows it as missing
        for c in as_text:
            value = shown[c]
            if _is_missing(value):
                shown[c] = MISSING
            elif isinstance(value, float | np.floating):
                shown[c] = format(float(value), specs.get(c, f".{DIGITS}f"))
            else:
                shown[c] = str(value)
        out.append(shown)
    return out


def fmt_ci(value: float | None, ci: tuple[float, float] | None) -> str:
    """'0.812 [0.705, 0.901]' (— for undefined)."""
    if _is_missing(value):
        return MISSING
    return f"{value:.{DIGITS}f}" + (f" [{ci[0]:.{DIGITS}f}, {ci[1]:.{DIGITS}f}]" if ci else "")


DEFAULT_MAX_RUNS = 6


def default_runs(runs: Sequence[RunInfo]) -> list[int]:
    """The runs the Dashboard opens with: the newest run of each kind that has predictions
    (the latest VLM, CLIP, TF-IDF, … side by side, not just the three newest runs), newest
    first, at most DEFAULT_MAX_RUNS; `runs` newest first, as list_runs gives them."""
    newest: dict[str, int] = {}
    for r in runs:
        if r.n_predictions:
            newest.setdefault(r.kind, r.id)
    return list(newest.values())[:DEFAULT_MAX_RUNS] or [r.id for r in runs[:1]]


def metrics_row(data: RunData, ev: Evaluation) -> dict[str, Any]:
    """One line of the metrics table: headline metrics with CIs, coverage and the counts
    of everything not covered."""
    row: dict[str, Any] = {"run_id": data.run.id, "run": data.run.title}
    for name in (*HEADLINE, "accuracy_strict"):
        row[name] = fmt_ci(getattr(ev, name), ev.ci.get(name))
    row["roc_auc"] = fmt_ci(ev.roc_auc, ev.ci.get("roc_auc"))
    row["average_precision"] = fmt_ci(ev.average_precision, None)
    row.update({"coverage": fmt_ci(ev.coverage, ev.ci.get("coverage")), "labeled": ev.n_labeled,
                "covered": ev.n_covered, "unknown": ev.n_unknown, "failed": ev.n_failed, "missing": ev.n_missing,
                "unlabeled predicted": ev.n_unlabeled})
    return row


def dashboard(session: Session, run_ids: Sequence[int], n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
              breakdowns: bool = True, random_only: bool = False) -> Dashboard:
    """Compute the dashboard for these runs against the current human consensus (with
    `random_only`, over the memes chosen at random only), and how those labels were chosen."""
    truth = load_truth(session, random_only=random_only)
    datas = load_runs(session, run_ids, truth)
    choice = summarize_ids(session, truth.image_ids)
    evaluations = {d.run.id: d.evaluate(n_boot=n_boot, seed=seed) for d in datas}
    metrics_rows, confusion, roc, pr, calib, lat = [], [], [], [], [], []
    for d in datas:
        ev, title = evaluations[d.run.id], d.run.title
        metrics_rows.append(metrics_row(d, ev))
        confusion += [{"run_id": d.run.id, "run": title, **c} for c in confusion_cells(d)]
        if ev.has_prob:
            r = ev.roc_points()
            roc += [{"run": title, "fpr": x, "tpr": y, "threshold": t}
                    for x, y, t in zip(r["fpr"], r["tpr"], r["threshold"])]
            p = ev.pr_points()
            pr += [{"run": title, "recall": x, "precision": y, "threshold": t}
                   for x, y, t in zip(p["recall"], p["precision"], p["threshold"])]
            calib += [{"run": title, **b} for b in ev.calibration()]
        lat.append({"run": title, **latency(d)})
    pairs = []
    for a, b in combinations(datas, 2):
        c = compare(a, b)
        pairs.append({"run A": a.run.title, "run B": b.run.title, "McNemar p": c.mcnemar.pvalue,
                      "A right, B wrong": c.mcnemar.table[0][1], "A wrong, B right": c.mcnemar.table[1][0],
                      "paired n": c.mcnemar.n, "excluded": c.mcnemar.n_excluded, "kappa": c.kappa,
                      "kappa n": c.kappa_n})
    folder_rows = breakdown(session, datas, "folder", n_boot=n_boot, seed=seed) if breakdowns else []
    source_rows = breakdown(session, datas, "source", n_boot=n_boot, seed=seed) if breakdowns else []
    return Dashboard(datas, evaluations, metrics_rows, confusion, roc, pr, calib, lat, folder_rows, source_rows,
                     pairs, choice, random_only)
