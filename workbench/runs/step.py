"""What the job runner drives: the Step interface every kind of work implements (OCR
engines, predictors, embeddings, CAM), the items it gets, the results it returns, and the
progress and summary a run reports."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy.orm import Session

from workbench.store.images import load_rgb


def fingerprint(obj: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-able config (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


@dataclass
class WorkItem:
    """One image handed to a step: its id, absolute path and best OCR text ('' if none), and
    what `Step.prefetch` made of it when the runner prefetched it (None: not prefetched)."""

    image_id: int
    path: Path
    ocr_text: str = ""
    prepared: Any = None


@dataclass
class ItemResult:
    """What a step produced for one image: a step-specific `value`, or an `error`."""

    image_id: int
    value: Any = None
    error: str | None = None
    duration_ms: float | None = None


class Step:
    """Base of every runnable step. Subclasses set kind/name and implement
    `fingerprint`, `done_ids`, `process` and `save`; `load` does heavy set-up once per
    process; `begin`/`finish` bracket a job (e.g. create/close a model_runs row).

    A step whose items need CPU work before the model (decode, resize, tensors) sets
    `prefetches` and implements `prefetch(item)` (or `prefetch_batch(items)` when the work is
    cheaper for a whole batch at once); the runner then calls `prefetch_batch` in worker
    threads, batches ahead, and `process` reads `item.prepared` (preparing items without it
    itself, the same way, so the sequential path gives the same results)."""

    kind: ClassVar[str] = "step"
    name: str = "step"
    needs_ocr_text: bool = False
    # CPU-bound steps that are safe to run in worker processes set this.
    parallel_ok: bool = False
    # Steps with a thread-safe `prefetch` set this: the runner overlaps it with `process`.
    prefetches: bool = False
    # Steps that never open the image file (a learner scoring OCR text or cached vectors) clear
    # this: the runner then skips resolving every file (12 s of a refresh at 60,000 memes).
    reads_files: bool = True

    def fingerprint(self) -> str:
        """Identity of this step's config: results are stored and skipped under it."""
        raise NotImplementedError

    def begin(self, session: Session) -> int | None:
        """Called once before work; may return a model_runs id stored on the job."""
        return None

    def done_ids(self, session: Session, image_ids: Sequence[int]) -> set[int]:
        """Images among `image_ids` that already have a successful result."""
        raise NotImplementedError

    def load(self) -> None:
        """Heavy initialisation (load a model). May raise workbench.errors.ModelUnavailable."""

    def prefetch(self, item: WorkItem) -> Any:
        """CPU work on one item that needs no model (decode, fit, preprocess), run in worker
        threads after `load()`; the result lands in `item.prepared`. Must not raise: a
        per-item failure is part of what it returns."""
        return None

    def prefetch_batch(self, items: list[WorkItem]) -> list[Any]:
        """`prefetch` of each item of a batch, in order: what the runner calls, one batch per
        task in a prefetch thread. Override when a batch is cheaper to prepare in one go."""
        return [self.prefetch(item) for item in items]

    def process(self, items: list[WorkItem]) -> list[ItemResult]:
        """Compute results for a batch; must return one ItemResult per item, errors included."""
        raise NotImplementedError

    def save(self, session: Session, results: list[ItemResult], force: bool) -> None:
        """Store a batch's results (upsert: one row per image and fingerprint)."""
        raise NotImplementedError

    def finish(self, session: Session, status: str) -> None:
        """Called once after work with the job's final status."""

    def use_scratch(self, folder: Path) -> None:
        """On a cluster worker, once before `load`: a folder of the worker's own for files the
        step writes (CAM maps), instead of the starting machine's folders. Default: none written."""

    def remote_result(self, result: ItemResult) -> ItemResult:
        """On a cluster worker, after `process`: a result that points at a file the worker wrote
        carries the file's content instead, for `save` on the machine that stores it (CAM maps).
        The default: results travel as they are."""
        return result

    def recipe(self) -> dict[str, Any] | None:
        """What rebuilds this step after a server restart (JSON: names and options, never a
        model), stored in the job's params so an interrupted job can be resumed; None: this
        step cannot be rebuilt (start it again from its page). See `from_recipe`."""
        return None

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], settings: Any) -> Step:
        """The step `recipe()` described, built again with the app's settings (workbench.config.Settings)."""
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from a recipe")


def prefetch_image(item: WorkItem, then: Any, min_side: int = 0) -> Any:
    """What most `Step.prefetch`es do: decode the item's image (the one loader, `load_rgb`;
    `min_side` as there) and return `then(image)` (fit, preprocess); a failure of either becomes
    this item's ItemResult error ("cannot read image: ..." / "cannot prepare image: ...")."""
    try:
        image = load_rgb(item.path, min_side=min_side)
    except Exception as exc:  # noqa: BLE001 - unreadable file: this item fails, the batch goes on
        return ItemResult(item.image_id, error=f"cannot read image: {type(exc).__name__}: {exc}")
    try:
        return then(image)
    except Exception as exc:  # noqa: BLE001 - an image the model cannot take fails alone
        return ItemResult(item.image_id, error=f"cannot prepare image: {type(exc).__name__}: {exc}")


@dataclass
class Progress:
    """A running job's counts, as the runner reports them after each committed batch."""

    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    job_id: int | None = None  # the jobs row, once the runner has made it
    workers: int | None = None  # on a cluster: its workers, and how many had a task at the last batch
    workers_busy: int | None = None
    bytes_sent: int = 0  # on a cluster: image and step bytes sent to the workers so far

    @property
    def processed(self) -> int:
        return self.done + self.failed

    @property
    def todo(self) -> int:
        return self.total - self.skipped

    @property
    def rate(self) -> float:
        """Images per second over this job so far."""
        elapsed = time.monotonic() - self.started
        return self.processed / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        return (self.todo - self.processed) / rate if rate > 0 else None

    @property
    def fraction(self) -> float:
        return 1.0 if self.todo == 0 else min(1.0, self.processed / self.todo)

    def describe(self) -> str:
        eta = f", ETA {self.eta_s:.0f} s" if self.eta_s is not None and self.processed < self.todo else ""
        busy = f" · {self.workers_busy}/{self.workers} workers busy" if self.workers else ""
        return (
            f"{self.processed}/{self.todo} processed ({self.failed} failed, {self.skipped} already done)"
            f" · {self.rate:.2f} img/s{eta}{busy}"
        )


@dataclass
class JobSummary:
    """How a job ended: its counts, its error, and the first few per-image errors."""

    job_id: int
    status: str  # done | failed | cancelled
    total: int
    done: int
    skipped: int
    failed: int
    run_id: int | None = None
    error: str | None = None
    seconds: float = 0.0
    errors: list[tuple[int, str]] = field(default_factory=list)  # first few per-item errors

    def describe(self) -> str:
        """One line for people. A job that did not finish says how far it got, and its per-image
        failures are "with errors", so a failed job never reads "0 failed"."""
        if self.status == "done":
            head = f"done: {self.done} done, {self.skipped} skipped, {self.failed} failed of {self.total}"
        elif self.done + self.failed == 0:
            head = f"{self.status} before any meme was processed ({self.total} selected, {self.skipped} already done)"
        else:
            head = (f"{self.status} after {self.done + self.failed} of {self.total - self.skipped} memes to do "
                    f"({self.done} done, {self.failed} with errors, {self.skipped} already done)")
        text = f"{head} in {self.seconds:.1f} s"
        return text + (f" — {self.error}" if self.error else "")
