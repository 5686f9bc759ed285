"""The suite cannot hang: a test stuck in native code that never returns to Python (as oneDNN
did on AMX CPUs) is stopped by pytest-timeout within the limit, with every thread's stack,
under this project's pytest configuration. With the default signal method it hangs forever."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

NATIVE_HANG = '''
import ctypes

def test_stuck_in_native_code():
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: a default pthread mutex
    libc.pthread_mutex_lock(mutex)
    # Locking it again deadlocks in C with the GIL released, and no signal interrupts it:
    # a native hang like oneDNN's.
    libc.pthread_mutex_lock(mutex)
'''


def test_a_native_hang_ends_within_the_timeout(tmp_path):
    test_file = tmp_path / "test_native_hang.py"
    test_file.write_text(NATIVE_HANG, encoding="utf-8")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(test_file), "-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO),
         "-p", "no:cacheprovider", "-q", "--timeout", "3"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Timeout" in out and "pthread_mutex_lock(mutex)" in out, out[-2000:]  # every stack is dumped
    assert time.monotonic() - t0 < 45
