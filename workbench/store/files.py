"""Writing files so that a reader never sees half of one: the one atomic-write helper."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class DiskFull(OSError):
    """No space left where a file was being written; str() is 'disk full: PATH'."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ENOSPC, f"disk full: {path}", str(path))

    def __str__(self) -> str:
        return f"disk full: {self.filename}"


@contextmanager
def atomic_write(target: Path, mode: str = "wb", verify: Callable[[Path], None] | None = None,
                 **open_kwargs: object) -> Iterator[IO]:
    """Open a temporary file beside `target`; on success it replaces `target` in one rename,
    on error it is removed and `target` stays as it was. Creates the parent folder.

    Before the rename the data is flushed and fsynced (a full disk can surface only then), a
    binary file's size on disk must equal what was written (an encoder writing to the file
    descriptor can lose a short write silently), and `verify(tmp_path)`, if given, must not
    raise (e.g. the image decodes). A full disk raises DiskFull naming `target`."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, **open_kwargs) as fh:  # type: ignore[call-overload]
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            if "b" in mode:
                written = fh.tell()
                on_disk = os.fstat(fh.fileno()).st_size
                if on_disk != written:
                    raise OSError(errno.EIO, f"{target}: {on_disk} of {written} bytes reached the disk")
        if verify is not None:
            verify(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        if isinstance(exc, DiskFull):
            raise
        if exc.errno == errno.ENOSPC or _almost_full(target.parent):  # a lost short write shows as a bad file
            raise DiskFull(target) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _almost_full(folder: Path, margin: int = 64 * 1024) -> bool:
    """Whether the file system holding `folder` has less than `margin` bytes free."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin
