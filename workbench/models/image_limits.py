"""The image shapes a model's processor accepts, and fitting an image to them.

Memes come in shapes processors fail on or waste work on:
- Qwen2-VL's `smart_resize` refuses aspect ratios above 200:1 ("absolute aspect ratio must be
  smaller than 200"), and beyond `max_pixels / 28²`:1 it can no longer keep the image inside
  its pixel budget (the short side cannot go below 28 px);
- CLIP's centre crop shows only the middle square of a banner, SigLIP squashes it flat;
- a 64-megapixel image costs seconds in any processor only to end up 224 px wide.

`limits_for(processor)` reads an image processor's limits (Qwen2-VL: min/max pixels and the
28-px factor; CLIP: shortest edge + crop; SigLIP: fixed height × width); `fit_image(image,
limits)` brings an image inside them and says what it did, which predictors store as
`extra["image_fit"]`:
1. shrink: to the longest side `max_side` when set (endpoints), else by an integer factor
   (box filter) while the image stays at least REDUCING_GAP× the size the processor resizes it
   to: Pillow's two-step `reducing_gap` recipe, documented to be indistinguishable from
   resampling the full image at a gap of 3;
2. letterbox: pad the short side (with the processor's mean colour, i.e. zeros after
   normalisation) until the aspect ratio is within `max_aspect`.
An image already inside the limits comes back unchanged (the same object).

`ImageLimits.decode_side()` is how small the decoder may make an image (a JPEG decoded at
1/2–1/8 scale in the DCT, `load_rgb(min_side=...)`) and still leave the fit that REDUCING_GAP
margin: the job runner decodes for models at that size, which for a large JPEG skips most
of the decode the box reduce would throw away (the fit record says "decoded" at what size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image as PILImage

from workbench.store.images import ORIGINAL_SIZE

IMAGE_FIT_VERSION = 2  # part of every image model's config: a change of the fitting rules is a new run
# (2: large JPEGs are decoded at reduced DCT scale, `decode_side`)
QWEN_MAX_ASPECT = 200.0  # transformers' smart_resize raises above it
QWEN_FACTOR = 28  # patch 14 × merge 2
FIXED_SIZE_MAX_ASPECT = 2.0  # CLIP's centre crop / SigLIP's squash: at most half of a meme is lost / 2× distortion
REDUCING_GAP = 3.0
QWEN_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, used by Qwen2-VL's processor too


@dataclass(frozen=True)
class ImageLimits:
    """What a processor does with an image and what it accepts.

    `mode`: "shortest_edge" (CLIP: shortest side scaled to `width`, then a centre crop),
    "fixed" (SigLIP: squashed to `width` × `height`), "pixels" (Qwen2-VL: area scaled into
    `pixels`), "none" (unknown processor: only `max_side` and `max_aspect` apply)."""

    mode: str
    width: int = 0
    height: int = 0
    pixels: int = 0
    max_aspect: float = math.inf
    max_side: int = 0  # a hard cap on the longest side (endpoint requests); 0 = none
    pad_color: tuple[int, int, int] = (0, 0, 0)

    def scale(self, width: int, height: int) -> float:
        """How many times larger than the processor's output an image of this size is
        (per side); 0 when the processor does not resize to a known size."""
        if self.mode in ("shortest_edge", "fixed") and self.width and self.height:
            return min(width / self.width, height / self.height)
        if self.mode == "pixels" and self.pixels:
            return math.sqrt(width * height / self.pixels)
        return 0.0

    def decode_side(self) -> int:
        """The short side an image may be decoded down to (`load_rgb(min_side=...)`) with
        `scale` still ≥ REDUCING_GAP, i.e. no less than the fit's own box reduce keeps
        (both sides that long make `scale` that large in every mode); 0 = decode in full
        (unknown processors, and endpoints, whose server does its own resizing)."""
        if self.max_side:
            return 0
        if self.mode in ("shortest_edge", "fixed") and self.width and self.height:
            return math.ceil(REDUCING_GAP * max(self.width, self.height))
        if self.mode == "pixels" and self.pixels:
            return math.ceil(REDUCING_GAP * math.sqrt(self.pixels))
        return 0


def qwen_limits(max_pixels: int, factor: int = QWEN_FACTOR, mean: tuple[float, ...] = QWEN_MEAN,
                max_side: int = 0) -> ImageLimits:
    """Qwen2-VL-style limits: a pixel budget, sides in multiples of `factor`, aspect ≤ 200:1 and
    ≤ max_pixels / factor² (beyond it the short side would drop below one factor and the image
    would overrun the budget)."""
    aspect = max(1.0, min(QWEN_MAX_ASPECT, max_pixels / factor**2)) if max_pixels else QWEN_MAX_ASPECT
    return ImageLimits("pixels", pixels=int(max_pixels), max_aspect=aspect, max_side=max_side,
                       pad_color=_mean_color(mean))


def limits_for(processor: Any, max_pixels: int | None = None) -> ImageLimits:
    """The limits of a loaded processor (or image processor). `max_pixels` overrides a Qwen2-VL
    processor's own budget (the VLM predictor passes its configured one)."""
    ip = getattr(processor, "image_processor", processor)
    size = getattr(ip, "size", None) or {}
    mean = tuple(getattr(ip, "image_mean", None) or QWEN_MEAN)
    if hasattr(ip, "merge_size") and hasattr(ip, "patch_size"):  # Qwen2-VL / Qwen2.5-VL
        factor = int(ip.patch_size) * int(ip.merge_size)
        budget = int(max_pixels or _get(size, "longest_edge") or _get(size, "max_pixels") or 0)
        return qwen_limits(budget, factor, mean)
    shortest = _get(size, "shortest_edge")
    if shortest:  # CLIP: the short side scaled to it, then (usually) a centre crop
        return ImageLimits("shortest_edge", width=int(shortest), height=int(shortest),
                           max_aspect=FIXED_SIZE_MAX_ASPECT, pad_color=_mean_color(mean))
    height, width = _get(size, "height"), _get(size, "width")
    if height and width:
        return ImageLimits("fixed", width=int(width), height=int(height), max_aspect=FIXED_SIZE_MAX_ASPECT,
                           pad_color=_mean_color(mean))
    return ImageLimits("none", pad_color=_mean_color(mean))


