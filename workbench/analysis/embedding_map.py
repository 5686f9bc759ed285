"""The embedding map: a 2-D projection of one cached embedding set (CLIP image, CLIP text, VLM),
computed once and cached per set, with a colour per point.

Projection: UMAP (`umap-learn`, cosine metric, seeded) for 50 or more points, PCA below that
(UMAP needs neighbours to be meaningful). The result is cached as
`<artefacts>/maps/<kind>-<fingerprint>-<digest>.npz`; the digest covers which images the set holds
and which stored vector each has, so a new image or a recomputed text embedding makes a new map.
Opening a cached map reads one small file: no vector is loaded.

UMAP takes a while (numba compiles it on first use: ~20 s even for 50 points; ~45 s for 10,000
points on two cores), so the Map page never runs it in the server: `start_umap` runs it in a
new Python process (never a fork of the threaded server; a server stop ends it, never waits
for it) that writes the cached map, and the page shows a PCA projection of the same vectors
until then (`MapJob.preview`, made once when the job starts: under a second for 10,000 memes).
Every computation reads the vectors in a short read-only session and computes with no
transaction open.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.analysis.isolated import ROOT, module_command
from workbench.features.embeddings import embedding_counts, from_blob
from workbench.store.db import read_scope
from workbench.store.files import atomic_write
from workbench.store.schema import Embedding

UMAP_MIN_POINTS = 50
COLOUR_BY = ("consensus label", "run right/wrong", "duplicate group", "label-issue score")


class MapError(ValueError):
    """No map can be drawn (too few points, unknown set); str() says why."""


@dataclass(frozen=True)
class EmbeddingSet:
    """One cached embedding set: a kind and the fingerprint of the model config that made it."""

    kind: str
    fingerprint: str
    dim: int
    images: int

    @property
    def title(self) -> str:
        return f"{self.kind} · {self.fingerprint} · {self.images} memes · {self.dim}-d"

    def _rows_filter(self):  # noqa: ANN202
        # Text embeddings are stored per OCR text as "<fingerprint>:t<text hash>" (workbench.features.embeddings).
        return (Embedding.kind == self.kind) & ((Embedding.fingerprint == self.fingerprint)
                                                | Embedding.fingerprint.like(f"{self.fingerprint}:t%"))


def embedding_sets(session: Session) -> list[EmbeddingSet]:
    """Every cached embedding set, largest first."""
    sets = [EmbeddingSet(r["kind"], r["fingerprint"], r["dim"], r["images"]) for r in embedding_counts(session)]
    return sorted(sets, key=lambda s: (-s.images, s.kind, s.fingerprint))


def load_embedding_set(session: Session, emb_set: EmbeddingSet) -> tuple[np.ndarray, np.ndarray]:
    """(image ids [n], float32 vectors [n, dim]) of a set, sorted by image id."""
    rows = session.execute(select(Embedding.image_id, Embedding.dim, Embedding.vector).where(emb_set._rows_filter())
                           .order_by(Embedding.image_id)).all()
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, emb_set.dim), np.float32)
    return np.array([r[0] for r in rows], np.int64), np.stack([from_blob(blob, dim) for _, dim, blob in rows])


def set_digest(session: Session, emb_set: EmbeddingSet) -> str:
    """Which images the set holds and which stored row each has (a new vector has a new row id)."""
    rows = session.execute(select(Embedding.image_id, Embedding.id).where(emb_set._rows_filter())
                           .order_by(Embedding.image_id)).all()
    return hashlib.sha1(np.asarray(rows, np.int64).tobytes()).hexdigest()[:12]


@dataclass(frozen=True)
class MapData:
    """A projection: image ids with their 2-D coordinates."""

    image_ids: np.ndarray  # int64 [n]
    xy: np.ndarray  # float32 [n, 2]
    method: str  # umap | pca
    seconds: float  # time the projection took to compute
    current: bool = True  # False: an older map of this set (images were added or re-embedded since)


def maps_dir(artefacts_dir: Path) -> Path:
    return Path(artefacts_dir) / "maps"


def _map_file(artefacts_dir: Path, emb_set: EmbeddingSet, digest: str) -> Path:
    return maps_dir(artefacts_dir) / f"{emb_set.kind}-{emb_set.fingerprint}-{digest}.npz"


def _read(path: Path, current: bool) -> MapData:
    with np.load(path) as z:
        return MapData(z["image_ids"], z["xy"], str(z["method"]), float(z["seconds"]), current)


def cached_map(session: Session, artefacts_dir: Path, emb_set: EmbeddingSet) -> MapData | None:
    """The cached map of the set as it is now; else its newest older map (current=False); else None."""
    path = _map_file(artefacts_dir, emb_set, set_digest(session, emb_set))
    if path.exists():
        return _read(path, True)
    older = sorted(maps_dir(artefacts_dir).glob(f"{emb_set.kind}-{emb_set.fingerprint}-*.npz"),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    return _read(older[0], False) if older else None


def project(vectors: np.ndarray, seed: int = 0, method: str | None = None) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows: UMAP from UMAP_MIN_POINTS rows, PCA below (or the `method` given)."""
    n = len(vectors)
    if n < 3:
        raise MapError(f"a map needs at least 3 memes with this embedding, the set has {n}")
    x = np.asarray(vectors, np.float32)
    if method == "pca" or (method is None and n < UMAP_MIN_POINTS):
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x).astype(np.float32), "pca"
    import warnings

    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "n_jobs overridden by random_state": seeded on purpose
        reducer = umap.UMAP(n_neighbors=min(15, n - 1), min_dist=0.1, metric="cosine", random_state=seed)
        return reducer.fit_transform(x).astype(np.float32), "umap"


