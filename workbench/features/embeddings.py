"""Feature vectors of frozen models, extracted once per image and cached in the
`embeddings` table (float16 bytes) under the feature model's fingerprint.

Embedding kinds:
- clip-image: CLIP's L2-normalised image projection;
- clip-text:  CLIP's L2-normalised text projection of the image's OCR text;
- vlm-pooled: a VLM's (Qwen2.5-VL) last hidden state mean-pooled over the attention mask,
  for image + prompt (the frozen-VLM binary-classifier design).

A text-dependent embedding is stored under "<fingerprint>:t<hash of the text>", with the
OCR row its text came from (`text_source`: engine + config, or a manual correction). When the
text a meme goes by changes (a correction, or a newer engine's reading) the embedding is
stale: `staleness` counts fresh / stale / missing images of a set, `lacking_embeddings`
names the memes a head cannot use, and the next run recomputes only those. Precision (device,
dtype) is not part of the identity: a head trained on GPU embeddings works on CPU ones.
Extraction runs through the job runner (`EmbedStep`): batched, resumable, per-item errors;
images are decoded and fitted to the model's limits (workbench.models.image_limits) in the
runner's prefetch threads.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from workbench.config import DEFAULT_CLIP_MODEL, DEFAULT_VLM_MODEL
from workbench.models.image_limits import IMAGE_FIT_VERSION, fit_image
from workbench.runs.step import ItemResult, Step, WorkItem, fingerprint, prefetch_image
from workbench.store.db import in_batches
from workbench.store.schema import Embedding, Image

EMBEDDING_VERSION = 1  # bump when the meaning of stored vectors changes
EMBEDDING_KINDS = ("clip-image", "clip-text", "vlm-pooled")
VLM_EMBED_PROMPT = "Ты — модератор контента. Перед тобой мем. Оцени, токсичный он или нейтральный."


def to_blob(vector: np.ndarray) -> bytes:
    """Compact storage: little-endian float16."""
    return np.asarray(vector, dtype="<f2").tobytes()


def from_blob(blob: bytes, dim: int) -> np.ndarray:
    vec = np.frombuffer(blob, dtype="<f2").astype(np.float32)
    if vec.shape[0] != dim:
        raise ValueError(f"stored embedding has {vec.shape[0]} values, expected {dim}")
    return vec


def text_hash(text: str) -> str:
    return hashlib.sha1(" ".join((text or "").split()).encode("utf-8")).hexdigest()[:12]


# ---------------------------------------------------------------- embedders

class Embedder:
    """One kind of feature vector from one frozen model."""

    kind: str = "embedding"
    uses_text: bool = False  # the vector depends on the image's OCR text
    uses_image: bool = True  # False: the image is never decoded (text-only embedders)

    def config(self) -> dict[str, Any]:
        """What determines the vector (model id, prompt ...)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        return fingerprint({"embedding": self.kind, "config": self.config(), "v": EMBEDDING_VERSION})

    def stored_fingerprint(self, text: str = "") -> str:
        """The key of one image's row: the fingerprint, plus the text hash for text embeddings."""
        return f"{self.fingerprint()}:t{text_hash(text)}" if self.uses_text else self.fingerprint()

    def describe(self) -> str:
        return f"{self.kind}:{self.config().get('model', '?')}"

    def load(self) -> None:
        """Load the model once per process; raise ModelUnavailable if impossible."""

    def prepare_image(self, image: Any) -> Any:
        """The image fitted to the model's input limits (thread-safe; after `load`)."""
        return image

    def decode_side(self) -> int:
        """The short side images may be decoded down to for this model (`ImageLimits.decode_side`;
        0 = in full; after `load`)."""
        return 0

    def embed(self, images: list[Any], texts: list[str]) -> np.ndarray:
        """[n, dim] float32 vectors for aligned images (as `prepare_image` returns them) and OCR texts."""
        raise NotImplementedError


class ClipImageEmbedder(Embedder):
    kind = "clip-image"

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, device: str = "auto", dtype: str = "auto") -> None:
        self.model_name, self.device, self.dtype = (model or DEFAULT_CLIP_MODEL).strip(), device, dtype

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name, "image_fit": IMAGE_FIT_VERSION}

    def _loaded(self) -> tuple[Any, Any]:
        from workbench.models.clip import load_clip

        return load_clip(self.model_name, self.device, self.dtype)

    def load(self) -> None:
        self._loaded()

    def prepare_image(self, image: Any) -> Any:
        from workbench.models.clip import limits

        return fit_image(image, limits(self._loaded()[1]))[0]

    def decode_side(self) -> int:
        from workbench.models.clip import limits

        return limits(self._loaded()[1]).decode_side()

    def embed(self, images: list[Any], texts: list[str]) -> np.ndarray:
        from workbench.models.clip import encode_images

        model, processor = self._loaded()
        return encode_images(model, processor, images).numpy()


