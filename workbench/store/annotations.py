"""annotations.csv in the research notebook's format: UTF-8, header `filename,label`,
`filename` relative to the memes dir, `label` in toxic|non_toxic.

Export writes one row per labeled image with its consensus label (workbench.store.labels),
sorted by filename, '\\n' line endings: importing a sorted file and exporting it
reproduces it byte for byte. Import is all-or-nothing per file by default.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.config import LABELS, MAX_UPLOAD_BYTES
from workbench.errors import PermissionDenied
from workbench.store import users
from workbench.store.db_locks import advisory_lock
from workbench.store.files import atomic_write
from workbench.store.images import InvalidImage, validate_bytes
from workbench.store.ingest import folder_of
from workbench.store.labels import LabelContext, add_label, consensus_labels
from workbench.store.paths import UnsafePath, checked_stat, image_file
from workbench.store.schema import Image

IMPORT_ANNOTATOR = "import"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
SNIFF_CHARS = 4096  # how much of an imported CSV the delimiter is guessed from


def neutralise_cell(value: object) -> object:
    """Spreadsheet-safe cell: text starting with = + - @ (formula triggers) gets a leading quote."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def export_annotations(session: Session) -> str:
    """The annotations.csv text for every labeled, present image."""
    labels = consensus_labels(session)
    rows = session.execute(select(Image.id, Image.path).where(Image.missing.is_(False))).all()
    pairs = sorted((path, labels[i]) for i, path in rows if i in labels)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", "label"])
    for path, label in pairs:
        writer.writerow([neutralise_cell(path), label])
    return buf.getvalue()


def write_annotations(session: Session, out: Path) -> int:
    """Write annotations.csv to `out`; returns the number of rows."""
    text = export_annotations(session)
    with atomic_write(out) as fh:  # a full disk never leaves half a file under the name
        fh.write(text.encode("utf-8"))
    return text.count("\n") - 1


@dataclass
class RowIssue:
    line: int
    filename: str
    problem: str


MAX_LISTED_ISSUES = 1000  # problems kept with their line; beyond, only counted (memory stays flat)


class _Issues(list):
    """The first MAX_LISTED_ISSUES problems; `total` counts them all."""

    total = 0

    def append(self, issue: RowIssue) -> None:  # type: ignore[override]
        self.total += 1
        if len(self) < MAX_LISTED_ISSUES:
            issue.filename = issue.filename[:300]  # a hostile 20 MB name is shown by its start
            super().append(issue)


@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    unchanged: int = 0
    ingested: int = 0  # files listed in the CSV found on disk but not yet in the DB
    issues: list[RowIssue] = field(default_factory=_Issues)
    applied: bool = False
    mode: str = "all-or-nothing"

    @property
    def problems(self) -> int:
        """Every problem found (`issues` lists the first MAX_LISTED_ISSUES)."""
        return max(getattr(self.issues, "total", 0), len(self.issues))

    def summary(self) -> str:
        state = "applied" if self.applied else "NOT applied"
        return (f"{self.rows} rows: {self.imported} labels imported, {self.unchanged} unchanged, "
                f"{self.ingested} new files ingested, {self.problems} problems ({state}, {self.mode})")


