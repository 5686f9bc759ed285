"""Ingest: scan the memes folder (incremental, move-aware) and store uploads.

Folder names map to labels (config.FOLDER_LABELS); such labels are stored with the
annotator 'folder'. Every file gets a report row; a bad file never stops the batch
and nothing already stored is touched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.config import FOLDER_LABELS, LABEL_FOLDERS, LABELS
from workbench.store import users
from workbench.store.db_locks import advisory_lock
from workbench.store.files import atomic_write
from workbench.store.images import ACCEPTED_SUFFIXES, ImageInfo, InvalidImage, safe_filename, validate_bytes
from workbench.store.labels import LabelContext, add_label, current_labels, images_changed
from workbench.store.paths import check_rel_path, checked_stat
from workbench.store.schema import Image, Label

FOLDER_ANNOTATOR = "folder"
UPLOAD_FOLDER = "uploads"


@dataclass
class FileReport:
    name: str  # path relative to the memes dir (or the uploaded name)
    status: str  # added | moved | unchanged | duplicate | rejected | ignored
    reason: str = ""
    image_id: int | None = None


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            out[f.status] = out.get(f.status, 0) + 1
        return out

    def rows(self) -> list[dict[str, object]]:
        return [{"file": f.name, "status": f.status, "reason": f.reason} for f in self.files]

    def summary(self) -> str:
        return ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items())) or "no files"


def rel_posix(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def folder_of(rel_path: str) -> str:
    """First path component ('' for files at the root)."""
    return rel_path.split("/", 1)[0] if "/" in rel_path else ""


def label_for_path(rel_path: str) -> str | None:
    """The label a file's folder implies (any path component counts, nearest wins)."""
    parts = rel_path.split("/")[:-1]
    for part in reversed(parts):
        label = FOLDER_LABELS.get(part.lower())
        if label:
            return label
    return None


