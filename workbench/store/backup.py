"""Backup and restore: a portable bundle of everything people and models produced.

A bundle is a folder, or a .zip of the same files:

    manifest.json        format version, schema revision, row counts, options
    images.csv           the images manifest (path, sha256, size, ...) - one row per image
    labels.csv           every label row, revoked ones included (the full history)
    ocr_results.jsonl    OCR results and manual corrections
    model_runs.jsonl     model runs (configs incl. prompts)
    predictions.jsonl    model outputs
    jobs.jsonl, settings.jsonl
    embeddings.jsonl     only with include_embeddings (float16 bytes, base64)
    annotations.csv      the consensus export at backup time, to verify a restore
    files/<path>         only with include_files: the image files themselves

Rows keep their ids, so a restore into an EMPTY database (SQLite or PostgreSQL) gives back
every count and the same annotations.csv byte for byte; restore checks both before it
commits and refuses a database that already holds data. CSV cells are lossless and
spreadsheet-safe: NULL is `\\N` (as in PostgreSQL COPY), and a text that starts with a
formula trigger, a quote or a backslash gets one leading `'` that restore strips.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    Table,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from workbench.store.annotations import export_annotations
from workbench.store.db import normalize_url
from workbench.store.files import atomic_write
from workbench.store.images import sha256_file
from workbench.store.schema import Base

FORMAT = "vlmemes-workbench-backup"
FORMAT_VERSION = 1
# Tables in restore order (parents before children); csv for the two people read most.
TABLES: tuple[tuple[str, str], ...] = (
    ("images", "csv"),
    ("labels", "csv"),
    ("ocr_results", "jsonl"),
    ("model_runs", "jsonl"),
    ("predictions", "jsonl"),
    ("embeddings", "jsonl"),
    ("jobs", "jsonl"),
    ("settings", "jsonl"),
    ("duplicate_groups", "jsonl"),  # near-duplicate groups and "not duplicates" decisions (hashes are recomputed)
    ("duplicate_members", "jsonl"),
    ("distinct_pairs", "jsonl"),
    ("users", "jsonl"),  # team labeling; a bundle from before it simply has none of these
    ("adjudications", "csv"),
    ("audit_log", "jsonl"),
)
OPTIONAL_TABLES = ("embeddings",)
NULL = "\\N"
_CSV_ESCAPE = ("=", "+", "-", "@", "\t", "\r", "'", "\\")


class BackupError(ValueError):
    """A bundle that cannot be written or restored; str() says why."""


@dataclass
class BackupReport:
    path: Path
    counts: dict[str, int]
    files: int = 0

    def summary(self) -> str:
        rows = ", ".join(f"{n} {t}" for t, n in self.counts.items())
        extra = f"; {self.files} image files" if self.files else ""
        return f"backup written to {self.path}: {rows}{extra}"


@dataclass
class RestoreReport:
    counts: dict[str, int]
    files_written: int = 0
    files_present: int = 0
    files_missing: list[str] = field(default_factory=list)
    annotations_identical: bool = True

    def summary(self) -> str:
        rows = ", ".join(f"{n} {t}" for t, n in self.counts.items())
        text_ = f"restored {rows}; annotations.csv identical: {'yes' if self.annotations_identical else 'NO'}"
        text_ += f"; image files: {self.files_present} present"
        if self.files_written:
            text_ += f" ({self.files_written} written from the bundle)"
        if self.files_missing:
            text_ += f", {len(self.files_missing)} missing from the memes folder"
        return text_



class _CorruptFile(Exception):
    """A bundled image whose bytes do not match its recorded SHA-256."""


def _table(name: str) -> Table:
    return Base.metadata.tables[name]


# ---- cell encoding -------------------------------------------------------------------------

def _to_json_value(value: Any, column_type: Any) -> Any:
    if value is None:
        return None
    if isinstance(column_type, DateTime):
        if value.tzinfo is None:  # SQLite hands back naive UTC
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat()
    if isinstance(column_type, LargeBinary):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def _from_json_value(value: Any, column_type: Any) -> Any:
    if value is None:
        return None
    if isinstance(column_type, DateTime):
        return datetime.fromisoformat(value)
    if isinstance(column_type, LargeBinary):
        return base64.b64decode(value)
    return value


def encode_csv_cell(value: Any) -> str:
    """Lossless, spreadsheet-safe text for one CSV cell (see the module docstring)."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    value = str(value)
    return "'" + value if value.startswith(_CSV_ESCAPE) else value


