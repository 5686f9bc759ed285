"""The labeling queue in every order, for the Label page and `python -m workbench queue`.

Orders:
    unlabeled    memes you have not labeled, by file name (then, for one person with k = 1,
                 the ones you did). In the team queue, memes others started come first, so
                 each reaches its k labels sooner.
    random       a shuffled order (a seed makes it repeatable)
    filename     by file name
    unsure       the models are least sure first: per run, how close P(toxic) is to the run's
                 threshold (1 at the threshold, falling linearly to 0 at P = 0 and at P = 1; an
                 answer without a class counts as 1, a class without a probability as 0),
                 averaged over the chosen runs (default: the newest learner run)
    likely-toxic the most probable toxic first: mean P(toxic) over the chosen runs (default: the
                 newest learner run; refused with a clear message when there is none)
    disagree     two runs (default: the latest VLM vs the latest CLIP) give different classes
                 first, the furthest apart first; then the rest by how far apart they are
    label-issue  the label a meme has now (a folder or import label, or people's) is most
                 likely wrong first: workbench.analysis.review.suspected_label_issues (default
                 runs: the newest learner run)

The learner (workbench.analysis.learner) refreshes on its own while people label; when it has a
finished run, the scored orders except disagree rank by the newest one unless runs are chosen.
Exploration: in the scored orders a share epsilon of the queue (the admin's setting, default 0.1,
floor(epsilon * n) memes) is drawn at random, seeded per queue (annotator, order, seed) so it is
stable while someone labels, and put at random places; such memes are marked "random pick".

Which memes: the queue holds the memes that need the annotator (workbench.store.overlap:
not labeled by them, fewer than k people so far). The one exception keeps single-user use
as it always was: with sign-in off and k = 1 the orders unlabeled / random / filename walk
every meme. Memes a scored order cannot score (no prediction from the chosen runs, e.g. no
embedding for the learner's head) follow the scored ones, by file name; Ordering.unscored
counts them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.analysis.outcomes import RunInfo, latest_run_of_kind, list_runs, load_runs, run_params
from workbench.analysis.review import suspected_label_issues
from workbench.store import labels, overlap, users
from workbench.store.db import fetch_tuples, in_batches
from workbench.store.id_sets import id_mask
from workbench.store.labels import get_setting, set_setting
from workbench.store.schema import Image, Prediction

ORDERS = ("unlabeled", "random", "filename", "unsure", "disagree", "label-issue", "likely-toxic")
SCORED_ORDERS = ("unsure", "disagree", "label-issue", "likely-toxic")
LEARNER_ORDERS = ("unsure", "label-issue", "likely-toxic")  # default to the newest learner run
# What the Label page calls each order.
ORDER_TITLES = dict(zip(ORDERS, ("unlabeled first", "random", "by file name", "models unsure first",
                                 "models disagree first", "likely label issues first", "likely toxic first")))
EXPLORATION_SETTING = "queue_exploration"
DEFAULT_EXPLORATION = 0.1
RANDOM_PICK = "random pick"
_LEGACY = {"unlabeled": "unlabeled first", "random": "random", "filename": "by file name"}


@dataclass(frozen=True)
class QueueItem:
    """One meme of the queue as `queue --json` prints it."""

    image_id: int
    path: str
    reason: str
    score: float | None
    random_pick: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "path": self.path, "reason": self.reason, "score": self.score,
                "random_pick": self.random_pick}


@dataclass
class Ordering:
    """Image ids in queue order, their scores (scored orders) and why each is where it is."""

    ids: list[int]
    scores: dict[int, float] = field(default_factory=dict)
    explain: Callable[[int], str] = lambda _image_id: ""
    runs: list[int] = field(default_factory=list)
    random_picks: frozenset[int] = frozenset()  # exploration: drawn at random, not by score
    unscored: int = 0  # memes of the queue the runs gave no score (they follow the scored ones)

    def reason(self, image_id: int) -> str:
        if image_id in self.random_picks:
            return f"{RANDOM_PICK} (exploration share, not by score); {self.explain(image_id)}"
        return self.explain(image_id)


# ---- scores -------------------------------------------------------------------------------------

def uncertainty(prob: np.ndarray | float, threshold: float = 0.5) -> np.ndarray:
    """1 at the threshold, falling linearly to 0 at P = 0 and at P = 1 (each side on its own scale)."""
    p = np.asarray(prob, dtype=np.float64)
    span = np.where(p < threshold, max(threshold, 1e-9), max(1.0 - threshold, 1e-9))
    return np.clip(1.0 - np.abs(p - threshold) / span, 0.0, 1.0)


@dataclass(frozen=True)
class _RunAnswers:
    run: RunInfo
    threshold: float
    answers: dict[int, tuple[str, float | None]]  # image_id -> (label, prob_toxic); failed ones left out


def _answers(session: Session, run: RunInfo) -> _RunAnswers:
    rows = fetch_tuples(session, select(Prediction.image_id, Prediction.label, Prediction.prob_toxic)
                        .where(Prediction.run_id == run.id, Prediction.error.is_(None)))
    threshold = float(run_params(session, run.id).get("threshold", 0.5) or 0.5)
    return _RunAnswers(run, threshold, {r[0]: (r[1], r[2]) for r in rows})


def _describe(answer: tuple[str, float | None] | None, run: RunInfo) -> str:
    if answer is None:
        return f"#{run.id} {run.kind}: —"
    label, prob = answer
    return f"#{run.id} {run.kind}: {label}" + (f" ({prob:.2f})" if prob is not None else "")


def unsure_scores(session: Session, runs: Sequence[RunInfo]) -> Ordering:
    """Scored ids, least sure first (module docstring)."""
    per_run = [_answers(session, r) for r in runs]
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for ra in per_run:
        ids = np.fromiter(ra.answers, dtype=np.int64, count=len(ra.answers))
        probs = np.array([p if p is not None else np.nan for _, p in ra.answers.values()], dtype=np.float64)
        classed = np.array([lab in ("toxic", "non_toxic") for lab, _ in ra.answers.values()], dtype=bool)
        u = np.where(np.isnan(probs), np.where(classed, 0.0, 1.0), uncertainty(np.nan_to_num(probs), ra.threshold))
        for image_id, value in zip(ids.tolist(), u.tolist()):
            sums[image_id] = sums.get(image_id, 0.0) + value
            counts[image_id] = counts.get(image_id, 0) + 1
    scores = {i: sums[i] / counts[i] for i in sums}

    def explain(image_id: int) -> str:
        parts = [_describe(ra.answers.get(image_id), ra.run) for ra in per_run]
        thresholds = sorted({ra.threshold for ra in per_run})
        where = f"threshold {thresholds[0]:g}" if len(thresholds) == 1 else "thresholds " + "/".join(map(str, thresholds))
        return f"models unsure: {'; '.join(parts)} ({where})"

    return Ordering(_by_score(scores), scores, explain, [r.id for r in runs])


def disagree_scores(session: Session, run_a: RunInfo, run_b: RunInfo) -> Ordering:
    """Scored ids: different classes first (1 + |P_A - P_B|), then the rest by |P_A - P_B|."""
    a, b = _answers(session, run_a), _answers(session, run_b)
    scores: dict[int, float] = {}
    for image_id in a.answers.keys() & b.answers.keys():
        (la, pa), (lb, pb) = a.answers[image_id], b.answers[image_id]
        gap = abs(pa - pb) if pa is not None and pb is not None else None
        if la in ("toxic", "non_toxic") and lb in ("toxic", "non_toxic") and la != lb:
            scores[image_id] = 1.0 + (gap if gap is not None else 1.0)
        elif gap is not None:
            scores[image_id] = gap

    def explain(image_id: int) -> str:
        conflict = scores.get(image_id, 0.0) >= 1.0
        head = "models disagree" if conflict else "models agree"
        return f"{head}: {_describe(a.answers.get(image_id), run_a)} vs {_describe(b.answers.get(image_id), run_b)}"

    return Ordering(_by_score(scores), scores, explain, [run_a.id, run_b.id])


def label_issue_scores(session: Session, runs: Sequence[RunInfo]) -> Ordering:
    """Scored ids: labeled memes whose current consensus the runs contradict most confidently."""
    issues = suspected_label_issues(load_runs(session, [r.id for r in runs]), min_score=0.0)
    scores = {x.image_id: x.score for x in issues}
    by_id = {x.image_id: x for x in issues}

    def explain(image_id: int) -> str:
        x = by_id.get(image_id)
        if x is None:
            return "no label to doubt, or no run answered"
        return (f"label issue? labeled {x.human}; {x.n_contradicting} of {x.n_runs} runs say otherwise "
                f"(mean confidence in the other class {x.score:.2f})")

    return Ordering(_by_score(scores), scores, explain, [r.id for r in runs])


def likely_toxic_scores(session: Session, runs: Sequence[RunInfo]) -> Ordering:
    """Scored ids: the most probable toxic first (mean P(toxic) over the runs that gave one)."""
    per_run = [_answers(session, r) for r in runs]
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for ra in per_run:
        for image_id, (_label, prob) in ra.answers.items():
            if prob is not None:
                sums[image_id] = sums.get(image_id, 0.0) + float(prob)
                counts[image_id] = counts.get(image_id, 0) + 1
    scores = {i: sums[i] / counts[i] for i in sums}

    def explain(image_id: int) -> str:
        return "likely toxic: " + "; ".join(_describe(ra.answers.get(image_id), ra.run) for ra in per_run)

    return Ordering(_by_score(scores), scores, explain, [r.id for r in runs])


def _by_score(scores: dict[int, float]) -> list[int]:
    return sorted(scores, key=lambda i: (-scores[i], i))


# ---- which runs ------------------------------------------------------------------------------------

def latest_learner_run(session: Session) -> int | None:
    """The newest finished learner refresh's run id (workbench.analysis.learner), or None."""
    from workbench.analysis.learner import latest_refresh

    latest = latest_refresh(session)
    return latest.run_id if latest is not None else None


