"""The embedding map: a 2-D projection of one cached embedding set (CLIP image, CLIP text, VLM),
computed once and cached per set, with a colour per point.

Projection: UMAP (`umap-learn`, cosine metric, seeded) for 50 or more points, PCA below that
(UMAP needs neighbours to be meaningful). The result is cached as
`<artefacts>/maps/<kind>-<fingerprint>-<digest>.npz`; the digest covers which images the set holds
and which stored vector each has, so a new image or a recomputed text embedding makes a new map.
Opening a cached map reads one small file: no vector is loaded.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.features.embeddings import embedding_counts, from_blob
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


def project(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows: UMAP from UMAP_MIN_POINTS rows, PCA below."""
    n = len(vectors)
    if n < 3:
        raise MapError(f"a map needs at least 3 memes with this embedding, the set has {n}")
    x = np.asarray(vectors, np.float32)
    if n < UMAP_MIN_POINTS:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x).astype(np.float32), "pca"
    import warnings

    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "n_jobs overridden by random_state": seeded on purpose
        reducer = umap.UMAP(n_neighbors=min(15, n - 1), min_dist=0.1, metric="cosine", random_state=seed)
        return reducer.fit_transform(x).astype(np.float32), "umap"


def compute_map(session: Session, artefacts_dir: Path, emb_set: EmbeddingSet) -> MapData:
    """Project the set as it is now and cache the result (replacing older maps of the set)."""
    digest = set_digest(session, emb_set)
    ids, vectors = load_embedding_set(session, emb_set)
    t0 = time.perf_counter()
    xy, method = project(vectors)
    seconds = time.perf_counter() - t0
    path = _map_file(artefacts_dir, emb_set, digest)
    with atomic_write(path) as fh:
        np.savez(fh, image_ids=ids, xy=xy, method=np.array(method), seconds=np.array(seconds))
    for old in maps_dir(artefacts_dir).glob(f"{emb_set.kind}-{emb_set.fingerprint}-*.npz"):
        if old != path:
            old.unlink(missing_ok=True)
    return MapData(ids, xy, method, seconds, True)


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
