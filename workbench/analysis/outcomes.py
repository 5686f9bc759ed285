"""Per-run, per-image outcomes against the current human consensus, and the queries the
dashboard and the CLI build on: runs listing, evaluations, per-folder/source breakdown,
latency, pairwise comparisons.

Outcomes are computed on read (not stored), from `predictions` and
workbench.store.labels.consensus_labels, so a relabel shows up at once. The population of a
run is every present labeled image plus every image the run predicted:

    TP / FP / FN / TN   labeled, and the run said toxic/non_toxic (toxic is positive)
    unknown             labeled, the run answered but gave no class
    failed              labeled, the prediction stored an error
    missing             labeled, no prediction row in this run
    unlabeled           the run predicted an image nobody has labeled (left out of metrics)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from workbench.analysis.agreement import agreement_report
from workbench.analysis.metrics import (
    DEFAULT_N_BOOT,
    PRED_CODES,
    TRUE_CODES,
    Evaluation,
    McNemar,
    cohen_kappa,
    evaluate_codes,
    kappa_from_confusion,
    mcnemar_from_table,
)
from workbench.config import SYSTEM_ANNOTATORS
from workbench.store.db import fetch_tuples
from workbench.store.label_choice import CHOICE_CODES, RANDOM, chosen_codes
from workbench.store.labels import (
    CurrentLabel,
    cached_by_images,
    consensus_codes,
    consensus_from,
    current_labels,
    images_fingerprint,
    labels_fingerprint,
    present_array,
    raw_column,
)
from workbench.store.schema import Image, ModelRun, Prediction

OUTCOMES = ("TP", "FP", "FN", "TN", "unknown", "failed", "missing", "unlabeled")
# Confusion-heatmap columns: the two classes, then "no class" (unknown, failed or missing).
NO_CLASS = "no class"


@dataclass(frozen=True)
class RunInfo:
    """A model run with its prediction counts."""

    id: int
    kind: str
    model_id: str
    name: str
    status: str
    created_at: datetime | None
    n_predictions: int
    n_unknown: int
    n_failed: int

    @property
    def title(self) -> str:
        return f"#{self.id} {self.kind} · {self.name or self.model_id}"

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["created_at"] = self.created_at.isoformat() if self.created_at else None
        return out


def run_params(session: Session, run_id: int) -> dict[str, Any]:
    """A run's exact configuration (prompts included); empty when there is no such run."""
    run = session.get(ModelRun, run_id)
    return dict(run.params or {}) if run else {}


def list_runs(session: Session, run_ids: Sequence[int] | None = None) -> list[RunInfo]:
    """Runs, newest first, with how many predictions each has (and how many unknown/failed)."""
    query = (select(ModelRun.id, ModelRun.kind, ModelRun.model_id, ModelRun.name, ModelRun.status, ModelRun.created_at)
             .order_by(ModelRun.id.desc()))
    if run_ids is not None:
        query = query.where(ModelRun.id.in_(list(run_ids)))
    counts = _prediction_counts(session)
    return [RunInfo(r[0], r[1], r[2], r[3] or "", r[4], r[5], *counts.get(r[0], (0, 0, 0)))
            for r in session.execute(query)]


def predictions_fingerprint(session: Session) -> tuple:
    """(max prediction id, max run id, number of runs): changes whenever predictions do. Rows are
    only inserted, or replaced by delete + insert (new ids), and a run is deleted only while it
    has no predictions; two index ends and a small count (a count of three million prediction
    rows took 0.2 s)."""
    return (session.scalar(select(func.max(Prediction.id))),
            *session.execute(select(func.max(ModelRun.id), func.count()).select_from(ModelRun)).one())


# Prediction counts per run by database, kept while predictions_fingerprint is unchanged: at a
# million memes the GROUP BY over three runs' rows took 0.8 s, and the Dashboard lists the runs twice.
_COUNTS: dict[str, tuple[tuple, dict[int, tuple[int, int, int]]]] = {}