def default_runs(session: Session, order: str, *, learner: bool = True) -> list[int]:
    """The runs an order uses when none are chosen: disagree — the latest VLM vs the latest CLIP
    (else the two newest runs); unsure / label-issue / likely-toxic — the newest learner run when
    there is one (and `learner`), else the newest run of each kind (likely-toxic: none)."""
    if order in LEARNER_ORDERS and learner:
        run_id = latest_learner_run(session)
        if run_id is not None or order == "likely-toxic":
            return [run_id] if run_id is not None else []
    runs = list_runs(session)
    if order == "disagree":
        vlm, clip = latest_run_of_kind(runs, "vlm"), latest_run_of_kind(runs, "clip")
        pair = [vlm.id, clip.id] if vlm and clip else [r.id for r in runs[:2]]
        return pair if len(pair) == 2 else []
    seen: dict[str, int] = {}
    for r in runs:
        seen.setdefault(r.kind, r.id)
    return sorted(seen.values())


def scored_ordering(session: Session, order: str, run_ids: Sequence[int] | None = None) -> Ordering:
    """The scored ordering of `order` over the chosen runs (default_runs when none)."""
    chosen = list(run_ids) if run_ids else default_runs(session, order)
    infos = {r.id: r for r in list_runs(session, chosen)}
    missing = [i for i in chosen if i not in infos]
    if missing:
        raise ValueError(f"no model run with id {', '.join(map(str, missing))}")
    runs = [infos[i] for i in chosen]
    if order == "unsure":
        return unsure_scores(session, runs) if runs else Ordering([])
    if order == "disagree":
        if len(runs) != 2:
            raise ValueError("the disagree order compares exactly two runs (A and B)" if runs
                             else "the disagree order needs two model runs; run the VLM and CLIP first")
        return disagree_scores(session, runs[0], runs[1])
    if order == "label-issue":
        return label_issue_scores(session, runs) if runs else Ordering([])
    if order == "likely-toxic":
        if not runs:
            raise ValueError("the likely-toxic order ranks by the learner, and there is no learner run yet: "
                             "run `python -m workbench learn` (or keep labeling until the refresh starts), "
                             "or choose runs")
        return likely_toxic_scores(session, runs)
    raise ValueError(f"not a scored order: {order!r}")