def _save_map(path: Path, ids: np.ndarray, xy: np.ndarray, method: str, seconds: float) -> None:
    """Write the map atomically and remove the set's older maps."""
    with atomic_write(path) as fh:
        np.savez(fh, image_ids=ids, xy=xy, method=np.array(method), seconds=np.array(seconds))
    prefix = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{prefix}-*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def _read_set(db_url: str, artefacts_dir: Path, emb_set: EmbeddingSet) -> tuple[Path, np.ndarray, np.ndarray]:
    """(the map file of the set as it is now, image ids, vectors), read in one read-only session."""
    with read_scope(db_url) as session:
        path = _map_file(artefacts_dir, emb_set, set_digest(session, emb_set))
        ids, vectors = load_embedding_set(session, emb_set)
    return path, ids, vectors


def compute_map(db_url: str, artefacts_dir: Path, emb_set: EmbeddingSet) -> MapData:
    """Project the set as it is now and cache the result (replacing older maps of the set), here
    and now (the CLI; the Map page uses `start_umap`). No transaction is open while it projects."""
    path, ids, vectors = _read_set(db_url, artefacts_dir, emb_set)
    t0 = time.perf_counter()
    xy, method = project(vectors)
    seconds = time.perf_counter() - t0
    _save_map(path, ids, xy, method, seconds)
    return MapData(ids, xy, method, seconds, True)


# ---------------------------------------------------------------- UMAP in the background

