"""The one image loader: validation of incoming files, decoding to RGB for models,
and on-disk thumbnails.

Every consumer (ingest, OCR, predictors, CAM, thumbnails) decodes through `load_rgb`,
so EXIF orientation, first-frame-of-GIF and mode conversion are handled once.
Validation is our own on purpose: no library checks content type, decompression bombs,
truncation and animated frames together with the per-file reasons the upload report needs.
"""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from workbench.config import ALLOWED_FORMATS, MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES, THUMBNAIL_SIZE
from workbench.store.files import atomic_write

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # PIL warns above this and raises above 2x

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp"}
ACCEPTED_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")
EXIF_ORIENTATION = 0x0112
ORIGINAL_SIZE = "workbench.original_size"  # image.info key: (w, h) of a file load_rgb decoded smaller
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # transpose / rotate 90 / transverse / rotate 270
PNG_READ_BYTES = 1 << 20  # compressed PNG bytes handed to the decoder per call (0 = Pillow's way: one chunk)


class InvalidImage(ValueError):
    """A file that cannot be a meme; str(error) is the user-facing reason."""


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    format: str  # JPEG | PNG | GIF | WEBP
    width: int  # after EXIF orientation
    height: int
    bytes: int
    n_frames: int
    mode: str


def sniff_format(head: bytes) -> str | None:
    """The image format from the file's first bytes, or None; extensions are not trusted."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe_non_image(head: bytes) -> str:
    text = head[:256].lstrip().lower()
    if text.startswith(b"<svg") or b"<svg" in text:
        return "SVG, not a raster image"
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text:
        return "HTML, not an image"
    if head.startswith(b"%PDF"):
        return "PDF, not an image"
    if head.startswith(b"BM"):
        return "BMP (only jpg/png/gif/webp are accepted)"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIC/AVIF (only jpg/png/gif/webp are accepted)"
    if not head:
        return "empty file"
    return "not a jpg/png/gif/webp image"


def validate_bytes(data: bytes) -> ImageInfo:
    """Check that `data` is an acceptable meme image; raise InvalidImage with the reason."""
    size = len(data)
    if size == 0:
        raise InvalidImage("empty file")
    if size > MAX_UPLOAD_BYTES:
        raise InvalidImage(f"file is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise InvalidImage(_describe_non_image(data[:512]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.format not in ALLOWED_FORMATS:
                    raise InvalidImage(f"decodes as {im.format}, not jpg/png/gif/webp")
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise InvalidImage(f"{w}x{h} pixels exceeds the {MAX_IMAGE_PIXELS:,}-pixel limit (decompression bomb guard)")
                n_frames = getattr(im, "n_frames", 1)
                mode = im.mode
                im.seek(0)
                im.load()  # full decode of the first frame: catches truncation and corruption
                width, height = w, h
                if im.getexif().get(EXIF_ORIENTATION) in SWAPPING_ORIENTATIONS:  # size as displayed, no copy
                    width, height = h, w
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"decompression bomb guard: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"corrupt {fmt.lower()} file: cannot identify image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            raise InvalidImage(f"truncated {fmt.lower()} file") from exc
        raise InvalidImage(f"corrupt {fmt.lower()} file: {reason}") from exc
    if width < 8 or height < 8:
        raise InvalidImage(f"image is only {width}x{height} pixels")
    return ImageInfo(hashlib.sha256(data).hexdigest(), fmt, width, height, size, n_frames, mode)


def validate_file(path: Path) -> ImageInfo:
    """`validate_bytes` for a file on disk (checks the size before reading it)."""
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise InvalidImage(f"file is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    return validate_bytes(path.read_bytes())


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode == "RGBA" and im.getchannel("A").getextrema() == (255, 255):
        return im.convert("RGB")  # opaque (screenshots often are): compositing would change nothing
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def load_rgb(source: Path | str | bytes, min_side: int = 0) -> Image.Image:
    """Decode an image for models and display: first frame, EXIF-oriented, RGB.

    `min_side`: the caller only needs the short side at least this long (hashing, models that
    shrink images anyway), so a JPEG may be decoded at 1/2, 1/4 or 1/8 scale in the DCT
    (Pillow's `draft`), which skips most of the inverse DCT and colour work; other formats,
    and 0, decode at full size. A smaller decode keeps the file's size (as displayed) in
    `image.info[ORIGINAL_SIZE]`.

    No copies: the decoded image is handed back as it is (a file's single frame is detached
    from the file once loaded); EXIF orientation is applied in place and RGB conversion only
    makes a new image when the mode is not RGB already."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    with fp:
        im = Image.open(fp)
        try:
            full = im.size
            if min_side > 0 and im.format == "JPEG":
                im.draft("RGB", (min_side, min_side))  # keeps both sides >= min_side
            reduced = im.size != full
            if reduced and im.getexif().get(EXIF_ORIENTATION) in SWAPPING_ORIENTATIONS:
                full = full[::-1]  # as displayed, like the decoded image after the transpose
            im.seek(0)
            _load(im)
            ImageOps.exif_transpose(im, in_place=True)
            rgb = to_rgb(im)
            if reduced:
                rgb.info[ORIGINAL_SIZE] = full
        except BaseException:
            im.close()
            raise
        if rgb is im and getattr(im, "n_frames", 1) > 1:  # other frames still read from the file
            rgb = im.copy()
            im.close()
        return rgb


def _load(im: Image.Image) -> None:
    """`im.load()`; a PNG's image data is handed to the decoder up to PNG_READ_BYTES per call
    instead of one IDAT chunk per call. Encoders write small chunks (libpng 8 KB; the real
    memes have 4 KB ones, ~125 an image) and each call takes the GIL back, so threads decoding
    PNGs side by side (the job runner's prefetch) queued for the GIL once per chunk. The same
    bytes in the same order: the same pixels.

    Through the plugin's `load_read` hook (ImageFile.load reads with it): it returns one
    chunk's data per call and b"" at the first chunk that is not image data (pushed back for
    `load_end`), so joining calls until that b"" or enough bytes leaves the file where it was."""
    if im.format != "PNG" or not PNG_READ_BYTES:
        im.load()
        return
    read_chunk = im.load_read  # type: ignore[attr-defined]

    def read_pieces(read_bytes: int) -> bytes:
        pieces, got = [], 0
        while got < read_bytes:
            piece = read_chunk(read_bytes - got)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    im.load_read, im.decodermaxblock = read_pieces, PNG_READ_BYTES  # type: ignore[attr-defined]
    try:
        im.load()
    finally:
        # The wrapper refers to the image: left on it, the image would be freed by the garbage
        # collector only, not when its last user lets go (13 % slower decoding, memory piling up).
        del im.load_read  # type: ignore[attr-defined]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_UNSAFE = re.compile(r"[^\w.\- ()\[\]+,]", re.UNICODE)
_EMOJI_PARTS = {"\u200d", "\ufe0f", "\u20e3"}  # ZWJ, emoji presentation selector, keycap


def _keep_emoji(match: re.Match[str]) -> str:
    """Emoji (non-ASCII symbols and their joiners) are safe in file names and people use them;
    other unsafe characters (controls, bidi overrides, separators) become '_'."""
    ch = match.group(0)
    if ord(ch) > 0x7F and (unicodedata.category(ch) in ("So", "Sk") or ch in _EMOJI_PARTS):
        return ch
    return "_"


def safe_filename(name: str, fmt: str | None = None, max_len: int = 120) -> str:
    """A file name safe to create inside the memes dir: no directories, no NUL or control
    characters, no leading dots, bounded length; Cyrillic and other letters are kept.
    The extension follows the sniffed format when given."""
    name = unicodedata.normalize("NFC", name.replace("\x00", ""))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    stem = _UNSAFE.sub(_keep_emoji, stem).strip(" ._") or "meme"
    suffix = EXTENSIONS[fmt] if fmt else ("." + _UNSAFE.sub("", ext).lower() if ext else "")
    if fmt == "JPEG" and ext.lower() in ("jpg", "jpeg"):
        suffix = "." + ext.lower()
    budget = max_len - len(suffix.encode("utf-8"))
    encoded = stem.encode("utf-8")[:budget]
    stem = encoded.decode("utf-8", errors="ignore").rstrip(" ._") or "meme"
    return stem + suffix


def thumbnail_path(thumbnails_dir: Path, sha256: str) -> Path:
    return thumbnails_dir / sha256[:2] / f"{sha256}.jpg"


def ensure_thumbnail(thumbnails_dir: Path, sha256: str, source: Path, size: int = THUMBNAIL_SIZE) -> Path:
    """The cached thumbnail of an image, made once (written atomically)."""
    target = thumbnail_path(thumbnails_dir, sha256)
    if target.exists():
        return target
    im = load_rgb(source)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    with atomic_write(target, verify=_decodes) as fh:  # a truncated thumbnail is never stored
        im.save(fh, "JPEG", quality=82)
    return target


def _decodes(path: Path) -> None:
    """Raise OSError unless the file at `path` decodes whole."""
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise OSError(f"{path.name} does not decode after writing ({exc})") from exc
