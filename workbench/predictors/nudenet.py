"""NudeNet moderation signal: the `nudenet` package's bundled ONNX detector (works offline).

prob_toxic = the highest score among the exposed-body classes counted as unsafe;
explanation = the detected classes; all detections (class, score, box) go to extra."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import numpy as np

from workbench.errors import ModelUnavailable
from workbench.predictors.base import Option, PredictInput, Predictor, PredictOutput

# NudeNet's exposed classes that make an image unsafe ("sexual"); "all" adds the rest of
# the *_EXPOSED classes (feet, armpits, belly, male breast), which are rarely a problem.
SEXUAL_EXPOSED = ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
                  "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")
OTHER_EXPOSED = ("MALE_BREAST_EXPOSED", "BELLY_EXPOSED", "ARMPITS_EXPOSED", "FEET_EXPOSED")
EXPOSED_SETS = {"sexual": SEXUAL_EXPOSED, "all": SEXUAL_EXPOSED + OTHER_EXPOSED}

_detectors: dict[int, Any] = {}
_lock = threading.Lock()


def get_detector(resolution: int = 320) -> Any:
    """The NudeDetector (ONNX Runtime session), created once per process."""
    with _lock:
        if resolution not in _detectors:
            try:
                from nudenet import NudeDetector
            except ImportError as exc:
                raise ModelUnavailable("nudenet", f"the nudenet package is not installed ({exc})",
                                       "Install it with `pip install nudenet` (it ships its ONNX detector).") from None
            try:
                _detectors[resolution] = NudeDetector(inference_resolution=resolution)
            except Exception as exc:  # noqa: BLE001 - a broken install must not take the app down
                raise ModelUnavailable("nudenet", f"its ONNX detector failed to load: {type(exc).__name__}: {exc}",
                                       "Reinstall it with `pip install --force-reinstall nudenet`.") from None
        return _detectors[resolution]


class NudeNetPredictor(Predictor):
    kind = "nudenet"
    title = "NudeNet (nudity detector, offline ONNX)"
    options: ClassVar[tuple[Option, ...]] = (
        Option("exposed", "sexual", "which exposed-body classes count as toxic", "choice", tuple(EXPOSED_SETS)),
        Option("threshold", 0.5, "prob_toxic at or above this is labeled toxic", "float"),
        Option("min_score", 0.2, "detections below this score are ignored (and not stored)", "float"),
    )

    def __init__(self, exposed: str = "sexual", threshold: float = 0.5, min_score: float = 0.2) -> None:
        if exposed not in EXPOSED_SETS:
            raise ValueError(f"exposed must be one of {', '.join(EXPOSED_SETS)}, not {exposed!r}")
        self.exposed, self.threshold, self.min_score = exposed, float(threshold), float(min_score)
        self.detector: Any = None

    def config(self) -> dict[str, Any]:
        return {"model": "nudenet-320n", "exposed": self.exposed, "threshold": self.threshold,
                "min_score": self.min_score}

    def load(self) -> None:
        self.detector = get_detector()

    def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        import time

        if self.detector is None:
            self.load()
        outputs = []
        for inp in batch:
            t0 = time.perf_counter()
            try:
                bgr = np.ascontiguousarray(np.asarray(inp.image.convert("RGB"))[:, :, ::-1])  # NudeNet reads OpenCV BGR
                detections = [d for d in self.detector.detect(bgr) if d["score"] >= self.min_score]
            except Exception as exc:  # noqa: BLE001 - one bad image, not the batch
                outputs.append(PredictOutput(label="unknown", error=f"NudeNet failed: {type(exc).__name__}: {exc}"))
                continue
            outputs.append(self.to_output(detections, (time.perf_counter() - t0) * 1000))
        return outputs

    def to_output(self, detections: list[dict[str, Any]], latency_ms: float) -> PredictOutput:
        """Turn detections into a prediction (prob = max unsafe exposed-class score, else 0)."""
        unsafe = EXPOSED_SETS[self.exposed]
        detections = sorted(detections, key=lambda d: -d["score"])
        prob = max((float(d["score"]) for d in detections if d["class"] in unsafe), default=0.0)
        if detections:
            explanation = "detected: " + ", ".join(f"{d['class']} {d['score']:.2f}" for d in detections)
        else:
            explanation = "nothing detected"
        return PredictOutput(
            label="toxic" if prob >= self.threshold else "non_toxic", prob_toxic=prob, explanation=explanation,
            latency_ms=latency_ms,
            extra={"detections": [{"class": d["class"], "score": round(float(d["score"]), 4),
                                   "box": [int(v) for v in d["box"]]} for d in detections]},
        )
