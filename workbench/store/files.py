"""Writing files so that a reader never sees half of one: the one atomic-write helper."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(target: Path, mode: str = "wb", **open_kwargs: object) -> Iterator[IO]:
    """Open a temporary file beside `target`; on success it replaces `target` in one rename,
    on error it is removed and `target` stays as it was. Creates the parent folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **open_kwargs) as fh:  # type: ignore[call-overload]
            yield fh
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