def _prediction_counts(session: Session) -> dict[int, tuple[int, int, int]]:
    """run id -> (predictions, unknown, failed)."""
    key = str(session.get_bind().engine.url)
    fingerprint = predictions_fingerprint(session)
    cached = _COUNTS.get(key)
    if cached is None or cached[0] != fingerprint:
        rows = session.execute(select(
            Prediction.run_id, func.count(),
            func.sum(case((Prediction.error.is_not(None), 0), (Prediction.label == "unknown", 1), else_=0)),
            func.sum(case((Prediction.error.is_not(None), 1), else_=0))).group_by(Prediction.run_id))
        cached = _COUNTS[key] = (fingerprint, {r[0]: (r[1] or 0, r[2] or 0, r[3] or 0) for r in rows})
    return cached[1]


def latest_run_of_kind(runs: Sequence[RunInfo], kind: str) -> RunInfo | None:
    """The newest run of a kind (runs as list_runs returns them, newest first)."""
    return next((r for r in runs if r.kind == kind), None)


@dataclass(frozen=True)
class Truth:
    """Current human consensus of present images, as sorted arrays (fast alignment)."""

    image_ids: np.ndarray  # int64, sorted
    codes: np.ndarray  # int8: 1 toxic, 0 non_toxic

    @property
    def labels(self) -> dict[int, str]:
        return {int(i): ("toxic" if c == 1 else "non_toxic") for i, c in zip(self.image_ids, self.codes)}


def load_truth(session: Session, random_only: bool = False) -> Truth:
    """The consensus label of every present, labeled image; with `random_only`, only of the
    memes chosen at random (workbench.store.label_choice), both from the codes kept with the labels."""
    codes = consensus_codes(session)  # by image id, kept with the labels: no pass over a million
    keep = codes >= 0
    present = present_array(session)
    present = present[present < len(codes)]
    in_collection = np.zeros(len(codes), dtype=bool)
    in_collection[present] = True
    keep &= in_collection
    if random_only:
        how = chosen_codes(session)
        keep[:len(how)] &= how[:len(codes)] == CHOICE_CODES[RANDOM]
        keep[len(how):] = False
    ids = np.flatnonzero(keep)
    return Truth(ids.astype(np.int64), codes[ids].astype(np.int8))


@dataclass(frozen=True)
class RunData:
    """One run aligned with the truth: arrays over its population (see the module docstring)."""

    run: RunInfo
    image_ids: np.ndarray  # int64, sorted
    true: np.ndarray  # int8 TRUE_CODES, -1 = unlabeled
    pred: np.ndarray  # int8 PRED_CODES (4 = missing)
    prob: np.ndarray  # float64, nan = none
    latency_ms: np.ndarray  # float64, nan = none / not predicted

    @property
    def outcomes(self) -> np.ndarray:
        """Outcome name per image (OUTCOMES), aligned with image_ids."""
        t, p = self.true, self.pred
        return np.select(
            [t < 0, p == 4, p == 3, p == 2, (t == 1) & (p == 1), (t == 0) & (p == 1), (t == 1) & (p == 0)],
            ["unlabeled", "missing", "failed", "unknown", "TP", "FP", "FN"], default="TN",
        )

    def outcome_map(self) -> dict[int, str]:
        return dict(zip(self.image_ids.tolist(), self.outcomes.tolist()))

    def correct(self) -> np.ndarray:
        """1 right, 0 wrong, -1 no verdict (unlabeled, or the run gave no class)."""
        out = np.full(len(self.true), -1, dtype=np.int8)
        verdict = (self.true >= 0) & (self.pred <= 1)
        out[verdict] = (self.true[verdict] == self.pred[verdict]).astype(np.int8)
        return out

    def evaluate(self, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, mask: np.ndarray | None = None,
                 with_prob: bool = True) -> Evaluation:
        """Metrics of this run (on the items of `mask`); with_prob=False skips AUC/AP."""
        sel = slice(None) if mask is None else mask
        prob = self.prob[sel] if with_prob else None
        return evaluate_codes(self.true[sel], self.pred[sel], prob, n_boot=n_boot, seed=seed)