def _iter_files(memes_dir: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(memes_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


FOLDER_CONTEXT = LabelContext(order="folder")  # a folder labels what it holds: not an active choice


def _set_folder_label(session: Session, image_id: int, label: str | None) -> None:
    if label is None:
        return
    mine = [c for c in current_labels(session, [image_id]) if c.annotator == FOLDER_ANNOTATOR]
    if not mine or mine[0].label != label:
        add_label(session, image_id, label, FOLDER_ANNOTATOR, context=FOLDER_CONTEXT)


def _new_image(rel: str, original_name: str, info: ImageInfo, source: str, mtime: float | None) -> Image:
    return Image(
        sha256=info.sha256, path=rel, original_name=original_name, format=info.format, width=info.width,
        height=info.height, bytes=info.bytes, n_frames=info.n_frames, source=source, folder=folder_of(rel),
        mtime=mtime, missing=False,
    )


def scan_folder(
    session: Session,
    memes_dir: Path,
    source: str = "folder",
    on_progress: Callable[[int, int], None] | None = None,
    commit_every: int = 200,
    actor: str | None = None,
) -> IngestReport:
    """Ingest every image file under `memes_dir` that is new or changed; commits as it goes.

    Scans of one folder run one at a time (two tabs, or a tab and the CLI): a second scan
    waits, then finds the first one's images already stored. Admins only when sign-in is on
    (`actor`: workbench.store.users.require).
    """
    users.authorize(session, actor, users.ADMIN, "scan", {"folder": str(memes_dir)})
    session.commit()  # the audit row: no write transaction held while the first files are read
    memes_dir = memes_dir.resolve()
    with folder_lock(memes_dir), advisory_lock(session.get_bind(), "workbench:ingest"):
        # Across machines sharing one PostgreSQL the advisory lock serialises scans: the second
        # one finds the first one's images stored instead of failing on their unique hashes.
        return _scan_folder(session, memes_dir, source, on_progress, commit_every)


@contextmanager
def folder_lock(memes_dir: Path) -> Iterator[None]:
    """Cross-process lock for writers of one memes folder (scan, upload). Kept in the temp
    dir, so a read-only memes folder works; released by the OS if the process dies."""
    key = hashlib.sha1(str(memes_dir.resolve()).encode("utf-8")).hexdigest()[:16]
    lock = FileLock(Path(tempfile.gettempdir()) / f"vlmemes-workbench-{key}.lock")  # waits as long as it takes
    try:
        lock.acquire()
    except OSError:  # e.g. another user's lock file: go on unlocked rather than refuse to scan
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _scan_folder(
    session: Session, memes_dir: Path, source: str, on_progress: Callable[[int, int], None] | None,
    commit_every: int,
) -> IngestReport:
    report = IngestReport()
    if not memes_dir.is_dir():
        report.files.append(FileReport(str(memes_dir), "rejected", "memes folder does not exist"))
        return report
    images_changed(session)  # a cached present_ids made before or during the scan is read again
    session.commit()  # no write transaction held while the files are read
    known = {img.path: img for img in session.scalars(select(Image))}
    by_sha = {img.sha256: img for img in known.values()}
    files = list(_iter_files(memes_dir))
    seen_paths: set[str] = set()
    pending: list[tuple[FileReport, Image]] = []  # report rows waiting for their image's id
    for n, path in enumerate(files, 1):
        rel = rel_posix(path, memes_dir)
        seen_paths.add(rel)
        if on_progress and (n % 50 == 0 or n == len(files)):
            on_progress(n, len(files))
        if path.suffix.lower() not in ACCEPTED_SUFFIXES:
            report.files.append(FileReport(rel, "ignored", f"not an image extension ({path.suffix or 'none'})"))
            continue
        bad_name = check_rel_path(rel)  # the rule every stored path must pass (store.paths)
        if bad_name:
            report.files.append(FileReport(rel, "rejected", f"unusable path: {bad_name}"))
            continue
        stat, problem = checked_stat(path, memes_dir)  # never opens a FIFO, a device or a file past the cap
        if stat is None:
            report.files.append(FileReport(rel, "rejected", problem or "cannot read"))
            continue
        existing = known.get(rel)
        if existing is not None and existing.mtime == stat.st_mtime and existing.bytes == stat.st_size and not existing.missing:
            report.files.append(FileReport(rel, "unchanged", image_id=existing.id))
            continue
        try:
            info = validate_bytes(path.read_bytes())
        except InvalidImage as exc:
            report.files.append(FileReport(rel, "rejected", str(exc)))
            continue
        except OSError as exc:
            report.files.append(FileReport(rel, "rejected", f"cannot read: {exc}"))
            continue
        same = by_sha.get(info.sha256)
        if same is not None and same.path == rel:  # touched but identical
            same.mtime, same.missing = stat.st_mtime, False
            report.files.append(FileReport(rel, "unchanged", image_id=same.id))
            continue
        if same is not None:
            old_path = memes_dir / same.path
            if same.missing or not old_path.exists():
                old_rel = same.path
                known.pop(old_rel, None)
                same.path, same.folder, same.mtime, same.missing = rel, folder_of(rel), stat.st_mtime, False
                known[rel] = same
                _set_folder_label(session, same.id, label_for_path(rel))
                report.files.append(FileReport(rel, "moved", f"was {old_rel}", same.id))
            else:
                pending.append((_report(report, FileReport(rel, "duplicate", f"same content as {same.path}")), same))
            continue
        if existing is not None:  # same path, new content: keep the old row's history, point it at nothing
            existing.missing = True
            existing.path = f"{existing.path}#replaced-{existing.id}"
        image = _new_image(rel, path.name, info, source, stat.st_mtime)
        folder_label = label_for_path(rel)
        if folder_label:  # a new image has no labels yet: no need to look any up
            image.labels.append(Label(label=folder_label, annotator=FOLDER_ANNOTATOR, queue_order="folder"))
        session.add(image)  # inserted in batches at the next commit (ids filled in then)
        known[rel], by_sha[info.sha256] = image, image
        pending.append((_report(report, FileReport(rel, "added")), image))
        if len(pending) >= commit_every:
            _commit(session, pending)
    for rel, img in known.items():
        if rel not in seen_paths and not img.missing and not (memes_dir / rel).exists():
            img.missing = True
    images_changed(session)
    _commit(session, pending)
    return report


def _report(report: IngestReport, entry: FileReport) -> FileReport:
    report.files.append(entry)
    return entry


def _commit(session: Session, pending: list[tuple[FileReport, Image]]) -> None:
    """Commit the batch and give its report rows their image ids."""
    session.commit()
    for entry, image in pending:
        entry.image_id = image.id
    pending.clear()


def unique_target(folder: Path, filename: str) -> Path:
    """folder/filename, or folder/stem_N.ext if taken."""
    target = folder / filename
    stem, suffix = target.stem, target.suffix
    n = 1
    while target.exists():
        target = folder / f"{stem}_{n}{suffix}"
        n += 1
    return target


def store_upload(
    session: Session,
    memes_dir: Path,
    filename: str,
    data: bytes,
    label: str | None = None,
    annotator: str | None = None,
    source: str = "upload",
) -> FileReport:
    """Validate uploaded bytes and store them under the memes dir with a safe name.

    With a label the file goes into that label's folder (Негативно/ or Нейтрально/) and
    gets that label (by `annotator`, else 'folder'); without one into uploads/.
    """
    shown = filename.replace("\x00", "\\0")[:200]
    if label is not None and label not in LABELS:
        return FileReport(shown, "rejected", f"unknown label {label!r}")
    try:
        info = validate_bytes(data)
    except InvalidImage as exc:
        return FileReport(shown, "rejected", str(exc))
    same = session.scalar(select(Image).where(Image.sha256 == info.sha256))
    if same is not None:
        return FileReport(shown, "duplicate", f"same content as {same.path}", same.id)
    memes_dir = memes_dir.resolve()
    folder = memes_dir / (LABEL_FOLDERS[label] if label else UPLOAD_FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    target = unique_target(folder, safe_filename(filename, info.format))
    if not target.resolve().is_relative_to(memes_dir):  # belt and braces: safe_filename strips dirs
        return FileReport(shown, "rejected", "unsafe file name")
    with atomic_write(target) as fh:
        fh.write(data)
    rel = rel_posix(target, memes_dir)
    image = _new_image(rel, filename.replace("\x00", "")[:1024], info, source, target.stat().st_mtime)
    session.add(image)
    session.flush()
    if label:
        add_label(session, image.id, label, annotator or FOLDER_ANNOTATOR, context=FOLDER_CONTEXT)
    return FileReport(shown, "added", f"stored as {rel}", image.id)


def store_uploads(
    session: Session, memes_dir: Path, files: Iterable[tuple[str, bytes]], label: str | None = None,
    annotator: str | None = None, actor: str | None = None,
) -> IngestReport:
    """store_upload for many files; each is committed on its own so one bad file costs nothing.
    Admins only when sign-in is on (`actor`: workbench.store.users.require)."""
    users.authorize(session, actor, users.ADMIN, "upload", {"label": label})
    report = IngestReport()
    with folder_lock(memes_dir), advisory_lock(session.get_bind(), "workbench:ingest"):
        _store_each(session, memes_dir, files, label, annotator, report)
    return report


def _store_each(session: Session, memes_dir: Path, files: Iterable[tuple[str, bytes]], label: str | None,
                annotator: str | None, report: IngestReport) -> None:
    for name, data in files:
        try:
            report.files.append(store_upload(session, memes_dir, name, data, label, annotator))
            session.commit()
        except Exception as exc:  # noqa: BLE001 - per-file failure is reported, the batch goes on
            session.rollback()
            report.files.append(FileReport(name[:200], "rejected", f"{type(exc).__name__}: {exc}"))
