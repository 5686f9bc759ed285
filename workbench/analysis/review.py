"""Disagreement review: where two runs and the people part ways.

Plain queries over the outcomes in workbench.analysis.outcomes:
- the 2x2 of run A right/wrong x run B right/wrong (vs the human consensus) with the
  exact McNemar p-value, and the images behind each cell;
- "A and B agree but both differ from the human": candidates for label errors;
- a queue of suspected label issues, ranked by how confidently the models contradict
  the human label;
- the details a review card shows for one image.

Suspected-label-issue ranking, two ways (`label_issue_queue` picks and says which):
- **cleanlab**, where out-of-fold probabilities are complete: when the chosen runs include a
  learned predictor (TF-IDF baseline, head) whose out-of-fold P(toxic) covers every labeled meme,
  cleanlab's Datalab ranks by its label quality score (self-confidence, p(human label)) and flags
  label issues by confident learning (per-class thresholds, so a model that is confident but
  miscalibrated still flags). The score is 1 - label quality; the queue holds the flagged memes
  plus those scoring at least `min_score`.
- **mean confidence** (the fallback, e.g. zero-shot runs only): for each run that gave the image
  a class, its confidence in the class *opposite* to the human label — 1 - p(human label) — using
  prob_toxic when the run has one and 1/0 for a hard label without probability; the score is the
  mean over those runs. Zero-shot models were never trained on these labels, but cleanlab's
  confident-learning thresholds are meant for probabilities from models fitted to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.analysis.metrics import McNemar, mcnemar_from_table
from workbench.analysis.outcomes import RunData, RunInfo, paired_arrays
from workbench.config import LABELS
from workbench.store.db import in_batches
from workbench.store.labels import adjudicated_labels, consensus_from, current_labels
from workbench.store.ocr_texts import best_texts
from workbench.store.schema import Image, Prediction

CELLS = ("both right", "A right, B wrong", "A wrong, B right", "both wrong")
AGREE_WRONG = "A and B agree, both differ from human"
EXCLUDED = "A or B gave no class"


@dataclass(frozen=True)
class PairTable:
    """The 2x2 of two runs' correctness, with the image ids behind each cell."""

    run_a: int
    run_b: int
    cells: dict[str, list[int]]  # CELLS + AGREE_WRONG + EXCLUDED -> image ids
    mcnemar: McNemar

    @property
    def counts(self) -> dict[str, int]:
        return {name: len(ids) for name, ids in self.cells.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"run_a": self.run_a, "run_b": self.run_b, "counts": self.counts, "mcnemar": self.mcnemar.to_dict(),
                "cells": self.cells}


def pair_table(a: RunData, b: RunData) -> PairTable:
    """Run A vs run B on the labeled images where both gave a class (the rest: EXCLUDED)."""
    pa = paired_arrays(a, b)
    ids, ca, cb = pa["image_ids"], pa["correct_a"], pa["correct_b"]
    labeled = pa["true"] >= 0
    both = (ca >= 0) & (cb >= 0)
    masks = {
        CELLS[0]: both & (ca == 1) & (cb == 1),
        CELLS[1]: both & (ca == 1) & (cb == 0),
        CELLS[2]: both & (ca == 0) & (cb == 1),
        CELLS[3]: both & (ca == 0) & (cb == 0),
    }
    masks[AGREE_WRONG] = masks[CELLS[3]] & (pa["pred_a"] == pa["pred_b"])
    masks[EXCLUDED] = labeled & ~both
    cells = {name: ids[m].tolist() for name, m in masks.items()}
    table = [[len(cells[CELLS[0]]), len(cells[CELLS[1]])], [len(cells[CELLS[2]]), len(cells[CELLS[3]])]]
    return PairTable(a.run.id, b.run.id, cells, mcnemar_from_table(table, len(cells[EXCLUDED])))


DEFAULT_PAIR_RUNS = 8  # newest runs searched for a comparable pair when the VLM/CLIP default has none


def default_cell(counts: dict[str, int]) -> str:
    """The cell the page opens on: the label-error candidates when there are any, else the
    cell with the most memes (the first of CELLS + EXCLUDED on a tie)."""
    if counts.get(AGREE_WRONG):
        return AGREE_WRONG
    return max([*CELLS, EXCLUDED], key=lambda c: counts.get(c, 0))


def _answered_labeled(session: Session, run_id: int, labeled: np.ndarray) -> np.ndarray:
    """Sorted ids of labeled images the run gave a class (toxic / non_toxic, no error)."""
    from workbench.store.db import fetch_tuples

    rows = fetch_tuples(session, select(Prediction.image_id).where(
        Prediction.run_id == run_id, Prediction.error.is_(None), Prediction.label.in_(LABELS)))
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    return np.sort(ids[np.isin(ids, labeled)])