def decode_csv_cell(cell: str) -> str | None:
    if cell == NULL:
        return None
    return cell[1:] if cell.startswith("'") else cell


def _typed(cell: str | None, column_type: Any) -> Any:
    if cell is None:
        return None
    if isinstance(column_type, Boolean):
        return cell == "1"
    if isinstance(column_type, Integer):
        return int(cell)
    if isinstance(column_type, Float):
        return float(cell)
    if isinstance(column_type, DateTime):
        return datetime.fromisoformat(cell)
    return cell


# ---- bundle I/O (folder or zip) ------------------------------------------------------------

class _Bundle:
    """Read/write members of a folder or a zip by name."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.suffix.lower() == ".zip":
            if mode == "r" and not zipfile.is_zipfile(path):
                raise BackupError(f"{path} is not a zip file")
            self.zip = zipfile.ZipFile(path, mode, compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        elif mode == "w":
            path.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def exists(self, name: str) -> bool:
        if self.zip is not None:
            return name in self.zip.NameToInfo
        return (self.path / name).is_file()

    @contextmanager
    def open_text(self, name: str, mode: str) -> Iterator[IO[str]]:
        if self.zip is not None:
            with self.zip.open(name, mode) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh:
                yield fh
        else:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, mode, encoding="utf-8", newline="") as fh:
                yield fh

    def write_file(self, name: str, source: Path) -> None:
        if self.zip is not None:
            self.zip.write(source, name)
        else:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)

    @contextmanager
    def open_binary(self, name: str) -> Iterator[IO[bytes]]:
        if self.zip is not None:
            with self.zip.open(name, "r") as fh:
                yield fh
        else:
            with open(self.path / name, "rb") as fh:
                yield fh


# ---- backup ----------------------------------------------------------------------------------

def _iter_rows(session: Session, table: Table, chunk: int = 2000) -> Iterator[dict[str, Any]]:
    order = [c for c in table.primary_key.columns]
    for row in session.execute(select(table).order_by(*order)).mappings().yield_per(chunk):
        yield dict(row)


def _write_table(session: Session, bundle: _Bundle, name: str, fmt: str) -> int:
    table = _table(name)
    columns = list(table.columns)
    n = 0
    with bundle.open_text(f"{name}.{fmt}", "w") as fh:
        if fmt == "csv":
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow([c.name for c in columns])
            for row in _iter_rows(session, table):
                writer.writerow([encode_csv_cell(_to_json_value(row[c.name], c.type)) for c in columns])
                n += 1
        else:
            for row in _iter_rows(session, table):
                record = {c.name: _to_json_value(row[c.name], c.type) for c in columns}
                fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
                n += 1
    return n


def table_counts(session: Session) -> dict[str, int]:
    """Rows per workbench table."""
    return {name: session.scalar(select(func.count()).select_from(_table(name))) or 0 for name, _ in TABLES}


def _schema_revision(session: Session) -> str | None:
    try:
        return session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception:  # noqa: BLE001 - a DB created without Alembic has no revision
        session.rollback()
        return None


@contextmanager
def snapshot_session(db_url: str) -> Iterator[Session]:
    """A consistent read-only view of the DB that does not block writers, so a backup can
    run while people label. SQLite: a deferred transaction on its own connection (WAL pins
    a snapshot at the first read; the app's sessions use BEGIN IMMEDIATE, which would hold
    the write lock for the whole backup). PostgreSQL: REPEATABLE READ, READ ONLY."""
    url = make_url(normalize_url(db_url))
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, poolclass=NullPool)

        @event.listens_for(engine, "connect")
        def _manual_transactions(dbapi_connection, _record) -> None:  # noqa: ANN001
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves

        @event.listens_for(engine, "begin")
        def _deferred(conn) -> None:  # noqa: ANN001
            conn.exec_driver_sql("BEGIN DEFERRED")
    else:
        engine = create_engine(url, poolclass=NullPool).execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True)
    try:
        with Session(bind=engine) as session:
            yield session
            session.rollback()
    finally:
        engine.dispose()


def backup(
    session: Session,
    out: Path,
    memes_dir: Path | None = None,
    include_embeddings: bool = False,
    include_files: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> BackupReport:
    """Write a bundle to `out` (a folder, or a file ending in .zip). Refuses to overwrite."""
    out = Path(out)
    if out.suffix.lower() == ".zip":
        if out.exists():
            raise BackupError(f"{out} already exists; choose a new name")
        out.parent.mkdir(parents=True, exist_ok=True)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"{out} exists and is not an empty folder; choose a new name")
    if include_files and memes_dir is None:
        raise BackupError("include_files needs the memes folder")
    bundle = _Bundle(out, "w")
    report = BackupReport(out, {})
    try:
        for name, fmt in TABLES:
            if name in OPTIONAL_TABLES and not include_embeddings:
                continue
            if on_progress:
                on_progress(name)
            report.counts[name] = _write_table(session, bundle, name, fmt)
        annotations = export_annotations(session)
        with bundle.open_text("annotations.csv", "w") as fh:
            fh.write(annotations)
        if include_files:
            assert memes_dir is not None
            for rel, missing in session.execute(select(_table("images").c.path, _table("images").c.missing)):
                source = memes_dir / rel
                if not missing and source.is_file():
                    bundle.write_file(f"files/{rel}", source)
                    report.files += 1
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(),
            "schema_revision": _schema_revision(session),
            "counts": report.counts,
            "tables": {name: f"{name}.{fmt}" for name, fmt in TABLES if name in report.counts},
            "include_embeddings": include_embeddings,
            "include_files": include_files,
            "files": report.files,
            "annotations_sha256": hashlib.sha256(annotations.encode("utf-8")).hexdigest(),
        }
        with bundle.open_text("manifest.json", "w") as fh:
            json.dump(manifest, fh, ensure_ascii=False, indent=2)
            fh.write("\n")
    except BaseException:
        bundle.close()
        if out.suffix.lower() == ".zip":
            out.unlink(missing_ok=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
        raise
    bundle.close()
    return report


# ---- restore ---------------------------------------------------------------------------------

def _read_rows(bundle: _Bundle, name: str, fmt: str) -> Iterator[dict[str, Any]]:
    table = _table(name)
    types = {c.name: c.type for c in table.columns}
    with bundle.open_text(f"{name}.{fmt}", "r") as fh:
        if fmt == "csv":
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or set(header) - set(types):
                raise BackupError(f"{name}.{fmt}: unexpected header {header}")
            for line, cells in enumerate(reader, start=2):
                if len(cells) != len(header):
                    raise BackupError(f"{name}.{fmt} line {line}: {len(cells)} cells, expected {len(header)}")
                yield {col: _typed(decode_csv_cell(cell), types[col]) for col, cell in zip(header, cells)}
        else:
            for line, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise BackupError(f"{name}.{fmt} line {line}: {exc}") from exc
                unknown = set(record) - set(types)
                if unknown:
                    raise BackupError(f"{name}.{fmt} line {line}: unknown columns {sorted(unknown)}")
                yield {col: _from_json_value(value, types[col]) for col, value in record.items()}


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a bundle (folder or zip)."""
    path = Path(path)
    if not path.exists():
        raise BackupError(f"{path} does not exist")
    bundle = _Bundle(path, "r")
    try:
        return _manifest(bundle)
    finally:
        bundle.close()


