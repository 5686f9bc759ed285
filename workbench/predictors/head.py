"""The `head` predictor: a logistic-regression or MLP head on cached frozen-model
embeddings (CLIP image / text / both / image×text interaction, or VLM pooled states),
trained from the current labels with stratified k-fold, split by near-duplicate group.

Labeled images get out-of-fold predictions (the fold is in extra), others the head trained
on all labels. The trained head (safetensors + JSON, with its curves and out-of-fold
results) is saved under artefacts/heads/<run fingerprint>/; `head_path` predicts with a
saved head instead of training (refused when its feature model differs).
Embeddings are not computed here: run `python -m workbench embed clip|vlm` first.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from workbench.config import DEFAULT_CLIP_MODEL, DEFAULT_VLM_MODEL
from workbench.features.embeddings import (
    ClipImageEmbedder,
    ClipTextEmbedder,
    Embedder,
    VlmPooledEmbedder,
    lacking_embeddings,
    load_embeddings,
    text_hashes,
)
from workbench.features.head_training import (
    FEATURE_SETS,
    HEAD_MODELS,
    HeadConfig,
    HeadError,
    TrainedHead,
    compose_features,
    cross_validate,
    load_head,
    save_head,
)
from workbench.predictors.base import Option, PredictInput
from workbench.predictors.out_of_fold import GROUP_OPTION_HELP, Fitted, OutOfFoldPredictor, labeled_arrays
from workbench.runs.step import fingerprint
from workbench.store.schema import Embedding, Image, Job

HEAD_FEATURES = (*FEATURE_SETS, "vlm")  # 'vlm' = the VLM's mean-pooled last hidden state


def heads_dir() -> Path:
    from workbench.config import load_settings

    return load_settings().artefacts_dir / "heads"


def feature_embedders(features: str, clip_model: str = DEFAULT_CLIP_MODEL,
                      vlm_model: str = DEFAULT_VLM_MODEL) -> dict[str, Embedder]:
    """The cached embeddings a feature set reads: {'image': ..., 'text': ...} or {'vlm': ...}."""
    if features == "vlm":
        return {"vlm": VlmPooledEmbedder(vlm_model)}
    if features not in FEATURE_SETS:
        raise ValueError(f"features must be one of {', '.join(HEAD_FEATURES)}, not {features!r}")
    out: dict[str, Embedder] = {}
    if features in ("image", "both", "interaction"):
        out["image"] = ClipImageEmbedder(clip_model)
    if features in ("text", "both", "interaction"):
        out["text"] = ClipTextEmbedder(clip_model)
    return out


def feature_model(features: str, embedders: dict[str, Embedder]) -> dict[str, Any]:
    """Identity of the head's input: fingerprint + a human description (stored with the head)."""
    parts = {name: e.fingerprint() for name, e in sorted(embedders.items())}
    model = next(iter(embedders.values())).config().get("model", "?")
    source = "vlm" if features == "vlm" else "clip"
    return {"fingerprint": fingerprint({"features": features, "embedders": parts}),
            "description": f"{source}:{model} · {features}", "features": features, "model": model,
            "embedders": parts}


def _file_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for name in ("head.json", "head.safetensors"):
        try:
            h.update((directory / name).read_bytes())
        except OSError:
            return "missing"
    return h.hexdigest()[:16]


