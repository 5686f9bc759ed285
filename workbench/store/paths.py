"""The one guarded way from a stored image path to a file: a path stored in the database (or
read from a backup, a CSV, a dataset) names a file *inside* the memes folder, and nothing else.

`image_file(memes_dir, rel)` is what every reader calls; `check_rel_path(rel)` is the same rule
for rows about to be stored (ingest, restore, imports), and `checked_stat(path, root)` tells
why a file on disk must not be opened (FIFOs, devices, sockets, links leaving the folder,
files over the size cap).
"""

from __future__ import annotations

import os
import stat as stat_mod
from pathlib import Path

from workbench.config import MAX_UPLOAD_BYTES


class UnsafePath(ValueError):
    """A stored path that does not name a file inside the memes folder."""


def check_rel_path(rel: str) -> str | None:
    """Why `rel` cannot be a stored image path (None when it can): it must be a relative POSIX
    path without '..', empty parts, backslashes or control characters."""
    if not rel or not isinstance(rel, str):
        return "empty path"
    if any(ord(c) < 32 for c in rel):
        return "control character in path"
    if "\\" in rel:
        return "backslash in path"
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        return "absolute path"
    if len(rel.encode("utf-8", "surrogatepass")) > 4096 or any(len(p.encode("utf-8", "surrogatepass")) > 255
                                                                 for p in rel.split("/")):
        return "path too long"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "path leaves the memes folder ('..', '.' or an empty part)"
    return None


def image_file(memes_dir: Path, rel: str) -> Path:
    """The file a stored path names: `memes_dir / rel`, refused (UnsafePath) when the path is
    not a plain relative path or when its real location, symlinks resolved, leaves the folder.
    The returned path is the real one, so a link swapped after the check is not followed."""
    reason = check_rel_path(rel)
    if reason:
        raise UnsafePath(f"{rel[:200]!r}: {reason}")
    root = Path(memes_dir).resolve()
    real = (root / rel).resolve()
    if not real.is_relative_to(root):
        raise UnsafePath(f"{rel[:200]!r}: resolves outside the memes folder")
    return real


def checked_stat(path: Path, root: Path, max_bytes: int | None = None) -> tuple[os.stat_result | None, str | None]:
    """(the file's stat, None), or (None, why the file at `path` under `root` must not be read):
    not a regular file (FIFO, device, socket: opening a FIFO blocks forever), a link whose target
    leaves `root`, or larger than `max_bytes` (default: the upload cap). Reads only metadata;
    a plain file costs one lstat (os.walk does not enter linked folders), a link a resolve."""
    max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    try:
        st = os.lstat(path)
        if stat_mod.S_ISLNK(st.st_mode):
            real = Path(path).resolve(strict=True)
            if not real.is_relative_to(Path(root).resolve()):
                return None, "a link to a file outside the memes folder"
            st = os.stat(real)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        return None, f"cannot read: {exc}"
    if not stat_mod.S_ISREG(st.st_mode):
        return None, "not a regular file (FIFO, device or socket)"
    if st.st_size > max_bytes:
        return None, f"file is {st.st_size / 2**20:.1f} MB; the limit is {max_bytes // 2**20} MB"
    return st, None
