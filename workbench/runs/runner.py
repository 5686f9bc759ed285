"""The one job runner: runs any step (an OCR engine, a predictor, embeddings, CAM) over a
selection of images in batches.

Guarantees, for every step alike:
- each batch is saved and committed before the next starts, so a crash or a closed tab
  loses at most the batch in flight, and the next run resumes where it stopped;
- (image, step fingerprint) pairs already done are skipped (`force=True` redoes them);
  items that failed before are retried;
- a per-item failure is stored with its error and never stops the run;
- one heavy job at a time per artefacts dir (a file lock), so runs never oversubscribe
  the CPU; CPU-bound steps may use a process pool (`workers`);
- steps that prefetch (predictors, embeddings, CAM) get their decoding and preprocessing
  done in worker threads a few batches ahead of the model (pipeline.py), with the same
  results as the sequential path (`prefetch=0`);
- a job can be cancelled from anywhere, another process included: `request_cancel` marks
  its row `cancelling`, and the runner stops after the batch in flight;
- the job row records what rebuilds it (the step's recipe, the image ids, the batch
  settings), so a job a restart interrupted can be resumed (workbench.runs.background);
- with `cluster` (a Dask scheduler's address) the batches run on the cluster's workers
  instead of here (workbench.runs.cluster); everything above holds the same, this process
  being the only one that reads the memes folder and writes the database.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, contextmanager
from pathlib import Path

from sqlalchemy import case, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from workbench.runs.lock import JobBusy, heavy_job_lock
from workbench.runs.pipeline import default_threads, prefetched_batches
from workbench.runs.step import ItemResult, JobSummary, Progress, Step, WorkItem
from workbench.store.db import database_full, get_engine, get_sessionmaker, in_batches
from workbench.store.schema import Image, Job, utcnow

CANCELLING = "cancelling"  # a job row's status between a cancel request and the runner's stop

# Worker-process side of the pool: the step is loaded once per worker.
_worker_step: Step | None = None


def _init_worker(step: Step, parent_pid: int | None = None) -> None:
    global _worker_step
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    _worker_step = step
    step.load()


def _exit_with_parent(parent_pid: int, every: float = 0.5) -> None:
    """A pool worker ends itself once the process that started it is gone: a parent killed
    with SIGKILL never tells its workers, which would otherwise wait on their pipe forever."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _work(items: list[WorkItem]) -> list[ItemResult]:
    assert _worker_step is not None
    return safe_process(_worker_step, items)


def safe_process(step: Step, items: list[WorkItem]) -> list[ItemResult]:
    """step.process, with an unexpected batch-level exception turned into per-item errors."""
    try:
        results = step.process(items)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise  # a full disk ends the job ("disk full: PATH"): every later batch would fail too
        return [ItemResult(it.image_id, error=f"{type(exc).__name__}: {exc}") for it in items]
    except Exception as exc:  # noqa: BLE001 - one bad batch must not end the run
        return [ItemResult(it.image_id, error=f"{type(exc).__name__}: {exc}") for it in items]
    got = {r.image_id for r in results}
    missing = [ItemResult(it.image_id, error="step returned no result") for it in items if it.image_id not in got]
    return results + missing


def _work_items(session: Session, ids: list[int], memes_dir: Path, with_text: bool,
                refused: list[ItemResult] | None = None, reads_files: bool = True) -> list[WorkItem]:
    """The batch's items, each with its file through the guarded resolver (store.paths): an
    image whose stored path leaves the memes folder is never handed to a step; it goes to
    `refused` as that image's error. A step that never reads files (`reads_files` False) gets
    no path at all (an empty Path), so it cannot open one by mistake."""
    from workbench.store.paths import UnsafePath, image_file

    rows = session.execute(select(Image.id, Image.path).where(Image.id.in_(ids))).all()
    paths: dict[int, Path] = {}
    for i, rel in rows:
        if not reads_files:
            paths[i] = Path()
            continue
        try:
            paths[i] = image_file(memes_dir, rel)
        except UnsafePath as exc:
            if refused is not None:
                refused.append(ItemResult(i, error=f"refused: {exc}"))
    texts: dict[int, str] = {}
    if with_text:
        from workbench.store.ocr_texts import best_texts

        texts = best_texts(session, ids)
    return [WorkItem(i, paths[i], texts.get(i, "")) for i in ids if i in paths]