class HeadPredictor(OutOfFoldPredictor):
    kind = "head"
    title = "Trained head on frozen CLIP / VLM embeddings (trained on your labels)"
    options: ClassVar[tuple[Option, ...]] = (
        Option("features", "both", "image | text (CLIP of the OCR text) | both (concatenated) | interaction "
               "(image×text, Hate-CLIPper align fusion) | vlm (VLM mean-pooled hidden state)", "choice", HEAD_FEATURES),
        Option("head", "mlp", "logreg = Linear(d→2); mlp = Linear(d→512)→ReLU→Dropout(0.1)→Linear(512→2)", "choice",
               HEAD_MODELS),
        Option("clip_model", DEFAULT_CLIP_MODEL, "CLIP model whose cached embeddings to use (the form starts from "
               "the project's embedding choice, the model `embed clip` uses by default)"),
        Option("vlm_model", DEFAULT_VLM_MODEL, "VLM whose cached pooled embeddings to use (features = vlm; the form "
               "starts from the project's vlm choice)"),
        Option("epochs", 60, "training epochs per fold", "int"),
        Option("batch_size", 32, "examples per Adam step", "int"),
        Option("lr", 1e-3, "Adam learning rate", "float"),
        Option("weight_decay", 1e-4, "Adam weight decay", "float"),
        Option("folds", 5, "stratified cross-validation folds", "int"),
        Option("seed", 0, "seed of folds and initialisation", "int"),
        Option("group_duplicates", True, GROUP_OPTION_HELP, "bool"),
        Option("head_path", "", "folder of a saved head to predict with instead of training (empty = train)"),
    )

    def __init__(self, features: str = "both", head: str = "mlp", clip_model: str = DEFAULT_CLIP_MODEL,
                 vlm_model: str = DEFAULT_VLM_MODEL, epochs: int = 60, lr: float = 1e-3, weight_decay: float = 1e-4,
                 folds: int = 5, seed: int = 0, group_duplicates: bool = True, head_path: str = "",
                 batch_size: int = 32) -> None:
        super().__init__()
        self.features = features
        self.embedders = feature_embedders(features, (clip_model or DEFAULT_CLIP_MODEL).strip(),
                                           (vlm_model or DEFAULT_VLM_MODEL).strip())
        self.feature_model = feature_model(features, self.embedders)
        try:
            self.head_config = HeadConfig(model=head, epochs=int(epochs), lr=float(lr),
                                          weight_decay=float(weight_decay), folds=int(folds), seed=int(seed),
                                          batch_size=int(batch_size))
        except HeadError as exc:
            raise ValueError(str(exc)) from None
        self.folds, self.seed = self.head_config.folds, self.head_config.seed
        self.group_duplicates = bool(group_duplicates)
        self.head_path = Path(head_path).expanduser() if str(head_path or "").strip() else None
        self.x: dict[int, np.ndarray] = {}
        self.sha: dict[int, str] = {}
        self.missing_hint = ""
        self.other_models: dict[str, int] = {}  # when nothing can be trained on: models with embeddings cached
        self.lacking: dict[int, str] = {}  # image_id -> why it has no features (missing / stale embeddings)
        self.texts: dict[int, str] = {}  # trained image_id -> hash of the OCR text its text embedding was made from

    def training_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"model": f"{self.head_config.model}:{self.feature_model['description']}",
                                  "feature_model": self.feature_model["fingerprint"], "features": self.features}
        if self.head_path is not None:
            config.update(head_path=str(self.head_path), head_file=_file_digest(self.head_path))
        else:
            config["head"] = self.head_config.to_dict()
        return config

    def run_name(self) -> str:
        return f"head:{self.head_config.model}:{self.feature_model['description']}"

    def collect(self, session: Session, labels: dict[int, str]) -> str:
        ids = list(session.scalars(select(Image.id).where(Image.missing.is_(False))))
        parts = {name: load_embeddings(session, emb, ids) for name, emb in self.embedders.items()}
        common = sorted(set.intersection(*(set(p) for p in parts.values()))) if parts else []
        self.x = {}
        if common:
            rows = self._compose(parts, common)
            self.x = {i: rows[k] for k, i in enumerate(common)}
        self.sha = dict(session.execute(select(Image.id, Image.sha256)).all())
        self.missing_hint = (f"no {'/'.join(e.kind for e in self.embedders.values())} embedding for this image: "
                             f"run `{self.embed_command()}` (or the Train page) first")
        self.lacking = {lack.image_id: lack.reason for lack in
                        lacking_embeddings(session, self.embedders.values(), [i for i in ids if i not in self.x])}
        self.other_models = {}
        if not any(i in self.x for i in labels):  # nothing to train on: say which model's embeddings there are
            first = next(iter(self.embedders.values()))
            self.other_models = {m: n for m, n in _embedded_models(session, first.kind).items()
                                 if m != first.config()["model"]}
        # Training uses the labeled images that have features; the hash covers exactly those (and,
        # for text features, the texts embedded: a refreshed text embedding makes a new run).
        trained_on = sorted(i for i in labels if i in self.x)
        inputs: dict[str, Any] = {"feature_model": self.feature_model["fingerprint"], "train": trained_on}
        self.texts = {}
        if any(e.uses_text for e in self.embedders.values()):
            self.texts = text_hashes(session, trained_on)
            inputs["texts"] = fingerprint(sorted(self.texts.items()))
        return fingerprint(inputs)

    def embed_command(self) -> str:
        """The command that embeds (or refreshes) this head's features."""
        source = "vlm" if self.features == "vlm" else "clip"
        return f"python -m workbench embed {source} --model {next(iter(self.embedders.values())).config()['model']}"

    def input_notice(self, session: Session, image_ids: list[int], list_memes: bool = True) -> str | None:
        """Before training: which of `image_ids` lack current embeddings (ids and files unless
        `list_memes` is False), and the command that embeds them."""
        lacking = lacking_embeddings(session, self.embedders.values(), image_ids)
        if not lacking:
            return None
        from workbench.store.labels import consensus_labels

        labels = self.labels or consensus_labels(session)
        labeled = [lack for lack in lacking if lack.image_id in labels]
        stale = sum(1 for lack in lacking if lack.stale)
        shown = ", ".join(f"{lack.image_id} ({lack.path})" for lack in lacking[:10])
        more = f" and {len(lacking) - 10} more" if len(lacking) > 10 else ""
        return (f"{len(lacking)} memes lack a current {'/'.join(e.kind for e in self.embedders.values())} embedding "
                f"({stale} stale: their OCR text changed since they were embedded; {len(lacking) - stale} never "
                f"embedded); {len(labeled)} of them labeled: the head trains without them and they get per-image "
                f"errors." + (f" Memes: {shown}{more}." if list_memes else "")
                + f" Embed them first: {self.embed_command()}")

    def _compose(self, parts: dict[str, dict[int, np.ndarray]], ids: list[int]) -> np.ndarray:
        if self.features == "vlm":
            return np.stack([parts["vlm"][i] for i in ids])
        image = np.stack([parts["image"][i] for i in ids]) if "image" in parts else None
        text = np.stack([parts["text"][i] for i in ids]) if "text" in parts else None
        return compose_features(image, text, self.features)

    def fit(self) -> Fitted:
        if self.head_path is not None:
            return self._fit_loaded(self.head_path)
        ids = sorted(i for i in self.labels if i in self.x)
        if not ids:
            raise HeadError(self._no_features_message())
        y = labeled_arrays(self.labels, ids)
        x = np.stack([self.x[i] for i in ids])
        result = cross_validate(x, y, [self.sha[i] for i in ids], self.head_config, self.feature_model,
                                self.fold_groups(ids))
        if self.texts:  # which OCR texts the text embeddings were made from (saved heads show as stale later)
            result.final.meta["texts"] = {"by_sha": {self.sha[i]: h for i, h in self.texts.items()}}
        save_head(result.final, heads_dir() / self.fingerprint(), result.curves)
        metrics = dict(result.metrics, n_labeled_without_features=sum(1 for i in self.labels if i not in self.x))
        return Fitted(fold_of={i: int(f) for i, f in zip(ids, result.folds)}, fold_models=result.fold_heads,
                      final=result.final, metrics=metrics, curves=result.curves, fold_seconds=result.fold_seconds)

    def _no_features_message(self) -> str:
        """Why there is nothing to train on, which model's embeddings exist instead, and the fixes."""
        make = self.missing_hint.split(": ", 1)[1]
        text = f"no labeled image has {self.feature_model['description']} embeddings yet"
        if not self.other_models:
            return f"{text}: {make}"
        option, choice = ("vlm_model", "vlm") if self.features == "vlm" else ("clip_model", "embedding")
        found = ", ".join(f"{m} ({n} images)" for m, n in sorted(self.other_models.items(), key=lambda kv: -kv[1]))
        model = max(self.other_models, key=self.other_models.get)
        return (f"{text}. Embeddings are cached for: {found}. To train on them, set {option} = {model} "
                f"(`-o {option}={model}`), or make it the project's choice: "
                f"`python -m workbench models set {choice} {model}` (or the Models page). "
                f"To use {self.feature_model['model']} instead, {make}")

    def _fit_loaded(self, directory: Path) -> Fitted:
        head = load_head(directory, self.feature_model["fingerprint"], self.feature_model["description"])
        by_sha = {sha: i for i, sha in self.sha.items()}
        stored = {by_sha[sha]: (float(p), int(f)) for sha, (p, f) in (head.meta.get("oof") or {}).items() if sha in by_sha}
        return Fitted(fold_of={}, fold_models=[], final=head, metrics=dict(head.meta.get("cv_metrics") or {}),
                      stored_oof=stored, n_train=head.meta.get("n_train"))

    def features_for(self, inp: PredictInput) -> np.ndarray:
        if inp.image_id not in self.x:
            if inp.image_id in self.lacking:
                raise ValueError(f"{self.lacking[inp.image_id]}: run `{self.embed_command()}` (or the Train page)")
            raise ValueError(self.missing_hint)
        return self.x[inp.image_id]

    def score(self, model: TrainedHead, inputs: list[np.ndarray]) -> list[tuple[float, str | None]]:
        probs = model.predict_proba(np.stack(inputs))
        return [(float(p), None) for p in probs]


