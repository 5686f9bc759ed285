"""Predictions computed elsewhere: a CSV or JSONL file becomes one model run of kind `external`.

Columns (CSV header or JSON keys): `image` (a path relative to the memes dir, the file's
sha256, or an image id), `label` (toxic / non_toxic, or the VLM prompt's class words),
`prob_toxic` (optional, in [0, 1]) and `explanation` (optional). The run's params hold the
name, the model and the file's sha256; its fingerprint is the file's sha256, so importing
the same file again adds nothing. All-or-nothing unless `all_or_nothing=False`, as for
annotations.csv (workbench.store.annotations).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from workbench.config import MAX_UPLOAD_BYTES
from workbench.store import users
from workbench.store.annotations import SNIFF_CHARS, _delimiter, _text_stream
from workbench.store.images import sha256_file
from workbench.store.interop.common import (
    ImportReport,
    RowIssue,
    bad_probability,
    class_of,
    looks_like_formula,
    meme_index,
)
from workbench.store.schema import ModelRun, Prediction, utcnow

EXTERNAL_KIND = "external"
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


def _csv_rows(path: Path, report: ImportReport) -> Iterator[tuple[int, dict[str, object]]]:
    with open(path, "rb") as raw:
        try:
            text = _text_stream(raw)
        except ValueError as exc:
            report.issues.append(RowIssue(0, path.name, str(exc)))
            return
        delimiter = _delimiter(text.read(SNIFF_CHARS))
        text.seek(0)
        reader = csv.DictReader(text, delimiter=delimiter)
        try:
            reader.fieldnames = [f.strip().lower() for f in (reader.fieldnames or [])]
        except csv.Error as exc:
            report.issues.append(RowIssue(1, path.name, f"unreadable header: {exc}"))
            return
        if "image" not in reader.fieldnames or "label" not in reader.fieldnames:
            report.issues.append(RowIssue(1, path.name, "header must have columns image and label "
                                                        f"(found {reader.fieldnames or 'nothing'})"))
            return
        old_limit = csv.field_size_limit(MAX_UPLOAD_BYTES)
        try:
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    report.issues.append(RowIssue(reader.line_num, path.name, f"unreadable row: {exc}"))
                    return
                yield reader.line_num, row
        finally:
            csv.field_size_limit(old_limit)


def _json_array_rows(path: Path, report: ImportReport) -> Iterator[tuple[int, dict[str, object]]]:
    """A .json file holding one array of objects (row numbers count from 1)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"line {exc.lineno} column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        report.issues.append(RowIssue(getattr(exc, "lineno", 0), path.name, f"malformed JSON at {where}"))
        return
    if not isinstance(rows, list):
        report.issues.append(RowIssue(1, path.name, "a .json file must hold an array of objects (or use JSONL)"))
        return
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            report.issues.append(RowIssue(n, path.name, f"item {n} is not a JSON object"))
            continue
        yield n, {str(k).strip().lower(): v for k, v in row.items()}


def _jsonl_rows(path: Path, report: ImportReport) -> Iterator[tuple[int, dict[str, object]]]:
    with open(path, "rb") as probe:
        if probe.read(64).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            yield from _json_array_rows(path, report)
            return
    with open(path, encoding="utf-8-sig", errors="strict") as fh:
        try:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    report.issues.append(RowIssue(line_no, path.name, f"malformed JSON at column {exc.colno}: {exc.msg}"))
                    continue
                if not isinstance(row, dict):
                    report.issues.append(RowIssue(line_no, path.name, "each line must be a JSON object"))
                    continue
                yield line_no, {str(k).strip().lower(): v for k, v in row.items()}
        except UnicodeDecodeError as exc:
            report.issues.append(RowIssue(0, path.name, f"not UTF-8 text: {exc}"))


def read_rows(path: Path, report: ImportReport) -> Iterator[tuple[int, dict[str, object]]]:
    """(line, row) of a predictions file: JSONL by its suffix, else CSV; problems go to `report`."""
    return _jsonl_rows(path, report) if path.suffix.lower() in JSON_SUFFIXES else _csv_rows(path, report)


def import_predictions(session: Session, path: Path, name: str | None = None, model: str | None = None,
                       all_or_nothing: bool = True, actor: str | None = None) -> tuple[ImportReport, int | None]:
    """Import a predictions file as one `external` run; returns (report, run id or None).

    Admins only when sign-in is on; recorded in the audit log. A file already imported (same
    sha256) adds nothing and returns its run id with `report.unchanged` = its predictions."""
    path = Path(path)
    name = (name or path.stem).strip()[:256]
    model = (model or name).strip()[:512]
    for what, value in (("name", name), ("model", model)):
        if looks_like_formula(value):
            raise ValueError(f"the {what} {value[:40]!r} looks like a spreadsheet formula (starts with = + - @)")
    file_sha = sha256_file(path)
    users.authorize(session, actor, users.ADMIN, "import predictions",
                    {"file": path.name, "sha256": file_sha, "name": name, "model": model})
    report = ImportReport(mode="all-or-nothing" if all_or_nothing else "valid rows only")
    existing = session.scalar(select(ModelRun).where(ModelRun.fingerprint == f"{EXTERNAL_KIND}:{file_sha}"))
    if existing is not None:
        report.unchanged = session.query(Prediction).filter(Prediction.run_id == existing.id).count()
        report.applied = True
        session.commit()  # the audit entry
        return report, existing.id
    index = meme_index(session)
    planned: dict[int, dict[str, object]] = {}
    for line, row in read_rows(path, report):
        report.rows += 1
        ref = row.get("image")
        shown = str(ref if ref is not None else "")[:300]
        image_id = index.find(ref)
        label = class_of(row.get("label"))
        prob_problem = bad_probability(row.get("prob_toxic"))
        explanation = row.get("explanation")
        explanation = None if explanation is None or str(explanation) == "" else str(explanation)
        if image_id is None:
            problem = "unknown image (expected a path in the memes folder, a sha256 or an image id)"
        elif label is None:
            problem = f"bad label {str(row.get('label'))[:40]!r} (expected toxic or non_toxic)"
        elif prob_problem:
            problem = prob_problem
        elif image_id in planned:
            problem = f"duplicate image (already on line {planned[image_id]['line']})"
        elif looks_like_formula(explanation):
            problem = "explanation looks like a spreadsheet formula (starts with = + - @)"
        else:
            problem = None
        if problem:
            report.issues.append(RowIssue(line, shown, problem))
            continue
        prob = row.get("prob_toxic")
        planned[image_id] = {"line": line, "label": label, "explanation": explanation,
                             "prob_toxic": None if prob is None or str(prob).strip() == "" else float(prob)}
    if (report.issues and all_or_nothing) or not planned:
        session.commit()  # the audit entry of the attempt
        return report, None
    run = ModelRun(kind=EXTERNAL_KIND, model_id=model, name=name, fingerprint=f"{EXTERNAL_KIND}:{file_sha}",
                   params={"name": name, "model": model, "file_sha256": file_sha, "file": path.name},
                   status="done", finished_at=utcnow())
    session.add(run)
    session.flush()
    rows = [{"run_id": run.id, "image_id": image_id, "label": p["label"], "prob_toxic": p["prob_toxic"],
             "explanation": p["explanation"], "raw_output": None, "latency_ms": None, "error": None, "extra": {}}
            for image_id, p in planned.items()]
    for start in range(0, len(rows), 5000):
        session.execute(insert(Prediction), rows[start:start + 5000])
    session.commit()
    report.imported, report.applied = len(rows), True
    return report, run.id
