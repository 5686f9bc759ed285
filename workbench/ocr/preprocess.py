"""Image preparation for OCR of meme captions: upscaling and the "white text" mask.

Meme captions are mostly white (or light) letters with a dark outline over a busy
photo. Tesseract reads dark text on a light page best, so the mask keeps the bright,
unsaturated pixels as black ink on a white page and drops the picture.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

MIN_LONG_SIDE = 1200


def upscale(image: Image.Image, min_long_side: int = MIN_LONG_SIDE) -> tuple[Image.Image, float]:
    """The image enlarged (Lanczos) so its long side is at least `min_long_side`, and the
    scale factor applied (1.0 when it was already large enough)."""
    long_side = max(image.size)
    if long_side >= min_long_side:
        return image, 1.0
    scale = min_long_side / long_side
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.LANCZOS), scale


def white_text_mask(
    image: Image.Image, min_value: int = 200, max_saturation: int = 60, median: int = 3
) -> Image.Image:
    """Bright, unsaturated pixels as black on white ('L' image), median-filtered to drop
    specks. `min_value` is the HSV value floor, `max_saturation` the HSV saturation ceiling."""
    hsv = np.asarray(image.convert("HSV"))
    keep = (hsv[..., 2] >= min_value) & (hsv[..., 1] <= max_saturation)
    page = np.where(keep, 0, 255).astype(np.uint8)
    mask = Image.fromarray(page, "L")
    return mask.filter(ImageFilter.MedianFilter(median)) if median > 1 else mask


def outlined_text_mask(
    image: Image.Image,
    min_value: int = 200,
    max_saturation: int = 60,
    dark_value: int = 120,
    min_dark_ring: float = 0.5,
    max_height_frac: float = 0.25,
    min_area: int = 30,
) -> Image.Image:
    """Like `white_text_mask`, but keeps only bright blobs that look like letters: mostly
    surrounded by dark pixels (the caption's outline, or a dark backdrop), not taller than
    `max_height_frac` of the image and not specks. A light sky or wall is a bright blob
    without a dark rim, so it no longer turns into a black slab of junk for Tesseract."""
    import cv2

    hsv = np.asarray(image.convert("HSV"))
    bright = ((hsv[..., 2] >= min_value) & (hsv[..., 1] <= max_saturation)).astype(np.uint8)
    bright = cv2.medianBlur(bright * 255, 3) // 255
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if n <= 1:
        return Image.new("L", image.size, 255)
    # The rim of each blob: pixels within 2 px outside it, attributed to the neighbouring label.
    kernel = np.ones((5, 5), np.uint8)
    grown = cv2.dilate(labels.astype(np.float32), kernel).astype(np.int32)
    rim = (bright == 0) & (grown > 0)
    dark = hsv[..., 2] <= dark_value
    rim_total = np.bincount(grown[rim], minlength=n)
    rim_dark = np.bincount(grown[rim & dark], minlength=n)
    height = stats[:, cv2.CC_STAT_HEIGHT]
    area = stats[:, cv2.CC_STAT_AREA]
    keep = (rim_dark >= min_dark_ring * np.maximum(rim_total, 1)) & (height <= max_height_frac * image.height)
    keep &= area >= min_area
    keep[0] = False
    page = np.where(keep[labels], 0, 255).astype(np.uint8)
    return Image.fromarray(page, "L")
