"""Classification heads on frozen features, trained from the workbench's own labels.

Two heads: logistic regression (Linear(d->2)) and a small MLP
(Linear(d->512) -> ReLU -> Dropout(0.1) -> Linear(512->2)), both trained with class-balanced
cross-entropy and Adam on standardised features. Evaluation is honest by construction:
`cross_validate` gives every labeled sample a probability from a head that never saw it
(stratified k-fold, out-of-fold), plus a final head trained on all labels for the
unlabeled images. Given near-duplicate groups, folds are split by group
(StratifiedGroupKFold), so a repost never sits in the training folds of its original.
A head is saved as safetensors (weights) + JSON (config, feature model, out-of-fold
results) — never pickle — and refuses to load against other features.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FEATURE_SETS = ("image", "text", "both", "interaction")
HEAD_MODELS = ("logreg", "mlp")
HEAD_FORMAT = "vlmemes-head/1"
WEIGHTS_FILE, CONFIG_FILE = "head.safetensors", "head.json"


class HeadError(ValueError):
    """Training or loading a head is impossible (too few labels, bad file, ...)."""


class FeatureModelMismatch(HeadError):
    """A saved head was trained on other features than the ones offered to it."""


@dataclass(frozen=True)
class HeadConfig:
    """Hyper-parameters of one head; everything that changes its output."""

    model: str = "mlp"  # logreg | mlp
    epochs: int = 60
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    folds: int = 5
    seed: int = 0
    hidden: int = 512
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.model not in HEAD_MODELS:
            raise HeadError(f"head model must be one of {', '.join(HEAD_MODELS)}, not {self.model!r}")
        if self.epochs < 1 or self.folds < 2 or self.batch_size < 1:
            raise HeadError("epochs and batch_size must be >= 1 and folds >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- features and folds

def compose_features(image: np.ndarray | None, text: np.ndarray | None, features: str) -> np.ndarray:
    """Rows of head input from aligned image/text embedding rows.

    'interaction' is Hate-CLIPper's align fusion: the element-wise product of the
    L2-normalised image and text projections (same dimension in CLIP)."""
    if features not in FEATURE_SETS:
        raise HeadError(f"features must be one of {', '.join(FEATURE_SETS)}, not {features!r}")
    need_image = features in ("image", "both", "interaction")
    need_text = features in ("text", "both", "interaction")
    if (need_image and image is None) or (need_text and text is None):
        needed = "image and text" if need_image and need_text else "image" if need_image else "text"
        raise HeadError(f"features {features!r} need {needed} embeddings")
    if features == "image":
        return np.asarray(image, np.float32)
    if features == "text":
        return np.asarray(text, np.float32)
    if features == "both":
        return np.concatenate([np.asarray(image, np.float32), np.asarray(text, np.float32)], axis=1)
    img, txt = _l2(np.asarray(image, np.float32)), _l2(np.asarray(text, np.float32))
    if img.shape[1] != txt.shape[1]:
        raise HeadError(f"interaction needs equal image/text dims, got {img.shape[1]} and {txt.shape[1]}")
    return img * txt


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def labels_to_targets(labels: Sequence[str]) -> np.ndarray:
    """'toxic' -> 1, 'non_toxic' -> 0."""
    return np.array([1 if lab == "toxic" else 0 for lab in labels], dtype=np.int64)


def labels_digest(pairs: Iterable[tuple[Any, str]]) -> str:
    """A short hash of (key, label) training pairs: new labels make a new run."""
    blob = json.dumps(sorted((str(k), v) for k, v in pairs), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def stratified_folds(y: np.ndarray, folds: int, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """The validation fold (0..k-1) of every sample, stratified by class.

    With `groups` (one id per sample; the members of a near-duplicate group share theirs) no
    group spans folds (scikit-learn's StratifiedGroupKFold); without groups, or when every
    group is a single sample, plain StratifiedKFold. k shrinks to the smallest class size
    (counted in groups when grouping) when there are fewer than `folds`."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise HeadError(f"need at least 2 labeled images of each class to cross-validate, have "
                        f"{int(counts[1])} toxic and {int(counts[0])} non_toxic")
    k = int(min(folds, counts.min()))
    assignment = np.empty(len(y), dtype=np.int64)
    if groups is not None and len(np.unique(groups)) < len(groups):
        per_class = min(len(np.unique(groups[y == c])) for c in (0, 1))
        if per_class < 2:
            raise HeadError("need near-duplicate groups with at least 2 different memes of each class to "
                            "cross-validate by group")
        k = min(k, per_class)
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, groups)
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    for fold, (_, val_idx) in enumerate(splits):
        assignment[val_idx] = fold
    return assignment