def endpoint_limits(max_side: int = 0) -> ImageLimits:
    """An OpenAI-compatible server whose processor is not known here: assume Qwen2-VL's (vLLM
    and transformers serve use it), so aspect ratio ≤ 200:1, and the longest side ≤ `max_side`."""
    return ImageLimits("none", max_aspect=QWEN_MAX_ASPECT, max_side=int(max_side), pad_color=_mean_color(QWEN_MEAN))


def fixed_limits(side: int, mean: tuple[float, ...] = QWEN_MEAN) -> ImageLimits:
    """A model fed the whole image squashed to `side` × `side` (the CAM explainers)."""
    return ImageLimits("fixed", width=side, height=side, max_aspect=FIXED_SIZE_MAX_ASPECT, pad_color=_mean_color(mean))


def fit_image(image: PILImage.Image, limits: ImageLimits) -> tuple[PILImage.Image, dict[str, Any]]:
    """`image` brought inside `limits`, and what was done ({} when nothing: the same image back).

    The record: "original" [w, h] (of the file); "decoded" [w, h] when the decoder made it
    smaller (`decode_side`); "reduce" k (box-filtered 1/k) or "resize" [w, h] (max_side);
    "pad" [left, top, right, bottom] with "aspect" (the original long:short ratio); "size" [w, h]
    of the result."""
    width, height = image.size
    original = list(image.info.get(ORIGINAL_SIZE, image.size))
    fit: dict[str, Any] = {"decoded": [width, height]} if original != [width, height] else {}
    out = image
    if limits.max_side and max(width, height) > limits.max_side:
        ratio = limits.max_side / max(width, height)
        target = (max(1, round(width * ratio)), max(1, round(height * ratio)))
        out = out.resize(target, PILImage.Resampling.BICUBIC, reducing_gap=2.0)  # what thumbnail() does
        fit["resize"] = list(target)
    else:
        padded_w, padded_h = _letterboxed(width, height, limits.max_aspect)
        factor = int(limits.scale(padded_w, padded_h) / REDUCING_GAP)
        if factor >= 2:
            out = out.reduce(factor)
            fit["reduce"] = factor
    w, h = out.size
    padded_w, padded_h = _letterboxed(w, h, limits.max_aspect)
    if (padded_w, padded_h) != (w, h):
        canvas = PILImage.new("RGB", (padded_w, padded_h), limits.pad_color)
        left, top = (padded_w - w) // 2, (padded_h - h) // 2
        canvas.paste(out.convert("RGB"), (left, top))
        out = canvas
        fit["pad"] = [left, top, padded_w - w - left, padded_h - h - top]
        fit["aspect"] = round(max(original) / min(original), 2)
    if not fit:
        return image, {}
    fit["original"] = original
    fit["size"] = list(out.size)
    return out, fit


def content_box(fit: Mapping[str, Any], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where the meme itself lies (left, top, right, bottom) in a fitted image of `size`: the
    image without the letterbox padding (for mapping heat maps back)."""
    left, top, right, bottom = fit.get("pad", [0, 0, 0, 0])
    return left, top, size[0] - right, size[1] - bottom


def _letterboxed(width: int, height: int, max_aspect: float) -> tuple[int, int]:
    """The smallest padded size whose long:short ratio is at most `max_aspect`."""
    if not math.isfinite(max_aspect) or max(width, height) <= max_aspect * min(width, height):
        return width, height
    short = math.ceil(max(width, height) / max_aspect)
    return (width, short) if width >= height else (short, height)


def _mean_color(mean: tuple[float, ...]) -> tuple[int, int, int]:
    values = [round(float(m) * 255) for m in (list(mean) + [0.5, 0.5, 0.5])[:3]]
    return values[0], values[1], values[2]


def _get(size: Any, key: str) -> Any:
    if isinstance(size, Mapping):
        return size.get(key)
    return getattr(size, key, None)
