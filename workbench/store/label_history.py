"""labels.csv: every label row, undone ones included, with how its meme was chosen.

annotations.csv holds one consensus label per meme; this is the full record behind it: who
labelled what and when, the queue order, rank and score that put the meme on screen, whether
it was an exploration (random) pick, the learner's suggestion and whether it was shown, and
the seconds spent. Written in streamed chunks (memory stays flat at a million labels);
spreadsheet-safe like every CSV the workbench writes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.store.annotations import neutralise_cell
from workbench.store.files import atomic_write
from workbench.store.schema import Image, Label

COLUMNS = ("label_id", "image_id", "filename", "sha256", "label", "annotator", "note", "created_at", "revoked_at",
           "queue_order", "queue_rank", "queue_score", "exploration", "suggestion", "suggestion_prob",
           "suggestion_shown", "seconds_spent")
CHUNK = 5000


def _cell(value: object) -> object:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()  # type: ignore[union-attr]
    return neutralise_cell(value)


def label_history_chunks(session: Session) -> Iterator[bytes]:
    """labels.csv as UTF-8 chunks of CHUNK rows (the header first)."""
    query = (select(Label.id, Label.image_id, Image.path, Image.sha256, Label.label, Label.annotator, Label.note,
                    Label.created_at, Label.revoked_at, Label.queue_order, Label.queue_rank, Label.queue_score,
                    Label.exploration, Label.suggestion, Label.suggestion_prob, Label.suggestion_shown,
                    Label.seconds_spent)
             .join(Image, Image.id == Label.image_id).order_by(Label.id))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for n, row in enumerate(session.execute(query.execution_options(yield_per=CHUNK)), start=1):
        writer.writerow([_cell(v) for v in row])
        if n % CHUNK == 0:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode("utf-8")


def write_label_history(session: Session, out: Path) -> int:
    """Write labels.csv to `out` (atomically); returns the number of label rows."""
    lines = 0
    with atomic_write(out) as fh:
        for chunk in label_history_chunks(session):
            fh.write(chunk)
            lines += chunk.count(b"\n")
    return lines - 1