def _manifest(bundle: _Bundle) -> dict[str, Any]:
    if not bundle.exists("manifest.json"):
        raise BackupError(f"{bundle.path} is not a workbench backup (no manifest.json)")
    with bundle.open_text("manifest.json", "r") as fh:
        manifest = json.load(fh)
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{bundle.path} is not a workbench backup (format {manifest.get('format')!r})")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise BackupError(f"backup format {manifest['format_version']} is newer than this workbench understands "
                          f"({FORMAT_VERSION}); update the workbench")
    return manifest


def ensure_empty(session: Session) -> None:
    """Raise BackupError naming the tables that hold rows."""
    full = {name: n for name, n in table_counts(session).items() if n}
    if full:
        rows = ", ".join(f"{n} {t}" for t, n in full.items())
        raise BackupError(f"refusing to restore: the database is not empty ({rows}). Restore into a new, empty "
                          "database (set WORKBENCH_DB_URL to a new SQLite file or an empty PostgreSQL database).")


def _reset_sequences(session: Session) -> None:
    """PostgreSQL: ids were inserted explicitly, so move each id sequence past them."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for name, _ in TABLES:
        table = _table(name)
        if "id" not in table.c:
            continue
        session.execute(text(
            f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) "
            f"FROM {name}"))


def _safe_rel(rel: str) -> str | None:
    """A bundle's image path made relative and contained, or None (never trust a bundle)."""
    if not rel or "\x00" in rel or rel.startswith("/") or "\\" in rel or (len(rel) > 1 and rel[1] == ":"):
        return None
    parts = PurePosixPath(rel).parts
    if any(p in ("..", "") for p in parts):
        return None
    return "/".join(parts)


