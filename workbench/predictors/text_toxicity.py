"""Text-toxicity moderation signal: a transformers sequence classifier on the OCR text
(default cointegrated/rubert-tiny-toxicity; any sequence-classification id or local path)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from workbench.config import DEFAULT_TEXT_TOXICITY_MODEL
from workbench.models.text_classifier import load_classifier
from workbench.predictors.base import Option, PredictInput, Predictor, PredictOutput

NEUTRAL_NAMES = ("non-toxic", "non_toxic", "nontoxic", "not toxic", "neutral", "normal", "ok", "safe", "clean")


def toxicity_probability(logits: np.ndarray, id2label: dict[int, str], multi_label: bool) -> tuple[float, dict[str, float]]:
    """P(toxic) and per-class scores from one row of logits.

    Multi-label (sigmoid) models with a neutral class, like rubert-tiny-toxicity, use its
    authors' formula 1 - P(non-toxic) * (1 - P(dangerous)); single-label (softmax) models
    use 1 - P(neutral class), else P(a class named '*toxic*'), else the second class."""
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label:
        probs = 1 / (1 + np.exp(-logits))
    else:
        e = np.exp(logits - logits.max())
        probs = e / e.sum()
    names = [str(id2label.get(i, f"LABEL_{i}")) for i in range(len(probs))]
    scores = {name: float(p) for name, p in zip(names, probs)}
    lower = [n.lower() for n in names]
    neutral = next((i for i, n in enumerate(lower) if n in NEUTRAL_NAMES), None)
    if neutral is not None:
        p_neutral = probs[neutral]
        if multi_label:
            dangerous = next((i for i, n in enumerate(lower) if n == "dangerous"), None)
            p_danger = probs[dangerous] if dangerous is not None else 0.0
            return float(1 - p_neutral * (1 - p_danger)), scores
        return float(1 - p_neutral), scores
    toxic = next((i for i, n in enumerate(lower) if "toxic" in n), None)
    if toxic is not None:
        return float(probs[toxic]), scores
    if multi_label:
        return float(probs.max()), scores
    return float(probs[1] if len(probs) > 1 else probs[0]), scores


class TextToxicityPredictor(Predictor):
    kind = "text-toxicity"
    title = "Text toxicity classifier on the OCR text"
    needs_ocr_text = True
    options: ClassVar[tuple[Option, ...]] = (
        Option("model", DEFAULT_TEXT_TOXICITY_MODEL, "transformers sequence-classification id or local path"),
        Option("threshold", 0.5, "prob_toxic at or above this is labeled toxic", "float"),
        Option("max_length", 512, "tokens of OCR text kept", "int"),
        Option("dtype", "float32", "weights dtype", "choice", ("float32", "bfloat16")),
    )

    def __init__(self, model: str = DEFAULT_TEXT_TOXICITY_MODEL, threshold: float = 0.5, max_length: int = 512,
                 dtype: str = "float32") -> None:
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, not {dtype!r}")
        self.model_name = (model or DEFAULT_TEXT_TOXICITY_MODEL).strip()
        self.threshold, self.max_length, self.dtype = float(threshold), int(max_length), dtype
        self.tokenizer: Any = None
        self.model: Any = None

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name, "threshold": self.threshold, "max_length": self.max_length,
                "dtype": self.dtype}

    def load(self) -> None:
        self.tokenizer, self.model = load_classifier(self.model_name, self.dtype)

    def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        import time

        import torch

        if self.model is None:
            self.load()
        outputs: list[PredictOutput | None] = [None] * len(batch)
        todo = []
        for pos, inp in enumerate(batch):
            if (inp.ocr_text or "").strip():
                todo.append(pos)
            else:  # an error, so a later run retries it once OCR has text
                outputs[pos] = PredictOutput(label="unknown", error="no OCR text for this image (run OCR first)")
        if todo:
            t0 = time.perf_counter()
            enc = self.tokenizer([batch[p].ocr_text.strip() for p in todo], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                logits = self.model(**enc).logits.float().numpy()
            per_item_ms = (time.perf_counter() - t0) * 1000 / len(todo)
            config = self.model.config
            multi = getattr(config, "problem_type", None) == "multi_label_classification"
            for pos, row in zip(todo, logits):
                prob, scores = toxicity_probability(row, dict(config.id2label), multi)
                outputs[pos] = PredictOutput(
                    label="toxic" if prob >= self.threshold else "non_toxic", prob_toxic=prob,
                    explanation=_explain(scores), latency_ms=per_item_ms, extra={"scores": scores},
                )
        return [o for o in outputs if o is not None]


def _explain(scores: dict[str, float]) -> str:
    toxic = {k: v for k, v in scores.items() if k.lower() not in NEUTRAL_NAMES} or scores
    top = sorted(toxic.items(), key=lambda kv: -kv[1])[:3]
    return "top classes: " + ", ".join(f"{name} {p:.2f}" for name, p in top)