def sorted_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union of two sorted unique id arrays (np.union1d without its hash-based unique:
    runs usually cover the same images, and a sort of ints is cheap)."""
    if len(a) == len(b) and np.array_equal(a, b):
        return a
    both = np.sort(np.concatenate([a, b]), kind="stable")
    return both[np.concatenate([[True], both[1:] != both[:-1]])] if len(both) else both


def _answer_code():  # noqa: ANN202
    """PRED_CODES computed in SQL: small ints instead of strings keep 100k-row fetches fast."""
    return case(
        (Prediction.error.is_not(None), PRED_CODES["failed"]),
        (Prediction.label == "toxic", PRED_CODES["toxic"]),
        (Prediction.label == "non_toxic", PRED_CODES["non_toxic"]),
        else_=PRED_CODES["unknown"],
    )


# A run's prediction arrays by (database, run id), kept while the run's rows are unchanged: a
# million predictions take ~1.5 s to fetch, and the dashboard and the disagreements page reload
# every run after any label changes. While predictions_fingerprint is unchanged nothing changed;
# otherwise (count, max id) of the run's rows tells (rows are only inserted or replaced: new ids).
_RUN_ARRAYS: dict[tuple[str, int], tuple[tuple, tuple, tuple[np.ndarray, ...]]] = {}
_RUN_ARRAYS_MAX = 16


def _run_arrays(session: Session, run_id: int) -> tuple[np.ndarray, ...]:
    """(image ids sorted, answer codes, P(toxic), latency ms) of a run's predictions."""
    key = (str(session.get_bind().engine.url), run_id)
    overall = predictions_fingerprint(session)
    cached = _RUN_ARRAYS.get(key)
    if cached is not None and cached[0] == overall:
        return cached[2]
    fingerprint = tuple(session.execute(select(func.count(), func.max(Prediction.id))
                                        .where(Prediction.run_id == run_id)).one())
    if cached is not None and cached[1] == fingerprint:
        _RUN_ARRAYS[key] = (overall, fingerprint, cached[2])
        return cached[2]
    rows = fetch_tuples(session, select(Prediction.image_id, _answer_code(), Prediction.prob_toxic,
                                        Prediction.latency_ms).where(Prediction.run_id == run_id)
                        .order_by(Prediction.image_id))
    n = len(rows)
    p_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    p_code = np.fromiter((r[1] for r in rows), dtype=np.int8, count=n)
    p_prob = np.array([r[2] for r in rows], dtype=np.float64)  # None -> nan
    p_lat = np.array([r[3] for r in rows], dtype=np.float64)
    # A failed prediction's probability is not an answer.
    p_prob[p_code == PRED_CODES["failed"]] = np.nan
    for array in (p_ids, p_code, p_prob, p_lat):
        array.flags.writeable = False  # shared by every caller
    if len(_RUN_ARRAYS) >= _RUN_ARRAYS_MAX:
        _RUN_ARRAYS.pop(next(iter(_RUN_ARRAYS)))
    _RUN_ARRAYS[key] = (overall, fingerprint, (p_ids, p_code, p_prob, p_lat))
    return p_ids, p_code, p_prob, p_lat


def load_run_data(session: Session, run: RunInfo, truth: Truth) -> RunData:
    """Fetch a run's predictions (cached while unchanged) and align them with the truth."""
    p_ids, p_code, p_prob, p_lat = _run_arrays(session, run.id)

    ids = sorted_union(truth.image_ids, p_ids)
    true = np.full(len(ids), -1, dtype=np.int8)
    true[np.searchsorted(ids, truth.image_ids)] = truth.codes
    pred = np.full(len(ids), PRED_CODES["missing"], dtype=np.int8)
    prob = np.full(len(ids), np.nan)
    lat = np.full(len(ids), np.nan)
    at = np.searchsorted(ids, p_ids)
    pred[at], prob[at], lat[at] = p_code, p_prob, p_lat
    return RunData(run, ids, true, pred, prob, lat)


