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
import binascii
import csv
import hashlib
import io
import json
import os
import shutil
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
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
from sqlalchemy.exc import DataError, IntegrityError, StatementError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from workbench.store.annotations import export_annotations
from workbench.store.db import normalize_url
from workbench.store.files import atomic_write
from workbench.store.images import sha256_file
from workbench.store.paths import UnsafePath, check_rel_path, image_file
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


# Caps on what a bundle may hold (a 1 MB zip can expand to gigabytes): per member, and per line or
# field, which is what bounds memory while streaming. Settings: WORKBENCH_RESTORE_MAX_MB (per
# member, default 16 GiB) and WORKBENCH_RESTORE_MAX_LINE_MB (default 16 MiB).
MANIFEST_MAX_BYTES = 1 << 20


def member_cap() -> int:
    """Largest member (table file, annotations.csv, image) a restore reads, in bytes."""
    return int(float(os.environ.get("WORKBENCH_RESTORE_MAX_MB") or 16384) * 2**20)


def line_cap() -> int:
    """Longest line (JSONL row, CSV record) a restore reads, in bytes (characters for text)."""
    return int(float(os.environ.get("WORKBENCH_RESTORE_MAX_LINE_MB") or 16) * 2**20)


class BackupError(ValueError):
    """A bundle that cannot be written or restored; str() says why."""


@dataclass
class BackupReport:
    path: Path
    counts: dict[str, int]
    files: int = 0
    skipped_files: list[str] = field(default_factory=list)  # stored paths outside the memes folder

    def summary(self) -> str:
        rows = ", ".join(f"{n} {t}" for t, n in self.counts.items())
        extra = f"; {self.files} image files" if self.files else ""
        if self.skipped_files:
            extra += f"; {len(self.skipped_files)} files skipped (paths outside the memes folder)"
        return f"backup written to {self.path}: {rows}{extra}"


@dataclass
class RestoreReport:
    counts: dict[str, int]
    files_written: int = 0
    files_present: int = 0
    files_missing: list[str] = field(default_factory=list)
    annotations_identical: bool = True
    skipped: dict[str, int] = field(default_factory=dict)  # tables left out (users without with_users)

    def summary(self) -> str:
        rows = ", ".join(f"{n} {t}" for t, n in self.counts.items())
        text_ = f"restored {rows}; annotations.csv identical: {'yes' if self.annotations_identical else 'NO'}"
        text_ += f"; image files: {self.files_present} present"
        if self.files_written:
            text_ += f" ({self.files_written} written from the bundle)"
        if self.files_missing:
            text_ += f", {len(self.files_missing)} missing from the memes folder"
        for name, n in self.skipped.items():
            if n:
                text_ += f"; {n} {name} not restored (pass --with-users to restore users and roles)"
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

    def _check_declared(self, name: str, cap: int) -> None:
        """Refuse a member whose declared size is over `cap` before reading a byte of it."""
        size = self.zip.getinfo(name).file_size if self.zip is not None else (self.path / name).stat().st_size
        if size > cap:
            raise BackupError(f"{self.path}: {name} is {size / 2**20:.0f} MB, over the restore limit of "
                              f"{cap // 2**20} MB (WORKBENCH_RESTORE_MAX_MB)")

    @contextmanager
    def open_text(self, name: str, mode: str, cap: int | None = None) -> Iterator[IO[str]]:
        """A member as text; when reading, its declared and actual size are held to `cap`
        (default: member_cap()) while streaming."""
        if mode == "r":
            cap = member_cap() if cap is None else cap
            self._check_declared(name, cap)
            with self._raw(name) as raw, io.TextIOWrapper(_Capped(raw, cap, f"{self.path}: {name}"),
                                                          encoding="utf-8", newline="") as fh:
                yield fh
        elif self.zip is not None:
            with self.zip.open(name, mode) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh:
                yield fh
        else:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, mode, encoding="utf-8", newline="") as fh:
                yield fh

    def _raw(self, name: str) -> IO[bytes]:
        return self.zip.open(name, "r") if self.zip is not None else open(self.path / name, "rb")

    def write_file(self, name: str, source: Path) -> None:
        if self.zip is not None:
            self.zip.write(source, name)
        else:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)

    @contextmanager
    def open_binary(self, name: str, cap: int | None = None) -> Iterator[IO[bytes]]:
        """A member's bytes, held to `cap` (default: member_cap()) declared and while streaming."""
        cap = member_cap() if cap is None else cap
        self._check_declared(name, cap)
        with self._raw(name) as raw:
            yield _Capped(raw, cap, f"{self.path}: {name}")


