"""Prefetching for the job runner: a step's per-batch CPU work (`Step.prefetch_batch`: decode,
fit to the model's limits, preprocessing) runs in worker threads, each on a share of a batch,
up to `depth` batches ahead of the batch the model is working on, so decoding overlaps model
compute and database commits.

- One task per share of a batch (the batch split in as many parts as there are threads), not
  per image: per-call overheads (a processor call, a future) are paid a few times a batch, and
  yet all threads work on the next batch, so the first batch and the last are ready as soon.
- Bounded: at most `depth + 1` batches are held at once (queued, being prefetched, or with
  the model), however many images the job has, so memory stays flat on any selection.
- In order: batches come out exactly as the sequential path makes them, each item carrying
  its `prepared` value, so the results are the same.
- Threads, not processes: Pillow's decoders and torch's kernels release the GIL, and the
  threads share the step's loaded processor (nothing is pickled or loaded twice).
- A shorter GIL switch interval while it runs (SWITCH_INTERVAL_S): Pillow gives the GIL back
  for every 64 KB it decodes, and getting it back could wait up to Python's default 5 ms
  behind another thread's Python (the processor, SQLAlchemy, the model's modules), leaving a
  core idle; bench/predict_pipeline.py measures the difference.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from workbench.runs.step import Step, WorkItem

DEFAULT_DEPTH = 2  # batches prefetched ahead of the one with the model
SWITCH_INTERVAL_S = 0.0005  # GIL hand-over while prefetching (Python's default: 0.005)


def default_threads() -> int:
    """Prefetch threads when not told: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def prefetched_batches(step: Step, batches: Iterable[list[int]], items_for: Callable[[list[int]], list[WorkItem]],
                       threads: int, depth: int = DEFAULT_DEPTH) -> Iterator[list[WorkItem]]:
    """The work items of each batch of ids, in order, with `item.prepared` filled by
    `step.prefetch_batch` in `threads` worker threads (each batch split in `threads` parts),
    at most `depth` batches ahead.

    Close the iterator (or leave the loop) to stop: queued prefetches are cancelled and the
    threads end after the parts they are on. A prefetch that raises leaves `prepared` None,
    so `process` redoes it inline and reports the error the usual way."""
    threads = max(1, threads)
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(previous_interval, SWITCH_INTERVAL_S))
    pool = ThreadPoolExecutor(threads, thread_name_prefix="prefetch")
    ahead: deque[list[tuple[list[WorkItem], Future]]] = deque()
    pending = iter(batches)

    def submit_next() -> None:
        batch_ids = next(pending, None)
        if batch_ids is not None:
            items = items_for(batch_ids)
            size = max(1, -(-len(items) // threads))
            parts = [items[i : i + size] for i in range(0, len(items), size)]
            ahead.append([(part, pool.submit(step.prefetch_batch, part)) for part in parts])

    try:
        for _ in range(max(1, depth)):
            submit_next()
        while ahead:
            parts = ahead.popleft()
            submit_next()  # keep `depth` batches in the pool while this one is with the model
            items = []
            for part, future in parts:
                try:
                    prepared = future.result()
                except Exception:  # noqa: BLE001 - process() prepares these again inline and reports the error
                    prepared = [None] * len(part)
                for item, ready in zip(part, prepared, strict=True):
                    item.prepared = ready
                items.extend(part)
            yield items
    finally:
        for parts in ahead:
            for _, future in parts:
                future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        sys.setswitchinterval(previous_interval)