class ClipTextEmbedder(ClipImageEmbedder):
    kind = "clip-text"
    uses_text = True
    uses_image = False

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name}

    def prepare_image(self, image: Any) -> Any:
        return image  # not used

    def embed(self, images: list[Any], texts: list[str]) -> np.ndarray:
        from workbench.models.clip import encode_texts

        model, processor = self._loaded()
        # An image without OCR text gets the embedding of the empty text: "no text" is a feature too.
        return encode_texts(model, processor, [" ".join((t or "").split()) for t in texts]).numpy()


_vlm_lock = threading.Lock()


class VlmPooledEmbedder(Embedder):
    """Mean of a VLM's last hidden state over the attention mask (image + prompt tokens)."""

    kind = "vlm-pooled"

    def __init__(self, model: str = DEFAULT_VLM_MODEL, device: str = "auto", dtype: str = "auto",
                 prompt: str = VLM_EMBED_PROMPT, use_ocr_text: bool = False, max_pixels: int = 448 * 448,
                 min_pixels: int = 56 * 56) -> None:
        self.model_name = (model or DEFAULT_VLM_MODEL).strip()
        self.device, self.dtype, self.prompt = device, dtype, prompt
        self.use_ocr_text, self.uses_text = bool(use_ocr_text), bool(use_ocr_text)
        self.max_pixels, self.min_pixels = int(max_pixels), int(min_pixels)

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name, "prompt": self.prompt, "use_ocr_text": self.use_ocr_text,
                "max_pixels": self.max_pixels, "min_pixels": self.min_pixels, "image_fit": IMAGE_FIT_VERSION}

    def _loaded(self) -> tuple[Any, Any]:
        # The VLM predictor's per-process cache: a moderation run and embeddings hold one copy.
        from workbench.models.vlm import load_vlm

        return load_vlm(self.model_name, self.device, self.dtype)

    def load(self) -> None:
        from workbench.models import devices

        devices.set_threads()
        self._loaded()

    def prepare_image(self, image: Any) -> Any:
        from workbench.models.vlm import image_limits

        return fit_image(image, image_limits(self._loaded()[1], self.max_pixels))[0]

    def decode_side(self) -> int:
        from workbench.models.vlm import image_limits

        return image_limits(self._loaded()[1], self.max_pixels).decode_side()

    def embed(self, images: list[Any], texts: list[str]) -> np.ndarray:
        import torch

        model, processor = self._loaded()
        chats = []
        for text in texts:
            prompt = self.prompt
            if self.use_ocr_text and text.strip():
                prompt += f"\nТекст на меме: «{' '.join(text.split())}»"
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            chats.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        inputs = processor(text=chats, images=images, padding=True, return_tensors="pt",
                           size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}).to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            out = model(**inputs, output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1].float()
        mask = inputs["attention_mask"].to(hidden.device).unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return pooled.cpu().numpy()


def make_embedders(source: str, model: str | None = None, device: str = "auto", dtype: str = "auto",
                   **vlm_options: Any) -> list[Embedder]:
    """The embedders `python -m workbench embed SOURCE` runs: clip -> image + text; vlm -> pooled."""
    if source == "clip":
        return [ClipImageEmbedder(model or DEFAULT_CLIP_MODEL, device, dtype),
                ClipTextEmbedder(model or DEFAULT_CLIP_MODEL, device, dtype)]
    if source == "vlm":
        return [VlmPooledEmbedder(model or DEFAULT_VLM_MODEL, device, dtype, **vlm_options)]
    raise ValueError(f"embedding source must be clip or vlm, not {source!r}")


# ---------------------------------------------------------------- storage

def _expected(session: Session, embedder: Embedder, image_ids: Sequence[int]) -> dict[int, str]:
    """image_id -> the stored fingerprint its current embedding must have."""
    if not embedder.uses_text:
        fp = embedder.fingerprint()
        return {i: fp for i in image_ids}
    from workbench.store.ocr_texts import best_texts

    texts = best_texts(session, list(image_ids))
    return {i: embedder.stored_fingerprint(texts.get(i, "")) for i in image_ids}