def default_pair(session: Session, runs: Sequence[RunInfo]) -> tuple[int, int]:
    """Runs A and B the Disagreements page opens with: the latest VLM vs the latest CLIP run
    (else the two newest runs) when they share labeled memes both gave a class; otherwise the
    pair of the newest DEFAULT_PAIR_RUNS runs that shares the most, so the first view is never
    an empty 2x2 while a comparable pair exists. `runs` newest first, as list_runs gives them."""
    from workbench.analysis.outcomes import latest_run_of_kind, load_truth

    a = latest_run_of_kind(runs, "vlm") or runs[0]
    b = latest_run_of_kind(runs, "clip") or next((r for r in runs if r.id != a.id), runs[0])
    if a.id == b.id:
        return a.id, b.id
    labeled = load_truth(session).image_ids
    answered: dict[int, np.ndarray] = {}

    def shared(x: int, y: int) -> int:
        for r in (x, y):
            if r not in answered:
                answered[r] = _answered_labeled(session, r, labeled)
        return len(np.intersect1d(answered[x], answered[y], assume_unique=True))

    if shared(a.id, b.id):
        return a.id, b.id
    newest = [r.id for r in runs[:DEFAULT_PAIR_RUNS]]
    pairs = [(x, y) for k, x in enumerate(newest) for y in newest[k + 1:]]
    best = max(pairs, key=lambda p: shared(*p), default=(a.id, b.id))
    return best if shared(*best) else (a.id, b.id)


@dataclass(frozen=True)
class LabelIssue:
    """One image whose human label the models contradict."""

    image_id: int
    human: str
    score: float  # mean confidence of the runs in the opposite class (0..1)
    n_runs: int  # runs that gave this image a class
    n_contradicting: int  # of those, runs whose class differs from the human label

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _run_votes(datas: Sequence[RunData]) -> tuple[dict[int, float], dict[int, int], dict[int, int], dict[int, int]]:
    """Per labeled image: summed confidence in the other class, runs with a class, runs contradicting, human code."""
    sums: dict[int, float] = {}
    n_runs: dict[int, int] = {}
    n_contra: dict[int, int] = {}
    human: dict[int, int] = {}
    for data in datas:
        use = (data.true >= 0) & (data.pred <= 1)
        ids, t, p, prob = data.image_ids[use], data.true[use], data.pred[use], data.prob[use]
        p_toxic = np.where(np.isnan(prob), p.astype(np.float64), prob)  # hard label as 1/0 without a prob
        opposite = np.where(t == 1, 1.0 - p_toxic, p_toxic)
        for image_id, truth, said, conf in zip(ids.tolist(), t.tolist(), p.tolist(), opposite.tolist()):
            sums[image_id] = sums.get(image_id, 0.0) + conf
            n_runs[image_id] = n_runs.get(image_id, 0) + 1
            n_contra[image_id] = n_contra.get(image_id, 0) + int(said != truth)
            human[image_id] = truth
    return sums, n_runs, n_contra, human


def suspected_label_issues(datas: Sequence[RunData], min_score: float = 0.5,
                           limit: int | None = None) -> list[LabelIssue]:
    """Labeled images ranked by how confidently the runs contradict the human label (the
    mean-confidence score in the module docstring); only those scoring at least `min_score`."""
    sums, n_runs, n_contra, human = _run_votes(datas)
    issues = [
        LabelIssue(i, "toxic" if human[i] == 1 else "non_toxic", sums[i] / n_runs[i], n_runs[i], n_contra[i])
        for i in sums
    ]
    issues = [x for x in issues if x.score >= min_score]
    issues.sort(key=lambda x: (-x.score, -x.n_contradicting, x.image_id))
    return issues[:limit] if limit else issues


def cleanlab_label_issues(datas: Sequence[RunData], oof: dict[int, dict[int, float]], min_score: float = 0.5,
                          limit: int | None = None) -> list[LabelIssue]:
    """Labeled images ranked by cleanlab's label quality on the mean out-of-fold probabilities
    `oof` (run_id -> {image_id: P(toxic)}, complete for every labeled image): the memes
    cleanlab flags, plus those whose score (1 - label quality) is at least `min_score`."""
    from workbench.analysis.data_audit import CLASSES, datalab_issues, mean_probabilities

    truth = datas[0]
    labeled = truth.true >= 0
    ids = truth.image_ids[labeled].tolist()
    given = [CLASSES[int(c)] for c in truth.true[labeled]]
    lab = datalab_issues(given, None, mean_probabilities(oof, ids), ["label"])
    found = lab.get_issues("label")
    quality, flagged = found["label_score"].to_numpy(float), found["is_label_issue"].to_numpy(bool)
    _, n_runs, n_contra, _ = _run_votes(datas)
    issues = [LabelIssue(i, g, float(1.0 - q), n_runs.get(i, 0), n_contra.get(i, 0))
              for i, g, q, f in zip(ids, given, quality, flagged) if f or 1.0 - q >= min_score]
    issues.sort(key=lambda x: (-x.score, -x.n_contradicting, x.image_id))
    return issues[:limit] if limit else issues


