"""Data audit with cleanlab's Datalab: label issues, near-duplicates, outliers and class imbalance
over the labeled memes, on a cached embedding set and out-of-fold probabilities.

Out-of-fold probabilities come from runs of the learned predictors (TF-IDF baseline, heads):
their stored prediction of a labeled meme comes from the fold model that did not see it
(`extra.out_of_fold`). A run is used only when it gives *every* labeled meme such a
probability (cleanlab needs out-of-sample probabilities for every row); several such runs are
averaged. Zero-shot runs (CLIP, VLM) are not used here: the mean-confidence score of the
Disagreements page covers them.

`run_audit` reads what it needs in one short read-only session and runs Datalab with no
transaction open (a session held through the audit used to hold SQLite's write lock, and
every other page waited). cleanlab's label-issue filter forks a process pool by default
(`n_jobs` = the physical cores); a fork of the threaded Streamlit server can hang, so it runs
in this process (`n_jobs=1`: the same result).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.analysis.embedding_map import EmbeddingSet, embedding_sets, load_embedding_set
from workbench.store.db import in_batches, read_scope
from workbench.store.schema import Image, ModelRun, Prediction

OUT_OF_FOLD_KINDS = ("head", "text-tfidf")  # predictors that store out-of-fold predictions
AUDIT_ISSUES = ("label", "near_duplicate", "outlier", "class_imbalance")
CLASSES = ("non_toxic", "toxic")  # cleanlab orders class names; P columns follow it


class AuditError(ValueError):
    """Nothing to audit (no labels, no features, no probabilities); str() says why."""


def out_of_fold_runs(session: Session, labels: dict[int, str], run_ids: Sequence[int] | None = None) -> dict[int, dict[int, float]]:
    """run_id -> {image_id: out-of-fold P(toxic)} for the runs (of those given, or all learned
    runs) that give every labeled meme an out-of-fold probability."""
    query = select(ModelRun.id).where(ModelRun.kind.in_(OUT_OF_FOLD_KINDS))
    if run_ids is not None:
        query = query.where(ModelRun.id.in_(list(run_ids)))
    labeled = set(labels)
    out: dict[int, dict[int, float]] = {}
    for run_id in session.scalars(query.order_by(ModelRun.id)):
        probs: dict[int, float] = {}
        for image_id, prob, extra, error in session.execute(
                select(Prediction.image_id, Prediction.prob_toxic, Prediction.extra, Prediction.error)
                .where(Prediction.run_id == run_id)):
            if image_id in labeled and error is None and prob is not None and (extra or {}).get("out_of_fold"):
                probs[image_id] = float(prob)
        if labeled and labeled <= set(probs):
            out[run_id] = probs
    return out


def mean_probabilities(oof: dict[int, dict[int, float]], image_ids: Sequence[int]) -> np.ndarray:
    """[n, 2] pred_probs (non_toxic, toxic): the mean out-of-fold P(toxic) of the runs."""
    p = np.array([[probs[i] for i in image_ids] for probs in oof.values()]).mean(axis=0)
    return np.stack([1.0 - p, p], axis=1)


def datalab_issues(labels: Sequence[str], features: np.ndarray | None, pred_probs: np.ndarray | None,
                   issue_types: Sequence[str] = AUDIT_ISSUES) -> Any:
    """A cleanlab Datalab after find_issues on the rows given (needs features or pred_probs)."""
    import logging
    import warnings

    from cleanlab import Datalab

    logging.getLogger("cleanlab").setLevel(logging.WARNING)
    lab = Datalab(data={"label": list(labels)}, label_name="label", verbosity=0)
    # n_jobs=1: cleanlab's default is a multiprocessing pool, which forks this (threaded) process.
    no_fork = {"clean_learning_kwargs": {"find_label_issues_kwargs": {"n_jobs": 1}}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="cleanlab")  # its pandas deprecations are not ours to fix
        lab.find_issues(features=features, pred_probs=pred_probs,
                        issue_types={k: dict(no_fork) if k == "label" else {} for k in issue_types})
    return lab


def default_embedding_set(session: Session, kind: str | None = None) -> EmbeddingSet | None:
    """The set to audit: the largest of `kind` (default: CLIP image, else any kind)."""
    sets = embedding_sets(session)
    for wanted in ([kind] if kind else ["clip-image", None]):
        found = [s for s in sets if wanted is None or s.kind == wanted]
        if found:
            return found[0]
    return None


@dataclass
class AuditResult:
    """The audit: per issue type its cleanlab score (1 = no problem) and the memes it flags, worst first."""

    n_images: int
    embedding: str | None
    prob_runs: list[int]
    summary: list[dict[str, Any]]
    issues: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AuditInputs:
    """What the audit reads from the database: the labeled rows with their features and probabilities."""

    rows: list[int]  # image ids, sorted
    labels: list[str]  # consensus label per row
    features: np.ndarray | None  # [n, dim] embeddings of the rows
    pred_probs: np.ndarray | None  # [n, 2] mean out-of-fold probabilities of the rows
    embedding: str | None  # the embedding set's title
    prob_runs: list[int]
    paths: dict[int, str]
    notes: list[str]


def audit_inputs(session: Session, run_ids: Sequence[int] | None = None,
                 embedding_kind: str | None = None) -> AuditInputs:
    """Read what the audit needs (reads only); AuditError when there is nothing to audit."""
    from workbench.store.labels import consensus_labels

    present = set(session.scalars(select(Image.id).where(Image.missing.is_(False))))
    labels = {i: lab for i, lab in consensus_labels(session).items() if i in present}
    if not labels:
        raise AuditError("no labeled memes to audit: label some first")
    notes: list[str] = []
    emb_set = default_embedding_set(session, embedding_kind)
    vectors: dict[int, np.ndarray] = {}
    if emb_set is not None:
        ids, x = load_embedding_set(session, emb_set)
        vectors = {int(i): v for i, v in zip(ids, x) if int(i) in labels}
    else:
        notes.append("no cached embeddings: near-duplicates and outliers need them (python -m workbench embed clip)")
    oof = out_of_fold_runs(session, labels, run_ids)
    if not oof:
        notes.append("no run gives every labeled meme an out-of-fold probability: label issues come from the "
                     "embeddings' neighbours (train the TF-IDF baseline or a head for cleanlab's probabilities)")
    rows = sorted(i for i in labels if not vectors or i in vectors)
    if vectors and len(rows) < len(labels):
        notes.append(f"{len(labels) - len(rows)} labeled memes have no {emb_set.kind} embedding and are left out")
    if not vectors and not oof:
        raise AuditError("nothing to audit with: cache embeddings (python -m workbench embed clip) or train the "
                         "TF-IDF baseline / a head (out-of-fold probabilities) first")
    if len(rows) < 5:
        raise AuditError(f"too few labeled memes to audit ({len(rows)}; at least 5)")
    features = np.stack([vectors[i] for i in rows]) if vectors else None
    pred_probs = mean_probabilities(oof, rows) if oof else None
    return AuditInputs(rows, [labels[i] for i in rows], features, pred_probs, emb_set.title if vectors else None,
                       sorted(oof), _paths(session, rows), notes)


def audit(inputs: AuditInputs, top: int = 20) -> AuditResult:
    """Run Datalab on the inputs (no database): `top` memes per issue type."""
    issue_types = [t for t in AUDIT_ISSUES if inputs.features is not None or t in ("label", "class_imbalance")]
    lab = datalab_issues(inputs.labels, inputs.features, inputs.pred_probs, issue_types)
    summary = [{"issue_type": r["issue_type"], "score": float(r["score"]), "num_issues": int(r["num_issues"])}
               for r in lab.get_issue_summary().to_dict("records") if r["issue_type"] in issue_types]
    issues = {t: _issue_rows(lab, t, inputs.rows, inputs.paths, top) for t in issue_types}
    return AuditResult(len(inputs.rows), inputs.embedding, inputs.prob_runs, summary, issues, list(inputs.notes))


def run_audit(db_url: str, run_ids: Sequence[int] | None = None, embedding_kind: str | None = None,
              top: int = 20) -> AuditResult:
    """Audit the labeled memes with Datalab (see the module docstring): read in a short read-only
    session, then compute with no transaction open. Writes nothing."""
    with read_scope(db_url) as session:
        inputs = audit_inputs(session, run_ids, embedding_kind)
    return audit(inputs, top)


def run_audit_isolated(db_url: str, run_ids: Sequence[int] | None = None, embedding_kind: str | None = None,
                       top: int = 20) -> AuditResult:
    """`run_audit` in a new Python process (workbench.analysis.isolated): what the Duplicates page
    calls, so cleanlab never shares the server's GIL and cores (nor forks it). AuditError as here."""
    import json
    import subprocess

    from workbench.analysis.isolated import ROOT, module_command

    request = json.dumps({"db_url": db_url, "run_ids": list(run_ids) if run_ids is not None else None,
                          "embedding_kind": embedding_kind, "top": top})
    argv, env = module_command("workbench.analysis.data_audit")
    done = subprocess.run(argv, input=request, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode == 2:
        raise AuditError(done.stderr.strip().splitlines()[-1])
    if done.returncode != 0:
        raise AuditError(f"the audit process failed (exit code {done.returncode}): "
                         f"{done.stderr.strip()[-500:] or 'no message'}")
    return AuditResult(**json.loads(done.stdout.strip().splitlines()[-1]))  # the last line: a library may print


def _audit_main() -> int:
    """The process run_audit_isolated starts: a JSON request on stdin, the AuditResult as JSON on stdout."""
    import json
    import sys

    request = json.loads(sys.stdin.read())
    try:
        result = run_audit(request["db_url"], request["run_ids"], request["embedding_kind"], request["top"])
    except AuditError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0


def _paths(session: Session, ids: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in in_batches(ids):
        out.update(session.execute(select(Image.id, Image.path).where(Image.id.in_(chunk))).all())
    return out


def _issue_rows(lab: Any, issue_type: str, rows: list[int], paths: dict[int, str], top: int) -> list[dict[str, Any]]:
    df = lab.get_issues(issue_type)
    score_col, flag_col = f"{issue_type}_score", f"is_{issue_type}_issue"
    order = np.lexsort((np.arange(len(df)), df[score_col].to_numpy(), ~df[flag_col].to_numpy(bool)))
    out = []
    for k in order[:top]:
        rec = df.iloc[int(k)]
        row = {"image_id": rows[int(k)], "path": paths.get(rows[int(k)]), "score": float(rec[score_col]),
               "is_issue": bool(rec[flag_col])}
        if issue_type == "label":
            row.update(given_label=str(rec["given_label"]), predicted_label=str(rec["predicted_label"]))
        if issue_type == "near_duplicate":
            row["near_duplicates"] = [rows[int(j)] for j in rec["near_duplicate_sets"]]
        out.append(row)
    return out


if __name__ == "__main__":  # run_audit_isolated's process
    raise SystemExit(_audit_main())