def _restore_files(bundle: _Bundle, memes_dir: Path, images: list[tuple[str, str, bool]], report: RestoreReport,
                   from_bundle: bool) -> None:
    memes_dir = memes_dir.resolve()
    for rel, sha, missing in images:
        if missing:
            continue
        safe = _safe_rel(rel)
        target = (memes_dir / safe).resolve() if safe else None
        if target is None or not target.is_relative_to(memes_dir):
            report.files_missing.append(rel)
            continue
        if target.is_file():
            report.files_present += 1
            continue
        if from_bundle and bundle.exists(f"files/{safe}"):
            try:
                with bundle.open_binary(f"files/{safe}") as src, atomic_write(target) as dst:
                    digest = hashlib.sha256()
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        digest.update(chunk)
                        dst.write(chunk)
                    if digest.hexdigest() != sha:
                        raise _CorruptFile(rel)  # leaves the target untouched
            except _CorruptFile:
                report.files_missing.append(rel)
                continue
            report.files_written += 1
            report.files_present += 1
        else:
            report.files_missing.append(rel)


def restore(session: Session, path: Path, memes_dir: Path | None = None, restore_files: bool = True,
            on_progress: Callable[[str], None] | None = None) -> RestoreReport:
    """Load a bundle into an EMPTY database in one transaction, verify the counts and the
    annotations.csv against the bundle, then commit. Image files stored in the bundle are
    written into `memes_dir` where absent (never overwriting)."""
    path = Path(path)
    if not path.exists():
        raise BackupError(f"{path} does not exist")
    bundle = _Bundle(path, "r")
    try:
        manifest = _manifest(bundle)
        ensure_empty(session)
        counts: dict[str, int] = {}
        for name, fmt in TABLES:
            if not bundle.exists(f"{name}.{fmt}"):
                if name in OPTIONAL_TABLES or name not in manifest.get("counts", {}):
                    continue
                raise BackupError(f"{path}: {name}.{fmt} is missing")
            if on_progress:
                on_progress(name)
            table = _table(name)
            batch: list[dict[str, Any]] = []
            counts[name] = 0
            for row in _read_rows(bundle, name, fmt):
                batch.append(row)
                if len(batch) >= 1000:
                    session.execute(insert(table), batch)
                    counts[name] += len(batch)
                    batch = []
            if batch:
                session.execute(insert(table), batch)
                counts[name] += len(batch)
        session.flush()
        _reset_sequences(session)
        expected = {k: int(v) for k, v in manifest.get("counts", {}).items()}
        got = {k: v for k, v in table_counts(session).items() if k in expected}
        if got != expected:
            raise BackupError(f"restored counts {got} differ from the bundle's {expected}; nothing was restored")
        with bundle.open_text("annotations.csv", "r") as fh:
            bundled_annotations = fh.read()
        identical = export_annotations(session) == bundled_annotations
        if not identical:
            raise BackupError("the restored annotations.csv differs from the one in the bundle; nothing was restored")
        report = RestoreReport(counts=counts, annotations_identical=identical)
        if memes_dir is not None:
            images = [(r["path"], r["sha256"], bool(r["missing"])) for r in session.execute(
                select(_table("images").c.path, _table("images").c.sha256, _table("images").c.missing)).mappings()]
            _restore_files(bundle, memes_dir, images, report, restore_files and bool(manifest.get("include_files")))
        session.commit()
        return report
    except BaseException:
        session.rollback()
        raise
    finally:
        bundle.close()


def verify_files(memes_dir: Path, session: Session, hashes: bool = False) -> dict[str, list[str]]:
    """Images whose file is absent (or, with hashes=True, changed) in the memes folder."""
    out: dict[str, list[str]] = {"missing": [], "changed": []}
    images = _table("images")
    for rel, sha in session.execute(select(images.c.path, images.c.sha256).where(images.c.missing.is_(False))):
        target = memes_dir / rel
        if not target.is_file():
            out["missing"].append(rel)
        elif hashes and sha256_file(target) != sha:
            out["changed"].append(rel)
    return out
