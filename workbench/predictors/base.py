"""The one predictor interface, and the step that lets the job runner drive any predictor.

A predictor has a `kind`, a JSON-able `config()` (model id or path, device, dtype,
prompts, ...), and predicts a batch of images (+ their OCR text). Each distinct config
is one `model_runs` row (its fingerprint is unique); predictions are unique per
run + image, so re-running the same config only does the images still missing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image as PILImage
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from workbench.runs.step import ItemResult, Step, WorkItem, fingerprint, prefetch_image
from workbench.store.db import in_batches
from workbench.store.schema import ModelRun, Prediction, utcnow

PREDICTION_SCHEMA_VERSION = 1  # bump when the meaning of stored predictions changes


@dataclass
class PredictInput:
    image_id: int
    image: PILImage.Image  # RGB, EXIF-oriented, first frame (workbench.store.images.load_rgb)
    ocr_text: str = ""
    # Set by `fit_input`: what fitting the image to the model's limits did ({} = nothing; None =
    # not fitted yet); by `prepare_inputs`: the model-ready inputs `Predictor.preprocess_images`
    # made, and `ready`.
    fit: dict[str, Any] | None = None
    pixels: Any = None
    ready: bool = False


@dataclass
class PredictOutput:
    label: str  # toxic | non_toxic | unknown
    prob_toxic: float | None = None
    explanation: str | None = None
    raw_output: str | None = None
    latency_ms: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """One user-settable predictor option; the Models page and the CLI render/parse these,
    and the predictor's factory takes them as keyword arguments."""

    name: str
    default: Any
    help: str = ""
    type: str = "str"  # str | text (multi-line) | int | float | bool | choice
    choices: tuple[Any, ...] = ()


class Predictor:
    """Base of every predictor (clip, vlm, head, nudenet, text-toxicity, text-tfidf ...)."""

    kind: ClassVar[str] = "predictor"
    title: ClassVar[str] = ""  # shown in the UI
    options: ClassVar[tuple[Option, ...]] = ()  # keyword options of the factory
    needs_ocr_text: ClassVar[bool] = False

    def config(self) -> dict[str, Any]:
        """Everything that changes the output; stored with the run and hashed into its fingerprint."""
        raise NotImplementedError

    def model_id(self) -> str:
        return str(self.config().get("model", self.kind))

    def prepare(self, session: Session) -> None:
        """Read what the config depends on from the DB before the run's fingerprint is taken
        (trained predictors: the current labels). Cheap reads only; heavy work goes in load()."""

    def load(self) -> None:
        """Load weights once (cached per config in the process); raise ModelUnavailable if impossible."""

    def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        """One output per input, in order. Per-item problems go into PredictOutput.error.
        Image models call `prepare_inputs(self, batch)` first (a no-op for prepared items)."""
        raise NotImplementedError

    def prepare_image(self, image: PILImage.Image) -> tuple[PILImage.Image, dict[str, Any]]:
        """The image fitted to the model's input limits (workbench.models.image_limits) and a
        record of what was done ({} = nothing). Runs in the job runner's prefetch threads, after
        `load()`: no model calls, no shared mutable state."""
        return image, {}

    def decode_side(self) -> int:
        """The short side the job runner may decode this model's images down to (a JPEG's DCT
        scaling; `ImageLimits.decode_side`), 0 = in full. After `load()`."""
        return 0

    def preprocess_images(self, images: list[PILImage.Image]) -> list[Any]:
        """Model-ready inputs of each prepared image (e.g. pixel tensors), in one call for the
        batch (a processor's per-call overhead is paid once), made in the prefetch threads so
        the model thread only runs the model; None = `predict` does it itself. May raise for
        the batch: `prepare_inputs` then redoes the images one by one, so one bad image fails alone."""
        return [None] * len(images)

    def fingerprint(self) -> str:
        return fingerprint({"kind": self.kind, "config": self.config(), "v": PREDICTION_SCHEMA_VERSION})

    def run_name(self) -> str:
        return f"{self.kind}:{self.model_id()}"