def load_runs(session: Session, run_ids: Sequence[int], truth: Truth | None = None) -> list[RunData]:
    """RunData for each run id (in the order given; unknown ids are skipped)."""
    truth = truth if truth is not None else load_truth(session)
    infos = {r.id: r for r in list_runs(session, run_ids)}
    return [load_run_data(session, infos[i], truth) for i in run_ids if i in infos]


def run_outcomes(session: Session, run_id: int) -> dict[int, str]:
    """image_id -> outcome (OUTCOMES) of one run against the current consensus."""
    data = load_runs(session, [run_id])
    if not data:
        raise ValueError(f"no model run with id {run_id}")
    return data[0].outcome_map()


def images_with_outcome(data: RunData, outcomes: Sequence[str]) -> list[int]:
    """Image ids of a run whose outcome is one of `outcomes`."""
    return data.image_ids[np.isin(data.outcomes, list(outcomes))].tolist()


def confusion_cells(data: RunData) -> list[dict[str, Any]]:
    """Heatmap cells: human class x run answer (toxic, non_toxic, 'no class'), with counts
    and the outcome names behind each cell (unlabeled images are not shown)."""
    out = data.outcomes
    cells = []
    for human, row in (("toxic", ("TP", "FN")), ("non_toxic", ("FP", "TN"))):
        for answer, outcome in zip(("toxic", "non_toxic"), row):
            cells.append({"human": human, "answer": answer, "outcome": outcome, "count": int((out == outcome).sum())})
        mask = (data.true == TRUE_CODES[human]) & (data.pred >= 2)
        cells.append({"human": human, "answer": NO_CLASS, "outcome": NO_CLASS, "count": int(mask.sum())})
    return cells


def cell_image_ids(data: RunData, human: str, answer: str) -> list[int]:
    """Image ids behind one heatmap cell (answer = toxic | non_toxic | 'no class')."""
    t = data.true == TRUE_CODES[human]
    p = data.pred >= 2 if answer == NO_CLASS else data.pred == PRED_CODES[answer]
    return data.image_ids[t & p].tolist()


def latency(data: RunData) -> dict[str, float | int | None]:
    """Mean and 95th percentile latency (ms) over the run's predictions that timed one."""
    lat = data.latency_ms[~np.isnan(data.latency_ms)]
    if not len(lat):
        return {"n": 0, "mean_ms": None, "p95_ms": None}
    return {"n": int(len(lat)), "mean_ms": float(lat.mean()), "p95_ms": float(np.percentile(lat, 95))}


