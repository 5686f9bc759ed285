"""The job runner's third executor: a step's batches on a Dask distributed cluster.

The process that started the job stays the only writer to the database. It reads each
batch's image files, sends their bytes with the pickled step to the workers (which need no
memes folder and no database), and hands the results back to the runner as futures complete,
so the runner commits them batch by batch (resume, skip-done and the job listing as for a
local job). On a worker the step is unpickled and loaded once per worker process (a cache
keyed by the step's class and fingerprint). A batch lost with a dead worker is recomputed by
the scheduler on another worker; its future still completes once, so it is saved once.

Failures: an unreachable scheduler fails the job at once with its address and how to start
one; a worker that lacks a package the step needs fails that batch with the package's name;
version skew between this machine and the workers fails the job naming the packages; a
scheduler lost mid-job fails it with what was committed kept, so a rerun resumes.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from workbench.runs.step import ItemResult, Progress, Step, WorkItem

CONNECT_TIMEOUT_S = 5.0  # an unreachable scheduler fails this fast
START_HELP = ("start one with `dask scheduler` on that machine and `dask worker tcp://HOST:8786` on each worker "
              "machine (README: Jobs on a Dask cluster)")
# Packages whose versions must match between this machine and the workers: Dask's own wire
# format, and what steps compute with (a different torch or tesseract gives other results).
CHECKED_PACKAGES = ("dask", "distributed", "cloudpickle", "msgpack", "tornado", "toolz", "numpy", "pillow",
                    "torch", "transformers", "tesserocr", "imagehash", "opencv-python-headless", "onnxruntime")
STEP_CACHE_SIZE = 2  # loaded steps a worker process keeps (each may hold a model)


class ClusterError(RuntimeError):
    """The cluster cannot run this job (unreachable scheduler, version skew, lost scheduler)."""


def connect(address: str) -> Any:
    """A distributed.Client on `address`, checked: reachable within CONNECT_TIMEOUT_S, with at
    least one worker, and the same versions of CHECKED_PACKAGES as here. ClusterError otherwise."""
    from distributed import Client

    address = address.strip()
    try:
        _reachable(address)  # a refused port fails now, not after Dask's connect retries
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except ModuleNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError/TimeoutError/ValueError alike: say where and what to do
        raise ClusterError(f"cannot reach the Dask scheduler at {address} ({type(exc).__name__}: {exc}); "
                           f"{START_HELP}") from None
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - TimeoutError: a scheduler without workers would hang the job
        client.close()
        raise ClusterError(f"the Dask scheduler at {address} has no workers; start one on each worker machine "
                           f"with `dask worker {address}`") from None
    try:
        skew = version_skew(client.get_versions(packages=list(CHECKED_PACKAGES)))
    except Exception:
        client.close()
        raise
    if skew:
        client.close()
        raise ClusterError(f"version skew between this machine and the Dask cluster at {address}: {skew}; "
                           "install the same lock (requirements.lock) on every worker")
    return client


def _reachable(address: str) -> None:
    """Open and close a TCP connection to the scheduler's address (OSError when nothing listens)."""
    import socket

    from distributed.comm import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme not in ("tcp", "tls"):
        return  # inproc:// and others: Dask itself says
    host, port = parse_host_port(location, 8786)
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
        pass


def version_skew(versions: dict[str, Any]) -> str | None:
    """What differs between the client's and the workers' package versions (Client.get_versions),
    as "PACKAGE X here, Y on WORKER; ..."; None when they match. A package a worker lacks is
    not skew: the batches that need it fail naming it (see `run_batch`)."""
    mine = versions["client"]["packages"]
    parts = []
    for pkg in sorted(mine):
        ours = mine[pkg]
        if ours is None:
            continue
        theirs = {}
        for worker, info in sorted(versions["workers"].items()):
            other = ((info or {}).get("packages") or {}).get(pkg)
            if other is not None and other != ours:
                theirs[worker] = other
        if theirs:
            parts.append(f"{pkg} {ours} here, " + ", ".join(f"{v} on {w}" for w, v in theirs.items()))
    return "; ".join(parts) or None


# ---------------------------------------------------------------- worker side

_steps: OrderedDict[str, Step] = OrderedDict()
_steps_lock = threading.Lock()


def step_key(step: Step) -> str:
    """What a worker caches a loaded step under: its class and config fingerprint."""
    return f"{type(step).__module__}:{type(step).__qualname__}:{step.fingerprint()}"


def _loaded_step(key: str, blob: bytes) -> Step:
    """The step `blob` pickles, loaded once per worker process and config (kept under `key`)."""
    with _steps_lock:  # one load at a time: two threads of one worker never load a model twice
        step = _steps.get(key)
        if step is None:
            os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # one Tesseract thread per task, as in the pool
            step = pickle.loads(blob)
            step.use_scratch(Path(tempfile.mkdtemp(prefix="workbench-worker-")))
            step.load()
            _steps[key] = step
            while len(_steps) > STEP_CACHE_SIZE:
                _steps.popitem(last=False)
        _steps.move_to_end(key)
        return step


