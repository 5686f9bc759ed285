"""Labeling that learns: the project's learner, refreshed on its own while people label.

- One learner per project: the TF-IDF baseline on OCR text (`text-tfidf`) or a head on a
  cached embedding set (`head`, with the head's feature set: image | text | both |
  interaction | vlm, on the project's CLIP / VLM choice). Unset, it is the head on the
  largest cached embedding set when one exists, else TF-IDF. The choice and N live in the
  settings table; admins change them, and the change is audited.
- A refresh trains the existing out-of-fold predictors (predictors.tfidf / predictors.head)
  on the current human consensus labels and stores one model run of kind `learner`:
  out-of-fold P(toxic) for the labeled memes (split by near-duplicate group), full-fit
  P(toxic) for every other meme. The run's params keep the refresh record under "refresh":
  labels used, out-of-fold F1 with its bootstrap CI, seconds, and the label mark.
- The trigger: after a human label, `maybe_refresh` counts human labels since the last
  refresh started; at N (default 50, 0 = off) it submits a refresh to the server's
  background worker and returns at once. At most one refresh is queued or running.
- Fewer than MIN_LABELS labels, or one class only: refused with a clear message, nothing stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from workbench.config import SYSTEM_ANNOTATORS, Settings
from workbench.predictors.base import PredictInput, Predictor, PredictorStep, get_or_create_run
from workbench.runs.step import ItemResult, WorkItem
from workbench.store import users
from workbench.store.labels import get_setting, set_setting
from workbench.store.schema import Embedding, Image, Job, Label, ModelRun, Prediction

LEARNERS = ("text-tfidf", "head")
EMBEDDINGS = ("image", "text", "both", "interaction", "vlm")  # the head's feature sets
RUN_KIND = "learner"  # model_runs.kind of every refresh
STEP_KIND = "learn"  # jobs.step_kind of a refresh
REFRESH_FINGERPRINT = "learner-refresh"  # jobs.fingerprint of a refresh
LEARNER_SETTING = "learner"
EVERY_SETTING = "learner_refresh_every"
MARK_SETTING = "learner_label_mark"  # the last human label id the latest refresh was started after
DEFAULT_EVERY = 50
MIN_LABELS = 10
log = logging.getLogger(__name__)
LEARNER_HEAD = {"head": "logreg", "batch_size": 256, "epochs": 30, "lr": 3e-3}  # the head learner's training
BATCH_SIZE = 1000  # memes per runner batch: scoring is cheap, a commit per 8 memes is not


class LearnerRefused(ValueError):
    """A refresh that cannot train (too few labels, one class): nothing is stored."""


@dataclass(frozen=True)
class LearnerChoice:
    """Which learner a refresh trains: text-tfidf, or a head on `embedding` features of `model`."""

    learner: str
    embedding: str | None = None
    model: str | None = None
    source: str = "setting"  # setting | default | command

    def describe(self) -> str:
        if self.learner == "head":
            return f"head on {self.embedding} embeddings ({self.model})"
        return "TF-IDF on OCR text"


@dataclass
class RefreshResult:
    """One refresh: its run, the labels it trained on, its out-of-fold F1 with CI, and its time."""

    run_id: int
    labels: int
    learner: str
    oof_f1: float | None
    oof_f1_ci: tuple[float, float] | None
    seconds: float
    job_id: int | None = None
    description: str = ""
    lacking: int = 0  # memes without the learner's input (no embedding): errors in the run, ranked last

    def to_json(self) -> dict[str, Any]:
        """What `learn --json` prints."""
        ci = list(self.oof_f1_ci) if self.oof_f1_ci is not None else None
        return {"run_id": self.run_id, "labels": self.labels, "learner": self.learner, "oof_f1": self.oof_f1,
                "oof_f1_ci": ci, "seconds": round(self.seconds, 3)}


# ---------------------------------------------------------------- settings

def learner_setting(session: Session) -> tuple[str | None, str | None]:
    """The stored (learner, embedding); (None, None) = the default (largest embedding set, else TF-IDF)."""
    value = get_setting(session, LEARNER_SETTING, None)
    if not isinstance(value, dict) or value.get("learner") not in LEARNERS:
        return None, None
    embedding = value.get("embedding")
    return str(value["learner"]), (str(embedding) if embedding in EMBEDDINGS else None)


def set_learner(session: Session, learner: str, embedding: str | None = None, actor: str | None = None) -> None:
    """Store the project's learner (admins only, audited)."""
    _check_choice(learner, embedding)
    users.authorize(session, actor, users.ADMIN, "learner", {"learner": learner, "embedding": embedding})
    set_setting(session, LEARNER_SETTING, {"learner": learner, "embedding": embedding})