def fit_input(predictor: Predictor, item: PredictInput) -> PredictInput:
    """The item with its image fitted to the predictor's limits (in place; once)."""
    if item.fit is None:
        item.image, item.fit = predictor.prepare_image(item.image)
    return item


def prepare_inputs(predictor: Predictor, batch: list[PredictInput]) -> list[PredictInput]:
    """Fit each item's image to the predictor's limits (`fit_input`) and preprocess them
    together, once (in place; ready items are left as they are). Raises if an image cannot be
    prepared; `prepare_each` is the per-item-error version."""
    todo = [fit_input(predictor, item) for item in batch if not item.ready]
    try:
        pixels = predictor.preprocess_images([item.image for item in todo])
    except Exception:  # noqa: BLE001 - one image spoils a batch call: find it, one by one
        pixels = [predictor.preprocess_images([item.image])[0] for item in todo]
    for item, prepared in zip(todo, pixels, strict=True):
        item.pixels, item.ready = prepared, True
    return batch


def prepare_each(predictor: Predictor, batch: list[PredictInput]) -> list[PredictInput | Exception]:
    """`prepare_inputs` with every item's own failure in its place instead of raised."""
    try:
        return list(prepare_inputs(predictor, batch))
    except Exception:  # noqa: BLE001 - isolate the image that fails
        out: list[PredictInput | Exception] = []
        for item in batch:
            try:
                out.extend(prepare_inputs(predictor, [item]))
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out


def note_fits(batch: Sequence[PredictInput], outputs: Sequence[PredictOutput]) -> list[PredictOutput]:
    """Record in each output's `extra["image_fit"]` what fitting did to its image (when anything)."""
    for item, out in zip(batch, outputs, strict=True):
        if item.fit:
            out.extra["image_fit"] = item.fit
    return list(outputs)


def get_or_create_run(session: Session, predictor: Predictor) -> ModelRun:
    """The model_runs row for this predictor's config (created on first use)."""
    fp = predictor.fingerprint()
    run = session.scalar(select(ModelRun).where(ModelRun.fingerprint == fp))
    if run is None:
        run = ModelRun(kind=predictor.kind, model_id=predictor.model_id(), name=predictor.run_name(),
                       params=predictor.config(), fingerprint=fp, status="created")
        session.add(run)
        session.flush()
    return run


def upsert_predictions(session: Session, run_id: int, rows: Sequence[tuple[int, PredictOutput]]) -> None:
    """Store outputs for (image_id, output) pairs, replacing an earlier row of the same run+image
    (one DELETE and one executemany INSERT per batch, in Core: the ORM's bulk path held the GIL
    several times longer, time the job runner's prefetch threads wait for)."""
    ids = [image_id for image_id, _ in rows]
    if not ids:
        return
    table = Prediction.__table__
    session.execute(delete(table).where(table.c.run_id == run_id, table.c.image_id.in_(ids)))
    session.execute(insert(table), [
        {"run_id": run_id, "image_id": image_id, "label": out.label, "prob_toxic": out.prob_toxic,
         "explanation": out.explanation, "raw_output": out.raw_output, "latency_ms": out.latency_ms,
         "error": out.error, "extra": out.extra or {}}
        for image_id, out in rows
    ])


