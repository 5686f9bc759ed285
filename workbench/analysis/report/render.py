"""One self-contained, offline HTML report of the study (and an optional PDF of it).

Sections: dataset summary (counts by label, annotators, agreement), per-run metrics with
bootstrap CIs, confusion matrices and ROC / precision-recall curves (inline SVG), pairwise
McNemar tests, the out-of-fold metrics and per-fold training curves of head / TF-IDF runs
(from their training reports), the top disagreements with thumbnails, labels, explanations
and OCR text, a few cached CAM overlays, and each run's exact config (prompts included).

This module gathers plain data (dicts, lists, numbers, strings) and renders it with the
Jinja2 templates in templates/ (report.html.j2 and its includes). Rules:
- autoescape is on and nothing is marked safe: every piece of user or model text is
  escaped by the template engine; the report contains no <script> and loads nothing from
  the network (images are base64 data URIs, charts are inline SVG, the CSS is inline);
- its size does not grow with the collection: counts, not lists; curves thinned to a
  few hundred points (a training chart's folds share a few hundred); top-N lists; small
  JPEG thumbnails; capped runs, pairs and trained runs.

The numbers come from workbench.analysis.outcomes / workbench.analysis.metrics / workbench.analysis.review; nothing
here computes a metric. CAM overlays are read from the cache (workbench.explain.cam), never
computed, so building a report needs no model.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from itertools import combinations
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.analysis.report.figures import cam_figures, thumbnail
from workbench.analysis.report.pdf import PdfUnavailable, html_to_pdf, pdf_converter
from workbench.analysis.report.svg import curve_chart
from workbench.analysis.report.training import training_section
from workbench.config import Settings
from workbench.store.files import atomic_write
from workbench.store.schema import ModelRun

__all__ = [
    "REPORT_TITLE", "PdfUnavailable", "ReportOptions", "build_report", "html_to_pdf", "pdf_converter",
    "report_html", "report_pdf", "top_disagreement_ids", "top_disagreements", "write_report",
]

REPORT_TITLE = "VLMemes Workbench report"
METRIC_ROWS = ("accuracy", "precision", "recall", "f1", "accuracy_strict", "coverage", "roc_auc", "average_precision")
METRIC_NAMES = {
    "accuracy": "Accuracy (covered items)", "precision": "Precision (toxic)", "recall": "Recall (toxic)",
    "f1": "F1 (toxic)", "accuracy_strict": "Accuracy (no class = wrong)", "coverage": "Coverage",
    "roc_auc": "ROC AUC", "average_precision": "Average precision",
}
DATASET_COUNTS = (("images", "Images"), ("labeled", "Labeled (consensus)"), ("unlabeled", "Unlabeled"),
                  ("missing_files", "Files missing on disk"), ("annotators", "Annotators"),
                  ("ocr_results", "OCR results"), ("model_runs", "Model runs"), ("predictions", "Predictions"))
CONFUSION_LABELS = ("toxic", "non_toxic")  # rows = human, columns = run
MAX_ANNOTATOR_ROWS = 50


@dataclass(frozen=True)
class ReportOptions:
    """Knobs that bound the report's size and cost."""

    run_ids: tuple[int, ...] | None = None  # None = every run
    max_runs: int = 20
    max_pair_runs: int = 10  # McNemar for every pair of the first N runs (N*(N-1)/2 rows)
    top_n: int = 20  # disagreement cards
    n_cam: int = 6  # disagreement cards that show their cached CAM overlays
    thumb_px: int = 160
    text_chars: int = 600  # OCR text / explanation shown per card
    curve_points: int = 200
    max_training_runs: int = 5  # head / TF-IDF runs whose training report (metrics, curves) is shown
    training_points: int = 300  # points per training-curve chart, shared by its folds
    n_boot: int = 1000
    seed: int = 0
    random_only: bool = False  # metrics over the memes chosen at random only (unbiased under active labeling)


# ------------------------------------------------------------------ templates


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals; '—' for None."""
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    """A confidence interval as '[lo, hi]'; '' for none."""
    return "" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


@cache
def environment() -> jinja2.Environment:
    """The report's Jinja2 environment: autoescaped, strict about undefined names, None printed as ''."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("workbench.analysis.report", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        finalize=lambda value: "" if value is None else value,
    )
    env.filters["fmt"] = fmt
    env.filters["ci"] = fmt_ci
    return env


def _clip(text: str | None, limit: int) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------ section data