def refresh_every(session: Session) -> int:
    """N: a refresh starts after this many new human labels (0 = never on its own)."""
    try:
        return max(0, int(get_setting(session, EVERY_SETTING, DEFAULT_EVERY)))
    except (TypeError, ValueError):
        return DEFAULT_EVERY


def set_refresh_every(session: Session, n: int, actor: str | None = None) -> None:
    """Change N (admins only, audited); 0 turns the automatic refresh off."""
    if int(n) < 0:
        raise ValueError(f"refresh every N labels: N must be 0 (off) or more, not {n}")
    users.authorize(session, actor, users.ADMIN, "learner refresh every", {"every": int(n)})
    set_setting(session, EVERY_SETTING, int(n))


def _check_choice(learner: str, embedding: str | None) -> None:
    if learner not in LEARNERS:
        raise ValueError(f"learner must be one of {', '.join(LEARNERS)}, not {learner!r}")
    if embedding is not None and embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {', '.join(EMBEDDINGS)}, not {embedding!r}")
    if learner == "text-tfidf" and embedding is not None:
        raise ValueError("--embedding goes with the head learner, not text-tfidf")


def embedding_sets(session: Session) -> dict[str, int]:
    """{feature set: memes with it cached} for the project's CLIP and VLM choices (sets with none left out)."""
    from workbench.features.embeddings import ClipImageEmbedder, ClipTextEmbedder, VlmPooledEmbedder
    from workbench.models.choices import embedder_model

    clip, vlm = embedder_model(session, "clip"), embedder_model(session, "vlm")
    image = _cached(session, ClipImageEmbedder(clip))
    text = _cached(session, ClipTextEmbedder(clip))
    sets = {"both": min(image, text), "image": image, "text": text, "vlm": _cached(session, VlmPooledEmbedder(vlm))}
    return {name: n for name, n in sets.items() if n}


def _cached(session: Session, embedder: Any) -> int:
    fp = embedder.fingerprint()
    cond = Embedding.fingerprint.like(f"{fp}:t%") if embedder.uses_text else Embedding.fingerprint == fp
    return int(session.scalar(select(func.count(func.distinct(Embedding.image_id))).where(cond)) or 0)


def choose_learner(session: Session, learner: str | None = None, embedding: str | None = None) -> LearnerChoice:
    """The learner a refresh trains: the one named, else the stored one, else the default (the
    head on the largest cached embedding set, both CLIP halves first on a tie; TF-IDF when none)."""
    from workbench.models.choices import embedder_model

    source = "command"
    if learner is None:
        learner, stored_embedding = learner_setting(session)
        embedding = embedding or stored_embedding
        source = "setting"
    _check_choice(learner or "head", embedding if learner != "text-tfidf" else None)
    if learner == "text-tfidf":
        return LearnerChoice("text-tfidf", source=source)
    if embedding is None:
        sets = embedding_sets(session)
        if not sets:
            if learner == "head":
                raise LearnerRefused("no embedding set is cached for the head learner: run "
                                     "`python -m workbench embed clip` first, or use --learner text-tfidf")
            return LearnerChoice("text-tfidf", source="default")
        embedding = max(sets, key=lambda name: (sets[name], -EMBEDDINGS.index(name) if name != "both" else 1))
        source = source if learner == "head" else "default"
    model = embedder_model(session, "vlm" if embedding == "vlm" else "clip")
    return LearnerChoice("head", embedding, model, source)