def run_step(
    db_url: str,
    step: Step,
    image_ids: Iterable[int],
    *,
    memes_dir: Path,
    lock_dir: Path,
    batch_size: int = 8,
    workers: int = 1,
    force: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    prefetch: int | None = None,
    cluster: str | None = None,
) -> JobSummary:
    """Run `step` over `image_ids`; see the module docstring for the guarantees.

    `prefetch`: threads that prefetch a prefetching step's items (None = one per core,
    0 = none: everything in this thread, one batch after another).

    `cluster`: a Dask scheduler's address (tcp://HOST:8786): the batches run on its workers
    (workbench.runs.cluster), this process still the only writer; `workers` is then unused.

    `on_progress` is called after each committed batch (in this thread); `should_stop` is
    polled between batches (Cancel), and so is the job row's status (`request_cancel`). A
    model that cannot load ends the job as `failed` with its message; nothing is raised for
    it. KeyboardInterrupt and other BaseExceptions mark the job `cancelled` and propagate.
    """
    Session_ = get_sessionmaker(db_url)
    ids = list(dict.fromkeys(image_ids))
    t0 = time.monotonic()
    with heavy_job_lock(lock_dir), _cluster_lock(get_engine(db_url), Session_, step):
        with Session_() as session:
            try:
                run_id = step.begin(session)
            except Exception as exc:  # noqa: BLE001 - a step that cannot even begin fails its job, visibly
                session.rollback()
                return _failed_before_start(session, step, ids, exc, t0)
            job = Job(
                step_kind=step.kind, step_name=step.name, fingerprint=step.fingerprint(), run_id=run_id,
                params=job_params(step, ids, batch_size=batch_size, workers=workers, force=force, prefetch=prefetch,
                                  **({"cluster": cluster} if cluster else {})),
                total=len(ids), pid=os.getpid(), heartbeat_at=utcnow(),
            )
            session.add(job)
            session.commit()
            job_id = job.id
            already = set() if force else step.done_ids(session, ids)
        todo = [i for i in ids if i not in already]
        progress = Progress(total=len(ids), skipped=len(ids) - len(todo), job_id=job_id)

        def stop_requested() -> bool:  # the caller's flag, or a cancel request stored in the job row
            if should_stop is not None and should_stop():
                return True
            with Session_() as session:
                return session.scalar(select(Job.status).where(Job.id == job_id)) == CANCELLING

        summary = JobSummary(job_id, "done", len(ids), 0, progress.skipped, 0, run_id=run_id)

        def record(results: list[ItemResult]) -> None:
            n_failed = sum(1 for r in results if r.error)
            progress.failed += n_failed
            progress.done += len(results) - n_failed
            for r in results:
                if r.error and len(summary.errors) < 20:
                    summary.errors.append((r.image_id, r.error))
            _save_batch(Session_, step, results, force, job_id, progress)
            if on_progress:
                on_progress(progress)

        status, error = "done", None
        try:
            with _heartbeat(Session_, job_id):
                if on_progress:
                    on_progress(progress)
                if todo:
                    status, error = _drive(Session_, step, todo, memes_dir, batch_size, workers, record,
                                           stop_requested, prefetch, cluster, progress)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                _close_job(Session_, step, job_id, progress, "cancelled", "interrupted")
                raise
            status, error = "failed", f"disk full: {exc.filename or exc}"
        except Exception as exc:
            if not database_full(exc):
                _close_job(Session_, step, job_id, progress, "cancelled", "interrupted")
                raise
            status, error = "failed", "disk full: the database cannot grow"
            try:  # the row may not be writable now; a freed disk lets the next run mark it
                _close_job(Session_, step, job_id, progress, status, error)
            except Exception:  # noqa: BLE001 - still full: the job shows as interrupted once this process ends
                pass
            summary.status, summary.error = status, error
            summary.done, summary.failed = progress.done, progress.failed
            return summary
        except BaseException:
            _close_job(Session_, step, job_id, progress, "cancelled", "interrupted")
            raise
        _close_job(Session_, step, job_id, progress, status, error)
        summary.status, summary.error = status, error
        summary.done, summary.failed = progress.done, progress.failed
        summary.seconds = time.monotonic() - t0
        return summary


HEARTBEAT_SECONDS = 15.0  # a running job's row is touched this often, also during a long batch