def _dataset(session: Session) -> dict[str, Any]:
    from workbench.analysis.outcomes import annotator_agreement
    from workbench.store.catalog import stats

    counts = stats(session)
    agreement = annotator_agreement(session)
    by_label = counts.get("by_label", {}) or {}
    return {
        "counts": [(title, counts.get(key, 0)) for key, title in DATASET_COUNTS],
        "by_label": sorted(by_label.items()),
        "annotators": (agreement["annotators"] + agreement["system"]["annotators"])[:MAX_ANNOTATOR_ROWS],
        "more_annotators": max(0, len(agreement["annotators"]) + len(agreement["system"]["annotators"])
                               - MAX_ANNOTATOR_ROWS),
        "pairs": (agreement["pairs"] + agreement["system"]["pairs"])[:MAX_ANNOTATOR_ROWS],
    }


def confusion_rows(matrix: list[list[int]]) -> list[dict[str, Any]]:
    """Rows of a confusion matrix (human x run), each cell with its count and its shade (share of the row)."""
    rows = []
    for label, row in zip(CONFUSION_LABELS, matrix):
        total = sum(row) or 1
        rows.append({"label": label, "cells": [{"n": n, "alpha": 0.08 + 0.6 * n / total} for n in row]})
    return rows


def _run(data: Any, run_row: ModelRun | None, options: ReportOptions) -> dict[str, Any]:
    ev = data.evaluate(n_boot=options.n_boot, seed=options.seed)
    run = data.run
    metrics = [{"key": key, "name": METRIC_NAMES[key], "value": getattr(ev, key), "ci": ev.ci.get(key)}
               for key in METRIC_ROWS
               if not (getattr(ev, key) is None and key in ("roc_auc", "average_precision"))]
    charts = []
    if ev.has_prob:
        roc = ev.roc_points(options.curve_points)
        pr = ev.pr_points(options.curve_points)
        charts = [curve_chart(roc["fpr"], roc["tpr"], "ROC", "false positive rate", "true positive rate", diagonal=True),
                  curve_chart(pr["recall"], pr["precision"], "Precision-recall", "recall", "precision")]
    config = None
    if run_row is not None:
        config = {"fingerprint": run_row.fingerprint, "created": str(run_row.created_at),
                  "json": json.dumps(run_row.params, ensure_ascii=False, indent=2, sort_keys=True, default=str)}
    return {
        "id": run.id, "title": run.title, "kind": run.kind, "model_id": run.model_id, "status": run.status,
        "n_predictions": run.n_predictions, "n_unknown": run.n_unknown, "n_failed": run.n_failed,
        "eval": {"n_labeled": ev.n_labeled, "n_covered": ev.n_covered, "n_unknown": ev.n_unknown,
                 "n_failed": ev.n_failed, "n_missing": ev.n_missing, "n_unlabeled": ev.n_unlabeled,
                 "ci_percent": int(ev.ci_level * 100)},
        "metrics": metrics, "confusion": confusion_rows(ev.confusion), "has_prob": ev.has_prob, "charts": charts,
        "config": config,
    }


def _pairs(datas: list[Any], options: ReportOptions) -> dict[str, Any]:
    from workbench.analysis.outcomes import compare

    chosen = datas[: options.max_pair_runs]
    rows = []
    for a, b in combinations(chosen, 2):
        cmp = compare(a, b)
        rows.append({"a": a.run.id, "b": b.run.id, "table": cmp.mcnemar.table, "pvalue": cmp.mcnemar.pvalue,
                     "kappa": cmp.kappa})
    return {"rows": rows, "n_compared": len(chosen), "truncated": len(datas) > len(chosen)}


def top_disagreements(datas: list[Any], top_n: int) -> list[Any]:
    """Labeled images at least one run contradicts, most confident contradictions first
    (workbench.analysis.review's label-issue score), at most `top_n`."""
    from workbench.analysis.review import suspected_label_issues

    return [x for x in suspected_label_issues(datas, min_score=0.0) if x.n_contradicting > 0][:top_n]


def top_disagreement_ids(session: Session, options: ReportOptions | None = None) -> list[int]:
    """Image ids of the report's disagreement cards (e.g. to compute their CAMs first)."""
    from workbench.analysis.outcomes import list_runs, load_runs

    options = options or ReportOptions()
    runs = sorted((r for r in list_runs(session, options.run_ids) if r.n_predictions > 0), key=lambda r: r.id)
    datas = load_runs(session, [r.id for r in runs[: options.max_runs]])
    return [x.image_id for x in top_disagreements(datas, options.top_n)]


