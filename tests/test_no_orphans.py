"""Killing a multi-worker job leaves no worker processes behind (issue 22): after SIGKILL of
`ocr --workers 2` (no chance to clean up), its pool workers notice their parent is gone and
end within seconds, instead of waiting on their pipe forever (260 MB each)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workbench.store.demo_memes import write_sample_memes

REPO = Path(__file__).resolve().parent.parent


def children_of(pid: int) -> set[int]:
    """Direct children of `pid`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_of_a_two_worker_job_leaves_no_workers(settings, tmp_path):
    write_sample_memes(settings.memes_dir, n=60, seed=8, size=(320, 200))
    env = dict(os.environ, WORKBENCH_DB_URL=settings.db_url, WORKBENCH_MEMES_DIR=str(settings.memes_dir),
               WORKBENCH_ARTEFACTS_DIR=str(settings.artefacts_dir))
    assert subprocess.run([sys.executable, "-m", "workbench", "ingest"], cwd=REPO, env=env,
                          capture_output=True).returncode == 0
    job = subprocess.Popen([sys.executable, "-m", "workbench", "ocr", "--engine", "tesseract", "--workers", "2",
                            "--batch-size", "1", "--quiet"], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while len(workers) < 2:  # the pool's workers (spawned: python processes under the job)
            assert time.monotonic() < deadline, "the pool never started"
            assert job.poll() is None, "the job ended before its workers were seen"
            workers = {p for p in children_of(job.pid)
                       if "multiprocessing" in (Path("/proc") / str(p) / "cmdline").read_bytes().decode(errors="replace")
                       and "resource_tracker" not in (Path("/proc") / str(p) / "cmdline").read_bytes().decode(
                           errors="replace")}
            time.sleep(0.2)
        time.sleep(1.0)  # the workers are busy reading memes
        os.kill(job.pid, signal.SIGKILL)
        job.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(alive(p) for p in workers):
            assert time.monotonic() < deadline, f"workers left behind: {[p for p in workers if alive(p)]}"
            time.sleep(0.2)
    finally:
        if job.poll() is None:
            job.kill()