def fold_groups(keys: Sequence[Any], group_of: dict[Any, int]) -> np.ndarray:
    """Group id per sample for `stratified_folds`: its near-duplicate group, or its own singleton."""
    own = {k: -(n + 1) for n, k in enumerate(keys)}  # negative: never equal to a stored group id
    return np.array([group_of.get(k, own[k]) for k in keys], dtype=np.int64)


def grouping_summary(groups: np.ndarray | None) -> dict[str, Any]:
    """How folds were split, for the training report."""
    if groups is None:
        return {"method": "StratifiedKFold", "by": "none"}
    _, counts = np.unique(groups, return_counts=True)
    multi = counts[counts > 1]
    return {"method": "StratifiedGroupKFold" if len(multi) else "StratifiedKFold", "by": "near-duplicate groups",
            "groups": int(len(multi)), "grouped_images": int(multi.sum())}


def describe_grouping(grouping: dict[str, Any] | None) -> str:
    """One sentence on how a training report's folds were split (`grouping_summary`)."""
    if not grouping or grouping.get("by") == "none":
        return ("Folds: StratifiedKFold, not split by near-duplicate group (grouping off, or no groups found yet: "
                "run Find near-duplicates).")
    if grouping.get("method") == "StratifiedGroupKFold":
        return (f"Folds split by near-duplicate group (StratifiedGroupKFold): {grouping['groups']} groups, "
                f"{grouping['grouped_images']} labeled memes, each group kept inside one fold.")
    return "Folds: StratifiedKFold; no stored near-duplicate group has two labeled members, so none could leak."


def binary_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float | None]:
    """F1 (toxic positive, threshold 0.5) and AUROC (None with one class)."""
    from sklearn.metrics import f1_score, roc_auc_score

    pred = (prob >= 0.5).astype(int)
    auroc = float(roc_auc_score(y, prob)) if len(set(y.tolist())) == 2 else None
    return {"f1": float(f1_score(y, pred, zero_division=0)), "auroc": auroc,
            "accuracy": float((pred == y).mean()) if len(y) else None, "n": int(len(y))}


@dataclass
class OutOfFold:
    """What `out_of_fold` returns: every labeled sample scored by the model of the fold that held it out."""

    folds: np.ndarray  # validation fold of each sample (stratified_folds)
    prob: np.ndarray  # out-of-fold P(toxic) of each sample
    models: list[Any]  # the model of each fold
    seconds: list[float]  # time spent in `fit` per fold
    metrics: dict[str, Any]  # binary_metrics of the out-of-fold probabilities, plus "folds"


