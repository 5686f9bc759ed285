"""CAM explanations on a tiny random CLIP loaded through the CLIP predictor's loader:
maps have the image's size and lie in [0, 1], class-specific maps differ between the
classes, the PNG cache answers a second call without running the model, and the batch
step runs through the job runner with per-image errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.support.tiny_models import tiny_model_dir
from workbench.explain import cam as explain
from workbench.models.clip import load_clip
from workbench.store.demo_memes import write_sample_memes
from workbench.store.images import load_rgb, sha256_file


@pytest.fixture(scope="module")
def clip_dir() -> str:
    return str(tiny_model_dir("clip"))


@pytest.fixture
def meme(tmp_path):
    """A generated meme, not square, so a swapped width/height would show."""
    return write_sample_memes(tmp_path / "memes", n=1, seed=3, size=(200, 120))[0].path


class ForwardCounter:
    """Counts forward passes of the vision tower (a torch hook on the real model)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.vision_model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("method", explain.METHODS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_maps_have_image_size_and_unit_range(tmp_path, meme, clip_dir, method, dtype):
    request = explain.CamRequest.for_class(clip_dir, method, "toxic", dtype=dtype)
    result = explain.explain(tmp_path / "art", meme, request)
    width, height = load_rgb(meme).size
    assert result.computed
    assert result.cam.shape == (height, width)
    assert result.cam.dtype == np.float32
    assert 0.0 <= result.cam.min() and result.cam.max() <= 1.0
    assert result.cam.max() > 0.5  # normalised: not an all-zero map
    assert result.path.is_file() and result.path.suffix == ".png"


@pytest.mark.parametrize("method", explain.CLASS_METHODS)
def test_class_specific_maps_differ_between_classes(tmp_path, meme, clip_dir, method):
    toxic = explain.explain(tmp_path, meme, explain.CamRequest.for_class(clip_dir, method, "toxic", dtype="float32"))
    neutral = explain.explain(tmp_path, meme, explain.CamRequest.for_class(clip_dir, method, "non_toxic",
                                                                           dtype="float32"))
    assert toxic.path != neutral.path
    assert np.abs(toxic.cam - neutral.cam).mean() > 0.02


def test_eigencam_is_one_map_whatever_the_class(clip_dir):
    a = explain.CamRequest.for_class(clip_dir, "eigencam", "toxic", dtype="float32")
    b = explain.CamRequest.for_class(clip_dir, "eigencam", "non_toxic", dtype="float32")
    assert a == b and a.fingerprint() == b.fingerprint()


def test_cached_second_call_does_no_compute(tmp_path, meme, clip_dir):
    request = explain.CamRequest.for_class(clip_dir, "gradcam", "toxic", dtype="float32")
    model, _ = load_clip(clip_dir, device="auto", dtype="float32")
    with ForwardCounter(model) as counter:
        first = explain.explain(tmp_path, meme, request)
        after_first = counter.calls
        second = explain.explain(tmp_path, meme, request)
        assert counter.calls == after_first > 0
    assert first.computed and not second.computed
    np.testing.assert_array_equal(first.cam, second.cam)
    # listed per image with its request, without knowing the request
    listed = explain.cached_cams(tmp_path, sha256_file(meme))
    assert [(r, p) for r, p in listed] == [(request, first.path)]


def test_prompt_change_is_a_new_cache_entry(tmp_path, meme, clip_dir):
    a = explain.CamRequest.for_class(clip_dir, "gradcam", "toxic", {"toxic": "злой мем", "non_toxic": "добрый мем"},
                                     dtype="float32")
    b = explain.CamRequest.for_class(clip_dir, "gradcam", "toxic", {"toxic": "грубый мем", "non_toxic": "добрый мем"},
                                     dtype="float32")
    assert explain.explain(tmp_path, meme, a).path != explain.explain(tmp_path, meme, b).path


def test_overlay_opacity():
    image = PILImage.new("RGB", (40, 30), (10, 200, 30))
    cam = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(30, 40)
    assert np.array_equal(np.asarray(explain.overlay(image, cam, 0.0)), np.asarray(image))
    assert np.array_equal(np.asarray(explain.overlay(image, cam, 1.0)), explain.heatmap(cam))
    half = np.asarray(explain.overlay(image, cam, 0.5)).astype(int)
    assert half.shape == (30, 40, 3)
    assert not np.array_equal(half, np.asarray(image)) and not np.array_equal(half, explain.heatmap(cam))


def test_vit_reshape_drops_cls_only_when_present():
    import torch

    clip_tokens = torch.zeros(2, 1 + 7 * 7, 16, dtype=torch.bfloat16)
    siglip_tokens = torch.zeros(2, 16 * 16, 8)
    assert explain.vit_reshape(clip_tokens).shape == (2, 16, 7, 7)
    assert explain.vit_reshape(clip_tokens).dtype == torch.float32
    assert explain.vit_reshape(siglip_tokens).shape == (2, 8, 16, 16)
    with pytest.raises(ValueError):
        explain.vit_reshape(torch.zeros(1, 1 + 10, 4))


def test_class_methods_need_a_prompt(clip_dir):
    with pytest.raises(ValueError, match="class prompt"):
        explain.CamRequest(clip_dir, "gradcam", prompts=(), dtype="float32")
    with pytest.raises(ValueError, match="unknown CAM method"):
        explain.CamRequest(clip_dir, "nope", dtype="float32")


def test_batch_step_through_the_job_runner(settings, session, clip_dir):
    from workbench.runs.runner import run_step
    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Image

    write_sample_memes(settings.memes_dir, n=3, seed=5, size=(96, 64))
    scan_folder(session, settings.memes_dir)
    session.commit()
    images = [(img.id, img.path, img.sha256) for img in session.query(Image).order_by(Image.id)]
    session.commit()  # end the read transaction: the runner writes from its own sessions
    ids = [i for i, _, _ in images]
    broken_id, broken_path, _ = images[0]
    (settings.memes_dir / broken_path).write_bytes(b"not an image any more")

    request = explain.CamRequest.for_class(clip_dir, "eigencam", dtype="float32")
    step = explain.CamStep(request, settings.artefacts_dir)
    summary = run_step(settings.db_url, step, ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir,
                       batch_size=2)
    assert (summary.status, summary.done, summary.failed) == ("done", 2, 1)
    assert summary.errors[0][0] == broken_id
    for _, _, sha in images[1:]:
        assert explain.cached_cam(settings.artefacts_dir, sha, request) is not None
    # resume: the two cached maps are skipped, the broken one is retried (and fails again)
    again = run_step(settings.db_url, step, ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir)
    assert (again.skipped, again.failed) == (2, 1)


def test_cli_cam_command(settings, session, clip_dir, capsys):
    from workbench.cli import main
    from workbench.store.ingest import scan_folder

    write_sample_memes(settings.memes_dir, n=2, seed=7, size=(64, 64))
    scan_folder(session, settings.memes_dir)
    session.commit()
    assert main(["cam", "--method", "gradcam", "--class", "non_toxic", "--model", clip_dir, "--dtype", "float32"]) == 0
    assert "2 done" in capsys.readouterr().out
    assert len(list((settings.artefacts_dir / "cam").rglob("*.png"))) == 2


def test_explain_page_computes_on_demand_then_reads_the_cache(settings, session, clip_dir, clear_streamlit_cache):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Image

    write_sample_memes(settings.memes_dir, n=2, seed=9, size=(96, 80))
    scan_folder(session, settings.memes_dir)
    image_id = session.query(Image.id).order_by(Image.id.desc()).first()[0]
    session.commit()
    page = Path(__file__).resolve().parent.parent / "pages" / "8_Explain.py"
    at = AppTest.from_file(str(page), default_timeout=120)
    at.query_params["image"] = str(image_id)
    at.run()
    assert not at.exception
    assert at.selectbox(key="exp_image").value == image_id  # deep link
    at.text_input(key="exp_model").set_value(clip_dir)
    at.selectbox(key="exp_dtype").set_value("float32")
    at.run()
    assert len(at.get("image")) == 1 and len(at.info) == 2  # original only; both maps not computed yet
    at.button(key="exp_compute").click().run()
    assert not at.exception and not at.error
    assert len(at.get("image")) == 3  # original + EigenCAM + class map
    # a new session finds both maps in the cache: no button, no compute
    again = AppTest.from_file(str(page), default_timeout=120)
    again.query_params["image"] = str(image_id)
    again.session_state["exp_model"] = clip_dir
    again.session_state["exp_dtype"] = "float32"
    again.run()
    assert len(again.get("image")) == 3 and not [b for b in again.button if b.key == "exp_compute"]


def test_explain_page_names_an_unavailable_model(settings, session, clear_streamlit_cache):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from workbench.store.ingest import scan_folder

    write_sample_memes(settings.memes_dir, n=1, seed=2, size=(64, 64))
    scan_folder(session, settings.memes_dir)
    session.commit()
    page = Path(__file__).resolve().parent.parent / "pages" / "8_Explain.py"
    at = AppTest.from_file(str(page), default_timeout=120).run()
    at.text_input(key="exp_model").set_value("/no/such/clip").run()
    at.button(key="exp_compute").click().run()
    assert not at.exception
    assert "/no/such/clip" in at.error[0].value and "cannot be loaded" in at.error[0].value


def test_a_banner_is_explained_whole_and_the_padding_cut_off(tmp_path, clip_dir):
    """Past 2:1 the meme is letterboxed for the square vision tower (not squashed flat); the map
    comes back in the meme's own size, the padding cut off."""
    path = tmp_path / "banner.png"
    PILImage.new("RGB", (1000, 50), "white").save(path)
    request = explain.CamRequest.for_class(clip_dir, "eigencam", dtype="float32")
    clip, processor = load_clip(clip_dir, "cpu", "float32")
    fitted, fit = explain.fit_for_cam(clip, processor, load_rgb(path))
    assert fit["reduce"] == 5 and fitted.size == (200, 100) and fit["pad"] == [0, 45, 0, 45]  # 1000×50 → 200×10 → 2:1
    result = explain.explain(tmp_path / "art", path, request)
    assert result.cam.shape == (50, 1000) and np.isfinite(result.cam).all()


class AtenOps:
    """The aten ops torch runs inside the block, backward included (a dispatch mode)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        names = self.names = set()

        class Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                names.add(str(func.overloadpacket))
                return func(*args, **(kwargs or {}))

        self.mode = Record()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


@pytest.mark.parametrize("method", explain.CLASS_METHODS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_class_maps_never_run_a_convolution_backward(tmp_path, meme, clip_dir, method, dtype):
    """The backward stops at the vision embeddings and computes no weight gradients: the patch
    convolution's bf16 backward hung forever in oneDNN on AMX CPUs (issue 21), and its result
    is never used. The map itself is still made."""
    request = explain.CamRequest.for_class(clip_dir, method, "toxic", dtype=dtype)
    model, _ = load_clip(clip_dir, device="auto", dtype=dtype)
    with AtenOps() as ops:
        result = explain.explain(tmp_path, meme, request)
    assert "aten.convolution" in ops.names  # the forward ran under the recorder
    assert any(name.endswith("_backward") for name in ops.names)  # and so did a backward
    assert "aten.convolution_backward" not in ops.names
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert result.cam.max() > 0.5
