"""File validation and the one image loader: a table of every kind of file people drop in."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from workbench.config import MAX_UPLOAD_BYTES
from workbench.store.images import ORIGINAL_SIZE, InvalidImage, ensure_thumbnail, load_rgb, safe_filename, validate_bytes

RED, BLUE = (255, 0, 0), (0, 0, 255)


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def solid(colour: tuple[int, int, int] = RED, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def halves(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue: shows which way the image was turned."""
    im = solid(RED, size)
    im.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return im


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    return encode(halves(), "JPEG", quality=95, exif=exif)


def animated_gif() -> bytes:
    frames = [solid(RED).convert("P"), solid(BLUE).convert("P")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (32, 24), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK


def png16(value: int) -> bytes:
    return encode(Image.fromarray(np.full((24, 32), value, dtype=np.uint16)), "PNG")


def palette_with_transparency() -> bytes:
    im = Image.new("P", (32, 24), 0)
    im.putpalette([0, 0, 0] + [255, 0, 0] + [0] * 762)
    im.paste(1, (16, 0, 32, 24))  # right half red, left half index 0 = transparent
    return encode(im, "PNG", transparency=0)


def rgba_half_transparent() -> bytes:
    im = Image.new("RGBA", (32, 24), (0, 0, 255, 0))  # fully transparent blue: must become white
    im.paste((255, 0, 0, 255), (16, 0, 32, 24))
    return encode(im, "PNG")


def bomb_png() -> bytes:
    """A real 16x16 PNG whose header claims 20000 x 20000 pixels (400 MP)."""
    data = bytearray(encode(solid(RED, (16, 16)), "PNG"))
    ihdr = bytearray(data[16:29])  # IHDR data: width, height, depth, colour, ...
    ihdr[0:8] = struct.pack(">II", 20000, 20000)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(data)


def truncated_jpeg() -> bytes:
    data = encode(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG", quality=95)
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = encode(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")
    return data[: len(data) // 2]


def oversized() -> bytes:
    return encode(solid(), "PNG") + b"\0" * (MAX_UPLOAD_BYTES + 1)


# (case, bytes builder, expected format or None, expected error fragment or None)
VALIDATION_CASES: list[tuple[str, Callable[[], bytes], str | None, str | None]] = [
    ("jpg", lambda: encode(solid(), "JPEG"), "JPEG", None),
    ("png", lambda: encode(solid(), "PNG"), "PNG", None),
    ("gif", lambda: encode(solid().convert("P"), "GIF"), "GIF", None),
    ("webp", lambda: encode(solid(), "WEBP"), "WEBP", None),
    ("animated gif", animated_gif, "GIF", None),
    ("cmyk jpeg", cmyk_jpeg, "JPEG", None),
    ("16-bit png", lambda: png16(65535), "PNG", None),
    ("palette png with transparency", palette_with_transparency, "PNG", None),
    ("rgba png", rgba_half_transparent, "PNG", None),
    ("exif-rotated jpeg", exif_rotated_jpeg, "JPEG", None),
    ("over 25 MB", oversized, None, "limit is 25 MB"),
    ("decompression bomb", bomb_png, None, "decompression bomb"),
    ("truncated jpeg", truncated_jpeg, None, "truncated"),
    ("truncated png", truncated_png, None, "png"),
    ("corrupt jpeg", lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, None, "jpeg"),
    ("corrupt png body", lambda: encode(solid(), "PNG")[:40] + b"garbage" * 50, None, "png"),
    ("html named .png", lambda: b"<!DOCTYPE html><html><script>alert(1)</script></html>", None, "HTML"),
    ("svg named .png", lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>', None, "SVG"),
    ("bmp", lambda: encode(solid(), "BMP"), None, "BMP"),
    ("pdf", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", None, "PDF"),
    ("empty", lambda: b"", None, "empty file"),
    ("text", lambda: "просто текст".encode(), None, "not a jpg/png/gif/webp"),
    ("4x4 pixels", lambda: encode(solid(RED, (4, 4)), "PNG"), None, "only 4x4"),
]


@pytest.mark.parametrize(("case", "build", "fmt", "error"), VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES])
def test_validation_table(case: str, build: Callable[[], bytes], fmt: str | None, error: str | None) -> None:
    data = build()
    if error is None:
        info = validate_bytes(data)
        assert info.format == fmt
        assert info.bytes == len(data)
        assert len(info.sha256) == 64
    else:
        with pytest.raises(InvalidImage) as exc:
            validate_bytes(data)
        assert error.lower() in str(exc.value).lower()


def test_format_comes_from_content_not_extension(tmp_path) -> None:
    """A PNG named .jpg is a PNG; ingest renames it to the sniffed format's extension."""
    data = encode(solid(), "PNG")
    assert validate_bytes(data).format == "PNG"
    assert safe_filename("photo.jpg", "PNG") == "photo.png"
    assert safe_filename("photo.jpeg", "JPEG") == "photo.jpeg"
    assert safe_filename("../../etc/passwd.png", "PNG") == "passwd.png"


def near(pixel: tuple[int, ...], colour: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(int(a) - b) <= tol for a, b in zip(pixel, colour))


# (case, bytes builder, expected size after loading, [(xy, colour)])
LOADER_CASES = [
    ("exif orientation honoured", exif_rotated_jpeg, (20, 40), [((10, 5), RED), ((10, 35), BLUE)]),
    ("animated gif -> first frame", animated_gif, (32, 24), [((5, 5), RED)]),
    ("cmyk -> rgb", cmyk_jpeg, (32, 24), [((5, 5), RED)]),
    ("16-bit white -> 255", lambda: png16(65535), (32, 24), [((5, 5), (255, 255, 255))]),
    ("16-bit mid grey -> 128", lambda: png16(32768), (32, 24), [((5, 5), (128, 128, 128))]),
    ("palette transparency -> white", palette_with_transparency, (32, 24), [((5, 5), (255, 255, 255)), ((25, 5), RED)]),
    ("alpha composited on white", rgba_half_transparent, (32, 24), [((5, 5), (255, 255, 255)), ((25, 5), RED)]),
    ("webp", lambda: encode(halves(), "WEBP", lossless=True), (40, 20), [((5, 5), RED), ((35, 5), BLUE)]),
]


@pytest.mark.parametrize(("case", "build", "size", "pixels"), LOADER_CASES, ids=[c[0] for c in LOADER_CASES])
def test_load_rgb_table(case: str, build: Callable[[], bytes], size: tuple[int, int], pixels: list) -> None:
    data = build()
    im = load_rgb(data)
    assert im.mode == "RGB"
    assert im.size == size
    assert validate_bytes(data).width == size[0]  # validation reports the oriented size too
    for xy, colour in pixels:
        assert near(im.getpixel(xy), colour, tol=12 if "16-bit" in case else 40), (case, xy, im.getpixel(xy))


def test_an_opaque_rgba_image_takes_the_short_way_to_the_same_pixels() -> None:
    from workbench.store.images import to_rgb

    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (24, 32, 4), dtype=np.uint8), "RGBA")
    rgba.putalpha(255)  # opaque, as most screenshots saved with an alpha channel are
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    composited = Image.alpha_composite(white, rgba).convert("RGB")  # what a transparent one gets
    assert to_rgb(rgba).tobytes() == composited.tobytes()
    rgba.putpixel((0, 0), (10, 20, 30, 254))  # one pixel not quite opaque: composited after all
    assert to_rgb(rgba).getpixel((0, 0)) != (10, 20, 30)


def test_loaded_image_outlives_its_file(tmp_path) -> None:
    """load_rgb hands back the decoded image without copying it: it must not depend on the file."""
    for name, data in (("a.png", encode(halves(), "PNG")), ("b.jpg", exif_rotated_jpeg()), ("c.gif", animated_gif())):
        path = tmp_path / name
        path.write_bytes(data)
        im = load_rgb(path)
        path.unlink()
        assert im.copy().resize((8, 8)).mode == "RGB"
        assert im.getpixel((1, 1)) is not None


def test_min_side_decodes_a_jpeg_smaller_but_never_below_it() -> None:
    data = encode(halves((800, 400)), "JPEG", quality=90)
    full, reduced = load_rgb(data), load_rgb(data, min_side=128)
    assert full.size == (800, 400)
    assert min(reduced.size) >= 128 and reduced.size == (400, 200)  # DCT scaling by 1/2: 1/4 would go below 128
    assert near(reduced.getpixel((10, 50)), RED) and near(reduced.getpixel((reduced.width - 10, 50)), BLUE)
    rotated = load_rgb(exif_rotated_jpeg(), min_side=8)  # orientation still applied after a reduced decode
    assert rotated.size[1] > rotated.size[0]
    png = encode(halves((800, 400)), "PNG")
    assert load_rgb(png, min_side=128).size == (800, 400)  # only JPEG can be decoded smaller


def test_a_smaller_decode_remembers_the_files_size_as_displayed() -> None:
    data = encode(halves((800, 400)), "JPEG", quality=90)
    assert load_rgb(data, min_side=128).info[ORIGINAL_SIZE] == (800, 400)
    assert ORIGINAL_SIZE not in load_rgb(data).info and ORIGINAL_SIZE not in load_rgb(data, min_side=400).info
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: 400 wide, 800 high
    rotated = load_rgb(encode(halves((800, 400)), "JPEG", quality=90, exif=exif), min_side=100)
    assert rotated.size == (100, 200) and rotated.info[ORIGINAL_SIZE] == (400, 800)
    assert ORIGINAL_SIZE not in load_rgb(encode(halves((800, 400)), "PNG"), min_side=100).info


def small_idat_chunks(png: bytes, size: int = 4096) -> bytes:
    """The same PNG with its image data cut into `size`-byte IDAT chunks, as libpng-based
    encoders write them (the real memes have 4 KB ones)."""
    chunks, pos, data = [], 8, b""
    while pos < len(png):
        (length,), kind = struct.unpack(">I", png[pos : pos + 4]), png[pos + 4 : pos + 8]
        if kind == b"IDAT":
            data += png[pos + 8 : pos + 8 + length]
        else:
            if kind == b"IEND" or (kind == b"fcTL" and data):  # image data ends: write it out in pieces
                chunks += [b"IDAT" + data[i : i + size] for i in range(0, len(data), size)]
                data = b""
            chunks.append(png[pos + 4 : pos + 8 + length])
        pos += 12 + length
    return png[:8] + b"".join(struct.pack(">I", len(c) - 4) + c + struct.pack(">I", zlib.crc32(c)) for c in chunks)


def test_a_png_in_small_chunks_is_decoded_from_large_pieces_to_the_same_pixels(monkeypatch) -> None:
    """load_rgb joins a PNG's IDAT chunks into large reads (fewer GIL round-trips in the job
    runner's decode threads): every kind of PNG comes out exactly as Pillow's chunk-by-chunk read."""
    from workbench.store import images

    noise = Image.effect_noise((300, 200), 80).convert("RGB")
    apng = encode(noise, "PNG", save_all=True, append_images=[solid(BLUE, noise.size)], duration=100)
    deep = Image.fromarray(np.random.default_rng(0).integers(0, 65536, (200, 300), dtype=np.uint16))
    cases = {"rgb": encode(noise, "PNG"), "interlaced": encode(noise, "PNG", interlace=1),
             "rgba": encode(noise.convert("RGBA"), "PNG"), "16-bit": encode(deep, "PNG"),
             "palette + transparency": encode(noise.quantize(64), "PNG", transparency=0),
             "animated (first frame)": apng}
    for name, png in cases.items():
        chunked = small_idat_chunks(png, 512)
        assert chunked.count(b"IDAT") > 10, name
        large = load_rgb(chunked)
        with monkeypatch.context() as m:
            m.setattr(images, "PNG_READ_BYTES", 0)
            assert load_rgb(chunked).tobytes() == large.tobytes() == load_rgb(png).tobytes(), name
    chunked = small_idat_chunks(encode(noise, "PNG"), 512)
    reads: list[int] = []
    im = Image.open(io.BytesIO(chunked))
    read_chunk = im.load_read
    im.load_read = lambda n: reads.append(n) or read_chunk(n)  # what the decoder is fed, seen from below
    images._load(im)
    decoder_calls = reads.count(images.PNG_READ_BYTES)  # each call's first read asks for the whole piece
    assert decoder_calls == 1 and len(reads) > 10  # one decoder call got all the chunks' data
    with pytest.raises(OSError, match="truncated"):
        load_rgb(small_idat_chunks(encode(noise, "PNG"), 512)[:30_000])


def test_a_loaded_png_is_freed_as_soon_as_it_is_let_go() -> None:
    """Nothing load_rgb leaves on the image refers back to it: freed by reference counting,
    not later by the garbage collector (fresh memory for every image slowed decoding 13 %)."""
    import gc
    import weakref

    gc.disable()
    try:
        im = load_rgb(small_idat_chunks(encode(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG"), 512))
        alive = weakref.ref(im)
        del im
        assert alive() is None
    finally:
        gc.enable()


def test_thumbnail_is_made_once(tmp_path) -> None:
    source = tmp_path / "meme.jpg"
    source.write_bytes(exif_rotated_jpeg())
    first = ensure_thumbnail(tmp_path / "thumbs", "ab" * 32, source, size=16)
    stamp = first.stat().st_mtime_ns
    source.write_bytes(b"not an image any more")  # a second call must not decode the source again
    again = ensure_thumbnail(tmp_path / "thumbs", "ab" * 32, source, size=16)
    assert again == first and again.stat().st_mtime_ns == stamp
    with Image.open(first) as thumb:
        assert thumb.size == (8, 16)  # portrait: the EXIF rotation is baked in