def _disagreements(session: Session, settings: Settings, datas: list[Any], options: ReportOptions) -> dict[str, Any]:
    from workbench.analysis.review import cards

    issues = top_disagreements(datas, options.top_n)
    by_id = {c.image_id: c for c in cards(session, [x.image_id for x in issues], [d.run.id for d in datas])} if issues else {}
    out: list[dict[str, Any]] = []
    n_cam_shown = 0
    for rank, issue in enumerate(issues, start=1):
        card = by_id.get(issue.image_id)
        if card is None:
            continue
        cams = []
        if n_cam_shown < options.n_cam:
            cams = cam_figures(settings, card.sha256, card.path, options.thumb_px)
            n_cam_shown += bool(cams)
        out.append({
            "rank": rank, "path": card.path, "thumb": thumbnail(settings, card.sha256, card.path, options.thumb_px),
            "cams": cams, "consensus": card.consensus, "humans": ", ".join(f"{a}: {lab}" for a, lab in card.human_labels),
            "score": issue.score, "n_contradicting": issue.n_contradicting, "n_runs": issue.n_runs,
            "ocr": _clip(card.ocr_text, options.text_chars),
            "predictions": [{"run_id": p.run_id,
                             "label": "not predicted" if p.label is None else ("failed" if p.error else p.label),
                             "prob": p.prob_toxic,
                             "explanation": _clip(p.error if p.error else p.explanation, options.text_chars)}
                            for p in card.predictions],
        })
    return {"any": bool(issues), "cards": out, "n_cam_shown": n_cam_shown}


# ------------------------------------------------------------------ the report


def report_data(session: Session, settings: Settings, options: ReportOptions | None = None) -> dict[str, Any]:
    """Everything the template shows, as plain data."""
    from workbench.analysis.learning_progress import learning_history
    from workbench.analysis.outcomes import list_runs, load_runs, load_truth
    from workbench.store.label_choice import summarize_ids

    options = options or ReportOptions()
    runs = sorted((r for r in list_runs(session, options.run_ids) if r.n_predictions > 0), key=lambda r: r.id)
    shown = runs[: options.max_runs]
    data: dict[str, Any] = {
        "title": REPORT_TITLE, "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "dataset": _dataset(session), "n_runs": len(runs),
        "runs": [{"id": r.id, "kind": r.kind, "model": r.name or r.model_id, "n_predictions": r.n_predictions}
                 for r in shown],
        "run_sections": [], "training": None, "pairs": None, "disagreements": None,
        "random_only": options.random_only, "learning": learning_history(session), "labels_chosen": None,
    }
    if not shown:
        return data
    truth = load_truth(session, random_only=options.random_only)
    data["labels_chosen"] = summarize_ids(session, truth.image_ids).to_dict()
    datas = load_runs(session, [r.id for r in shown], truth)
    rows = {r.id: r for r in session.scalars(select(ModelRun).where(ModelRun.id.in_([r.id for r in shown])))}
    data["run_sections"] = [_run(d, rows.get(d.run.id), options) for d in datas]
    data["training"] = training_section(settings, shown, {i: r.fingerprint for i, r in rows.items()},
                                        options.max_training_runs, options.training_points)
    if len(datas) > 1:
        data["pairs"] = _pairs(datas, options)
    data["disagreements"] = _disagreements(session, settings, datas, options)
    return data


def build_report(session: Session, settings: Settings, options: ReportOptions | None = None) -> str:
    """The report as one HTML string (see the module docstring)."""
    return environment().get_template("report.html.j2").render(report_data(session, settings, options))


def write_report(session: Session, settings: Settings, out: Path, options: ReportOptions | None = None) -> Path:
    """Build the report and write it to `out` (atomically); returns `out`."""
    text = build_report(session, settings, options)
    with atomic_write(out, "w", encoding="utf-8") as fh:
        fh.write(text)
    return out


def report_html(settings: Settings, options: ReportOptions | None = None) -> str:
    """The report built in its own session (for download buttons that run off the page thread)."""
    from workbench.store.db import read_scope

    with read_scope(settings.db_url) as session:  # reads only: no write lock while the metrics are computed
        return build_report(session, settings, options)


def report_pdf(settings: Settings, options: ReportOptions | None = None) -> bytes:
    """The report as PDF bytes; raises PdfUnavailable without a converter."""
    with tempfile.TemporaryDirectory(prefix="workbench-pdf-") as tmp:
        out = html_to_pdf(report_html(settings, options), Path(tmp) / "report.pdf")
        return out.read_bytes()
