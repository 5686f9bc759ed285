"""How the learner is doing as people label: the learning curve and the toxic memes still unlabeled.

- Learning curve: each learner refresh's out-of-fold F1 with its bootstrap CI, against the
  number of labels it trained on (the refresh records of workbench.analysis.learner).
- Toxic memes still unlabeled: the sum of the newest learner run's calibrated P(toxic) over the
  unlabeled memes it scored. Calibration is Platt scaling of its out-of-fold P(toxic) against
  the consensus labels, on the labels chosen at random when there are enough of them (an
  actively chosen calibration set is not like the unlabeled rest), else on all labels, which
  the estimate then says. The interval combines both uncertainties: the calibration refitted on
  bootstrap resamples of its labels, and, given the probabilities, the count of toxic memes as
  a sum of independent Bernoulli draws (normal approximation of the Poisson binomial).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.analysis.learner import RUN_KIND, latest_refresh, result_of
from workbench.store.db import fetch_tuples
from workbench.store.label_choice import how_chosen, random_ids, summarize
from workbench.store.labels import consensus_labels
from workbench.store.schema import Image, ModelRun, Prediction

MIN_RANDOM_CALIBRATION = 20  # random-chosen labels of each class needed to calibrate on them alone
EPS = 1e-6


def learning_curve(session: Session) -> list[dict[str, Any]]:
    """One row per finished learner refresh, oldest first: run, labels, F1 and its CI, learner, seconds."""
    rows = []
    for run in session.scalars(select(ModelRun).where(ModelRun.kind == RUN_KIND, ModelRun.status == "done")
                               .order_by(ModelRun.id)):
        if not (run.params or {}).get("refresh"):
            continue
        r = result_of(session, run.id)
        ci = r.oof_f1_ci or (None, None)
        rows.append({"run_id": r.run_id, "labels": r.labels, "oof_f1": r.oof_f1, "ci_low": ci[0], "ci_high": ci[1],
                     "learner": r.description or r.learner, "seconds": r.seconds,
                     "at": run.created_at.isoformat(timespec="seconds") if run.created_at else None})
    return rows


@dataclass(frozen=True)
class ToxicEstimate:
    """Expected toxic memes among the unlabeled ones, with a 95% interval."""

    run_id: int
    expected: float
    ci: tuple[float, float]
    unlabeled: int  # present memes without a consensus label
    scored: int  # of those, scored by the run (the estimate covers these)
    calibration: str  # "random" (labels chosen at random) | "all" (every label: may be biased)
    calibration_labels: int

    def describe(self) -> str:
        text = (f"About {self.expected:.0f} toxic memes (95% interval {self.ci[0]:.0f}–{self.ci[1]:.0f}) among "
                f"{self.scored} unlabeled memes scored by learner run #{self.run_id}")
        if self.scored < self.unlabeled:
            text += f"; {self.unlabeled - self.scored} unlabeled memes have no score and are not counted"
        basis = ("labels chosen at random" if self.calibration == "random"
                 else "all labels, most not chosen at random, so the estimate may be biased")
        return text + f". Calibrated on {self.calibration_labels} {basis}."

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ci": list(self.ci), "note": self.describe()}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _platt(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """(slope, intercept) of a logistic fit of y on x; None when y holds one class."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return None
    model = LogisticRegression(C=1e4).fit(x[:, None], y)  # nearly unpenalised: a calibration, not a learner
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def toxic_estimate(session: Session, n_boot: int = 200, seed: int = 0,
                   chosen: dict[int, str] | None = None) -> ToxicEstimate | None:
    """The toxic memes still unlabeled, by the newest learner run (None without a run, or with
    too few labels of both classes among its out-of-fold answers to calibrate); `chosen`:
    how_chosen's result when the caller has it."""
    latest = latest_refresh(session)
    if latest is None:
        return None
    probs = dict(fetch_tuples(session, select(Prediction.image_id, Prediction.prob_toxic).where(
        Prediction.run_id == latest.run_id, Prediction.error.is_(None), Prediction.prob_toxic.is_not(None))))
    labels = consensus_labels(session)
    present = [r[0] for r in fetch_tuples(session, select(Image.id).where(Image.missing.is_(False)))]
    unlabeled = [i for i in present if i not in labels]
    calib_ids = [i for i in labels if i in probs and labels[i] in ("toxic", "non_toxic")]
    chosen_at_random = random_ids(chosen if chosen is not None else how_chosen(session))
    random_calib = [i for i in calib_ids if i in chosen_at_random]
    y_random = np.array([labels[i] == "toxic" for i in random_calib], dtype=int)
    use_random = min(int(y_random.sum()), int(len(y_random) - y_random.sum())) >= MIN_RANDOM_CALIBRATION
    calib_ids = random_calib if use_random else calib_ids
    x = _logit(np.array([probs[i] for i in calib_ids], dtype=np.float64))
    y = np.array([labels[i] == "toxic" for i in calib_ids], dtype=int)
    fit = _platt(x, y)
    if fit is None:
        return None
    scored = np.array([probs[i] for i in unlabeled if i in probs], dtype=np.float64)
    z = _logit(scored)
    p = 1 / (1 + np.exp(-(fit[0] * z + fit[1])))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        refit = _platt(x[idx], y[idx])
        if refit is None:
            continue
        pb = 1 / (1 + np.exp(-(refit[0] * z + refit[1])))
        draws.append(pb.sum() + rng.normal() * np.sqrt((pb * (1 - pb)).sum()))
    draws_arr = np.array(draws) if draws else np.array([p.sum()])
    lo, hi = np.percentile(draws_arr, [2.5, 97.5])
    return ToxicEstimate(latest.run_id, float(p.sum()), (max(0.0, float(lo)), min(float(len(scored)), float(hi))),
                         len(unlabeled), int(len(scored)), "random" if use_random else "all", len(calib_ids))


def learning_history(session: Session) -> dict[str, Any]:
    """What `learn --history --json` prints and the Dashboard shows: the learning curve, the
    toxic memes still unlabeled, and how the labelled memes were chosen."""
    chosen = how_chosen(session)
    estimate = toxic_estimate(session, chosen=chosen)
    return {"curve": learning_curve(session), "toxic_estimate": estimate.to_dict() if estimate else None,
            "labels_chosen": summarize(chosen).to_dict()}
