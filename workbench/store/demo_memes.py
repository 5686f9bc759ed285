"""Builder of meme-like sample images with Russian captions, shared by tests, the demo
set on the home page, and the benchmarks (datasette's fixtures idea).

Meme style: a noisy photo-like background, white caption with a black outline,
top and/or bottom. Captions are known, so OCR can be scored (CER) against them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from workbench.config import LABEL_FOLDERS

NEUTRAL_CAPTIONS = [
    "когда наконец пятница",
    "кот опять спит на клавиатуре",
    "я после первой пары",
    "мама сказала надеть шапку",
    "понедельник снова пришёл",
    "когда нашёл деньги в куртке",
    "сессия близко а я нет",
    "чай остыл пока читал мемы",
    "бабушка накормила третий раз",
    "собака съела домашку",
    "зима пришла внезапно",
    "когда код заработал сам",
    "выходные закончились слишком быстро",
    "кофе это мой лучший друг",
    "погода шепчет останься дома",
    "учитель сказал самостоятельная",
    "весна опять забыла прийти",
    "купил торт себе на радость",
    "пробка на два часа",
    "интернет пропал в самый важный момент",
]
TOXIC_CAPTIONS = [
    "все вы тупые идиоты",
    "заткнись и не позорься",
    "таким как ты тут не место",
    "ненавижу вас всех уроды",
    "ты жалкое ничтожество",
    "вали отсюда неудачник",
    "соседи дебилы опять орут",
    "только дураки так думают",
    "ты мерзкий и никому не нужен",
    "урод даже мать тебя стыдится",
    "пошёл вон клоун",
    "вы все позор страны",
    "тупое стадо баранов",
    "бей их пока не поздно",
    "мразь а не человек",
    "таких надо гнать палкой",
    "ты просто кусок мусора",
    "недоумки везде недоумки",
    "слабак и трус как всегда",
    "хватит ныть ничтожество",
]

_FONT_CANDIDATES = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSansBold.ttf",
]


def font_path() -> str:
    """A bold TTF with Cyrillic glyphs (Debian's DejaVu, else matplotlib's bundled copy)."""
    for candidate in _FONT_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    try:
        import matplotlib

        bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    raise FileNotFoundError("no Cyrillic TTF font found: install fonts-dejavu-core (bash .ci/install does)")


@dataclass(frozen=True)
class SampleMeme:
    path: Path
    caption: str
    label: str


def _background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    w, h = size
    nprng = np.random.default_rng(rng.randrange(2**32))
    c1 = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    c2 = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    arr = c1 * (1 - t) + c2 * t + np.zeros((h, w, 3), np.float32)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.randint(3, 9)):  # blobs: something photo-like for the models to look at
        x0, y0 = rng.randrange(w), rng.randrange(h)
        r = rng.randint(w // 12, w // 3)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)
        else:
            draw.rectangle((x0 - r, y0 - r // 2, x0 + r, y0 + r // 2), fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 4.0)))
    noise = nprng.normal(0, rng.uniform(4, 14), (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(im, np.float32) + noise, 0, 255).astype(np.uint8))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= max_width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def render_meme(caption: str, seed: int = 0, size: tuple[int, int] = (512, 512), upper: bool = True) -> Image.Image:
    """Render one meme: background + outlined white caption (split top/bottom when long)."""
    rng = random.Random(seed)
    im = _background(rng, size)
    draw = ImageDraw.Draw(im)
    w, h = size
    font = ImageFont.truetype(font_path(), size=max(18, int(w / rng.uniform(12, 16))))
    text = caption.upper() if upper else caption
    words = text.split()
    if len(words) >= 4 and rng.random() < 0.6:
        cut = len(words) // 2
        blocks = [(" ".join(words[:cut]), "top"), (" ".join(words[cut:]), "bottom")]
    else:
        blocks = [(text, rng.choice(["top", "bottom"]))]
    stroke = max(2, font.size // 12)
    for block, where in blocks:
        lines = _wrap(draw, block, font, int(w * 0.92))
        line_h = font.size + stroke * 2 + 4
        y = 10 if where == "top" else h - 10 - line_h * len(lines)
        for line in lines:
            tw = draw.textlength(line, font=font)
            draw.text(((w - tw) / 2, y), line, font=font, fill="white", stroke_width=stroke, stroke_fill="black")
            y += line_h
    return im


def caption_set(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (caption, label) pairs, alternating toxic / non_toxic, deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pool, label = (TOXIC_CAPTIONS, "toxic") if i % 2 == 0 else (NEUTRAL_CAPTIONS, "non_toxic")
        out.append((pool[(i // 2 + rng.randrange(len(pool))) % len(pool)], label))
    return out


def write_sample_memes(
    memes_dir: Path,
    n: int = 40,
    seed: int = 0,
    into_label_folders: bool = True,
    size: tuple[int, int] = (512, 512),
    fmt: str = "PNG",
) -> list[SampleMeme]:
    """Write n generated memes under memes_dir (into Негативно/ and Нейтрально/ when
    `into_label_folders`, else into memes_dir/unlabeled/). Returns paths with captions."""
    out: list[SampleMeme] = []
    ext = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif"}[fmt]
    for i, (caption, label) in enumerate(caption_set(n, seed)):
        folder = memes_dir / (LABEL_FOLDERS[label] if into_label_folders else "unlabeled")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"demo_{seed}_{i:05d}{ext}"
        im = render_meme(caption, seed=seed * 100_003 + i, size=size)
        im.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(SampleMeme(path, caption, label))
    return out


def next_free_seed(memes_dir: Path) -> int:
    """The smallest seed whose demo files do not exist yet, so another demo set adds new memes."""
    used = {int(p.name.split("_")[1]) for p in memes_dir.rglob("demo_*_*") if p.name.split("_")[1].isdigit()}
    seed = 0
    while seed in used:
        seed += 1
    return seed