def _rows(session: Session, embedder: Embedder, chunk: list[int]):  # noqa: ANN202
    fp = embedder.fingerprint()
    cond = Embedding.fingerprint.like(f"{fp}:t%") if embedder.uses_text else Embedding.fingerprint == fp
    return session.execute(select(Embedding.image_id, Embedding.fingerprint, Embedding.dim, Embedding.vector)
                           .where(Embedding.image_id.in_(chunk), cond)).all()


def current_ids(session: Session, embedder: Embedder, image_ids: Sequence[int]) -> set[int]:
    """Images whose stored embedding is current (text embeddings: for the current OCR text)."""
    expected = _expected(session, embedder, image_ids)
    done: set[int] = set()
    for chunk in in_batches(expected):
        done.update(i for i, fp, _, _ in _rows(session, embedder, chunk) if expected.get(i) == fp)
    return done


def load_embeddings(session: Session, embedder: Embedder, image_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """image_id -> float32 vector for the images with a current embedding."""
    expected = _expected(session, embedder, image_ids)
    out: dict[int, np.ndarray] = {}
    for chunk in in_batches(expected):
        for i, fp, dim, blob in _rows(session, embedder, chunk):
            if expected.get(i) == fp:
                out[i] = from_blob(blob, dim)
    return out


def store_embeddings(session: Session, embedder: Embedder, rows: Sequence[tuple[int, str, np.ndarray]],
                     text_sources: dict[int, str] | None = None) -> None:
    """Store (image_id, stored fingerprint, vector) rows, replacing the image's older rows of this embedder.
    `text_sources`: image_id -> the OCR row its text came from (`TextSource.ref`), for text embeddings."""
    fp = embedder.fingerprint()
    ids = [r[0] for r in rows]
    sources = text_sources or {}
    for chunk in in_batches(ids):
        cond = Embedding.fingerprint.like(f"{fp}:t%") if embedder.uses_text else Embedding.fingerprint == fp
        session.execute(delete(Embedding).where(Embedding.image_id.in_(chunk), cond))
    for image_id, stored_fp, vector in rows:
        vector = np.asarray(vector, np.float32).reshape(-1)
        session.add(Embedding(image_id=image_id, fingerprint=stored_fp, kind=embedder.kind, dim=int(vector.shape[0]),
                              vector=to_blob(vector), text_source=sources.get(image_id)))


NO_TEXT = "-"  # text_source of an embedding made from the empty text (the meme had no OCR text)


def text_source_refs(session: Session, embedder: Embedder, stored: Sequence[tuple[int, str]]) -> dict[int, str]:
    """image_id -> `text_source` for (image_id, stored fingerprint) pairs of a text embedder: the OCR
    row whose text the stored hash matches (absent when the text changed while embedding)."""
    from workbench.store.ocr_texts import best_text_sources

    sources = best_text_sources(session, [i for i, _ in stored])
    out: dict[int, str] = {}
    for image_id, stored_fp in stored:
        src = sources.get(image_id)
        if stored_fp == embedder.stored_fingerprint(src.text if src else ""):
            out[image_id] = src.ref if src else NO_TEXT
    return out


def text_hashes(session: Session, image_ids: Sequence[int]) -> dict[int, str]:
    """image_id -> hash of the text it goes by now ('' text when it has none): what a text embedding must match."""
    from workbench.store.ocr_texts import best_texts

    texts = best_texts(session, list(image_ids))
    return {i: text_hash(texts.get(i, "")) for i in image_ids}


def embedding_counts(session: Session) -> list[dict[str, Any]]:
    """Rows per (kind, fingerprint family) for the Train page's overview."""
    from sqlalchemy import func

    rows = session.execute(select(Embedding.kind, Embedding.fingerprint, Embedding.dim, func.count())
                           .group_by(Embedding.kind, Embedding.fingerprint, Embedding.dim)).all()
    merged: dict[tuple[str, str, int], int] = {}
    for kind, fp, dim, n in rows:
        key = (kind, fp.split(":t", 1)[0], dim)
        merged[key] = merged.get(key, 0) + n
    return [{"kind": k, "fingerprint": fp, "dim": d, "images": n} for (k, fp, d), n in sorted(merged.items())]


# ---------------------------------------------------------------- staleness

def source_engine(ref: str | None) -> str:
    """The engine name of a `text_source` ("tesseract:ab12#7" -> "tesseract"), for display."""
    if ref is None:
        return "unrecorded"
    if ref == NO_TEXT:
        return "no text"
    return ref.split(":", 1)[0].split("#", 1)[0]


@dataclass
class Staleness:
    """Which images of one embedding set (kind + fingerprint) are fresh, stale or missing.

    Stale: a text embedding whose text is no longer the one the meme goes by (a manual
    correction, or a newer OCR engine's reading). `changes` counts stale images by
    "<engine embedded> → <engine now>"."""

    kind: str
    fingerprint: str
    fresh: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    changes: dict[str, int] = field(default_factory=dict)

    @property
    def todo(self) -> list[int]:
        """Stale and missing images: what a refresh embeds."""
        return sorted(self.stale + self.missing)

    def describe(self) -> str:
        text = f"{len(self.fresh)} fresh, {len(self.stale)} stale, {len(self.missing)} missing"
        if self.changes:
            text += " (text changed: " + ", ".join(f"{k} {n}" for k, n in sorted(self.changes.items())) + ")"
        return text

    def counts(self) -> dict[str, Any]:
        return {"kind": self.kind, "fingerprint": self.fingerprint, "fresh": len(self.fresh),
                "stale": len(self.stale), "missing": len(self.missing),
                "text_changes": ", ".join(f"{k}: {n}" for k, n in sorted(self.changes.items())),
                "summary": self.describe()}


def staleness(session: Session, kind: str, fingerprint: str, image_ids: Sequence[int] | None = None,
              uses_text: bool | None = None, _texts: dict[int, Any] | None = None) -> Staleness:
    """Fresh / stale / missing images (default: every present meme) of the set `kind` + `fingerprint`
    (the embedder's fingerprint, without the text suffix). `uses_text` None: read it off the stored
    rows (a text set's rows carry ":t<hash>")."""
    from workbench.store.ocr_texts import best_text_sources

    ids = list(image_ids) if image_ids is not None else list(
        session.scalars(select(Image.id).where(Image.missing.is_(False)).order_by(Image.id)))
    stored: dict[int, tuple[str, str | None]] = {}
    for chunk in in_batches(ids):
        stored.update((i, (fp, src)) for i, fp, src in session.execute(
            select(Embedding.image_id, Embedding.fingerprint, Embedding.text_source)
            .where(Embedding.image_id.in_(chunk), Embedding.kind == kind,
                   (Embedding.fingerprint == fingerprint) | Embedding.fingerprint.like(f"{fingerprint}:t%"))))
    if uses_text is None:
        uses_text = any(":t" in fp for fp, _ in stored.values())
    out = Staleness(kind, fingerprint)
    sources = (_texts if _texts is not None else best_text_sources(session, ids)) if uses_text else {}
    for image_id in ids:
        row = stored.get(image_id)
        if row is None:
            out.missing.append(image_id)
            continue
        now = sources.get(image_id)
        expected = f"{fingerprint}:t{text_hash(now.text if now else '')}" if uses_text else fingerprint
        if row[0] == expected:
            out.fresh.append(image_id)
        else:
            out.stale.append(image_id)
            change = f"{source_engine(row[1])} → {now.engine if now else 'no text'}"
            out.changes[change] = out.changes.get(change, 0) + 1
    return out


def embedder_staleness(session: Session, embedder: Embedder, image_ids: Sequence[int] | None = None) -> Staleness:
    """`staleness` of the set an embedder writes."""
    return staleness(session, embedder.kind, embedder.fingerprint(), image_ids, uses_text=embedder.uses_text)


def stale_note(session: Session, kind: str, fingerprint: str) -> str | None:
    """One sentence for a view of a cached set (the Map) when some of its embeddings are stale; None otherwise."""
    state = staleness(session, kind, fingerprint)
    if not state.stale:
        return None
    changes = ", ".join(f"{k}: {n}" for k, n in sorted(state.changes.items()))
    return (f"{len(state.stale)} of {len(state.fresh) + len(state.stale)} memes in this {kind} set have a stale "
            f"embedding: their OCR text changed since it was embedded ({changes}), so they sit where their old "
            "text put them. Refresh them on the Train page or with `python -m workbench embed clip|vlm --stale`, "
            "then recompute the map.")


def embedding_status(session: Session, image_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Every cached embedding set with its dim and fresh / stale / missing counts (Train page, `embed --status`)."""
    from workbench.store.ocr_texts import best_text_sources

    ids = list(image_ids) if image_ids is not None else list(
        session.scalars(select(Image.id).where(Image.missing.is_(False)).order_by(Image.id)))
    sets = embedding_counts(session)
    has_text = session.scalar(select(Embedding.id).where(Embedding.fingerprint.like("%:t%")).limit(1)) is not None
    texts = best_text_sources(session, ids) if has_text else None  # read once for every text set
    return [{**staleness(session, row["kind"], row["fingerprint"], ids, _texts=texts).counts(), "dim": row["dim"]}
            for row in sets]


@dataclass(frozen=True)
class LackingEmbedding:
    """A meme without a current embedding of some embedders: `reason` says which and why."""

    image_id: int
    path: str
    missing: tuple[str, ...]  # kinds never embedded for this meme
    stale: tuple[str, ...]  # kinds embedded from a text the meme no longer goes by

    @property
    def reason(self) -> str:
        parts = [f"no {k} embedding" for k in self.missing]
        parts += [f"{k} embedding is stale (its OCR text changed since it was embedded)" for k in self.stale]
        return "; ".join(parts)


def lacking_embeddings(session: Session, embedders: Iterable[Embedder],
                       image_ids: Sequence[int]) -> list[LackingEmbedding]:
    """The memes among `image_ids` that lack a current embedding of any of `embedders`, by id."""
    missing: dict[int, list[str]] = {}
    stale: dict[int, list[str]] = {}
    for embedder in embedders:
        st = embedder_staleness(session, embedder, image_ids)
        for i in st.missing:
            missing.setdefault(i, []).append(embedder.kind)
        for i in st.stale:
            stale.setdefault(i, []).append(embedder.kind)
    ids = sorted(set(missing) | set(stale))
    paths: dict[int, str] = {}
    for chunk in in_batches(ids):
        paths.update(session.execute(select(Image.id, Image.path).where(Image.id.in_(chunk))).all())
    return [LackingEmbedding(i, paths.get(i, "?"), tuple(missing.get(i, ())), tuple(stale.get(i, ()))) for i in ids]


# ---------------------------------------------------------------- job step

class EmbedStep(Step):
    """Extract one embedder's vectors through the job runner (skips current ones; resumes)."""

    kind = "embed"
    prefetches = True

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.name = f"embed:{embedder.describe()}"
        self.needs_ocr_text = embedder.uses_text

    def fingerprint(self) -> str:
        return self.embedder.fingerprint()

    def done_ids(self, session: Session, image_ids: Sequence[int]) -> set[int]:
        return current_ids(session, self.embedder, image_ids)

    def load(self) -> None:
        self.embedder.load()

    def prefetch(self, item: WorkItem) -> Any:
        """The decoded image fitted to the model's limits, or this item's error (prefetch threads);
        None for a text-only embedder (nothing to decode)."""
        if not self.embedder.uses_image:
            return None
        return prefetch_image(item, self.embedder.prepare_image, min_side=self.embedder.decode_side())

    def process(self, items: list[WorkItem]) -> list[ItemResult]:
        import time

        results: list[ItemResult] = []
        ready: list[tuple[WorkItem, Any]] = []
        for item in items:
            prepared = item.prepared if item.prepared is not None else self.prefetch(item)
            if isinstance(prepared, ItemResult):
                results.append(prepared)
            else:
                ready.append((item, prepared))
        groups = [ready] if ready else []
        while groups:
            group = groups.pop()
            t0 = time.perf_counter()
            try:
                vectors = self.embedder.embed([im for _, im in group], [it.ocr_text for it, _ in group])
            except Exception as exc:  # noqa: BLE001 - isolate the bad item: retry one by one
                if len(group) > 1:
                    groups.extend([[pair] for pair in group])
                    continue
                results.append(ItemResult(group[0][0].image_id, error=f"{type(exc).__name__}: {exc}"))
                continue
            ms = (time.perf_counter() - t0) * 1000 / len(group)
            for (item, _), vec in zip(group, vectors, strict=True):
                results.append(ItemResult(item.image_id, value=(self.embedder.stored_fingerprint(item.ocr_text), vec),
                                          duration_ms=ms))
        return results

    def save(self, session: Session, results: list[ItemResult], force: bool) -> None:
        rows = [(r.image_id, *r.value) for r in results if r.error is None]
        sources = text_source_refs(session, self.embedder, [(i, fp) for i, fp, _ in rows]) if self.embedder.uses_text else None
        store_embeddings(session, self.embedder, rows, sources)