def image_groups(session: Session, by: str = "folder") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image's folder (or source): (sorted ids, group index per id, group names);
    the memes root shows as '(root)'. Cached while no image was added and no scan ran."""
    return cached_by_images(session, ("groups", by), lambda: _image_groups(session, by))


def _image_groups(session: Session, by: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    column = Image.folder if by == "folder" else Image.source
    # One query per distinct value (a handful; the folder index serves both), ids straight into
    # arrays: a million (id, folder) tuples sorted in Python took 2.7 s.
    values = [r[0] for r in fetch_tuples(session, select(column).distinct())]
    names = sorted({g or "(root)" for g in values})
    index = {name: k for k, name in enumerate(names)}
    parts, codes = [], []
    name = "folder" if by == "folder" else "source"
    for value in values:
        found = np.array(raw_column(session, f"SELECT id FROM images WHERE {name} IS NULL") if value is None
                         else raw_column(session, f"SELECT id FROM images WHERE {name} = ?", (value,)), dtype=np.int64)
        parts.append(found)
        codes.append(np.full(len(found), index[value or "(root)"], dtype=np.int64))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), names
    ids, groups = np.concatenate(parts), np.concatenate(codes)
    order = np.argsort(ids, kind="stable")
    ids, groups = ids[order], groups[order]
    ids.flags.writeable = groups.flags.writeable = False  # cached: shared by every caller
    return ids, groups, names


def breakdown(session: Session, datas: Sequence[RunData], by: str = "folder",
              n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> list[dict[str, Any]]:
    """Per run and per folder (or source): counts and metrics with CIs, one row each."""
    all_ids, all_groups, names = image_groups(session, by)
    rows = []
    for data in datas:
        at = np.clip(np.searchsorted(all_ids, data.image_ids), 0, max(len(all_ids) - 1, 0))
        groups = all_groups[at] if len(all_ids) else np.zeros(len(data.image_ids), dtype=np.int64)
        for g in np.flatnonzero(np.bincount(groups, minlength=1)).tolist():  # no sort of a million ids
            ev = data.evaluate(n_boot=n_boot, seed=seed, mask=groups == g, with_prob=False)
            rows.append({"run_id": data.run.id, "run": data.run.title, by: names[g] if names else "?",
                         "n_labeled": ev.n_labeled, "coverage": ev.coverage, "accuracy": ev.accuracy,
                         "accuracy_ci": ev.ci.get("accuracy"), "f1": ev.f1, "n_unknown": ev.n_unknown,
                         "n_failed": ev.n_failed, "n_missing": ev.n_missing})
    return rows


@dataclass(frozen=True)
class PairComparison:
    """Two runs on the same images: McNemar on correctness, kappa on their answers."""

    a: int
    b: int
    mcnemar: McNemar
    kappa: float | None
    kappa_n: int

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "mcnemar": self.mcnemar.to_dict(), "kappa": self.kappa,
                "kappa_n": self.kappa_n}


def align(a: RunData, b: RunData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of the two populations: (image_ids, index into a or -1, index into b or -1)."""
    ids = sorted_union(a.image_ids, b.image_ids)
    if ids is a.image_ids and len(ids) == len(b.image_ids):  # the same images (the usual case)
        every = np.arange(len(ids))
        return ids, every, every
    ia, ib = np.full(len(ids), -1), np.full(len(ids), -1)
    ia[np.searchsorted(ids, a.image_ids)] = np.arange(len(a.image_ids))
    ib[np.searchsorted(ids, b.image_ids)] = np.arange(len(b.image_ids))
    return ids, ia, ib


def _take(values: np.ndarray, idx: np.ndarray, fill: float) -> np.ndarray:
    out = np.full(len(idx), fill, dtype=values.dtype)
    out[idx >= 0] = values[idx[idx >= 0]]
    return out


def paired_arrays(a: RunData, b: RunData) -> dict[str, np.ndarray]:
    """Aligned arrays of two runs: ids, human code, each run's answer and correctness."""
    ids, ia, ib = align(a, b)
    true = np.maximum(_take(a.true, ia, -1), _take(b.true, ib, -1))  # same truth; -1 where one lacks the id
    return {"image_ids": ids, "true": true, "pred_a": _take(a.pred, ia, 4), "pred_b": _take(b.pred, ib, 4),
            "correct_a": _take(a.correct(), ia, -1), "correct_b": _take(b.correct(), ib, -1),
            "prob_a": _take(a.prob, ia, np.nan), "prob_b": _take(b.prob, ib, np.nan)}


def compare(a: RunData, b: RunData) -> PairComparison:
    """Exact McNemar (labeled items where both gave a class) and Cohen's kappa between the
    two runs' answers (every image where both gave a class, labeled or not)."""
    pa = paired_arrays(a, b)
    ca, cb = pa["correct_a"], pa["correct_b"]
    both = (ca >= 0) & (cb >= 0)
    table = [[int((both & (ca == 1) & (cb == 1)).sum()), int((both & (ca == 1) & (cb == 0)).sum())],
             [int((both & (ca == 0) & (cb == 1)).sum()), int((both & (ca == 0) & (cb == 0)).sum())]]
    excluded = int(((pa["true"] >= 0) & ~both).sum())
    answers = (pa["pred_a"] <= 1) & (pa["pred_b"] <= 1)
    pa_, pb_ = pa["pred_a"][answers], pa["pred_b"][answers]
    # rows/columns ordered (toxic, non_toxic) like metrics.CLASSES
    confusion = np.array([[((pa_ == 1) & (pb_ == 1)).sum(), ((pa_ == 1) & (pb_ == 0)).sum()],
                          [((pa_ == 0) & (pb_ == 1)).sum(), ((pa_ == 0) & (pb_ == 0)).sum()]])
    return PairComparison(a.run.id, b.run.id, mcnemar_from_table(table, excluded), kappa_from_confusion(confusion),
                          int(answers.sum()))