class PredictorStep(Step):
    """Adapter: drives a Predictor through the job runner. A batch's images are decoded, fitted
    to the model's limits and preprocessed in `prefetch_batch` (in the runner's prefetch
    threads), then `process` hands the prepared batch to `predict`."""

    kind = "predict"
    prefetches = True

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.name = predictor.run_name()
        self.needs_ocr_text = predictor.needs_ocr_text
        self.run_id: int | None = None

    def fingerprint(self) -> str:
        return self.predictor.fingerprint()

    def recipe(self) -> dict[str, Any] | None:
        """The kind and options `build_predictor` made the predictor from (None for one built otherwise)."""
        built = getattr(self.predictor, "built_from", None)
        return dict(built) if built else None

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], settings: Any) -> PredictorStep:
        from workbench.predictors.run import build_predictor

        return cls(build_predictor(str(recipe["kind"]), dict(recipe.get("options") or {})))

    def begin(self, session: Session) -> int | None:
        self.predictor.prepare(session)
        run = get_or_create_run(session, self.predictor)
        run.status = "running"
        session.commit()
        self.run_id = run.id
        return run.id

    def done_ids(self, session: Session, image_ids: Sequence[int]) -> set[int]:
        done: set[int] = set()
        ids = list(image_ids)
        for chunk in in_batches(ids):
            done.update(session.scalars(select(Prediction.image_id).where(
                Prediction.run_id == self.run_id, Prediction.image_id.in_(chunk), Prediction.error.is_(None))))
        return done

    def load(self) -> None:
        self.predictor.load()

    def prefetch_batch(self, items: list[WorkItem]) -> list[PredictInput | ItemResult]:
        """Decode each image (load_rgb, as small as `decode_side` allows) and fit it to the
        model's limits at once (only the fitted image is kept), then preprocess them all in
        one call; an unreadable file, or an image the model cannot take, becomes that item's
        error. The runner calls it in its prefetch threads; `process` for what it did not."""
        min_side = self.predictor.decode_side()

        def fitted(image: PILImage.Image, item: WorkItem) -> PredictInput:
            return fit_input(self.predictor, PredictInput(item.image_id, image, item.ocr_text))

        decoded = [prefetch_image(item, lambda image, item=item: fitted(image, item), min_side=min_side)
                   for item in items]
        prepared = iter(prepare_each(self.predictor, [d for d in decoded if isinstance(d, PredictInput)]))
        out: list[PredictInput | ItemResult] = []
        for item, ready in zip(items, decoded, strict=True):
            if isinstance(ready, PredictInput):
                ready = next(prepared)
                if isinstance(ready, Exception):
                    ready = ItemResult(item.image_id, error=f"cannot prepare image: {type(ready).__name__}: {ready}")
            out.append(ready)
        return out

    def process(self, items: list[WorkItem]) -> list[ItemResult]:
        todo = [item for item in items if item.prepared is None]
        for item, ready in zip(todo, self.prefetch_batch(todo) if todo else [], strict=True):
            item.prepared = ready
        results: list[ItemResult] = []
        inputs: list[PredictInput] = []
        for item in items:
            if isinstance(item.prepared, ItemResult):
                results.append(item.prepared)
            else:
                inputs.append(item.prepared)
        if inputs:
            t0 = time.perf_counter()
            outputs = self.predictor.predict(inputs)
            per_item_ms = (time.perf_counter() - t0) * 1000 / len(inputs)
            for inp, out in zip(inputs, outputs, strict=True):
                if out.latency_ms is None:
                    out.latency_ms = per_item_ms
                results.append(ItemResult(inp.image_id, value=out, error=out.error, duration_ms=out.latency_ms))
        return results

    def save(self, session: Session, results: list[ItemResult], force: bool) -> None:
        assert self.run_id is not None
        rows = []
        for r in results:
            out = r.value if isinstance(r.value, PredictOutput) else PredictOutput(label="unknown", error=r.error)
            rows.append((r.image_id, out))
        upsert_predictions(session, self.run_id, rows)

    def finish(self, session: Session, status: str) -> None:
        if self.run_id is None:
            return
        run = session.get(ModelRun, self.run_id)
        if run is None:
            return
        empty = session.scalar(select(Prediction.id).where(Prediction.run_id == run.id).limit(1)) is None
        if status == "failed" and empty:
            # The model never loaded: keep the failed job (with its message), not an empty run.
            session.delete(run)
            return
        run.status = status
        run.finished_at = utcnow()