def predictor_for(choice: LearnerChoice) -> Predictor:
    """The existing out-of-fold predictor a choice trains (built from options, so a job can be resumed)."""
    from workbench.predictors.run import build_predictor

    if choice.learner == "text-tfidf":
        return build_predictor("text-tfidf")
    key = "vlm_model" if choice.embedding == "vlm" else "clip_model"
    # A linear head in large batches: refreshed every N labels, it must train in seconds (the Train
    # page's default MLP, batch 32 for 60 epochs, took 9 min on 3,000 labels x 768-d, 5 folds + final).
    return build_predictor("head", {"features": choice.embedding, key: choice.model, **LEARNER_HEAD})


# ---------------------------------------------------------------- the run

class LearnerPredictor(Predictor):
    """The chosen predictor under kind `learner`: its refreshes are runs of their own kind,
    never mixed up with a TF-IDF or head run someone started by hand."""

    kind = RUN_KIND

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.needs_ocr_text = inner.needs_ocr_text

    def config(self) -> dict[str, Any]:
        return {"learner": self.inner.kind, **self.inner.config()}

    def model_id(self) -> str:
        return self.inner.model_id()

    def run_name(self) -> str:
        return f"learner:{self.inner.run_name()}"

    def prepare(self, session: Session) -> None:
        self.inner.prepare(session)

    def load(self) -> None:
        self.inner.load()

    def predict(self, batch: list[PredictInput]) -> list:
        return self.inner.predict(batch)


def check_labels(labels: dict[int, str]) -> None:
    """LearnerRefused unless there are MIN_LABELS labels of both classes."""
    classes = sorted(set(labels.values()))
    if len(labels) < MIN_LABELS or len(classes) < 2:
        have = ", ".join(f"{sum(1 for v in labels.values() if v == c)} {c}" for c in classes) or "none"
        raise LearnerRefused(f"a refresh needs at least {MIN_LABELS} consensus labels of both classes "
                             f"(toxic and non_toxic); have {len(labels)} ({have}). Label more memes first.")


def last_human_label_id(session: Session) -> int:
    return int(session.scalar(select(func.max(Label.id)).where(Label.annotator.not_in(SYSTEM_ANNOTATORS))) or 0)