def out_of_fold(
    y: np.ndarray, folds: int, seed: int, fit: Callable[[np.ndarray, np.ndarray, int], Any],
    predict: Callable[[Any, np.ndarray], np.ndarray], groups: np.ndarray | None = None,
) -> OutOfFold:
    """Stratified k-fold cross-validation of any model: the one fold loop of heads and TF-IDF.

    For each fold, `fit(train_idx, val_idx, fold)` returns a model trained on the samples
    (row indices, ascending) outside the fold and `predict(model, val_idx)` gives P(toxic)
    of the held-out samples. With `groups`, no group spans folds (`stratified_folds`)."""
    assignment = stratified_folds(y, folds, seed, groups)
    prob = np.full(len(y), np.nan)
    models: list[Any] = []
    seconds: list[float] = []
    k = int(assignment.max()) + 1
    for fold in range(k):
        train, val = np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)
        t0 = time.perf_counter()
        model = fit(train, val, fold)
        seconds.append(time.perf_counter() - t0)
        models.append(model)
        if len(val):  # StratifiedGroupKFold may leave a fold empty when groups are large
            prob[val] = predict(model, val)
    metrics = binary_metrics(y, prob)
    metrics["folds"] = k
    metrics["grouping"] = grouping_summary(groups)
    return OutOfFold(assignment, prob, models, seconds, metrics)


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    # numpy F1 for the per-epoch curve (sklearn's input validation costs more than an epoch)
    tp = int(((pred == 1) & (y == 1)).sum())
    denom = int((pred == 1).sum()) + int((y == 1).sum())
    return 2 * tp / denom if denom else 0.0


# ---------------------------------------------------------------- one head

@dataclass
class TrainedHead:
    """A trained head: tensors (weights + standardisation) and its JSON-able description."""

    config: HeadConfig
    dim: int
    feature_model: dict[str, Any]  # {"fingerprint": ..., "description": ...}
    tensors: dict[str, Any]  # name -> torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)  # training summary, out-of-fold results
    _module: Any = field(default=None, repr=False, compare=False)  # built once, on first prediction

    @property
    def feature_fingerprint(self) -> str:
        return str(self.feature_model.get("fingerprint", ""))

    def check_features(self, feature_fingerprint: str, description: str = "") -> None:
        """Refuse features from another feature model (raises FeatureModelMismatch)."""
        if feature_fingerprint != self.feature_fingerprint:
            raise FeatureModelMismatch(
                f"this head was trained on features {self.feature_model.get('description', '?')!r} "
                f"(fingerprint {self.feature_fingerprint}); the selected features are "
                f"{description or '?'!r} (fingerprint {feature_fingerprint}). Choose the same feature "
                "model and feature set, or train a new head.")

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """P(toxic) per row."""
        import torch

        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise HeadError(f"head expects {self.dim}-dim features, got shape {tuple(x.shape)}")
        if self._module is None:
            module = _build_module(self.dim, self.config)
            module.load_state_dict({k[len("net."):]: v for k, v in self.tensors.items() if k.startswith("net.")})
            self._module = module.eval()
        with torch.no_grad():
            xt = (torch.from_numpy(x) - self.tensors["mean"]) / self.tensors["std"]
            return torch.softmax(self._module(xt), dim=1)[:, 1].numpy().astype(np.float64)


def _build_module(dim: int, config: HeadConfig):  # noqa: ANN202 - torch imported lazily
    from torch import nn

    if config.model == "logreg":
        return nn.Sequential(nn.Linear(dim, 2))
    return nn.Sequential(nn.Linear(dim, config.hidden), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(config.hidden, 2))


def train_head(
    x: np.ndarray, y: np.ndarray, config: HeadConfig, feature_model: dict[str, Any] | None = None, *,
    x_val: np.ndarray | None = None, y_val: np.ndarray | None = None, seed_offset: int = 0,
) -> tuple[TrainedHead, list[dict[str, float]]]:
    """Train one head on (x, y); returns it and its per-epoch curve (train loss, and
    validation loss/F1 when a validation set is given). On one torch thread: a head is too
    small to split (workbench.models.devices.one_thread)."""
    from workbench.models.devices import one_thread

    with one_thread():
        return _train_head(x, y, config, feature_model, x_val=x_val, y_val=y_val, seed_offset=seed_offset)


