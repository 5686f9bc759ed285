"""One self-contained, offline HTML report of the study (and an optional PDF of it).

Sections: dataset summary (counts by label, annotators, agreement), per-run metrics with
bootstrap CIs, confusion matrices and ROC / precision-recall curves (inline SVG), pairwise
McNemar tests, the out-of-fold metrics and per-fold training curves of head / TF-IDF runs
(from their training reports), the top disagreements with thumbnails, labels, explanations
and OCR text, a few cached CAM overlays, and each run's exact config (prompts included).

Rules the builder keeps:
- every piece of user or model text goes through `esc` (html.escape); the report contains
  no <script> and loads nothing from the network (images are base64 data URIs, charts
  are inline SVG, the CSS is inline);
- its size does not grow with the collection: counts, not lists; curves thinned to a
  few hundred points (a training chart's folds share a few hundred); top-N lists; small
  JPEG thumbnails; capped runs, pairs and trained runs.

The numbers come from workbench.analysis.outcomes / workbench.analysis.metrics / workbench.analysis.review; nothing
here computes a metric. CAM overlays are read from the cache (workbench.explain.cam), never
computed, so building a report needs no model.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.config import Settings
from workbench.store.files import atomic_write
from workbench.store.schema import ModelRun

REPORT_TITLE = "VLMemes Workbench report"
METRIC_ROWS = ("accuracy", "precision", "recall", "f1", "accuracy_strict", "coverage", "roc_auc", "average_precision")
METRIC_NAMES = {
    "accuracy": "Accuracy (covered items)", "precision": "Precision (toxic)", "recall": "Recall (toxic)",
    "f1": "F1 (toxic)", "accuracy_strict": "Accuracy (no class = wrong)", "coverage": "Coverage",
    "roc_auc": "ROC AUC", "average_precision": "Average precision",
}


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


def esc(value: object) -> str:
    """HTML-escaped text of any value (None -> '')."""
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _clip(text: str | None, limit: int) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------ images


def _data_uri(image: PILImage.Image, max_px: int, quality: int = 70) -> str:
    im = image.convert("RGB")
    im.thumbnail((max_px, max_px), PILImage.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbnail(settings: Settings, sha256: str, rel_path: str, max_px: int) -> str | None:
    """A small embedded JPEG of the meme, or None when its file cannot be read."""
    from workbench.store.images import ensure_thumbnail

    try:
        path = ensure_thumbnail(settings.thumbnails_dir, sha256, settings.memes_dir / rel_path)
        with PILImage.open(path) as im:
            return _data_uri(im, max_px)
    except Exception:  # noqa: BLE001 - a missing or broken file shows as a placeholder
        return None


def _img_tag(uri: str | None, alt: str, caption: str = "") -> str:
    if uri is None:
        return f'<div class="noimg">{esc(alt)}<br>(image file not readable)</div>'
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


# ------------------------------------------------------------------ inline SVG charts


SERIES_COLORS = ("#c0392b", "#2471a3", "#229954", "#d68910", "#7d3c98",
                 "#17a589", "#a04000", "#2e4053", "#c71585", "#7f8c8d")


def _tick(value: float) -> str:
    return f"{value:.3g}"


def svg_lines(series: list[tuple[list[float], list[float]]], title: str, x_label: str, y_label: str,
              x_range: tuple[float, float] = (0.0, 1.0), y_range: tuple[float, float] = (0.0, 1.0),
              diagonal: bool = False, size: int = 220) -> str:
    """A small chart of one or more lines as inline SVG (no script, no external asset).

    Series i is drawn in SERIES_COLORS[i % 10]; points are scaled from x_range x y_range
    onto the plot square, whose corners are labelled with the ranges' ends."""
    pad = 32
    span = size - 2 * pad
    (x0, x1), (y0, y1) = x_range, y_range
    x_span, y_span = (x1 - x0) or 1.0, (y1 - y0) or 1.0

    def px(x: float, y: float) -> str:
        return f"{pad + (x - x0) / x_span * span:.1f},{size - pad - (y - y0) / y_span * span:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
             f'role="img" aria-label="{esc(title)}">',
             f'<rect x="{pad}" y="{pad}" width="{span}" height="{span}" fill="#fafafa" stroke="#999"/>']
    if diagonal:
        parts.append(f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" stroke="#bbb" stroke-dasharray="4"/>')
    drawn = [(xs, ys) for xs, ys in series if xs]
    for i, (xs, ys) in enumerate(drawn):
        points = " ".join(px(x, y) for x, y in zip(xs, ys))
        parts.append(f'<polyline fill="none" stroke="{SERIES_COLORS[i % len(SERIES_COLORS)]}" stroke-width="2" '
                     f'points="{points}"/>')
    if not drawn:
        parts.append(f'<text x="{size / 2}" y="{size / 2}" text-anchor="middle" font-size="11">no data</text>')
    parts += [
        f'<text x="{size / 2}" y="14" text-anchor="middle" font-size="12" font-weight="bold">{esc(title)}</text>',
        f'<text x="{size / 2}" y="{size - 6}" text-anchor="middle" font-size="11">{esc(x_label)}</text>',
        f'<text x="10" y="{size / 2}" text-anchor="middle" font-size="11" transform="rotate(-90 10 {size / 2})">'
        f"{esc(y_label)}</text>",
        # one corner label when both axes start at the same value, else one per axis
        (f'<text x="{pad - 3}" y="{size - pad + 12}" text-anchor="end" font-size="9">{esc(_tick(x0))}</text>'
         if _tick(x0) == _tick(y0) else
         f'<text x="{pad}" y="{size - pad + 12}" text-anchor="middle" font-size="9">{esc(_tick(x0))}</text>'
         f'<text x="{pad - 4}" y="{size - pad}" text-anchor="end" font-size="9">{esc(_tick(y0))}</text>'),
        f'<text x="{size - pad}" y="{size - pad + 12}" text-anchor="middle" font-size="9">{esc(_tick(x1))}</text>',
        f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end" font-size="9">{esc(_tick(y1))}</text>',
        "</svg>",
    ]
    return "".join(parts)


def svg_curve(xs: list[float], ys: list[float], title: str, x_label: str, y_label: str,
              diagonal: bool = False, size: int = 220) -> str:
    """A small line chart on [0,1]x[0,1] as inline SVG (no script, no external asset)."""
    return svg_lines([(xs, ys)], title, x_label, y_label, diagonal=diagonal, size=size)


def confusion_table(matrix: list[list[int]]) -> str:
    """Rows = human (toxic, non_toxic), columns = run; cells shaded by share of the row."""
    labels = ("toxic", "non_toxic")
    rows = ['<table class="cm"><tr><th>human \\ run</th>' + "".join(f"<th>{lab}</th>" for lab in labels) + "</tr>"]
    for lab, row in zip(labels, matrix):
        total = sum(row) or 1
        cells = "".join(
            f'<td style="background: rgba(192,57,43,{0.08 + 0.6 * n / total:.2f})">{n}</td>' for n in row)
        rows.append(f"<tr><th>{lab}</th>{cells}</tr>")
    return "".join(rows) + "</table>"


# ------------------------------------------------------------------ sections


def _dataset_section(session: Session) -> str:
    from workbench.analysis.outcomes import annotator_agreement
    from workbench.store.catalog import stats

    counts = stats(session)
    agreement = annotator_agreement(session)
    by_label = counts.get("by_label", {}) or {}
    out = ["<section><h2>Dataset</h2><table class='kv'>"]
    for key, title in (("images", "Images"), ("labeled", "Labeled (consensus)"), ("unlabeled", "Unlabeled"),
                       ("missing_files", "Files missing on disk"), ("annotators", "Annotators"),
                       ("ocr_results", "OCR results"), ("model_runs", "Model runs"), ("predictions", "Predictions")):
        out.append(f"<tr><th>{title}</th><td>{esc(counts.get(key, 0))}</td></tr>")
    for label, n in sorted(by_label.items()):
        out.append(f"<tr><th>label {esc(label)}</th><td>{esc(n)}</td></tr>")
    out.append("</table>")
    rows = agreement["annotators"][:50]
    if rows:
        out.append("<h3>Annotators and agreement</h3><table><tr><th>annotator</th><th>labels</th>"
                   "<th>agreement with consensus</th><th>κ consensus</th><th>items shared with others</th>"
                   "<th>agreement with others</th><th>κ others</th></tr>")
        for r in rows:
            out.append(f"<tr><td>{esc(r['annotator'])}</td><td>{r['n_labels']}</td>"
                       f"<td>{_fmt(r['agreement_consensus'])}</td><td>{_fmt(r['kappa_consensus'])}</td>"
                       f"<td>{r['n_with_others']}</td><td>{_fmt(r['agreement_others'])}</td>"
                       f"<td>{_fmt(r['kappa_others'])}</td></tr>")
        out.append("</table>")
        if len(agreement["annotators"]) > len(rows):
            out.append(f"<p class='note'>{len(agreement['annotators']) - len(rows)} more annotators not shown.</p>")
    pairs = agreement["pairs"][:50]
    if pairs:
        out.append("<h4>Annotator pairs</h4><table><tr><th>A</th><th>B</th><th>shared items</th>"
                   "<th>agreement</th><th>Cohen's κ</th></tr>")
        for p in pairs:
            out.append(f"<tr><td>{esc(p['a'])}</td><td>{esc(p['b'])}</td><td>{p['n']}</td>"
                       f"<td>{_fmt(p['agreement'])}</td><td>{_fmt(p['kappa'])}</td></tr>")
        out.append("</table>")
    out.append("</section>")
    return "".join(out)


def _run_section(data: Any, run_row: ModelRun | None, options: ReportOptions) -> str:
    ev = data.evaluate(n_boot=options.n_boot, seed=options.seed)
    run = data.run
    out = [f'<section class="run" id="run-{run.id}"><h3>{esc(run.title)}</h3>',
           f"<p>kind <b>{esc(run.kind)}</b> · model <code>{esc(run.model_id)}</code> · status {esc(run.status)} · "
           f"{run.n_predictions} predictions ({run.n_unknown} unknown, {run.n_failed} failed)</p>",
           f"<p>{ev.n_labeled} labeled images: {ev.n_covered} covered, {ev.n_unknown} unknown, {ev.n_failed} failed, "
           f"{ev.n_missing} not predicted; {ev.n_unlabeled} predicted images have no human label.</p>",
           f'<table class="metrics"><tr><th>metric</th><th>value</th><th>{int(ev.ci_level * 100)}% CI (bootstrap)</th></tr>']
    for key in METRIC_ROWS:
        value = getattr(ev, key)
        if value is None and key in ("roc_auc", "average_precision"):
            continue
        out.append(f'<tr data-metric="{key}"><td>{METRIC_NAMES[key]}</td><td>{_fmt(value)}</td>'
                   f"<td>{_ci(ev.ci.get(key))}</td></tr>")
    out.append("</table><div class='charts'>")
    out.append(f"<div><h4>Confusion matrix</h4>{confusion_table(ev.confusion)}</div>")
    if ev.has_prob:
        roc = ev.roc_points(options.curve_points)
        pr = ev.pr_points(options.curve_points)
        out.append(svg_curve(roc["fpr"], roc["tpr"], "ROC", "false positive rate", "true positive rate", diagonal=True))
        out.append(svg_curve(pr["recall"], pr["precision"], "Precision-recall", "recall", "precision"))
    else:
        out.append("<p class='note'>This run stores no probabilities: no ROC / PR curves.</p>")
    out.append("</div>")
    if run_row is not None:
        config = json.dumps(run_row.params, ensure_ascii=False, indent=2, sort_keys=True, default=str)
        out.append(f"<details open><summary>Exact configuration (fingerprint <code>{esc(run_row.fingerprint)}</code>, "
                   f"created {esc(run_row.created_at)})</summary><pre>{esc(config)}</pre></details>")
    out.append("</section>")
    return "".join(out)


def _pairs_section(datas: list[Any], options: ReportOptions) -> str:
    from workbench.analysis.outcomes import compare

    chosen = datas[: options.max_pair_runs]
    out = ["<section><h2>Pairwise comparison (exact McNemar)</h2>",
           "<p>Each pair on the labeled images where both runs gave a class; b = A right & B wrong, "
           "c = A wrong & B right. Cohen's κ compares the two runs' answers.</p>",
           "<table><tr><th>run A</th><th>run B</th><th>both right</th><th>b</th><th>c</th><th>both wrong</th>"
           "<th>p-value</th><th>κ (A vs B)</th></tr>"]
    for a, b in combinations(chosen, 2):
        cmp = compare(a, b)
        t = cmp.mcnemar.table
        out.append(f"<tr><td>#{a.run.id}</td><td>#{b.run.id}</td><td>{t[0][0]}</td><td>{t[0][1]}</td>"
                   f"<td>{t[1][0]}</td><td>{t[1][1]}</td><td>{cmp.mcnemar.pvalue:.4g}</td><td>{_fmt(cmp.kappa)}</td></tr>")
    out.append("</table>")
    if len(datas) > len(chosen):
        out.append(f"<p class='note'>Only the first {len(chosen)} runs are compared pairwise.</p>")
    return "".join(out) + "</section>"


def _cam_figures(settings: Settings, sha256: str, rel_path: str, max_px: int) -> list[str]:
    from workbench.explain.cam import cached_cams, cached_overlays
    from workbench.store.images import load_rgb

    if not cached_cams(settings.artefacts_dir, sha256):
        return []
    try:
        image = load_rgb(settings.memes_dir / rel_path)
    except Exception:  # noqa: BLE001 - file gone: no overlay
        return []
    image.thumbnail((max_px * 2, max_px * 2))
    return [_img_tag(_data_uri(im, max_px), caption, caption)
            for caption, im in cached_overlays(settings.artefacts_dir, sha256, image, 0.5)]


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


def _disagreements_section(session: Session, settings: Settings, datas: list[Any], options: ReportOptions) -> str:
    from workbench.analysis.review import cards

    issues = top_disagreements(datas, options.top_n)
    out = ["<section><h2>Top disagreements with the human labels</h2>",
           "<p>Labeled images that at least one run contradicts, ranked by the runs' mean confidence in the class "
           "opposite to the human label (a hard label without probability counts as 1 or 0).</p>"]
    if not issues:
        out.append("<p>No image where the runs contradict the human label.</p></section>")
        return "".join(out)
    run_ids = [d.run.id for d in datas]
    by_id = {c.image_id: c for c in cards(session, [x.image_id for x in issues], run_ids)}
    n_cam_shown = 0
    for rank, issue in enumerate(issues, start=1):
        card = by_id.get(issue.image_id)
        if card is None:
            continue
        thumb = _thumbnail(settings, card.sha256, card.path, options.thumb_px)
        humans = ", ".join(f"{a}: {lab}" for a, lab in card.human_labels)
        out.append(f'<article class="card"><div class="thumbs">{_img_tag(thumb, card.path)}')
        if n_cam_shown < options.n_cam:
            figures = _cam_figures(settings, card.sha256, card.path, options.thumb_px)
            if figures:
                n_cam_shown += 1
                out.append("".join(figures))
        out.append(f"</div><div class='body'><h4>{rank}. {esc(card.path)}</h4>"
                   f"<p>human: <b>{esc(card.consensus)}</b> ({esc(humans)}) · score {issue.score:.2f} · "
                   f"{issue.n_contradicting} of {issue.n_runs} runs disagree</p>"
                   f"<p class='ocr'>OCR text: {esc(_clip(card.ocr_text, options.text_chars)) or '<i>none</i>'}</p>"
                   "<table><tr><th>run</th><th>label</th><th>P(toxic)</th><th>explanation</th></tr>")
        for p in card.predictions:
            label = "not predicted" if p.label is None else ("failed" if p.error else p.label)
            explanation = p.error if p.error else p.explanation
            out.append(f"<tr><td>#{p.run_id}</td><td>{esc(label)}</td><td>{_fmt(p.prob_toxic, 2)}</td>"
                       f"<td>{esc(_clip(explanation, options.text_chars))}</td></tr>")
        out.append("</table></div></article>")
    if n_cam_shown == 0:
        out.append("<p class='note'>No CAM overlay is cached for these images yet: compute them on the Explain page "
                   "or with <code>python -m workbench cam</code>.</p>")
    return "".join(out) + "</section>"


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


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _thin(points: list[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
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
        fold, epoch = _number(point.get("fold")), _number(point.get("epoch"))
        if fold is None or epoch is None:
            continue
        by_fold.setdefault(int(fold), []).append(point)
    for points in by_fold.values():
        points.sort(key=lambda pt: pt["epoch"])
    return dict(sorted(by_fold.items()))


def _training_charts(curves: object, options: ReportOptions) -> str:
    by_fold = curves_by_fold(curves)
    if not by_fold:
        return ""
    folds = list(by_fold)[:MAX_CURVE_FOLDS]
    per_fold = max(2, options.training_points // len(folds))
    epochs = [float(pt["epoch"]) for f in folds for pt in by_fold[f]]
    x_range = (min(epochs), max(epochs))
    charts = []
    for key, title, y_label in TRAINING_CURVES:
        series = []
        for fold in folds:
            pts = [(float(pt["epoch"]), v) for pt in by_fold[fold] if (v := _number(pt.get(key))) is not None]
            series.append(_thin(pts, per_fold))
        values = [y for pts in series for _, y in pts]
        if not values:
            continue
        top = 1.0 if key == "val_f1" else max(max(values), 1e-9)  # F1 on [0, 1]; losses from 0 to their max
        charts.append(svg_lines([([x for x, _ in pts], [y for _, y in pts]) for pts in series],
                                title, "epoch", y_label, x_range=x_range, y_range=(0.0, top)))
    legend = " ".join(f'<span style="color:{SERIES_COLORS[i]}">■ fold {fold}</span>' for i, fold in enumerate(folds))
    note = (f"<p class='note'>{len(by_fold) - len(folds)} more folds not drawn.</p>"
            if len(by_fold) > len(folds) else "")
    return f"<div class='charts'>{''.join(charts)}</div><p class='legend'>{legend}</p>{note}"


def _training_block(run: Any, doc: dict[str, Any], options: ReportOptions) -> str:
    metrics = doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}
    out = [f'<div class="training" id="training-{run.id}"><h3>{esc(run.title)}</h3>',
           '<table class="metrics"><tr><th>out-of-fold summary</th><th>value</th></tr>']
    keys = [k for k in TRAINING_METRICS if k in metrics] + sorted(k for k in metrics if k not in TRAINING_METRICS)
    for key in keys:
        value = metrics[key]
        if isinstance(value, (dict, list)):
            continue
        shown = _fmt(_number(value)) if isinstance(value, float) else ("—" if value is None else str(value))
        out.append(f'<tr data-train-metric="{esc(key)}"><td>{esc(TRAINING_METRICS.get(key, key))}</td>'
                   f"<td>{esc(shown)}</td></tr>")
    seconds = _number(doc.get("train_seconds"))
    if seconds is not None:
        out.append(f"<tr><td>Training time (all folds + final model)</td><td>{seconds:.1f} s</td></tr>")
    out.append("</table>")
    charts = _training_charts(doc.get("curves"), options)
    out.append(charts or "<p class='note'>No per-epoch curves (this predictor has no epochs).</p>")
    return "".join(out) + "</div>"


def _training_section(settings: Settings, runs: list[Any], fingerprints: dict[int, str],
                      options: ReportOptions) -> str:
    """Out-of-fold metrics and per-fold training curves of head / TF-IDF runs that left a
    training report ('' when none did)."""
    found = []
    for run in runs:
        if run.kind not in TRAINED_KINDS or run.id not in fingerprints:
            continue
        doc = training_report(settings, fingerprints[run.id])
        if doc is not None:
            found.append((run, doc))
    if not found:
        return ""
    shown = found[: options.max_training_runs]
    out = ['<section id="training"><h2>Training of learned predictors</h2>',
           "<p>From each run's training report: metrics of the out-of-fold predictions (stratified k-fold, every "
           "labeled image scored by a model that never saw it) and, for heads, loss and validation F1 per epoch, "
           "one line per fold.</p>"]
    out.extend(_training_block(run, doc, options) for run, doc in shown)
    if len(found) > len(shown):
        out.append(f"<p class='note'>{len(found) - len(shown)} more trained runs not shown.</p>")
    return "".join(out) + "</section>"


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #c0392b;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.cm td{text-align:center;min-width:4em}.note{color:#666;font-style:italic}
.charts{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
.card{display:flex;gap:1em;border:1px solid #ddd;border-radius:6px;padding:.7em;margin:.7em 0;page-break-inside:avoid}
.thumbs{display:flex;gap:.4em;flex-wrap:wrap;max-width:520px}figure{margin:0}figcaption{font-size:.75em;color:#555;max-width:160px}
.noimg{width:140px;height:100px;background:#eee;color:#777;font-size:.75em;display:flex;align-items:center;justify-content:center;text-align:center}
.ocr{white-space:pre-wrap}pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;word-break:break-word;font-size:.8em}
section.run{border-top:1px solid #eee;margin-top:1.5em}
.legend{font-size:.85em}.training{border-top:1px solid #eee;margin-top:1em}
"""


def build_report(session: Session, settings: Settings, options: ReportOptions | None = None) -> str:
    """The report as one HTML string (see the module docstring)."""
    from workbench.analysis.outcomes import list_runs, load_runs, load_truth

    options = options or ReportOptions()
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    runs = [r for r in list_runs(session, options.run_ids) if r.n_predictions > 0]
    runs.sort(key=lambda r: r.id)
    shown = runs[: options.max_runs]
    body = [f"<h1>{REPORT_TITLE}</h1><p class='note'>Generated {generated}. Toxic is the positive class; "
            "metrics are against the current human consensus label.</p>", _dataset_section(session)]
    body.append("<section><h2>Model runs</h2>")
    if not shown:
        body.append("<p class='empty'><b>No predictions yet.</b> Run a model on the Models page or with "
                    "<code>python -m workbench predict</code>, then build the report again.</p></section>")
    else:
        if len(runs) > len(shown):
            body.append(f"<p class='note'>{len(runs)} runs have predictions; the first {len(shown)} are shown "
                        "(choose runs to report on with --run).</p>")
        truth = load_truth(session)
        datas = load_runs(session, [r.id for r in shown], truth)
        rows = {r.id: r for r in session.scalars(select(ModelRun).where(ModelRun.id.in_([r.id for r in shown])))}
        body.append("<table><tr><th>run</th><th>kind</th><th>model</th><th>predictions</th></tr>")
        for r in shown:
            body.append(f"<tr><td><a href='#run-{r.id}'>#{r.id}</a></td><td>{esc(r.kind)}</td>"
                        f"<td>{esc(r.name or r.model_id)}</td><td>{r.n_predictions}</td></tr>")
        body.append("</table>")
        body.extend(_run_section(d, rows.get(d.run.id), options) for d in datas)
        body.append("</section>")
        body.append(_training_section(settings, shown, {i: r.fingerprint for i, r in rows.items()}, options))
        if len(datas) > 1:
            body.append(_pairs_section(datas, options))
        body.append(_disagreements_section(session, settings, datas, options))
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{REPORT_TITLE}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(session: Session, settings: Settings, out: Path, options: ReportOptions | None = None) -> Path:
    """Build the report and write it to `out` (atomically); returns `out`."""
    text = build_report(session, settings, options)
    with atomic_write(out, "w", encoding="utf-8") as fh:
        fh.write(text)
    return out


# ------------------------------------------------------------------ PDF (optional)


class PdfUnavailable(RuntimeError):
    """No HTML-to-PDF converter here; the message says what to install."""


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def pdf_converter() -> str | None:
    """'weasyprint' or the path of a headless Chromium, whichever is available; None if neither."""
    try:
        import weasyprint  # noqa: F401

        return "weasyprint"
    except Exception:  # noqa: BLE001 - missing or broken (native libs): try Chromium
        pass
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def html_to_pdf(html_text: str, out: Path, timeout_s: float = 120.0) -> Path:
    """Render the report HTML to a PDF at `out` with weasyprint or headless Chromium.

    Raises PdfUnavailable when neither is installed or the conversion fails."""
    converter = pdf_converter()
    if converter is None:
        raise PdfUnavailable("no PDF converter found: install Chromium (apt-get install chromium) or "
                             "`pip install weasyprint`; the HTML report works without it")
    out.parent.mkdir(parents=True, exist_ok=True)
    if converter == "weasyprint":
        import weasyprint

        weasyprint.HTML(string=html_text).write_pdf(str(out))
        return out
    with tempfile.TemporaryDirectory(prefix="workbench-pdf-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(html_text, encoding="utf-8")
        target = Path(tmp) / "report.pdf"
        cmd = [converter, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={Path(tmp) / 'profile'}", "--no-pdf-header-footer",
               f"--print-to-pdf={target}", page.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PdfUnavailable(f"Chromium did not finish the PDF within {timeout_s:.0f} s") from exc
        if not target.exists() or target.stat().st_size == 0:
            raise PdfUnavailable(f"Chromium could not print the PDF (exit {proc.returncode}): {proc.stderr[-500:]}")
        shutil.move(str(target), out)
    return out


def report_html(settings: Settings, options: ReportOptions | None = None) -> str:
    """The report built in its own session (for download buttons that run off the page thread)."""
    from workbench.store.db import session_scope

    with session_scope(settings.db_url) as session:
        return build_report(session, settings, options)


def report_pdf(settings: Settings, options: ReportOptions | None = None) -> bytes:
    """The report as PDF bytes; raises PdfUnavailable without a converter."""
    with tempfile.TemporaryDirectory(prefix="workbench-pdf-") as tmp:
        out = html_to_pdf(report_html(settings, options), Path(tmp) / "report.pdf")
        return out.read_bytes()