class LearnerStep(PredictorStep):
    """One refresh as a job of the one runner: the learner is chosen and the labels are read
    in `begin` (in the worker, never in a page); memes are scored without decoding images."""

    kind = STEP_KIND
    prefetches = False
    reads_files = False  # scores OCR text or cached vectors, never pixels

    def __init__(self, learner: str | None = None, embedding: str | None = None) -> None:
        self.learner, self.embedding = learner, embedding
        self.predictor: LearnerPredictor | None = None  # type: ignore[assignment]
        self.choice: LearnerChoice | None = None
        self.name = "learner"
        self.needs_ocr_text = True
        self.run_id = None
        self.t0 = time.monotonic()
        self.mark = 0

    def fingerprint(self) -> str:
        # One name for every refresh, whatever the labels: the worker never queues a second one, on
        # PostgreSQL one runs at a time across machines, and an interrupted one can be resumed
        # (its run is on the job row; the run's own fingerprint covers the labels).
        return REFRESH_FINGERPRINT

    def recipe(self) -> dict[str, Any]:
        return {"learner": self.learner, "embedding": self.embedding}

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], settings: Any) -> LearnerStep:
        return cls(recipe.get("learner"), recipe.get("embedding"))

    def begin(self, session: Session) -> int | None:
        self.t0 = time.monotonic()
        self.choice = choose_learner(session, self.learner, self.embedding)
        self.predictor = LearnerPredictor(predictor_for(self.choice))
        self.name, self.needs_ocr_text = self.predictor.run_name(), self.predictor.needs_ocr_text
        self.mark = last_human_label_id(session)
        self.predictor.prepare(session)  # reads the consensus labels
        check_labels(getattr(self.predictor.inner, "labels", {}))
        run = get_or_create_run(session, self.predictor)
        run.status = "running"
        session.commit()
        self.run_id = run.id
        return run.id

    def process(self, items: list[WorkItem]) -> list[ItemResult]:
        assert self.predictor is not None
        # TF-IDF reads the OCR text, a head its cached embedding: no image is decoded.
        inputs = [PredictInput(item.image_id, None, item.ocr_text) for item in items]  # type: ignore[arg-type]
        t0 = time.perf_counter()
        outputs = self.predictor.predict(inputs)
        per_item_ms = (time.perf_counter() - t0) * 1000 / max(1, len(inputs))
        return [ItemResult(inp.image_id, value=out, error=out.error, duration_ms=out.latency_ms or per_item_ms)
                for inp, out in zip(inputs, outputs, strict=True)]

    def finish(self, session: Session, status: str) -> None:
        super().finish(session, status)
        if status != "done" or self.run_id is None or self.predictor is None or self.choice is None:
            return
        run = session.get(ModelRun, self.run_id)
        if run is None:
            return
        labels = getattr(self.predictor.inner, "labels", {})
        f1, ci, used = oof_f1(session, run.id, labels)
        lacking = int(session.scalar(select(func.count()).select_from(Prediction).where(
            Prediction.run_id == run.id, Prediction.error.is_not(None))) or 0)
        record = {"labels": used, "consensus_labels": len(labels), "learner": self.choice.learner,
                  "choice": asdict(self.choice), "oof_f1": f1, "oof_f1_ci": list(ci) if ci else None,
                  "seconds": round(time.monotonic() - self.t0, 3), "label_mark": self.mark, "lacking": lacking}
        run.params = {**(run.params or {}), "refresh": record}


def oof_f1(session: Session, run_id: int, labels: dict[int, str], n_boot: int = 1000,
           seed: int = 0) -> tuple[float | None, tuple[float, float] | None, int]:
    """(F1 of toxic, its percentile bootstrap CI, labeled memes scored) over the run's out-of-fold predictions."""
    from workbench.analysis.metrics import bootstrap_count_ci
    from workbench.store.db import in_batches

    tp = fp = fn = tn = 0
    for chunk in in_batches(sorted(labels)):
        rows = session.execute(select(Prediction.image_id, Prediction.prob_toxic).where(
            Prediction.run_id == run_id, Prediction.image_id.in_(chunk), Prediction.prob_toxic.is_not(None))).all()
        for image_id, prob in rows:
            toxic, said = labels[image_id] == "toxic", prob >= 0.5
            tp += toxic and said
            fp += said and not toxic
            fn += toxic and not said
            tn += not toxic and not said
    used = tp + fp + fn + tn
    if not used:
        return None, None, 0
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0  # sklearn's f1_score, zero_division=0
    ci = bootstrap_count_ci([tp, fp, fn, tn, 0, 0], n_boot=n_boot, seed=seed)["f1"]
    return f1, ci, used


def result_of(session: Session, run_id: int, job_id: int | None = None) -> RefreshResult:
    """The refresh record of a learner run."""
    run = session.get(ModelRun, run_id)
    record = ((run.params or {}).get("refresh") if run is not None else None) or {}
    ci = record.get("oof_f1_ci")
    choice = record.get("choice") or {}
    return RefreshResult(run_id=run_id, labels=int(record.get("labels") or 0), learner=str(record.get("learner", "?")),
                         oof_f1=record.get("oof_f1"), oof_f1_ci=tuple(ci) if ci else None,
                         seconds=float(record.get("seconds") or 0.0), job_id=job_id,
                         description=LearnerChoice(**choice).describe() if choice else "",
                         lacking=int(record.get("lacking") or 0))