def data_version(session: Session) -> tuple:
    """A cheap fingerprint of labels + predictions + images: changes whenever any changes (new
    rows, revoked labels, adjudications, deleted rows, scans), so pages can cache heavy
    computations on it; index ends and small counts (~20 ms at a million memes, where counting
    every row took 0.4 s)."""
    return (*labels_fingerprint(session), *predictions_fingerprint(session), *images_fingerprint(session))


def annotator_agreement(session: Session) -> dict[str, Any]:
    """How each annotator agrees with the consensus, and annotators with each other.

    Per annotator: agreement and kappa with the consensus (which includes their own vote,
    so one lone annotator scores 1.0), and with the consensus of the *other* annotators
    (the honest number; None where nobody else labeled the same images).
    Pairs: agreement and kappa on the images both labeled.

    People only at the top level ("annotators", "pairs", and "alpha": Krippendorff's alpha
    overall, per folder and per week); the system annotators (`folder`, `import`: labels from
    folder names and annotations.csv) are listed apart under "system", with every pair that
    has one of them, so a folder label never reads as a person agreeing."""
    per_image: dict[int, list[CurrentLabel]] = {}
    for c in current_labels(session):
        per_image.setdefault(c.image_id, []).append(c)
    consensus = {i: consensus_from(cs) for i, cs in per_image.items()}
    names = sorted({c.annotator for cs in per_image.values() for c in cs})
    mine: dict[str, dict[int, str]] = {n: {} for n in names}
    for i, cs in per_image.items():
        for c in cs:
            mine[c.annotator][i] = c.label
    rows = []
    for name in names:
        ids = sorted(mine[name])
        own = [mine[name][i] for i in ids]
        cons = [consensus[i] for i in ids]
        others = [consensus_from([c for c in per_image[i] if c.annotator != name]) for i in ids]
        k_cons, _ = cohen_kappa(own, cons)
        k_oth, n_oth = cohen_kappa(own, others)
        agree_oth = [a == o for a, o in zip(own, others) if o is not None]
        rows.append({"annotator": name, "n_labels": len(ids),
                     "agreement_consensus": _rate([a == c for a, c in zip(own, cons)]), "kappa_consensus": k_cons,
                     "n_with_others": n_oth, "agreement_others": _rate(agree_oth), "kappa_others": k_oth})
    pairs = []
    for x, name_a in enumerate(names):
        for name_b in names[x + 1:]:
            common = sorted(set(mine[name_a]) & set(mine[name_b]))
            if not common:
                continue
            la, lb = [mine[name_a][i] for i in common], [mine[name_b][i] for i in common]
            kappa, n = cohen_kappa(la, lb)
            pairs.append({"a": name_a, "b": name_b, "n": n, "agreement": _rate([p == q for p, q in zip(la, lb)]),
                          "kappa": kappa})
    def person(name: str) -> bool:
        return name not in SYSTEM_ANNOTATORS

    return {"annotators": [r for r in rows if person(r["annotator"])],
            "pairs": [p for p in pairs if person(p["a"]) and person(p["b"])],
            "system": {"annotators": [r for r in rows if not person(r["annotator"])],
                       "pairs": [p for p in pairs if not (person(p["a"]) and person(p["b"]))]},
            "alpha": agreement_report(session)}


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None
