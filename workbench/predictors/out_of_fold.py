"""Shared machinery of predictors trained from the workbench's own labels (TF-IDF baseline, heads).

The contract that keeps their numbers honest:
- `prepare(session)` reads the current consensus labels and the training inputs; a hash
  of them goes into the config, so new labels make a new run (a new fingerprint);
- `load()` fits one model per stratified fold plus a final model on all labels (cached
  per fingerprint in the process, so a resumed run does not retrain); folds are split by
  near-duplicate group (`group_duplicates`, on by default), so a repost never sits in the
  training folds of its original, and the grouping is part of the config and the report;
- `predict()` answers a labeled image with the model of the fold that held it out
  (out-of-fold, never its own training data) and any other image with the final model;
  the fold goes into Prediction.extra.
A training report (metrics, curves, timings) is written under artefacts/training/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from workbench.predictors.base import PredictInput, Predictor, PredictOutput

FINAL = -1  # "fold" of the model trained on all labels
_CACHE_SIZE = 4
_fitted_cache: dict[str, Fitted] = {}


@dataclass
class Fitted:
    """Fold models, the final model, and where each labeled image was held out."""

    fold_of: dict[int, int]  # image_id -> fold that held it out
    fold_models: list[Any]
    final: Any
    metrics: dict[str, Any] = field(default_factory=dict)  # out-of-fold F1/AUROC ...
    curves: list[dict[str, float]] = field(default_factory=list)
    fold_seconds: list[float] = field(default_factory=list)
    # Precomputed out-of-fold probabilities for images without a fold model (a loaded head).
    stored_oof: dict[int, tuple[float, int]] = field(default_factory=dict)
    n_train: int | None = None  # labeled images the final model saw (default: len(fold_of))


def training_reports_dir() -> Path:
    from workbench.config import load_settings

    return load_settings().artefacts_dir / "training"


def read_training_report(fingerprint: str) -> dict[str, Any] | None:
    """The report a trained predictor wrote for the run with this fingerprint (None if absent)."""
    path = training_reports_dir() / f"{fingerprint}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


GROUP_OPTION_HELP = "split folds by near-duplicate group (a repost never trains the model that scores its original)"


class OutOfFoldPredictor(Predictor):
    """Base of predictors trained by stratified k-fold on the current labels."""

    folds: int = 5
    seed: int = 0
    group_duplicates: bool = True

    def __init__(self) -> None:
        self.labels: dict[int, str] = {}
        self.digest = "unprepared"
        self.fitted: Fitted | None = None
        self.dup_groups: dict[int, int] = {}  # labeled image_id -> its near-duplicate group (shared by 2+ labeled)

    # -- subclass hooks ------------------------------------------------------------
    def training_config(self) -> dict[str, Any]:
        """Hyper-parameters and inputs (everything but the labels) that change the output."""
        raise NotImplementedError

    def collect(self, session: Session, labels: dict[int, str]) -> str:
        """Read training inputs for the labeled images; return a hash of them."""
        raise NotImplementedError

    def fit(self) -> Fitted:
        """Train the fold models and the final model on the prepared data."""
        raise NotImplementedError

    def features_for(self, inp: PredictInput) -> Any:
        """The model input of one image; raise ValueError with a clear message if there is none."""
        raise NotImplementedError

    def score(self, model: Any, inputs: list[Any]) -> list[tuple[float, str | None]]:
        """(P(toxic), explanation) per input from one model."""
        raise NotImplementedError

    def input_notice(self, session: Session, image_ids: list[int], list_memes: bool = True) -> str | None:
        """Before a run: which of `image_ids` lack this predictor's inputs (e.g. current embeddings;
        with `list_memes`, their ids and files) and how to make them; None when nothing is lacking."""
        return None

    # -- Predictor -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        config = {**self.training_config(), "labels": self.digest, "n_labels": len(self.labels)}
        if self.dup_groups:  # only where grouping changes the folds, so earlier runs keep their fingerprint
            config["fold_groups"] = labels_digest_of_groups(self.dup_groups) if self.group_duplicates else "off"
        return config

    def fold_groups(self, ids: Sequence[int]) -> np.ndarray | None:
        """Group id per labeled image in `ids` for the fold split (None: plain stratified folds)."""
        from workbench.features.head_training import fold_groups

        return fold_groups(list(ids), self.dup_groups) if self.group_duplicates and self.dup_groups else None

    def prepare(self, session: Session) -> None:
        from workbench.features.head_training import labels_digest
        from workbench.features.near_duplicates import group_of_images
        from workbench.store.labels import consensus_labels

        self.labels = consensus_labels(session)
        members: dict[int, list[int]] = {}
        for image_id, group in group_of_images(session, sorted(self.labels)).items():
            members.setdefault(group, []).append(image_id)
        # A group is named by its smallest labeled member: the same partition gives the same config.
        self.dup_groups = {i: min(m) for m in members.values() if len(m) > 1 for i in m}
        inputs_digest = self.collect(session, self.labels)
        self.digest = labels_digest([*self.labels.items(), ("inputs", inputs_digest)])
        self.fitted = None

    def load(self) -> None:
        if self.digest == "unprepared":
            raise RuntimeError(f"{self.kind}: prepare(session) must run before load() (PredictorStep does it)")
        fp = self.fingerprint()
        if fp in _fitted_cache:
            self.fitted = _fitted_cache[fp]
            return
        t0 = time.perf_counter()
        self.fitted = self.fit()
        seconds = time.perf_counter() - t0
        while len(_fitted_cache) >= _CACHE_SIZE:
            _fitted_cache.pop(next(iter(_fitted_cache)))
        _fitted_cache[fp] = self.fitted
        self.write_report(fp, seconds)

    def write_report(self, fingerprint: str, seconds: float) -> Path:
        assert self.fitted is not None
        directory = training_reports_dir()
        directory.mkdir(parents=True, exist_ok=True)
        doc = {"kind": self.kind, "config": self.config(), "fingerprint": fingerprint,
               "metrics": self.fitted.metrics, "curves": self.fitted.curves,
               "fold_seconds": self.fitted.fold_seconds, "train_seconds": seconds}
        path = directory / f"{fingerprint}.json"
        path.write_text(json.dumps(doc, ensure_ascii=False, default=str), encoding="utf-8")
        return path

    def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        if self.fitted is None:
            self.load()
        fitted = self.fitted
        assert fitted is not None
        outputs: list[PredictOutput | None] = [None] * len(batch)
        groups: dict[int, list[tuple[int, Any]]] = {}
        for pos, inp in enumerate(batch):
            if inp.image_id in fitted.stored_oof:  # a loaded head's own out-of-fold result for this image
                prob, fold = fitted.stored_oof[inp.image_id]
                outputs[pos] = _output(prob, "out-of-fold result stored with the loaded head", fold, 0.0)
                continue
            try:
                x = self.features_for(inp)
            except ValueError as exc:
                outputs[pos] = PredictOutput(label="unknown", error=str(exc))
                continue
            groups.setdefault(fitted.fold_of.get(inp.image_id, FINAL), []).append((pos, x))
        for fold, members in groups.items():
            model = fitted.final if fold == FINAL else fitted.fold_models[fold]
            t0 = time.perf_counter()
            scored = self.score(model, [x for _, x in members])
            per_item_ms = (time.perf_counter() - t0) * 1000 / len(members)
            for (pos, _), (prob, explanation) in zip(members, scored, strict=True):
                outputs[pos] = _output(prob, explanation, None if fold == FINAL else fold, per_item_ms)
        for out in outputs:
            if out is not None and out.error is None:
                out.extra["n_train"] = fitted.n_train if fitted.n_train is not None else len(fitted.fold_of)
        return [out for out in outputs if out is not None]


def _output(prob: float, explanation: str | None, fold: int | None, latency_ms: float) -> PredictOutput:
    return PredictOutput(
        label="toxic" if prob >= 0.5 else "non_toxic", prob_toxic=float(prob), explanation=explanation,
        latency_ms=latency_ms, extra={"fold": fold, "out_of_fold": fold is not None},
    )


def labels_digest_of_groups(groups: dict[int, int]) -> str:
    """A short hash of which labeled images share a near-duplicate group (image_id -> group name)."""
    from workbench.features.head_training import labels_digest

    return labels_digest((i, str(g)) for i, g in groups.items())


def labeled_arrays(labels: dict[int, str], ids: Sequence[int]) -> np.ndarray:
    """0/1 targets (1 = toxic) for `ids` in order."""
    from workbench.features.head_training import labels_to_targets

    return labels_to_targets([labels[i] for i in ids])
