"""Data of the report's training section: out-of-fold metrics and per-fold training curves
of head / TF-IDF runs, read from the training reports they wrote (see
workbench.predictors.out_of_fold). Curves are thinned so a chart's folds share a few hundred
points, and at most `max_runs` runs are shown."""

from __future__ import annotations

import json
import math
from typing import Any

from workbench.analysis.report.svg import SERIES_COLORS, line_chart
from workbench.config import Settings
from workbench.features.head_training import describe_grouping

TRAINED_KINDS = ("head", "text-tfidf")
TRAINING_METRICS = {
    "f1": "Out-of-fold F1 (toxic)", "auroc": "Out-of-fold ROC AUC", "accuracy": "Out-of-fold accuracy",
    "n": "Labeled images", "folds": "Folds", "n_empty_text": "Labeled images without OCR text",
    "n_labeled_without_features": "Labeled images without embeddings",
}
TRAINING_CURVES = (("train_loss", "Training loss", "loss"), ("val_loss", "Validation loss", "loss"),
                   ("val_f1", "Validation F1", "F1 (toxic)"))
MAX_CURVE_FOLDS = len(SERIES_COLORS)


def training_report(settings: Settings, fingerprint: str) -> dict[str, Any] | None:
    """The training report a head / TF-IDF run wrote (artefacts/training/<fingerprint>.json,
    see workbench.predictors.out_of_fold), read under *these* settings' artefacts dir; None if
    absent or unreadable."""
    path = settings.artefacts_dir / "training" / f"{fingerprint}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def number(value: object) -> float | None:
    """A finite int/float as float; None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def thin(points: list[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    """At most `limit` evenly spaced points, the first and last kept."""
    if len(points) <= limit:
        return points
    step = (len(points) - 1) / (limit - 1)
    return [points[round(k * step)] for k in range(limit)]


def curves_by_fold(curves: object) -> dict[int, list[dict[str, Any]]]:
    """Per-epoch points of a training report grouped by fold (malformed points dropped)."""
    by_fold: dict[int, list[dict[str, Any]]] = {}
    for point in curves if isinstance(curves, list) else []:
        if not isinstance(point, dict):
            continue
        fold, epoch = number(point.get("fold")), number(point.get("epoch"))
        if fold is None or epoch is None:
            continue
        by_fold.setdefault(int(fold), []).append(point)
    for points in by_fold.values():
        points.sort(key=lambda pt: pt["epoch"])
    return dict(sorted(by_fold.items()))


def _curves(curves: object, max_points: int) -> dict[str, Any] | None:
    """Charts (one line per fold), their legend and how many folds were left out; None without curves."""
    by_fold = curves_by_fold(curves)
    if not by_fold:
        return None
    folds = list(by_fold)[:MAX_CURVE_FOLDS]
    per_fold = max(2, max_points // len(folds))
    epochs = [float(pt["epoch"]) for f in folds for pt in by_fold[f]]
    x_range = (min(epochs), max(epochs))
    charts = []
    for key, title, y_label in TRAINING_CURVES:
        series = []
        for fold in folds:
            pts = [(float(pt["epoch"]), v) for pt in by_fold[fold] if (v := number(pt.get(key))) is not None]
            series.append(thin(pts, per_fold))
        values = [y for pts in series for _, y in pts]
        if not values:
            continue
        top = 1.0 if key == "val_f1" else max(max(values), 1e-9)  # F1 on [0, 1]; losses from 0 to their max
        charts.append(line_chart([([x for x, _ in pts], [y for _, y in pts]) for pts in series],
                                 title, "epoch", y_label, x_range=x_range, y_range=(0.0, top)))
    return {"charts": charts, "legend": [{"color": SERIES_COLORS[i], "fold": fold} for i, fold in enumerate(folds)],
            "more_folds": len(by_fold) - len(folds)}


def _block(run: Any, doc: dict[str, Any], max_points: int) -> dict[str, Any]:
    metrics = doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}
    keys = [k for k in TRAINING_METRICS if k in metrics] + sorted(k for k in metrics if k not in TRAINING_METRICS)
    rows = [{"key": key, "name": TRAINING_METRICS.get(key, key),
             # floats are shown as numbers (non-finite -> '—'), anything else as its text
             "value": number(metrics[key]) if isinstance(metrics[key], float) else metrics[key]}
            for key in keys if not isinstance(metrics[key], (dict, list))]
    if isinstance(metrics.get("grouping"), dict):  # how folds were split: by near-duplicate group or not
        rows.append({"key": "grouping", "name": "Fold split", "value": describe_grouping(metrics["grouping"])})
    return {"id": run.id, "title": run.title, "metrics": rows, "seconds": number(doc.get("train_seconds")),
            "curves": _curves(doc.get("curves"), max_points)}


def training_section(settings: Settings, runs: list[Any], fingerprints: dict[int, str],
                     max_runs: int, max_points: int) -> dict[str, Any] | None:
    """Blocks of the head / TF-IDF runs that left a training report (at most max_runs) and how
    many more there are; None when none did."""
    found = []
    for run in runs:
        if run.kind not in TRAINED_KINDS or run.id not in fingerprints:
            continue
        doc = training_report(settings, fingerprints[run.id])
        if doc is not None:
            found.append((run, doc))
    if not found:
        return None
    shown = found[:max_runs]
    return {"blocks": [_block(run, doc, max_points) for run, doc in shown], "more_runs": len(found) - len(shown)}