def _train_head(
    x: np.ndarray, y: np.ndarray, config: HeadConfig, feature_model: dict[str, Any] | None = None, *,
    x_val: np.ndarray | None = None, y_val: np.ndarray | None = None, seed_offset: int = 0,
) -> tuple[TrainedHead, list[dict[str, float]]]:
    import torch
    from torch import nn

    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    torch.manual_seed(config.seed * 1000 + seed_offset)
    gen = torch.Generator().manual_seed(config.seed * 1000 + seed_offset)
    mean = torch.from_numpy(x.mean(axis=0))
    std = torch.from_numpy(x.std(axis=0)).clamp_min(1e-6)
    xt = (torch.from_numpy(x) - mean) / std
    yt = torch.from_numpy(y)
    counts = np.bincount(y, minlength=2).astype(np.float32)
    # Class-balanced: each class carries half the loss whatever its size.
    weights = torch.from_numpy(np.where(counts > 0, len(y) / (2 * np.maximum(counts, 1)), 0.0).astype(np.float32))
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    module = _build_module(x.shape[1], config)
    opt = torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    xv = (torch.from_numpy(np.asarray(x_val, np.float32)) - mean) / std if x_val is not None else None
    yv = torch.from_numpy(np.asarray(y_val, np.int64)) if y_val is not None else None
    curve: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        module.train()
        order = torch.randperm(len(yt), generator=gen)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            opt.zero_grad()
            loss = loss_fn(module(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        point = {"epoch": epoch, "train_loss": total / len(yt)}
        if xv is not None and yv is not None and len(yv):
            module.eval()
            with torch.no_grad():
                logits = module(xv)
                point["val_loss"] = float(nn.functional.cross_entropy(logits, yv))
                point["val_f1"] = _f1(yv.numpy(), logits.argmax(1).numpy())
        curve.append(point)
    tensors = {f"net.{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    tensors["mean"], tensors["std"] = mean.contiguous(), std.contiguous()
    head = TrainedHead(config=config, dim=int(x.shape[1]), feature_model=dict(feature_model or {}), tensors=tensors,
                       meta={"n_train": int(len(y)), "n_toxic": int(counts[1]), "n_non_toxic": int(counts[0])})
    return head, curve


# ---------------------------------------------------------------- cross-validation

@dataclass
class CrossValResult:
    """Out-of-fold evaluation of a head config plus the final head trained on all labels."""

    keys: list[str]  # one per labeled sample (e.g. image sha256), aligned with the arrays
    y: np.ndarray
    oof_prob: np.ndarray
    folds: np.ndarray
    curves: list[dict[str, float]]  # {"fold", "epoch", "train_loss", "val_loss", "val_f1"}
    fold_seconds: list[float]
    final: TrainedHead
    metrics: dict[str, Any]
    fold_heads: list[TrainedHead] = field(default_factory=list)

    def oof_by_key(self) -> dict[str, tuple[float, int]]:
        return {k: (float(p), int(f)) for k, p, f in zip(self.keys, self.oof_prob, self.folds, strict=True)}


def cross_validate(
    x: np.ndarray, y: np.ndarray, keys: Sequence[str], config: HeadConfig, feature_model: dict[str, Any] | None = None,
    groups: np.ndarray | None = None,
) -> CrossValResult:
    """Stratified k-fold (by `groups` when given: see `stratified_folds`): each sample's
    probability comes from the head of the fold that held it out; then a final head is
    trained on everything (for unlabeled images)."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    if len(keys) != len(y) or len(x) != len(y):
        raise HeadError("features, labels and keys must be aligned")
    curves: list[dict[str, float]] = []

    def fit(train: np.ndarray, val: np.ndarray, fold: int) -> TrainedHead:
        head, curve = train_head(x[train], y[train], config, feature_model, x_val=x[val], y_val=y[val], seed_offset=fold + 1)
        head.meta["train_keys"] = [keys[j] for j in train]  # evidence for the out-of-fold check
        curves.extend({"fold": fold, **point} for point in curve)
        return head

    cv = out_of_fold(y, config.folds, config.seed, fit, lambda head, val: head.predict_proba(x[val]), groups)
    final, _ = train_head(x, y, config, feature_model)
    final.meta.update({
        "cv_metrics": cv.metrics,
        "oof": {k: [float(p), int(f)] for k, p, f in zip(keys, cv.prob, cv.folds, strict=True)},
    })
    return CrossValResult(list(keys), y, cv.prob, cv.folds, curves, cv.seconds, final, cv.metrics, cv.models)


# ---------------------------------------------------------------- save / load

def save_head(head: TrainedHead, directory: Path, curves: Sequence[dict[str, float]] = ()) -> Path:
    """Write head.safetensors + head.json (and the training curves) into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(head.tensors, str(directory / WEIGHTS_FILE), metadata={"format": HEAD_FORMAT})
    doc = {"format": HEAD_FORMAT, "config": head.config.to_dict(), "dim": head.dim,
           "feature_model": head.feature_model, "meta": head.meta, "curves": list(curves)}
    (directory / CONFIG_FILE).write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    return directory


def read_head_info(directory: Path) -> dict[str, Any]:
    """The JSON side of a saved head (config, feature model, metrics, curves)."""
    path = Path(directory) / CONFIG_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadError(f"no saved head in {directory} ({CONFIG_FILE} missing)") from None
    except (OSError, ValueError) as exc:
        raise HeadError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != HEAD_FORMAT:
        raise HeadError(f"{path} is not a saved head (format {doc.get('format') if isinstance(doc, dict) else '?'!r})")
    return doc


def load_head(directory: Path, expected_feature_fingerprint: str | None = None, description: str = "") -> TrainedHead:
    """Load a saved head; with `expected_feature_fingerprint`, refuse a head trained on other features."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    doc = read_head_info(directory)
    try:
        config = HeadConfig(**doc["config"])
        head = TrainedHead(config=config, dim=int(doc["dim"]), feature_model=dict(doc.get("feature_model") or {}),
                           tensors={}, meta=dict(doc.get("meta") or {}))
    except (KeyError, TypeError) as exc:
        raise HeadError(f"{directory}/{CONFIG_FILE} is incomplete: {exc}") from None
    if expected_feature_fingerprint is not None:
        head.check_features(expected_feature_fingerprint, description)
    try:
        head.tensors = load_file(str(Path(directory) / WEIGHTS_FILE))
    except (OSError, SafetensorError) as exc:
        raise HeadError(f"cannot read {Path(directory) / WEIGHTS_FILE}: {exc}") from None
    return head


# ---------------------------------------------------------------- staleness of a saved head

TEXT_FEATURES = ("text", "both", "interaction")


def head_text_status(session: Any, info: dict[str, Any]) -> str:
    """Whether the OCR texts a saved head's text embeddings were made from are still the texts
    the memes go by (`read_head_info` output; memes no longer in the database are not counted)."""
    from sqlalchemy import select

    from workbench.features.embeddings import text_hashes
    from workbench.store.db import in_batches
    from workbench.store.schema import Image

    features = (info.get("feature_model") or {}).get("features")
    recorded = ((info.get("meta") or {}).get("texts") or {}).get("by_sha")
    if features not in TEXT_FEATURES:
        return "no text features"
    if not recorded:
        return "unknown (trained before texts were recorded)"
    id_of: dict[str, int] = {}
    for chunk in in_batches(list(recorded)):
        id_of.update((sha, i) for i, sha in session.execute(select(Image.id, Image.sha256).where(Image.sha256.in_(chunk))))
    now = text_hashes(session, list(id_of.values()))
    stale = sum(1 for sha, i in id_of.items() if now[i] != recorded[sha])
    if stale:
        return f"stale: {stale} of {len(id_of)} training texts changed since (refresh embeddings, retrain)"
    return f"current ({len(id_of)} training texts)"