def _text_stream(raw: IO[bytes]) -> io.TextIOWrapper:
    """The CSV as text, streamed: UTF-8 (with or without BOM) if every byte decodes as such,
    else Windows-1251 (a Russian-locale Excel). The check reads the file once in 1 MB pieces;
    universal newlines turn \r\n and \r into \n, inside quoted fields too."""
    for encoding in ("utf-8-sig", "cp1251"):
        raw.seek(0)
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            for chunk in iter(lambda: raw.read(1 << 20), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            continue
        raw.seek(0)
        return io.TextIOWrapper(raw, encoding=encoding, newline=None)
    raise ValueError("the file is neither UTF-8 nor Windows-1251 text")


def _delimiter(text: str) -> str:
    """Comma, semicolon (a Russian-locale Excel) or tab, as csv.Sniffer reads the first lines,
    else the header alone (a few rows with stray delimiters). Only the delimiter is taken:
    quoting stays the csv default, as in our own exports."""
    lines = text[:SNIFF_CHARS]  # the Sniffer's regexes are slow on a huge hostile line
    if len(text) > SNIFF_CHARS and "\n" in lines:
        lines = lines.rsplit("\n", 1)[0]  # whole lines only
    for sample in (lines, lines.split("\n", 1)[0]):
        try:
            return csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
        except csv.Error:
            continue
    return ","  # one column, empty, or nothing consistent: the format's comma


def _safe_rel(raw: str) -> str | None:
    """A normalised relative posix path, or None if it escapes the memes dir."""
    raw = raw.strip().replace("\\", "/")
    if raw.startswith("'") and raw[1:2] in FORMULA_PREFIXES:  # undo our own export's formula guard
        raw = raw[1:]
    if not raw or "\x00" in raw or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        return None
    parts = [p for p in PurePosixPath(raw).parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def _check_annotator(session: Session, annotator: str, actor: str | None, reason: str | None) -> None:
    """Labels stored under a person's name are that person's: importing under a known user's
    email needs that user, or an admin (or the operator) who records why (`reason`)."""
    if users.role_of(session, annotator) is None or users.actor_name(actor) == users.normalize_email(annotator):
        return
    if not (reason or "").strip():
        raise PermissionDenied(f"labels under {annotator} would be stored as that person's; only {annotator} may "
                               "import them, or an admin who gives a reason (--reason), which is recorded")


def _rows(reader: csv.DictReader, report: ImportReport) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) of the CSV as it streams; a row csv cannot read (a field past the cap, a
    NUL byte) ends the import with that line's problem, not a traceback."""
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            report.issues.append(RowIssue(reader.line_num, "", f"unreadable row: {exc}"))
            return
        line += 1
        yield line, row


def import_annotations(
    session: Session, memes_dir: Path, data: bytes | Path, annotator: str = IMPORT_ANNOTATOR,
    all_or_nothing: bool = True, actor: str | None = None, reason: str | None = None,
) -> ImportReport:
    """Import labels from annotations.csv (bytes, or a file's path: read as a stream, so memory
    does not grow with the file). Each row problem is reported with its line; a field may be
    as large as an upload (config.MAX_UPLOAD_BYTES).

    all_or_nothing=True (default): any problem -> nothing is changed. False: valid rows are
    applied, problem rows skipped. Files on disk not yet ingested are ingested. Admins only
    when sign-in is on (`actor`: workbench.store.users.require).
    """
    size = data.stat().st_size if isinstance(data, Path) else len(data)
    _check_annotator(session, annotator, actor, reason)
    users.authorize(session, actor, users.ADMIN, "import annotations",
                    {"bytes": size, "annotator": annotator, **({"reason": reason} if reason else {})})
    from workbench.store.ingest import folder_lock

    with folder_lock(memes_dir), advisory_lock(session.get_bind(), "workbench:ingest"), \
            (open(data, "rb") if isinstance(data, Path) else io.BytesIO(data)) as raw:
        # it may ingest files: never at the same time as a scan or upload
        old_limit = csv.field_size_limit(MAX_UPLOAD_BYTES)  # csv's default 128 KB is below an upload's cap
        try:
            return _import_annotations(session, memes_dir, raw, annotator, all_or_nothing)
        finally:
            csv.field_size_limit(old_limit)


def _import_annotations(
    session: Session, memes_dir: Path, raw: IO[bytes], annotator: str, all_or_nothing: bool
) -> ImportReport:
    report = ImportReport(mode="all-or-nothing" if all_or_nothing else "valid rows only")
    try:
        text = _text_stream(raw)
    except ValueError as exc:
        report.issues.append(RowIssue(0, "", str(exc)))
        return report
    delimiter = _delimiter(text.read(SNIFF_CHARS))
    text.seek(0)
    reader = csv.DictReader(text, delimiter=delimiter)
    try:
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    except csv.Error as exc:
        report.issues.append(RowIssue(1, "", f"unreadable header: {exc}"))
        return report
    if "filename" not in fields or "label" not in fields:
        report.issues.append(RowIssue(1, "", f"header must have columns filename and label; found {fields or 'nothing'}"))
        return report
    reader.fieldnames = fields
    rows = _rows(reader, report)
    memes_dir = memes_dir.resolve()
    by_path = {p: i for i, p in session.execute(select(Image.path, Image.id)).all()}
    current = consensus_labels(session)
    seen: dict[str, str] = {}
    planned: list[tuple[str, str, int]] = []
    for line, row in rows:
        report.rows += 1
        raw_name = (row.get("filename") or "").strip()
        label = (row.get("label") or "").strip().lower()
        rel = _safe_rel(raw_name)
        if rel is None:
            report.issues.append(RowIssue(line, raw_name, "path is empty or outside the memes folder"))
            continue
        if label not in LABELS:
            report.issues.append(RowIssue(line, raw_name, f"unknown label {label!r} (expected toxic or non_toxic)"))
            continue
        if rel in seen:
            if seen[rel] != label:
                report.issues.append(RowIssue(line, raw_name, f"listed twice with different labels ({seen[rel]} / {label})"))
            else:
                report.unchanged += 1  # exact duplicate row: harmless
            continue
        seen[rel] = label
        if rel not in by_path:
            try:
                target = image_file(memes_dir, rel)
            except UnsafePath as exc:
                reason = str(exc).rsplit(": ", 1)[-1]
                report.issues.append(RowIssue(line, raw_name[:200], "path is outside the memes folder"
                                              if "outside" in reason or "leaves" in reason else reason))
                continue
            if not target.is_file():
                report.issues.append(RowIssue(line, raw_name, "no such file in the memes folder"))
                continue
        planned.append((rel, label, line))
    if report.issues and all_or_nothing:
        return report
    for rel, label, line in planned:
        image_id = by_path.get(rel)
        if image_id is None:
            path = memes_dir / rel
            stat, problem = checked_stat(path, memes_dir)  # never a FIFO, a device or a file past the cap
            try:
                if stat is None:
                    raise InvalidImage(problem or "cannot read")
                info = validate_bytes(path.read_bytes())
            except (InvalidImage, OSError) as exc:
                report.issues.append(RowIssue(line, rel, f"file is not a valid image: {exc}"))
                continue
            same = session.scalar(select(Image).where(Image.sha256 == info.sha256))
            if same is not None:
                image_id = same.id
            else:
                img = Image(sha256=info.sha256, path=rel, original_name=path.name, format=info.format,
                            width=info.width, height=info.height, bytes=info.bytes, n_frames=info.n_frames,
                            source="import", folder=folder_of(rel), mtime=path.stat().st_mtime)
                session.add(img)
                session.flush()
                image_id = img.id
                report.ingested += 1
        if current.get(image_id) == label:
            report.unchanged += 1
            continue
        add_label(session, image_id, label, annotator, context=LabelContext(order="import"))
        report.imported += 1
    if report.issues and all_or_nothing:  # late problems (unreadable files): undo everything
        session.rollback()
        report.imported = report.ingested = 0
        return report
    session.commit()
    report.applied = True
    return report