@dataclass(frozen=True)
class IssueQueue:
    """The suspected-label-issue queue and how it was ranked."""

    issues: list[LabelIssue]
    method: str  # "cleanlab" | "mean confidence"
    prob_runs: list[int]  # runs whose out-of-fold probabilities cleanlab ranked with
    available: list[int] = field(default_factory=list)  # complete out-of-fold runs that were not chosen

    def describe(self) -> str:
        if self.method == "cleanlab":
            runs = ", ".join(f"#{r}" for r in self.prob_runs)
            return (f"Ranked by cleanlab (label quality and confident-learning flags) on the out-of-fold "
                    f"probabilities of run {runs}, which cover every labeled meme.")
        if self.available:
            runs = ", ".join(f"#{r}" for r in self.available)
            return ("Ranked by the runs' mean confidence in the other class: no chosen run has out-of-fold "
                    f"probabilities for every labeled meme. Run {runs} has them: add it to the runs to use for "
                    "cleanlab's ranking.")
        return ("Ranked by the runs' mean confidence in the other class (no run has out-of-fold probabilities "
                "for every labeled meme: train the TF-IDF baseline or a head, again if memes were labeled since, "
                "for cleanlab's ranking).")


def label_issue_queue(session: Session, run_ids: Sequence[int] | None = None, min_score: float = 0.5,
                      limit: int | None = None) -> IssueQueue:
    """Suspected label issues over the runs given (default: all), ranked by cleanlab where their
    out-of-fold probabilities are complete, else by mean confidence (module docstring)."""
    from workbench.analysis.data_audit import out_of_fold_runs
    from workbench.analysis.outcomes import list_runs, load_runs, load_truth

    ids = list(run_ids) if run_ids is not None else sorted(r.id for r in list_runs(session))
    truth = load_truth(session)
    datas = load_runs(session, ids, truth)
    complete = out_of_fold_runs(session, truth.labels) if datas and len(set(truth.codes.tolist())) == 2 else {}
    oof = {run_id: probs for run_id, probs in complete.items() if run_id in ids}
    if oof:
        return IssueQueue(cleanlab_label_issues(datas, oof, min_score, limit), "cleanlab", sorted(oof))
    return IssueQueue(suspected_label_issues(datas, min_score, limit), "mean confidence", [], sorted(complete))


def default_issue_runs(session: Session, pair: Sequence[int]) -> list[int]:
    """The runs the Disagreements page's queue starts with: every run whose out-of-fold
    probabilities cover every labeled meme (so cleanlab ranks), then the compared pair."""
    from workbench.analysis.data_audit import out_of_fold_runs
    from workbench.analysis.outcomes import load_truth

    truth = load_truth(session)
    complete = out_of_fold_runs(session, truth.labels) if len(set(truth.codes.tolist())) == 2 else {}
    return list(dict.fromkeys([*sorted(complete, reverse=True), *pair]))


def without_reviewed(session: Session, issues: Sequence[LabelIssue], annotator: str) -> list[LabelIssue]:
    """The issues whose image does not carry a current label by `annotator` yet."""
    ids = [x.image_id for x in issues]
    mine = {c.image_id for chunk in in_batches(ids)
            for c in current_labels(session, chunk) if c.annotator == annotator}
    return [x for x in issues if x.image_id not in mine]


@dataclass(frozen=True)
class CardPrediction:
    run_id: int
    label: str | None  # None = the run has no prediction for this image
    prob_toxic: float | None
    explanation: str | None
    error: str | None


@dataclass(frozen=True)
class Card:
    """Everything a review card shows for one image."""

    image_id: int
    path: str
    sha256: str
    folder: str
    consensus: str | None
    human_labels: list[tuple[str, str]]  # (annotator, label), current labels
    predictions: list[CardPrediction] = field(default_factory=list)  # in the order of run_ids asked
    ocr_text: str = ""


def cards(session: Session, image_ids: Sequence[int], run_ids: Sequence[int]) -> list[Card]:
    """Review cards for images (in the order given), with each run's prediction."""
    ids = list(dict.fromkeys(int(i) for i in image_ids))
    if not ids:
        return []
    images = {img.id: img for img in session.scalars(select(Image).where(Image.id.in_(ids)))}
    labels: dict[int, list] = {}
    for c in current_labels(session, ids):
        labels.setdefault(c.image_id, []).append(c)
    preds = {(p.run_id, p.image_id): p for p in session.scalars(
        select(Prediction).where(Prediction.image_id.in_(ids), Prediction.run_id.in_(list(run_ids))))}
    texts = best_texts(session, ids)
    decided = adjudicated_labels(session, ids)  # a reviewer's decision outranks the vote, as everywhere
    out = []
    for i in ids:
        img = images.get(i)
        if img is None:
            continue
        current = sorted(labels.get(i, []), key=lambda c: c.annotator)
        predictions = []
        for run_id in run_ids:
            p = preds.get((run_id, i))
            predictions.append(CardPrediction(run_id, p.label if p else None, p.prob_toxic if p else None,
                                              p.explanation if p else None, p.error if p else None))
        out.append(Card(i, img.path, img.sha256, img.folder, consensus_from(current, decided.get(i)),
                        [(c.annotator, c.label) for c in current], predictions, texts.get(i, "")))
    return out