class _Capped(io.RawIOBase):
    """A read-only stream that raises BackupError once more than `cap` bytes came through: a
    zip member's declared size can lie, and a bad CRC shows only at its end."""

    def __init__(self, raw: IO[bytes], cap: int, what: str) -> None:
        super().__init__()
        self.raw, self.cap, self.what, self.seen = raw, cap, what, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.raw.read(min(len(buffer), self.cap + 1 - self.seen) or 1)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise BackupError(f"{self.what}: damaged ({exc})") from exc
        self.seen += len(data)
        if self.seen > self.cap:
            raise BackupError(f"{self.what} holds more than {self.cap // 2**20} MB, the restore limit "
                              "(WORKBENCH_RESTORE_MAX_MB)")
        buffer[: len(data)] = data
        return len(data)


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
    """Write a bundle to `out` (a folder, or a file ending in .zip). Refuses to overwrite.

    The bundle is written under a temporary name beside `out` and renamed into place once
    complete, so a killed backup never leaves a partial bundle under the final name. With
    `include_files`, image files are read only through the guarded resolver (store.paths):
    a stored path that leaves the memes folder is skipped and listed, never copied."""
    out = Path(out)
    is_zip = out.suffix.lower() == ".zip"
    if is_zip:
        if out.exists():
            raise BackupError(f"{out} already exists; choose a new name")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"{out} exists and is not an empty folder; choose a new name")
    if include_files and memes_dir is None:
        raise BackupError("include_files needs the memes folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}{out.suffix if is_zip else ''}")
    bundle = _Bundle(partial, "w")
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
                if missing:
                    continue
                try:
                    source = image_file(memes_dir, rel)
                except UnsafePath:
                    report.skipped_files.append(rel)
                    continue
                if source.is_file():
                    bundle.write_file(f"files/{rel}", source)  # rel passed check_rel_path: stays inside
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
        bundle.close()
        if not is_zip and out.exists():
            out.rmdir()  # the empty folder named as the target
        os.replace(partial, out)
    except BaseException:
        bundle.close()
        if is_zip:
            partial.unlink(missing_ok=True)
        else:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    return report


# ---- restore ---------------------------------------------------------------------------------

def _lines(fh: IO[str], where: str) -> Iterator[str]:
    """The member's lines, each held to line_cap(): a single huge line never sits in memory."""
    cap = line_cap()
    line_no = 0
    while raw := fh.readline(cap + 1):
        line_no += 1
        if len(raw) > cap:
            raise BackupError(f"{where} line {line_no}: longer than {cap // 2**20} MB "
                              "(WORKBENCH_RESTORE_MAX_LINE_MB)")
        yield raw


