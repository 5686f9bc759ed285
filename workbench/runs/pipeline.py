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
- Settings that let decode threads run side by side, only while it runs (`_thread_friendly`):
  - Pillow keeps freed image memory for reuse (BLOCKS_PER_THREAD blocks a thread): otherwise
    every decoded image gets fresh zeroed memory while holding the GIL, which serialised the
    threads (2 threads decoding: 1.86× one thread without, 2.0× with);
  - a shorter GIL switch interval (SWITCH_INTERVAL_S): Pillow gives the GIL back between the
    pieces it decodes (64 KB of a JPEG), and getting it back could wait up to Python's default 5 ms behind
    another thread's Python (the processor, SQLAlchemy, the model's modules);
  - (always on, in `load_rgb`) a PNG's image data reaches the decoder in 1 MB pieces, not
    one chunk per call: the GIL changes hands a few times an image, not ~125 times.
  bench/predict_pipeline.py shows the runner with and without them.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from PIL import Image as PILImage

from workbench.runs.step import Step, WorkItem

DEFAULT_DEPTH = 2  # batches prefetched ahead of the one with the model
SWITCH_INTERVAL_S = 0.0005  # GIL hand-over while prefetching (Python's default: 0.005)
BLOCKS_PER_THREAD = 4  # Pillow memory blocks kept for reuse per prefetch thread (≤ 16 MB each)


def default_threads() -> int:
    """Prefetch threads when not told: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def _thread_friendly(threads: int) -> Iterator[None]:
    """Pillow's block cache and a short GIL switch interval for `threads` decode threads;
    the previous settings (Python's and Pillow's defaults, or the user's) come back after,
    and Pillow frees the blocks it kept."""
    interval, blocks = sys.getswitchinterval(), PILImage.core.get_blocks_max()
    sys.setswitchinterval(min(interval, SWITCH_INTERVAL_S))
    PILImage.core.set_blocks_max(max(blocks, BLOCKS_PER_THREAD * threads))
    try:
        yield
    finally:
        PILImage.core.set_blocks_max(blocks)
        sys.setswitchinterval(interval)


def prefetched_batches(step: Step, batches: Iterable[list[int]], items_for: Callable[[list[int]], list[WorkItem]],
                       threads: int, depth: int = DEFAULT_DEPTH) -> Iterator[list[WorkItem]]:
    """The work items of each batch of ids, in order, with `item.prepared` filled by
    `step.prefetch_batch` in `threads` worker threads (each batch split in `threads` parts),
    at most `depth` batches ahead.

    Close the iterator (or leave the loop) to stop: queued prefetches are cancelled and the
    threads end after the parts they are on. A prefetch that raises leaves `prepared` None,
    so `process` redoes it inline and reports the error the usual way."""
    threads = max(1, threads)
    with _thread_friendly(threads):
        yield from _prefetched(step, batches, items_for, threads, depth)


def _prefetched(step: Step, batches: Iterable[list[int]], items_for: Callable[[list[int]], list[WorkItem]],
                threads: int, depth: int) -> Iterator[list[WorkItem]]:
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
