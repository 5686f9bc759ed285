"""Images every model accepts: the limits read from real (tiny) processors, the fitting rules,
and memes of extreme shapes (10000×40, 40×10000, the bomb guard's largest) through every model
kind — CLIP, SigLIP, the local VLM in both modes, embeddings and CAM — through the job runner,
with what was done recorded. A 1×1 and a 20000×20000 never get that far: ingest refuses them."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from tests.support.tiny_models import tiny_model_dir
from workbench.config import MAX_IMAGE_PIXELS
from workbench.explain import cam as explain
from workbench.features.embeddings import ClipImageEmbedder, EmbedStep, VlmPooledEmbedder, load_embeddings
from workbench.models.image_limits import (
    IMAGE_FIT_VERSION,
    QWEN_MAX_ASPECT,
    content_box,
    endpoint_limits,
    fit_image,
    limits_for,
    qwen_limits,
)
from workbench.predictors import make_predictor
from workbench.predictors.base import PredictorStep
from workbench.runs.runner import run_step
from workbench.store.demo_memes import render_meme
from workbench.store.images import InvalidImage, load_rgb, validate_bytes
from workbench.store.ingest import scan_folder
from workbench.store.schema import Image, Prediction

SHAPES = {"banner.png": (10000, 40), "tower.png": (40, 10000), "plain.png": (300, 200)}


def image(size: tuple[int, int]) -> PILImage.Image:
    return PILImage.new("RGB", size, (200, 30, 30))


def aspect(size: tuple[int, int]) -> float:
    return max(size) / min(size)


# ---------------------------------------------------------------- limits and rules


def test_limits_are_read_from_the_processors() -> None:
    from transformers import AutoProcessor

    clip = limits_for(AutoProcessor.from_pretrained(tiny_model_dir("clip")))
    assert (clip.mode, clip.width, clip.max_aspect) == ("shortest_edge", 32, 2.0)
    assert clip.pad_color == (123, 117, 104)  # OpenAI CLIP's mean: zeros after normalisation
    siglip = limits_for(AutoProcessor.from_pretrained(tiny_model_dir("siglip")))
    assert (siglip.mode, siglip.width, siglip.height, siglip.pad_color) == ("fixed", 32, 32, (128, 128, 128))
    qwen = AutoProcessor.from_pretrained(tiny_model_dir("qwen2_5_vl"))
    assert limits_for(qwen).pixels == 112 * 112  # the processor's own budget ...
    assert limits_for(qwen, max_pixels=448 * 448).pixels == 448 * 448  # ... or the predictor's
    assert limits_for(qwen).max_aspect == 112 * 112 / 28**2  # 16:1: past it the short side would be < 28 px
    assert qwen_limits(1280 * 28 * 28).max_aspect == QWEN_MAX_ASPECT  # Qwen's own limit caps larger budgets


@pytest.mark.parametrize("limits", [qwen_limits(112 * 112), qwen_limits(448 * 448), endpoint_limits(1280),
                                    endpoint_limits(0)], ids=["qwen-tiny", "qwen-cpu", "endpoint", "endpoint-as-is"])
@pytest.mark.parametrize("size", [(10000, 40), (40, 10000), (8000, 8000), (300, 200), (8, 8), (8, 1999)])
def test_fitted_images_are_inside_the_limits(limits, size) -> None:
    original = image(size)
    fitted, fit = fit_image(original, limits)
    assert aspect(fitted.size) <= limits.max_aspect
    if limits.max_side:
        assert max(fitted.size) <= limits.max_side
    if not fit:  # nothing needed: the very same image goes on
        assert fitted is original and aspect(size) <= limits.max_aspect
    else:
        assert fit["original"] == list(size) and fit["size"] == list(fitted.size)
    if limits.pixels:  # what Qwen's processor will make of it stays inside its budget, with no error
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        h, w = smart_resize(fitted.height, fitted.width, factor=28, min_pixels=56 * 56, max_pixels=limits.pixels)
        assert h * w <= max(limits.pixels, 56 * 56 * 4) and min(h, w) >= 28


def test_a_letterbox_keeps_the_meme_in_the_middle_and_says_so() -> None:
    meme = render_meme("баннер", size=(1000, 20))
    fitted, fit = fit_image(meme, qwen_limits(448 * 448))  # 50:1 is allowed there: nothing to do
    assert fit == {} and fitted is meme
    fitted, fit = fit_image(meme, qwen_limits(112 * 112))  # 16:1 at most
    assert fit["pad"] == [0, 21, 0, 22] and fit["aspect"] == 50.0 and fitted.size == (1000, 63)
    left, top, right, bottom = content_box(fit, fitted.size)
    assert fitted.crop((left, top, right, bottom)).tobytes() == meme.tobytes()  # the meme itself untouched
    assert fitted.getpixel((0, 0)) == (123, 117, 104)  # padding in the processor's mean colour


def test_huge_images_are_box_reduced_first_and_ordinary_ones_untouched() -> None:
    clip = limits_for(_processor("clip"))  # shortest edge 32: anything over 3 × 32 per side is reduced
    ordinary = render_meme("мем", size=(96, 80))
    assert fit_image(ordinary, clip) == (ordinary, {})
    fitted, fit = fit_image(render_meme("мем", size=(512, 512)), clip)
    assert fit == {"reduce": 5, "original": [512, 512], "size": [103, 103]}
    t0 = time.perf_counter()
    fitted, fit = fit_image(image((8000, 8000)), clip)
    assert fitted.size == (97, 97) and time.perf_counter() - t0 < 2.0


def test_decode_side_leaves_the_fit_its_margin() -> None:
    from workbench.models.image_limits import REDUCING_GAP, fixed_limits

    clip = limits_for(_processor("clip"))
    assert clip.decode_side() == 96 and fixed_limits(224).decode_side() == 672  # 3 × the processor's side
    assert qwen_limits(448 * 448).decode_side() == 3 * 448
    assert endpoint_limits(1280).decode_side() == 0 and endpoint_limits(0).decode_side() == 0  # the server resizes
    for limits in (clip, fixed_limits(224), qwen_limits(448 * 448)):  # a decode that small still has the margin
        side = limits.decode_side()
        assert limits.scale(side, side) >= REDUCING_GAP


def test_a_jpeg_decoded_smaller_is_recorded_and_still_fits(tmp_path) -> None:
    path = tmp_path / "photo.jpg"
    render_meme("большое фото", size=(1600, 1200)).save(path, quality=90)
    clip = limits_for(_processor("clip"))
    decoded = load_rgb(path, min_side=clip.decode_side())
    assert decoded.size == (200, 150)  # 1/8: both sides still >= 96
    fitted, fit = fit_image(decoded, clip)
    assert fit == {"decoded": [200, 150], "original": [1600, 1200], "size": [200, 150]}
    assert fitted is decoded and clip.scale(*fitted.size) >= 3  # the processor resizes from >= 3× its size
    _, full_fit = fit_image(load_rgb(path), clip)
    assert full_fit["reduce"] == 12 and full_fit["original"] == [1600, 1200]


def test_ingest_refuses_1x1_and_20000x20000_already() -> None:
    def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
        buf = io.BytesIO()
        PILImage.new(mode, size).save(buf, "PNG")
        return buf.getvalue()

    with pytest.raises(InvalidImage, match="only 1x1 pixels"):
        validate_bytes(png((1, 1)))
    with pytest.raises(InvalidImage, match="decompression bomb"):
        validate_bytes(png((20000, 20000), mode="1"))  # 400 MP: 1-bit keeps the test's own memory small
    side = math.isqrt(MAX_IMAGE_PIXELS)
    assert validate_bytes(png((side, side), mode="1")).width == side  # the largest the guard lets through


# ---------------------------------------------------------------- every model kind, through the job runner


@pytest.fixture
def extreme_memes(settings, session) -> dict[str, int]:
    """The SHAPES as PNG files in the memes folder, ingested: file name -> image id."""
    folder = settings.memes_dir / "uploads"
    folder.mkdir()
    for name, size in SHAPES.items():
        render_meme("очень длинный мем с подписью", seed=2, size=size).save(folder / name)
    scan_folder(session, settings.memes_dir)
    ids = {Path(p).name: i for i, p in session.execute(select(Image.id, Image.path))}
    session.commit()
    assert set(ids) == set(SHAPES)
    return ids


def run(settings, step, ids):
    return run_step(settings.db_url, step, ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir,
                    batch_size=3)


def fits_by_name(session, run_id: int, ids: dict[str, int]) -> dict[str, dict]:
    names = {i: name for name, i in ids.items()}
    rows = session.scalars(select(Prediction).where(Prediction.run_id == run_id)).all()
    assert all(r.error is None for r in rows), [r.error for r in rows]
    out = {names[r.image_id]: r.extra.get("image_fit") for r in rows}
    session.commit()
    return out


@pytest.mark.parametrize(("kind", "options", "max_aspect"), [
    ("clip", {"model": "clip", "dtype": "float32"}, 2.0),
    ("clip", {"model": "siglip", "dtype": "float32"}, 2.0),
    ("vlm", {"model": "qwen2_5_vl", "mode": "label", "max_pixels": 112 * 112, "dtype": "float32"}, 16.0),
    ("vlm", {"model": "qwen2_5_vl", "mode": "label+explanation", "max_pixels": 112 * 112, "dtype": "float32",
             "max_new_tokens": 4}, 16.0),
], ids=["clip", "siglip", "vlm-label", "vlm-generate"])
def test_extreme_shapes_through_every_predictor(settings, session, extreme_memes, kind, options, max_aspect) -> None:
    options = dict(options, model=str(tiny_model_dir(options["model"])))
    if kind == "vlm":
        options["endpoint"] = "local"
    summary = run(settings, PredictorStep(make_predictor(kind, **options)), list(extreme_memes.values()))
    assert (summary.done, summary.failed) == (3, 0), summary.errors
    fits = fits_by_name(session, summary.run_id, extreme_memes)
    assert fits["plain.png"] is None or "pad" not in fits["plain.png"]
    for name in ("banner.png", "tower.png"):
        fit = fits[name]
        assert fit["aspect"] == 250.0 and aspect(tuple(fit["size"])) <= max_aspect
        assert fit["original"] == list(SHAPES[name])


def test_the_bomb_guards_largest_image_is_quick_for_a_model(settings, session) -> None:
    side = math.isqrt(MAX_IMAGE_PIXELS)
    folder = settings.memes_dir / "uploads"
    folder.mkdir()
    huge = PILImage.new("RGB", (side, side), "white")  # flat, so the file stays under the 25 MB upload limit
    huge.paste(render_meme("огромный мем", size=(1024, 1024)), (3000, 3000))
    huge.save(folder / "huge.png")
    scan_folder(session, settings.memes_dir)
    ids = list(session.scalars(select(Image.id)))
    session.commit()
    assert len(ids) == 1
    predictor = make_predictor("clip", model=str(tiny_model_dir("clip")), dtype="float32")
    summary = run(settings, PredictorStep(predictor), ids)
    assert (summary.done, summary.failed) == (1, 0), summary.errors
    fit = fits_by_name(session, summary.run_id, {"huge.png": ids[0]})["huge.png"]
    assert fit["reduce"] == side // 96 and max(fit["size"]) < 100  # the processor never saw 64 MP


@pytest.mark.parametrize("embedder", ["clip-image", "vlm-pooled"])
def test_extreme_shapes_through_the_embedders(settings, session, extreme_memes, embedder) -> None:
    if embedder == "clip-image":
        emb = ClipImageEmbedder(str(tiny_model_dir("clip")), dtype="float32")
    else:
        emb = VlmPooledEmbedder(str(tiny_model_dir("qwen2_5_vl")), dtype="float32", max_pixels=112 * 112)
    summary = run(settings, EmbedStep(emb), list(extreme_memes.values()))
    assert (summary.done, summary.failed) == (3, 0), summary.errors
    vectors = load_embeddings(session, emb, list(extreme_memes.values()))
    session.commit()
    assert len(vectors) == 3 and all(np.isfinite(v).all() for v in vectors.values())
    assert emb.config()["image_fit"] == IMAGE_FIT_VERSION  # a change of the fitting rules is a new embedding fingerprint


@pytest.mark.parametrize("method", ["eigencam", "gradcam"])
def test_extreme_shapes_through_cam(settings, session, extreme_memes, method) -> None:
    request = explain.CamRequest.for_class(str(tiny_model_dir("clip")), method, "toxic", dtype="float32")
    summary = run(settings, explain.CamStep(request, settings.artefacts_dir), list(extreme_memes.values()))
    assert (summary.done, summary.failed) == (3, 0), summary.errors
    for name in extreme_memes:
        path = settings.memes_dir / "uploads" / name
        cam = explain.explain(settings.artefacts_dir, path, request).cam  # cached by the step
        assert cam.shape == (SHAPES[name][1], SHAPES[name][0])  # padding cut off, back to the meme's size
        assert np.isfinite(cam).all() and cam.max() > 0
    banner = load_rgb(settings.memes_dir / "uploads" / "banner.png")
    clip, processor = explain.load_clip_for(request)
    fitted, fit = explain.fit_for_cam(clip, processor, banner)
    assert fit["pad"] and aspect(fitted.size) <= 2.0


def _processor(kind: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir(kind))
