"""The workbench's tables (SQLAlchemy 2 typed ORM). Alembic migrations in db/ create them.

Nothing here is SQLite-only: the same metadata runs on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Image(Base):
    """One meme file, identified by its content hash."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(String(1024), index=True)  # relative to the memes dir, '/'-separated
    original_name: Mapped[str] = mapped_column(String(1024))
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(Integer)
    n_frames: Mapped[int] = mapped_column(Integer, default=1)
    source: Mapped[str] = mapped_column(String(32))  # folder | upload | import | demo
    folder: Mapped[str] = mapped_column(String(512), default="", index=True)  # first path part ('' = root)
    mtime: Mapped[float | None] = mapped_column(Float, nullable=True)  # for incremental re-scan
    missing: Mapped[bool] = mapped_column(Boolean, default=False)  # file gone from disk at last scan
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    labels: Mapped[list[Label]] = relationship(back_populates="image", order_by="Label.id")


class Label(Base):
    """A label given by an annotator. Rows are never overwritten: the latest non-revoked
    row per (image, annotator) is that annotator's current label; undo sets revoked_at."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(16))
    annotator: Mapped[str] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # How the meme was chosen (label context; NULL on labels older than migration 0005). The
    # order is a queue order ("unsure", "random", ...) or where a label came from ("folder",
    # "import"); `exploration` marks a random pick inside an active order.
    queue_order: Mapped[str | None] = mapped_column(String(32), nullable=True)
    queue_rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    queue_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    exploration: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # The learner's class and P(toxic) for the meme when it was labelled, and whether the page
    # showed them (anchoring is measured by comparing labels with the class shown / not shown).
    suggestion: Mapped[str | None] = mapped_column(String(16), nullable=True)
    suggestion_prob: Mapped[float | None] = mapped_column(Float, nullable=True)
    suggestion_shown: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    seconds_spent: Mapped[float | None] = mapped_column(Float, nullable=True)  # on this meme, when known

    image: Mapped[Image] = relationship(back_populates="labels")

    __table_args__ = (
        Index("ix_labels_image_annotator", "image_id", "annotator", "id"),
        Index("ix_labels_annotator", "annotator"),
    )


class OcrResult(Base):
    """Text read from an image by one OCR engine+config, or a manual correction
    (engine='manual', one row per correction, the latest in force)."""

    __tablename__ = "ocr_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    engine: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    text: Mapped[str] = mapped_column(Text, default="")
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    boxes: Mapped[list[Any]] = mapped_column(default=list)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    annotator: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("image_id", "fingerprint", name="uq_ocr_image_fingerprint"),)


class ModelRun(Base):
    """One predictor configuration; its fingerprint is unique, so re-running the same
    config adds to the same run and skips images already predicted."""

    __tablename__ = "model_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # clip | vlm | head | nudenet | text-toxicity | ...
    model_id: Mapped[str] = mapped_column(String(512))
    name: Mapped[str] = mapped_column(String(256), default="")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)  # full config incl. prompts
    fingerprint: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="created")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Prediction(Base):
    """One predictor output for one image in one run."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("model_runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(16))  # toxic | non_toxic | unknown
    prob_toxic: Mapped[float | None] = mapped_column(Float, nullable=True)
    explanation: Mapped[str | None] = mapped_column(Text, nullable=True)
    raw_output: Mapped[str | None] = mapped_column(Text, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)  # per-class scores, detections, fold, ...
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("run_id", "image_id", name="uq_prediction_run_image"),)


class Embedding(Base):
    """A cached feature vector (float16 bytes) of one image under one feature-model fingerprint."""

    __tablename__ = "embeddings"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # clip-image | clip-text | vlm-pooled | ...
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    # Text embeddings: the OCR row their text came from, "<ocr fingerprint>#<ocr_results id>"
    # (engine + config, or a manual correction); "-" = no OCR text; NULL = image-only or unknown.
    text_source: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("image_id", "fingerprint", name="uq_embedding_image_fingerprint"),)