# ---- the queue -------------------------------------------------------------------------------------

def build_queue(session: Session, annotator: str, order: str = "unlabeled", *, run_ids: Sequence[int] | None = None,
                folder: str | None = None, seed: int = 0, k: int | None = None) -> Ordering:
    """The Label page's queue for `annotator` (module docstring): ids in order, with reasons."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    k = overlap.labels_per_meme(session) if k is None else k
    team = overlap.team_queue(k)
    if order in _LEGACY and not team:
        ids = labels.labeling_queue(session, annotator, _LEGACY[order], seed=seed, folder=folder)
        return Ordering(ids, {}, _legacy_reason(session, order, annotator, seed))
    present = labels.present_array(session, folder)
    if order == "random":
        present = labels.shuffled(present, seed)
    if order in _LEGACY:
        full = None
        if order == "unlabeled" and k > 1:  # memes others started first: they reach k labels sooner
            started, people = overlap.people_counts(session)
            full = started[people >= k]
            begun = id_mask(present, started)
            present = np.concatenate([present[begun], present[~begun]])
        ids = overlap.needed_ids(session, present, annotator, k, full)
        return Ordering(ids, {}, _team_reason(order, k, seed))
    present = present.tolist()
    scored = scored_ordering(session, order, run_ids)
    in_scope = set(present)
    ranked = [i for i in scored.ids if i in in_scope]
    ranked_set = set(ranked)
    ordered = ranked + [i for i in present if i not in ranked_set]
    base = scored.explain

    def explain(image_id: int) -> str:
        return base(image_id) if image_id in scored.scores else "not scored by the chosen runs (after the scored memes)"

    needed = overlap.needed_ids(session, ordered, annotator, k)
    mixed, picks = explore(needed, exploration_share(session), f"{annotator}|{order}|{folder}|{seed}")
    unscored = sum(1 for i in needed if i not in scored.scores)
    return Ordering(mixed, scored.scores, explain, scored.runs, frozenset(picks), unscored)


# ---- exploration -----------------------------------------------------------------------------------

def exploration_share(session: Session) -> float:
    """Epsilon: the share of a scored queue drawn at random (default 0.1)."""
    try:
        value = float(get_setting(session, EXPLORATION_SETTING, DEFAULT_EXPLORATION))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_EXPLORATION
    return min(1.0, max(0.0, value))


def set_exploration_share(session: Session, share: float, actor: str | None = None) -> None:
    """Change epsilon (admins only, audited): 0 = every meme by score, 1 = all at random."""
    share = float(share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the exploration share must be between 0 and 1, not {share:g}")
    users.authorize(session, actor, users.ADMIN, "queue exploration share", {"share": share})
    set_setting(session, EXPLORATION_SETTING, share)


def explore(ranked: Sequence[int], share: float, seed: str) -> tuple[list[int], list[int]]:
    """(queue, random picks): floor(share * n) memes drawn at random from `ranked`, put at random
    places; the rest keep their rank order. The same seed and memes give the same queue."""
    n = len(ranked)
    m = int(share * n + 1e-9)
    if m <= 0:
        return list(ranked), []
    rng = random.Random(seed)  # a str seed is hashed with SHA-512: stable across processes
    picks = rng.sample(list(ranked), m)
    slots = set(rng.sample(range(n), m))
    chosen = set(picks)
    rest = iter([i for i in ranked if i not in chosen])
    drawn = iter(picks)
    return [next(drawn) if pos in slots else next(rest) for pos in range(n)], picks


def _legacy_reason(session: Session, order: str, annotator: str, seed: int) -> Callable[[int], str]:
    if order == "random":
        return lambda _i: f"random order (seed {seed})"
    if order == "filename":
        return lambda _i: "by file name"
    mine = labels.labeled_by(session, annotator) if annotator else set()
    return lambda i: "labeled by you (after the rest)" if i in mine else "not labeled by you yet"


def _team_reason(order: str, k: int, seed: int) -> Callable[[int], str]:
    how = {"unlabeled": "by file name" + (", memes others started first" if k > 1 else ""),
           "random": f"random order (seed {seed})", "filename": "by file name"}[order]
    return lambda _i: f"needs your label ({k} per meme); {how}"


def queue_items(session: Session, annotator: str, order: str = "unlabeled", *, run_ids: Sequence[int] | None = None,
                folder: str | None = None, seed: int = 0, top: int | None = None) -> list[QueueItem]:
    """What `python -m workbench queue` prints: the first `top` memes of build_queue with paths."""
    return queue_listing(session, annotator, order, run_ids=run_ids, folder=folder, seed=seed, top=top)[0]


def queue_listing(session: Session, annotator: str, order: str = "unlabeled", *, run_ids: Sequence[int] | None = None,
                  folder: str | None = None, seed: int = 0, top: int | None = None) -> tuple[list[QueueItem], Ordering]:
    """queue_items and the Ordering behind them (its runs, random picks and unscored count)."""
    ordering = build_queue(session, annotator, order, run_ids=run_ids, folder=folder, seed=seed)
    ids = ordering.ids[:top] if top else ordering.ids
    paths: dict[int, str] = {}
    for chunk in in_batches(ids):
        paths.update(session.execute(select(Image.id, Image.path).where(Image.id.in_(chunk))).all())
    items = [QueueItem(i, paths.get(i, ""), ordering.reason(i), ordering.scores.get(i), i in ordering.random_picks)
             for i in ids]
    return items, ordering
