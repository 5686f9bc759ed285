"""predictions.csv: one row per image x model run, for spreadsheets and hand-off.

Columns: filename (relative to the memes dir), human_label (consensus, '' when unlabeled),
run_id, model, label (toxic | non_toxic | unknown), prob_toxic, explanation, error.
Every text cell goes through `workbench.store.annotations.neutralise_cell`, so a filename or
model explanation starting with = + - @ cannot run as a spreadsheet formula.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.store.annotations import neutralise_cell
from workbench.store.files import atomic_write
from workbench.store.labels import consensus_labels
from workbench.store.schema import Image, ModelRun, Prediction

PREDICTION_COLUMNS = ("filename", "human_label", "run_id", "model", "label", "prob_toxic", "explanation", "error")


def prediction_rows(session: Session, run_ids: Sequence[int] | None = None) -> Iterator[tuple[object, ...]]:
    """Rows of predictions.csv (not yet neutralised), sorted by filename then run id."""
    query = (
        select(Image.id, Image.path, Prediction.run_id, ModelRun.model_id, Prediction.label, Prediction.prob_toxic,
               Prediction.explanation, Prediction.error)
        .join(Prediction, Prediction.image_id == Image.id)
        .join(ModelRun, ModelRun.id == Prediction.run_id)
        .order_by(Image.path, Prediction.run_id)
    )
    if run_ids is not None:
        query = query.where(Prediction.run_id.in_(list(run_ids)))
    humans = consensus_labels(session)
    for image_id, path, run_id, model, label, prob, explanation, error in session.execute(query):
        prob_text = "" if prob is None else f"{prob:.6g}"
        yield (path, humans.get(image_id, ""), run_id, model, label, prob_text, explanation or "", error or "")


def export_predictions(session: Session, run_ids: Sequence[int] | None = None) -> str:
    """The predictions.csv text (UTF-8 header + rows, '\\n' line endings)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    for row in prediction_rows(session, run_ids):
        writer.writerow([neutralise_cell(cell) for cell in row])
    return buf.getvalue()


def write_predictions(session: Session, out: Path, run_ids: Sequence[int] | None = None) -> int:
    """Write predictions.csv to `out`; returns the number of data rows."""
    buf_rows = 0
    # A crash mid-export never leaves a half file under the real name.
    with atomic_write(out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(PREDICTION_COLUMNS)
        for row in prediction_rows(session, run_ids):
            writer.writerow([neutralise_cell(cell) for cell in row])
            buf_rows += 1
    return buf_rows