@contextmanager
def _heartbeat(Session_, job_id: int) -> Iterator[None]:  # noqa: ANN001
    """Touch the job row's heartbeat every HEARTBEAT_SECONDS while the block runs: other
    machines sharing the database tell a live job from a dead one by it (runs.listing)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                with Session_() as session:
                    table = Job.__table__
                    session.execute(update(table).where(table.c.id == job_id).values(heartbeat_at=utcnow()))
                    session.commit()
            except Exception:  # noqa: BLE001 - a missed beat (database busy, disk full) is retried next time
                continue

    thread = threading.Thread(target=beat, name=f"job-{job_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


@contextmanager
def _cluster_lock(engine: Engine, Session_, step: Step) -> Iterator[None]:  # noqa: ANN001
    """On PostgreSQL, one job per step fingerprint across every machine sharing the database
    (an advisory lock held for the whole job, released when its process dies); the file lock
    only holds on one machine. On SQLite a no-op: the file lock is what holds."""
    from workbench.store.db_locks import LockBusy, advisory_lock

    try:
        with advisory_lock(engine, f"workbench:job:{step.fingerprint()}", wait=False):
            yield
    except LockBusy:
        with Session_() as session:
            other = session.scalars(select(Job).where(Job.fingerprint == step.fingerprint(),
                                                      Job.status.in_(("running", "cancelling")))
                                    .order_by(Job.id.desc())).first()
        where = (f"job #{other.id} on {(other.params or {}).get('host', 'another machine')}, pid {other.pid}"
                 if other is not None else "another machine")
        raise JobBusy(f"this job is already running ({where}); wait for it or cancel it first") from None


def _save_batch(Session_, step: Step, results: list[ItemResult], force: bool, job_id: int,  # noqa: ANN001
                progress: Progress, attempts: int = 3) -> None:
    """Save one batch's results and the job's counters in one transaction. A unique-key race
    with another writer (a second machine, a CLI job beside the app) is retried: the step's
    save reads what the other wrote and updates it, so a race never crashes a job."""
    for attempt in range(attempts):
        try:
            with Session_() as session:
                step.save(session, results, force)
                _update_job(session, job_id, progress)
                session.commit()
            return
        except IntegrityError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _drive(Session_, step, todo, memes_dir, batch_size, workers, save_batch, should_stop,  # noqa: ANN001
           prefetch, cluster=None, progress=None) -> tuple[str, str | None]:
    from workbench.errors import ModelUnavailable

    refused: list[ItemResult] = []  # images whose path leaves the memes folder (filled by items_for)

    def record(results: list[ItemResult]) -> None:
        """Save a batch's results, and with them the images refused since (their errors)."""
        taken = [refused.pop() for _ in range(len(refused))]  # pop is atomic: items_for may run in a thread
        save_batch(results + taken)

    def items_for(batch_ids: list[int]) -> list[WorkItem]:
        with Session_() as session:
            return _work_items(session, batch_ids, memes_dir, step.needs_ocr_text, refused,
                               getattr(step, "reads_files", True))

    batches = in_batches(todo, batch_size)
    if cluster:  # the workers load the step; this process only reads files and writes results
        from workbench.runs.cluster import drive

        return drive(cluster, step, batches, items_for, record, should_stop, progress)
    try:
        step.load()  # in this process too: a missing model or engine fails here, clearly, before any pool
    except ModelUnavailable as exc:
        return "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - a step that cannot start fails the job, not the app
        return "failed", f"{step.name} could not start: {type(exc).__name__}: {exc}"
    if workers > 1 and step.parallel_ok:
        ctx = multiprocessing.get_context("spawn")  # never fork a threaded (Streamlit/torch) process
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(step, os.getpid())) as pool:
            pending: set[Future] = set()
            try:
                for batch_ids in batches:
                    items = items_for(batch_ids)
                    with _main_script_hidden(step):  # a submit may start a worker process
                        pending.add(pool.submit(_work, items))
                    if len(pending) >= workers * 2:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            record(fut.result())
                        if should_stop and should_stop():
                            return "cancelled", "cancelled by user"
                for fut in pending:
                    record(fut.result())
            except BrokenProcessPool as exc:
                return "failed", f"a worker process died: {exc}"
            finally:
                for fut in pending:
                    fut.cancel()
        return "done", None
    threads = default_threads() if prefetch is None else max(0, int(prefetch))
    if step.prefetches and threads:
        with closing(prefetched_batches(step, batches, items_for, threads)) as prepared:
            for items in prepared:
                record(safe_process(step, items))
                if should_stop and should_stop():
                    return "cancelled", "cancelled by user"
        return "done", None
    for batch_ids in batches:
        record(safe_process(step, items_for(batch_ids)))
        if should_stop and should_stop():
            return "cancelled", "cancelled by user"
    return "done", None