class Job(Base):
    """One invocation of the job runner (OCR, a predictor, embeddings, CAM ...)."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    step_kind: Mapped[str] = mapped_column(String(32))  # ocr | predict | embed | cam
    step_name: Mapped[str] = mapped_column(String(256))
    fingerprint: Mapped[str] = mapped_column(String(128), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("model_runs.id", ondelete="SET NULL"), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|done|failed|cancelled
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Setting(Base):
    """Small key/value store for remembered UI choices (e.g. the last annotator name)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)


# ---- near-duplicates (migration 0002) -------------------------------------------------


class ImageHash(Base):
    """Perceptual hashes of one image under one hashing config (workbench.features.image_hashes):
    per inner-crop level a 64-bit pHash (the candidate index) and a 256-bit pHash (the check)."""

    __tablename__ = "image_hashes"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    short_hashes: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # uint64 per level
    long_hashes: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # 32 bytes per level
    flat: Mapped[bool] = mapped_column(Boolean, default=False)  # too little detail to compare
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("image_id", "fingerprint", name="uq_image_hash_image_fingerprint"),)


class DuplicateGroup(Base):
    """A near-duplicate group and the parameters that made it. Never deleted: a later grouping
    that no longer finds it marks it superseded; people can dismiss it ("not duplicates")."""

    __tablename__ = "duplicate_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)  # active | superseded | dismissed
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)  # last grouping that found it
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class DuplicateMember(Base):
    """One image of a near-duplicate group, with its closest link into the group."""

    __tablename__ = "duplicate_members"

    group_id: Mapped[int] = mapped_column(ForeignKey("duplicate_groups.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, index=True)
    distance: Mapped[float | None] = mapped_column(Float, nullable=True)  # fraction of differing hash bits
    cosine: Mapped[float | None] = mapped_column(Float, nullable=True)  # CLIP image cosine, when cached


class DistinctPair(Base):
    """Two images a person said are not duplicates: grouping never joins them again."""

    __tablename__ = "distinct_pairs"

    image_a: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    image_b: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)  # > image_a
    annotator: Mapped[str] = mapped_column(String(128))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("duplicate_groups.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# ---- team labeling (migration 0003) ---------------------------------------------------


class User(Base):
    """Someone allowed in when sign-in is on: an email (lower case) and its role."""

    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # annotator | reviewer | admin
    added_by: Mapped[str] = mapped_column(String(320), default="")
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Adjudication(Base):
    """A reviewer's decision on a meme whose labels disagree. The latest non-revoked one per
    image outranks every label in the consensus (workbench.store.labels)."""

    __tablename__ = "adjudications"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # undone

    __table_args__ = (Index("ix_adjudications_image", "image_id", "id"),)


class LabelClaim(Base):
    """A meme on an annotator's screen (a short lease), so people labeling at the same time
    are given different memes until each has its k labels (workbench.store.overlap)."""

    __tablename__ = "label_claims"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    annotator: Mapped[str] = mapped_column(String(128), primary_key=True)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class AuditEntry(Base):
    """Who changed what: users and roles, settings, scans, uploads, imports, jobs, adjudications."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))  # an email, or os:<login> for the shell / local use
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


# The Label page's queue at 100,000 memes: present images in (path, id) order from one covering
# index (missing last, so the folder index still serves folder lookups), and each annotator's
# labels without touching the table.
Index("ix_images_path_id_missing", Image.path, Image.id, Image.missing)
Index("ix_labels_annotator_image", Label.annotator, Label.image_id, Label.revoked_at)
# The consensus cache's fingerprint at a million labels (migration 0006): the newest label and
# the undone ones from two small index probes instead of a scan of every label row. Undone rows
# only (migration 0007): with every row in it, SQLite read `revoked_at IS NULL` through this index.
Index("ix_labels_created_at", Label.created_at)
Index("ix_labels_revoked_at", Label.revoked_at, sqlite_where=Label.revoked_at.is_not(None),
      postgresql_where=Label.revoked_at.is_not(None))