def run_batch(key: str, blob: bytes, batch: list[tuple[int, str, bytes, str]]) -> list[ItemResult]:
    """A worker's task: one batch of (image id, file suffix, file bytes, OCR text), written to
    a scratch folder and processed by the step (loaded once, see `_loaded_step`). A package the
    step needs and this worker lacks, or a model that cannot load here, fails the batch's items
    with that message. The runner's `safe_process` turns other batch errors into item errors."""
    from workbench.runs.runner import safe_process

    where = _worker_address()
    try:
        step = _loaded_step(key, blob)
    except ModuleNotFoundError as exc:
        error = (f"worker {where} lacks the Python package {exc.name!r} ({exc}); install the same lock "
                 "(requirements.lock) there")
        return [ItemResult(image_id, error=error) for image_id, *_ in batch]
    except Exception as exc:  # noqa: BLE001 - a model missing on this worker fails its batches, visibly
        return [ItemResult(image_id, error=f"worker {where}: {type(exc).__name__}: {exc}") for image_id, *_ in batch]
    with tempfile.TemporaryDirectory(prefix="workbench-batch-") as scratch:
        items = []
        for image_id, suffix, data, text in batch:
            path = Path(scratch) / f"{image_id}{suffix}"
            path.write_bytes(data)
            items.append(WorkItem(image_id, path, text))
        return [step.remote_result(r) for r in safe_process(step, items)]


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except Exception:  # noqa: BLE001 - called outside a worker (a test): no address to name
        return "(not a worker)"


# ---------------------------------------------------------------- client side

def payload(items: Iterable[WorkItem]) -> tuple[list[tuple[int, str, bytes, str]], list[ItemResult]]:
    """A batch as it travels: each item's file bytes; a file that cannot be read here is that
    item's error (the second list), never the batch's."""
    batch, failed = [], []
    for item in items:
        try:
            batch.append((item.image_id, item.path.suffix, item.path.read_bytes(), item.ocr_text))
        except OSError as exc:
            failed.append(ItemResult(item.image_id, error=f"cannot read image: {type(exc).__name__}: {exc}"))
    return batch, failed


def drive(address: str, step: Step, batches: Iterable[list[int]], items_for: Callable[[list[int]], list[WorkItem]],
          record: Callable[[list[ItemResult]], None], should_stop: Callable[[], bool] | None,
          progress: Progress) -> tuple[str, str | None]:
    """Run every batch on the cluster at `address`, at most two per worker thread in flight;
    `record` saves each batch's results as its future completes (in this thread). Returns the
    job's (status, error) as the runner's other executors do."""
    try:
        client = connect(address)
    except ClusterError as exc:
        return "failed", str(exc)
    import cloudpickle

    key = step_key(step)
    try:
        blob = cloudpickle.dumps(step)  # by reference for importable classes; by value for a script's own
    except Exception as exc:  # noqa: BLE001 - a step holding an open handle cannot travel
        client.close()
        return "failed", f"{step.name} cannot be sent to a cluster: {type(exc).__name__}: {exc}"
    pending: dict[Any, list[int]] = {}  # future -> its batch's image ids
    try:
        shared = client.scatter(blob, broadcast=True, hash=True)  # once per worker, not per batch
        progress.bytes_sent += len(blob)
        for batch_ids in batches:
            batch, unreadable = payload(items_for(batch_ids))
            if unreadable:
                record(unreadable)
            if batch:
                progress.bytes_sent += sum(len(data) for _, _, data, _ in batch)
                pending[client.submit(run_batch, key, shared, batch, pure=False)] = [i for i, *_ in batch]
            while len(pending) >= max(2, 2 * _threads(client)):
                pending = _collect(client, pending, record, progress)
                if should_stop and should_stop():
                    return "cancelled", "cancelled by user"
        while pending:
            pending = _collect(client, pending, record, progress)
            if pending and should_stop and should_stop():
                return "cancelled", "cancelled by user"
        return "done", None
    except _SchedulerLost as exc:
        return "failed", (f"lost the Dask scheduler at {address} mid-job ({exc}); the batches committed so far "
                          "are kept: start the job again (or resume it) to do the rest")
    finally:
        if pending:
            try:
                client.cancel(list(pending))
            except Exception:  # noqa: BLE001 - the scheduler may be gone: nothing left to cancel
                pass
        client.close()


class _SchedulerLost(RuntimeError):
    pass


def _collect(client: Any, pending: dict[Any, list[int]], record: Callable[[list[ItemResult]], None],
             progress: Progress) -> dict[Any, list[int]]:
    """Wait for one future of `pending` to finish, record the finished ones (a batch whose task
    failed as a whole, e.g. its worker died too often or could not unpickle it: an error per
    item) and note how busy the workers are; the futures still pending."""
    from distributed import wait

    try:
        with client.as_current():  # wait() looks for "the" client; ours is never set as the default
            waited = wait(list(pending), return_when="FIRST_COMPLETED")
    except Exception as exc:  # noqa: BLE001 - FuturesCancelledError: the client lost the scheduler
        reason = str(exc).splitlines()
        raise _SchedulerLost(next((line.strip() for line in reason if line.startswith("Message:")),
                                  reason[0] if reason else type(exc).__name__)) from None
    for fut in waited.done:
        ids = pending.pop(fut)
        try:
            results = fut.result()
        except Exception as exc:  # noqa: BLE001 - CancelledError and a connection closed alike
            if client.status != "running" or fut.status == "cancelled":
                raise _SchedulerLost(f"{type(exc).__name__}: {exc}") from None
            error = f"batch failed on the cluster: {type(exc).__name__}: {exc}"
            results = [ItemResult(i, error=error) for i in ids]
        record_busy(client, progress)
        record(results)
    return pending


def record_busy(client: Any, progress: Progress) -> None:
    """Workers busy (with a task) and workers in all, on `progress`."""
    try:
        processing = client.processing()
    except Exception:  # noqa: BLE001 - a busy scheduler: the last numbers stand
        return
    progress.workers = len(processing)
    progress.workers_busy = sum(1 for tasks in processing.values() if tasks)


def _threads(client: Any) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001
        return 1