@contextmanager
def _main_script_hidden(step: Step) -> Iterator[None]:
    """While worker processes start: a bare `__main__`, so they do not run the parent's main
    script. A spawned (or forkserver) child imports the parent's `__main__` by its file before
    anything else, and under `streamlit run` that is the page script being run: every OCR
    worker ran the whole page in bare mode (~150 "missing ScriptRunContext" warnings a run,
    migrations and queries included). Kept when the step itself is defined in `__main__` (a
    script of one's own), which the workers need to unpickle it."""
    main = sys.modules.get("__main__")
    if (main is None or type(step).__module__ == "__main__" or getattr(main, "__spec__", None) is not None
            or not getattr(main, "__file__", None)):
        yield  # `python -m ...` (a module name: the child skips a `__main__` module), or nothing to hide
        return
    bare = types.ModuleType("__main__")
    sys.modules["__main__"] = bare
    try:
        yield
    finally:
        if sys.modules.get("__main__") is bare:  # a script run may have set its own meanwhile: keep that
            sys.modules["__main__"] = main


def job_params(step: Step, ids: Sequence[int], **settings: object) -> dict[str, object]:
    """A job row's params: the runner settings, the host, and what rebuilds the job after a
    restart: the step's recipe (when it has one) and the image ids, as compact ranges."""
    params: dict[str, object] = dict(settings)
    params["host"] = socket.gethostname()
    recipe = step.recipe()
    if recipe is not None:
        params["step"] = {"class": f"{type(step).__module__}:{type(step).__qualname__}", "recipe": recipe}
        params["image_ids"] = id_ranges(ids)
    return params


def id_ranges(ids: Sequence[int]) -> list[list[int]]:
    """Image ids as [first, last] runs, in their order: a whole collection is a few pairs."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def ids_from_ranges(runs: Iterable[Sequence[int]]) -> list[int]:
    """The ids `id_ranges` packed, in order."""
    return [i for first, last in runs for i in range(int(first), int(last) + 1)]


def request_cancel(session: Session, job_id: int) -> bool:
    """Ask a running job (in this process or another) to stop after its current batch.
    True when the job was running and is now asked; the caller commits."""
    table = Job.__table__
    result = session.execute(update(table).where(table.c.id == job_id, table.c.status == "running")
                             .values(status=CANCELLING))
    return bool(result.rowcount)


def _failed_before_start(session: Session, step: Step, ids: list[int], exc: Exception, t0: float) -> JobSummary:
    from workbench.errors import ModelUnavailable

    error = str(exc) if isinstance(exc, ModelUnavailable) else f"{step.name} could not start: {type(exc).__name__}: {exc}"
    job = Job(step_kind=step.kind, step_name=step.name, fingerprint="-", status="failed", total=len(ids),
              pid=os.getpid(), error=error, finished_at=utcnow())
    session.add(job)
    session.commit()
    return JobSummary(job.id, "failed", len(ids), 0, 0, 0, error=error, seconds=time.monotonic() - t0)


def _update_job(session: Session, job_id: int, progress: Progress, status: str | None = None) -> None:
    # One Core UPDATE per batch: no ORM load and flush on the model thread. While running, the
    # status says "running" (a row some sweep took for dead comes back) unless a cancel request
    # is waiting there, which is kept.
    table = Job.__table__
    session.execute(update(table).where(table.c.id == job_id).values(
        done=progress.done, failed=progress.failed, skipped=progress.skipped, heartbeat_at=utcnow(),
        status=status if status is not None else case((table.c.status == CANCELLING, CANCELLING), else_="running")))


def _close_job(Session_, step: Step, job_id: int, progress: Progress, status: str, error: str | None) -> None:  # noqa: ANN001
    with Session_() as session:
        _update_job(session, job_id, progress, status)
        job = session.get(Job, job_id)
        if job is not None:
            job.error = error
            job.finished_at = utcnow()
        step.finish(session, status)
        session.commit()
