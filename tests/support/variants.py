"""Reposts of a meme, as people make them: re-encoded at ~70 % size, or cropped by ~6 % of each
border with a small channel watermark stamped on. Shared by the near-duplicate tests and
bench/duplicates.py, so the README's precision/recall numbers come from the same variants."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from workbench.store.demo_memes import font_path

VARIANT_KINDS = ("reencode", "crop_watermark")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def reencode(image: Image.Image, rng: random.Random) -> bytes:
    """Shrunk to 65–75 % and saved as a JPEG of quality 65–80."""
    scale = rng.uniform(0.65, 0.75)
    w, h = image.size
    small = image.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BICUBIC)
    return _jpeg(small, rng.randint(65, 80))


def crop_watermark(image: Image.Image, rng: random.Random) -> bytes:
    """Each border cut by 5–7 % (independently), a half-transparent '@channel' name stamped in a
    bottom corner, saved as a JPEG of quality 85."""
    w, h = image.size
    cut = [rng.uniform(0.05, 0.07) for _ in range(4)]
    out = image.crop((round(w * cut[0]), round(h * cut[1]), w - round(w * cut[2]), h - round(h * cut[3]))).convert("RGBA")
    draw = ImageDraw.Draw(out, "RGBA")
    font = ImageFont.truetype(font_path(), max(8, out.width // 28))
    text = rng.choice(["@mem_channel", "@smeshnoe", "t.me/memy", "@pikabu_best"])
    x = 8 if rng.random() < 0.5 else out.width - int(draw.textlength(text, font=font)) - 8
    draw.text((x, out.height - font.size - 8), text, font=font, fill=(255, 255, 255, 170), stroke_width=1,
              stroke_fill=(0, 0, 0, 170))
    return _jpeg(out, 85)


def make_variant(kind: str, image: Image.Image, rng: random.Random) -> bytes:
    """The JPEG bytes of one variant of `kind` (VARIANT_KINDS)."""
    return {"reencode": reencode, "crop_watermark": crop_watermark}[kind](image, rng)


def write_variant(kind: str, source: Path, target: Path, seed: int = 0) -> Path:
    """Write a `kind` variant of the image at `source` to `target` (a .jpg path)."""
    from workbench.store.images import load_rgb

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(make_variant(kind, load_rgb(source), random.Random(seed)))
    return target


def plant_reposts(sources: list[Path], kinds: tuple[str, ...] = VARIANT_KINDS, seed: int = 0) -> dict[Path, Path]:
    """Next to each source file (same folder, so the same folder label), write one repost of each
    kind, cycling through `kinds`; returns repost path -> its source."""
    out: dict[Path, Path] = {}
    for k, source in enumerate(sources):
        kind = kinds[k % len(kinds)]
        target = source.with_name(f"{source.stem}.repost-{kind}.jpg")
        out[write_variant(kind, source, target, seed=seed * 1000 + k)] = source
    return out
