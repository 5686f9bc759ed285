"""Embedded images of the report: small JPEG thumbnails and cached CAM overlays as data URIs.

A data URI here is "data:image/jpeg;base64," plus base64 of JPEG bytes this module encoded;
base64 has no character HTML escaping changes, so the templates print it like any string
(autoescaped) and nothing is marked safe.
"""

from __future__ import annotations

import base64
import io

from PIL import Image as PILImage

from workbench.config import Settings


def data_uri(image: PILImage.Image, max_px: int, quality: int = 70) -> str:
    """The image shrunk to fit max_px x max_px, as a JPEG data URI."""
    im = image.convert("RGB")
    im.thumbnail((max_px, max_px), PILImage.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(settings: Settings, sha256: str, rel_path: str, max_px: int) -> str | None:
    """A small embedded JPEG of the meme, or None when its file cannot be read."""
    from workbench.store.files import DiskFull
    from workbench.store.images import ensure_thumbnail
    from workbench.store.paths import image_file

    try:
        path = ensure_thumbnail(settings.thumbnails_dir, sha256, image_file(settings.memes_dir, rel_path))
        with PILImage.open(path) as im:
            return data_uri(im, max_px)
    except DiskFull:
        raise  # a full disk fails the report; it must not quietly embed no images
    except Exception:  # noqa: BLE001 - a missing, broken or outside file shows as a placeholder
        return None


def cam_figures(settings: Settings, sha256: str, rel_path: str, max_px: int) -> list[dict[str, str]]:
    """The image's cached CAM overlays ({uri, caption} each); [] when none is cached or the file is gone."""
    from workbench.explain.cam import cached_cams, cached_overlays
    from workbench.store.images import load_rgb

    if not cached_cams(settings.artefacts_dir, sha256):
        return []
    from workbench.store.paths import image_file

    try:
        image = load_rgb(image_file(settings.memes_dir, rel_path))
    except Exception:  # noqa: BLE001 - file gone (or outside the memes folder): no overlay
        return []
    image.thumbnail((max_px * 2, max_px * 2))
    return [{"uri": data_uri(im, max_px), "caption": caption}
            for caption, im in cached_overlays(settings.artefacts_dir, sha256, image, 0.5)]
