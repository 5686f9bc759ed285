"""A real Dask cluster on localhost for tests and benchmarks: `dask scheduler` and N
`dask worker` processes (each with its nanny, as in a real set-up), started as subprocesses
on a free port with the repository on their PYTHONPATH, waited for, and always stopped.

    with LocalDask(workers=2) as cluster:
        cluster.address        # tcp://127.0.0.1:PORT
        cluster.worker_pids()  # {worker address: pid of its worker process}
        cluster.stop_scheduler()

Workers run from a temporary folder, not the repository, and are never told where the memes
or the database are: what they compute comes only from what the job sends them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
DASK = str(Path(sys.executable).with_name("dask"))


class LocalDask:
    """`dask scheduler --port N` plus `workers` × `dask worker tcp://127.0.0.1:N --nthreads 1`."""

    def __init__(self, workers: int = 2, threads: int = 1) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.n_workers = workers
        self.threads = threads
        self.log_path = Path(tempfile.mkstemp(prefix="dask-cluster-", suffix=".log")[1])
        self.cwd = tempfile.mkdtemp(prefix="dask-worker-cwd-")
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _env(self) -> dict[str, str]:
        # The workers' only link to this repository is the code (PYTHONPATH), as after
        # installing the same checkout and lock on another machine.
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
        env.update(PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", OMP_THREAD_LIMIT="1", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", DASK_DISTRIBUTED__WORKER__DAEMON="False")
        return env

    def _spawn(self, *args: str, path_first: Path | None = None) -> subprocess.Popen[bytes]:
        env = self._env()
        if path_first is not None:
            env["PYTHONPATH"] = f"{path_first}{os.pathsep}{env['PYTHONPATH']}"
        with open(self.log_path, "ab") as log:
            return subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.cwd, start_new_session=True)

    def start(self) -> LocalDask:
        """Start the scheduler and the workers; wait until every worker has joined."""
        self.scheduler = self._spawn("scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                     "--no-dashboard")
        for _ in range(self.n_workers):
            self.add_worker()
        self.wait_for_workers(self.n_workers)
        return self

    def add_worker(self, path_first: Path | None = None) -> subprocess.Popen[bytes]:
        """Start one more worker (`path_first`: a folder put before everything on its PYTHONPATH,
        e.g. other installed packages); the caller waits for it with `wait_for_workers`."""
        worker = self._spawn("worker", self.address, "--nthreads", str(self.threads), "--no-dashboard",
                             "--memory-limit", "0", "--host", "127.0.0.1", path_first=path_first)
        self.workers.append(worker)
        return worker

    def remove_worker(self, worker: subprocess.Popen[bytes]) -> None:
        _stop(worker)
        self.workers.remove(worker)

    def client(self, timeout: float = START_TIMEOUT_S) -> Any:
        from distributed import Client

        return Client(self.address, timeout=timeout, set_as_default=False)

    def wait_for_workers(self, n: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.scheduler is not None and self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited with {self.scheduler.returncode}:\n{self.log_tail()}")
            try:
                with self.client(timeout=5) as client:
                    client.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                    return
            except (OSError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError(f"{n} dask workers did not join within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def worker_pids(self) -> dict[str, int]:
        """Each worker's address and the pid of its worker process (not its nanny)."""
        with self.client() as client:
            return client.run(os.getpid)

    def stop_scheduler(self) -> None:
        _stop(self.scheduler)
        self.scheduler = None

    def stop(self) -> None:
        """Stop the workers, then the scheduler (terminate, then kill after 10 s)."""
        for worker in self.workers:
            _stop(worker)
        self.workers = []
        self.stop_scheduler()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> LocalDask:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