def _embedded_models(session: Session, kind: str) -> dict[str, int]:
    """{model: images} with `kind` embeddings cached, by the embed jobs that made them (the
    embeddings table keeps only fingerprints)."""
    prefix = f"embed:{kind}:"
    jobs = session.execute(select(Job.step_name, Job.fingerprint).distinct()
                           .where(Job.step_kind == "embed", Job.step_name.startswith(prefix, autoescape=True))).all()
    out: dict[str, int] = {}
    for name, fp in jobs:
        n = session.scalar(select(func.count(func.distinct(Embedding.image_id))).where(
            or_(Embedding.fingerprint == fp, Embedding.fingerprint.startswith(f"{fp}:t", autoescape=True))))
        if n:
            model = name[len(prefix):]
            out[model] = max(out.get(model, 0), int(n))
    return out


def saved_heads(root: Path | None = None) -> list[dict[str, Any]]:
    """Heads saved under artefacts/heads (newest first): folder, features, head, metrics."""
    from workbench.features.head_training import read_head_info

    root = root or heads_dir()
    out = []
    for directory in sorted(root.glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []:
        try:
            info = read_head_info(directory)
        except HeadError:
            continue
        metrics = (info.get("meta") or {}).get("cv_metrics") or {}
        out.append({"name": directory.name, "path": str(directory),
                    "features": (info.get("feature_model") or {}).get("description", "?"),
                    "head": (info.get("config") or {}).get("model"), "n_train": (info.get("meta") or {}).get("n_train"),
                    "oof_f1": metrics.get("f1"), "oof_auroc": metrics.get("auroc")})
    return out


def copy_head(source: Path, destination: Path) -> Path:
    """Copy a saved head (head.json + head.safetensors) to `destination` (a new or empty folder)."""
    import shutil

    from workbench.features.head_training import CONFIG_FILE, WEIGHTS_FILE, read_head_info

    read_head_info(source)  # refuses a folder that holds no head
    destination = Path(destination).expanduser()
    if destination.exists() and any(destination.iterdir()):
        raise HeadError(f"{destination} is not empty; choose a new folder")
    destination.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy2(Path(source) / name, destination / name)
    return destination


def predictor_for_saved_head(directory: Path) -> HeadPredictor:
    """A head predictor that predicts with the saved head in `directory`, on the features it was trained on."""
    from workbench.features.head_training import read_head_info

    info = read_head_info(Path(directory))
    fm = info.get("feature_model") or {}
    features, model = fm.get("features"), fm.get("model")
    if features not in HEAD_FEATURES or not model:
        raise HeadError(f"{directory}: the saved head does not say which features it was trained on")
    key = "vlm_model" if features == "vlm" else "clip_model"
    return HeadPredictor(features=features, head=(info.get("config") or {}).get("model", "mlp"),
                         head_path=str(directory), **{key: model})