@dataclass
class MapJob:
    """A UMAP projection running in another process; it writes `path` (or `path`.error) when it ends.
    `preview`: a PCA projection of the same vectors (not cached), to show until then."""

    path: Path
    process: subprocess.Popen
    preview: MapData
    started: float = field(default_factory=time.monotonic)

    def running(self) -> bool:
        return self.process.poll() is None

    def done(self) -> bool:
        return self.path.exists() or not self.running()

    def error(self) -> str | None:
        """Why the projection failed; None while it runs or once it succeeded."""
        if self.path.exists() or self.running():
            return None
        error_file = self.path.with_suffix(".error")
        if error_file.exists():
            return error_file.read_text(encoding="utf-8")
        return f"the projection process ended without a map (exit code {self.process.returncode})"

    def wait(self, timeout: float | None = None) -> bool:
        """Until the process ends (or `timeout` s); True when the map was written."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.path.exists()


_jobs: dict[Path, MapJob] = {}
_jobs_lock = threading.Lock()


def _end_jobs() -> None:
    """At exit (a server stop): end the projections still running; nothing waits for them."""
    for job in list(_jobs.values()):
        if job.running():
            job.process.terminate()


def map_job(db_url: str, artefacts_dir: Path, emb_set: EmbeddingSet) -> MapJob | None:
    """The UMAP job of the set as it is now, if one was started in this process."""
    with read_scope(db_url) as session:
        path = _map_file(artefacts_dir, emb_set, set_digest(session, emb_set))
    return _jobs.get(path)


def start_umap(db_url: str, artefacts_dir: Path, emb_set: EmbeddingSet) -> MapJob:
    """Start projecting the set as it is now with UMAP in a new Python process (one per set; a set
    already being projected returns its running job), and make its PCA preview here. The process
    leaves one core to the server (see workbench.analysis.isolated)."""
    path, ids, vectors = _read_set(db_url, artefacts_dir, emb_set)
    if len(ids) < 3:
        raise MapError(f"a map needs at least 3 memes with this embedding, the set has {len(ids)}")
    with _jobs_lock:
        job = _jobs.get(path)
        if job is not None and (job.running() or job.path.exists()):
            return job
        t0 = time.perf_counter()
        xy, method = project(vectors, method="pca")  # under a second for 10,000 memes
        preview = MapData(ids, xy, method, time.perf_counter() - t0, False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".error").unlink(missing_ok=True)
        inputs = path.with_suffix(".input")
        with atomic_write(inputs) as fh:
            np.savez(fh, image_ids=ids, vectors=vectors)
        threads = max(1, (os.cpu_count() or 1) - 1)
        argv, env = module_command("workbench.analysis.embedding_map", str(path), str(threads))
        process = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        if not _jobs:
            atexit.register(_end_jobs)
        job = _jobs[path] = MapJob(path, process, preview)
        return job


def _umap_main(path: str, threads: str) -> int:
    """The background process: project `path`.input with UMAP on `threads` numba threads and cache the map."""
    target = Path(path)
    inputs = target.with_suffix(".input")
    try:
        os.environ.setdefault("NUMBA_NUM_THREADS", threads)  # before numba is imported
        with np.load(inputs) as z:
            ids, vectors = z["image_ids"], z["vectors"]
        t0 = time.perf_counter()
        xy, method = project(vectors, method="umap")
        _save_map(target, ids, xy, method, time.perf_counter() - t0)
        return 0
    except Exception as exc:  # noqa: BLE001 - the page shows it; the process ends either way
        target.with_suffix(".error").write_text(f"{type(exc).__name__}: {exc}", encoding="utf-8")
        return 1
    finally:
        inputs.unlink(missing_ok=True)


def points_in_box(data: MapData, x_range: Sequence[float], y_range: Sequence[float]) -> list[int]:
    """Image ids whose point lies in the rectangle (a brush selection on the chart)."""
    (x0, x1), (y0, y1) = sorted(x_range), sorted(y_range)
    x, y = data.xy[:, 0], data.xy[:, 1]
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    return data.image_ids[inside].tolist()


def colour_values(session: Session, image_ids: Sequence[int], by: str, run_id: int | None = None) -> list[Any]:
    """The colour value of each image for `by` (COLOUR_BY): consensus label | run outcome
    (right / wrong / no verdict) | duplicate group id ('' = none) | label-issue score (nan = none)."""
    ids = [int(i) for i in image_ids]
    if by == "consensus label":
        from workbench.store.labels import consensus_labels

        labels = consensus_labels(session)
        return [labels.get(i, "unlabeled") for i in ids]
    if by == "run right/wrong":
        if run_id is None:
            raise MapError("choose a run to colour by right/wrong")
        from workbench.analysis.outcomes import run_outcomes

        outcomes = run_outcomes(session, run_id)
        words = {"TP": "right", "TN": "right", "FP": "wrong", "FN": "wrong"}
        return [words.get(outcomes.get(i, "missing"), "no verdict") for i in ids]
    if by == "duplicate group":
        from workbench.features.near_duplicates import group_of_images

        groups = group_of_images(session, ids)
        return [f"#{groups[i]}" if i in groups else "" for i in ids]
    if by == "label-issue score":
        from workbench.analysis.review import label_issue_queue

        queue = label_issue_queue(session, [run_id] if run_id is not None else None, min_score=0.0)
        scores = {x.image_id: x.score for x in queue.issues}
        return [scores.get(i, float("nan")) for i in ids]
    raise MapError(f"colour by one of {', '.join(COLOUR_BY)}, not {by!r}")


if __name__ == "__main__":  # the background UMAP process (start_umap)
    sys.exit(_umap_main(*sys.argv[1:3]))