def latest_refresh(session: Session) -> RefreshResult | None:
    """The newest learner run with a refresh record (what queues use), or None."""
    runs = session.scalars(select(ModelRun).where(ModelRun.kind == RUN_KIND, ModelRun.status == "done")
                           .order_by(ModelRun.id.desc()))
    for run in runs:
        if (run.params or {}).get("refresh"):
            return result_of(session, run.id)
    return None


def present_ids(session: Session) -> list[int]:
    return list(session.scalars(select(Image.id).where(Image.missing.is_(False)).order_by(Image.id)))


def refresh(settings: Settings, learner: str | None = None, embedding: str | None = None,
            image_ids: Sequence[int] | None = None) -> RefreshResult:
    """Train the learner on the current human consensus labels and store a learner run, now,
    in this thread (the CLI). LearnerRefused (nothing stored) with too few labels or one class;
    a job that fails raises LearnerRefused with the job's error (its row says `failed`)."""
    from workbench.runs.runner import run_step
    from workbench.store.db import session_scope
    from workbench.store.labels import consensus_labels

    with session_scope(settings.db_url) as session:
        choose_learner(session, learner, embedding)  # a bad choice is refused before any job row
        check_labels(consensus_labels(session))
        ids = list(image_ids) if image_ids is not None else present_ids(session)
        set_setting(session, MARK_SETTING, last_human_label_id(session))
    summary = run_step(settings.db_url, LearnerStep(learner, embedding), ids, memes_dir=settings.memes_dir,
                       lock_dir=settings.artefacts_dir, batch_size=BATCH_SIZE)
    if summary.status != "done" or summary.run_id is None:
        raise LearnerRefused(f"the refresh {summary.status}: {summary.error}")
    with session_scope(settings.db_url) as session:
        return result_of(session, summary.run_id, summary.job_id)


# ---------------------------------------------------------------- the trigger

def labels_since_refresh(session: Session) -> int:
    """Human labels (not undone) given since the latest refresh started."""
    mark = int(get_setting(session, MARK_SETTING, 0) or 0)
    return int(session.scalar(select(func.count()).select_from(Label).where(
        Label.id > mark, Label.revoked_at.is_(None), Label.annotator.not_in(SYSTEM_ANNOTATORS))) or 0)


def refresh_running(session: Session) -> bool:
    """Whether a refresh is queued or running (in this server's worker, or as a live job anywhere)."""
    from workbench.runs.background import jobs
    from workbench.runs.listing import job_status

    if any(t.step_kind == STEP_KIND for t in jobs().active()):
        return True
    rows = session.scalars(select(Job).where(Job.step_kind == STEP_KIND, Job.status.in_(("running", "cancelling"))))
    return any(job_status(job) in ("running", "cancelling") for job in rows)


def maybe_refresh(settings: Settings) -> Any:
    """After a human label (the Label page calls it): when the human labels since the latest
    refresh reach N, submit a refresh to the background worker and return its Ticket at once;
    otherwise None. Never waits for the refresh; never raises into the caller's labeling."""
    from workbench.runs.background import jobs
    from workbench.store.db import session_scope

    try:
        with session_scope(settings.db_url) as session:
            every = refresh_every(session)
            if every == 0 or labels_since_refresh(session) < every or refresh_running(session):
                return None
            set_setting(session, MARK_SETTING, last_human_label_id(session))
            ids = present_ids(session)
        return jobs().submit(settings.db_url, LearnerStep(), ids, memes_dir=settings.memes_dir,
                             lock_dir=settings.artefacts_dir, batch_size=BATCH_SIZE)
    except Exception:  # noqa: BLE001 - the label is stored; a refresh that cannot start must not undo that
        log.exception("the learner refresh could not be started")
        return None