def _read_rows(bundle: _Bundle, name: str, fmt: str) -> Iterator[dict[str, Any]]:
    table = _table(name)
    types = {c.name: c.type for c in table.columns}
    where = f"{name}.{fmt}"
    with bundle.open_text(where, "r") as fh:
        if fmt == "csv":
            old_limit = csv.field_size_limit(line_cap())  # fields may be as long as a line may be
            try:
                reader = csv.reader(_lines(fh, where))
                header = next(reader, None)
                if header is None or set(header) - set(types):
                    raise BackupError(f"{where}: unexpected header {header}")
                for cells in reader:
                    line = reader.line_num
                    if len(cells) != len(header):
                        raise BackupError(f"{where} line {line}: {len(cells)} cells, expected {len(header)}")
                    try:
                        yield {col: _typed(decode_csv_cell(cell), types[col]) for col, cell in zip(header, cells)}
                    except (ValueError, TypeError) as exc:
                        raise BackupError(f"{where} line {line}: {exc}") from exc
            except csv.Error as exc:
                raise BackupError(f"{where}: {exc}") from exc
            finally:
                csv.field_size_limit(old_limit)
        else:
            for line, raw in enumerate(_lines(fh, where), start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise BackupError(f"{where} line {line}: {exc}") from exc
                if not isinstance(record, dict):
                    raise BackupError(f"{where} line {line}: not a JSON object")
                unknown = set(record) - set(types)
                if unknown:
                    raise BackupError(f"{where} line {line}: unknown columns {sorted(unknown)}")
                try:
                    yield {col: _from_json_value(value, types[col]) for col, value in record.items()}
                except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
                    raise BackupError(f"{where} line {line}: {type(exc).__name__}: {exc}") from exc


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
    try:
        with bundle.open_text("manifest.json", "r", cap=MANIFEST_MAX_BYTES) as fh:
            manifest = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupError(f"{bundle.path}: manifest.json is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BackupError(f"{bundle.path}: manifest.json is not a JSON object")
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


def _restore_files(bundle: _Bundle, memes_dir: Path, images: list[tuple[str, str, bool]], report: RestoreReport,
                   from_bundle: bool) -> None:
    for rel, sha, missing in images:
        if missing:
            continue
        try:  # paths were checked row by row before; links inside the folder are resolved here
            target = image_file(memes_dir, rel)
        except UnsafePath:
            report.files_missing.append(rel)
            continue
        safe = rel
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


SYSTEM_ONLY_TABLES = ("users",)  # restored only when asked (with_users): who may do what


def restore(session: Session, path: Path, memes_dir: Path | None = None, restore_files: bool = True,
            on_progress: Callable[[str], None] | None = None, with_users: bool = False,
            actor: str | None = None) -> RestoreReport:
    """Load a bundle into an EMPTY database in one transaction, verify the counts and the
    annotations.csv against the bundle, then commit. Image files stored in the bundle are
    written into `memes_dir` where absent (never overwriting).

    Never trusts the bundle: every member is held to size caps while it streams, every image
    path must name a file inside the memes folder (bad rows are listed and nothing is stored),
    users and roles come across only with `with_users`, and the restore itself is recorded in
    the audit log under `actor` (users.actor_name)."""
    from workbench.store import audit
    from workbench.store.users import ADMIN, actor_name, require

    require(session, actor, ADMIN)  # the operator, or an admin acting through a trusted CLI (--as)
    path = Path(path)
    if not path.exists():
        raise BackupError(f"{path} does not exist")
    bundle = _Bundle(path, "r")
    try:
        manifest = _manifest(bundle)
        ensure_empty(session)
        counts: dict[str, int] = {}
        skipped: dict[str, int] = {}
        for name, fmt in TABLES:
            if not bundle.exists(f"{name}.{fmt}"):
                if name in OPTIONAL_TABLES or name not in manifest.get("counts", {}):
                    continue
                raise BackupError(f"{path}: {name}.{fmt} is missing")
            if name in SYSTEM_ONLY_TABLES and not with_users:
                skipped[name] = int(manifest.get("counts", {}).get(name, 0))
                continue
            if on_progress:
                on_progress(name)
            counts[name] = _insert_rows(session, bundle, name, fmt)
        session.flush()
        _reset_sequences(session)
        expected = {k: int(v) for k, v in manifest.get("counts", {}).items() if k not in skipped}
        got = {k: v for k, v in table_counts(session).items() if k in expected}
        if got != expected:
            raise BackupError(f"restored counts {got} differ from the bundle's {expected}; nothing was restored")
        identical = _bundled_annotations_sha256(bundle) == hashlib.sha256(
            export_annotations(session).encode("utf-8")).hexdigest()
        if not identical:
            raise BackupError("the restored annotations.csv differs from the one in the bundle; nothing was restored")
        report = RestoreReport(counts=counts, annotations_identical=identical, skipped=skipped)
        audit.record(session, actor_name(actor), "restore",
                     {"bundle": str(path), "counts": counts, "with_users": with_users, "skipped": skipped})
        if memes_dir is not None:
            images = [(r["path"], r["sha256"], bool(r["missing"])) for r in session.execute(
                select(_table("images").c.path, _table("images").c.sha256, _table("images").c.missing)).mappings()]
            _restore_files(bundle, memes_dir, images, report, restore_files and bool(manifest.get("include_files")))
        session.commit()
        return report
    except (IntegrityError, DataError, StatementError) as exc:  # a bundle whose rows break the schema
        session.rollback()
        raise BackupError(f"{path}: rows do not fit the schema, nothing was restored: "
                          f"{str(getattr(exc, 'orig', exc)).splitlines()[0][:300]}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        bundle.close()


def _insert_rows(session: Session, bundle: _Bundle, name: str, fmt: str) -> int:
    """Stream one table's rows into the session in batches; image paths are checked per row."""
    table = _table(name)
    bad: list[str] = []
    batch: list[dict[str, Any]] = []
    n = 0
    for line, row in enumerate(_read_rows(bundle, name, fmt), start=2 if fmt == "csv" else 1):
        if name == "images" and not row.get("missing"):
            reason = check_rel_path(str(row.get("path") or ""))
            if reason:
                bad.append(f"line {line}: path {str(row.get('path'))[:200]!r}: {reason}")
                continue
        batch.append(row)
        if len(batch) >= 1000:
            session.execute(insert(table), batch)
            n += len(batch)
            batch = []
    if bad:
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise BackupError(f"{bundle.path}: {name}.{fmt}: {len(bad)} image path(s) outside the memes folder, "
                          f"nothing was restored: {shown}")
    if batch:
        session.execute(insert(table), batch)
        n += len(batch)
    return n


def _bundled_annotations_sha256(bundle: _Bundle) -> str:
    """The bundle's annotations.csv hashed as it streams (it may be huge: never read whole)."""
    digest = hashlib.sha256()
    with bundle.open_binary("annotations.csv") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
