"""CLIP zero-shot predictor on tiny random-weight CLIPs loaded through the real
from_pretrained(path) code, plus device/dtype choice and the tiny-model builders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_models import build_tiny_clip, tiny_model_dir
from workbench.errors import ModelUnavailable
from workbench.models import devices
from workbench.predictors.base import PredictInput
from workbench.store.demo_memes import render_meme

LONG_TEXT = "когда наконец пятница а начальник сказал выйти в субботу и доделать отчёт " * 6


@pytest.fixture(scope="module")
def tiny_clip() -> Path:
    return tiny_model_dir("clip")


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP whose text context is 40 tokens: truncation happens on short captions."""
    return build_tiny_clip(tmp_path_factory.mktemp("short_clip"), max_positions=40)


def _predictor(model: Path, **options):
    from workbench.predictors.clip import ClipPredictor

    return ClipPredictor(model=str(model), **options)


def _inputs(n: int, texts: list[str] | None = None) -> list[PredictInput]:
    texts = texts or [""] * n
    return [PredictInput(i + 1, render_meme(f"мем {i}", seed=i, size=(96, 80)), texts[i]) for i in range(n)]


def test_outputs_one_per_input_with_probabilities(tiny_clip: Path) -> None:
    p = _predictor(tiny_clip, dtype="float32")
    outs = p.predict(_inputs(3, ["", "ненавижу понедельники", ""]))
    assert len(outs) == 3
    for out in outs:
        assert out.error is None
        assert 0.0 <= out.prob_toxic <= 1.0
        assert out.label == ("toxic" if out.prob_toxic >= 0.5 else "non_toxic")
        assert set(out.extra["similarity"]) == {"toxic", "non_toxic"}
        assert out.latency_ms > 0
    assert [o.extra["ocr_in_prompt"] for o in outs] == [False, True, False]


def test_embeddings_are_normalised_with_the_projection_size(tiny_clip: Path) -> None:
    import torch

    from workbench.models.clip import encode_images, encode_texts, load_clip

    model, processor = load_clip(str(tiny_clip), "cpu", "float32")
    img = encode_images(model, processor, [render_meme("a", size=(64, 64)), render_meme("b", seed=1, size=(50, 90))])
    txt = encode_texts(model, processor, ["токсичный мем", "нейтральный мем", "x"])
    assert img.shape == (2, model.config.projection_dim) and txt.shape == (3, model.config.projection_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_threshold_decides_the_label_and_is_stored(tiny_clip: Path) -> None:
    always = _predictor(tiny_clip, dtype="float32", threshold=0.0)
    never = _predictor(tiny_clip, dtype="float32", threshold=1.0)
    inputs = _inputs(2)
    assert [o.label for o in always.predict(inputs)] == ["toxic", "toxic"]
    assert all(o.label == "non_toxic" for o in never.predict(inputs) if o.prob_toxic < 1.0)
    assert always.config()["threshold"] == 0.0
    assert always.fingerprint() != never.fingerprint()


def test_fingerprint_follows_everything_that_changes_the_output(tiny_clip: Path) -> None:
    base = _predictor(tiny_clip, dtype="float32")
    assert base.fingerprint() == _predictor(tiny_clip, dtype="float32").fingerprint()
    for changed in (dict(prompt_set="ru"), dict(use_ocr=False), dict(dtype="bfloat16"),
                    dict(ocr_template="{prompt}: {text}"), dict(prompt_set="custom", toxic_prompts="злой мем",
                                                               non_toxic_prompts="добрый мем")):
        assert _predictor(tiny_clip, **{"dtype": "float32", **changed}).fingerprint() != base.fingerprint(), changed
    assert base.config()["prompts"]["toxic"][0] == "токсичный мем"
    notebook = _predictor(tiny_clip, prompt_set="notebook").config()["prompts"]
    assert notebook == {"toxic": ["токсичный мем"], "non_toxic": ["нейтральный мем"]}


@pytest.mark.parametrize("options, needle", [
    (dict(prompt_set="klingon"), "prompt_set"),
    (dict(prompt_set="custom", toxic_prompts="  \n ", non_toxic_prompts="ok"), "no prompts"),
    (dict(ocr_template="{prompt} only"), "{text}"),
    (dict(threshold=1.5), "threshold"),
    (dict(dtype="int3"), "dtype"),
    (dict(device="tpu"), "device"),
])
def test_bad_options_are_refused_clearly(tiny_clip: Path, options: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        _predictor(tiny_clip, **options)


def test_class_prompt_embeddings_are_computed_once(tiny_clip: Path) -> None:
    from workbench.models.clip import clear_cache

    clear_cache()
    p = _predictor(tiny_clip, dtype="float32", prompt_set="en")
    p.predict(_inputs(2))
    p.predict(_inputs(3))
    assert p.text_encoder_calls == 1
    again = _predictor(tiny_clip, dtype="float32", prompt_set="en")  # same model + prompts: per-process cache
    again.predict(_inputs(1))
    assert again.text_encoder_calls == 0
    again.predict(_inputs(2, ["первый текст", "второй текст"]))  # OCR prompts are per image
    assert again.text_encoder_calls == 2


def test_ocr_text_goes_into_every_prompt(tiny_clip: Path) -> None:
    p = _predictor(tiny_clip, dtype="float32")
    prompts, truncated = p.ocr_prompts("кот опять спит")
    assert not truncated
    assert "токсичный мем с текстом: «кот опять спит»" in prompts["toxic"]
    assert 'a toxic meme with the text: "кот опять спит"' in prompts["toxic"]
    assert all("кот опять спит" in q for cls in prompts.values() for q in cls)
    image = _inputs(1)[0].image
    plain, with_text = p.predict([PredictInput(1, image, ""), PredictInput(1, image, "кот опять спит")])
    assert plain.prob_toxic != pytest.approx(with_text.prob_toxic, abs=1e-7)
    assert with_text.extra["prompt_example"] == "токсичный мем с текстом: «кот опять спит»"
    off = _predictor(tiny_clip, dtype="float32", use_ocr=False)
    assert off.needs_ocr_text is False
    # Equal up to float noise (thread counts differ between runs); the OCR text moves it by ~0.2.
    got = off.predict([PredictInput(1, image, "кот опять спит")])[0].prob_toxic
    assert got == pytest.approx(plain.prob_toxic, abs=1e-5)


def test_long_ocr_text_is_cut_to_the_text_context(short_clip: Path) -> None:
    from workbench.models.clip import load_clip
    from workbench.predictors.clip import ELLIPSIS

    p = _predictor(short_clip, dtype="float32")
    model, processor = load_clip(str(short_clip), "cpu", "float32")
    assert model.config.text_config.max_position_embeddings == 40
    prompts, truncated = p.ocr_prompts(LONG_TEXT)
    assert truncated
    for prompt in prompts["toxic"] + prompts["non_toxic"]:
        assert len(processor.tokenizer(prompt)["input_ids"]) <= 40, prompt
        assert prompt.endswith(ELLIPSIS + "»") or prompt.endswith(ELLIPSIS + '"')
    assert "когда" in prompts["toxic"][0]  # the beginning of the text is kept
    out = p.predict(_inputs(1, [LONG_TEXT]))[0]
    assert out.error is None and out.extra["ocr_truncated"] is True


def test_load_clip_is_cached_and_honours_dtype(tiny_clip: Path) -> None:
    import torch

    from workbench.models.clip import load_clip

    first = load_clip(str(tiny_clip), "cpu", "float32")
    assert load_clip(str(tiny_clip), "cpu", "float32") is first
    bf16_model, _ = load_clip(str(tiny_clip), "cpu", "bfloat16")
    assert first[0].dtype == torch.float32 and bf16_model.dtype == torch.bfloat16
    assert not first[0].training


@pytest.mark.parametrize("model_id, needle", [
    ("/definitely/not/here", "does not exist"),
    ("openai/clip-vit-base-patch32", "huggingface-cli download openai/clip-vit-base-patch32"),
])
def test_unloadable_model_raises_model_unavailable(model_id: str, needle: str) -> None:
    from workbench.models.clip import load_clip

    with pytest.raises(ModelUnavailable) as info:
        load_clip(model_id, "cpu", "float32")
    assert info.value.model_id == model_id
    assert model_id in str(info.value) and needle in str(info.value)


def test_a_model_that_is_not_clip_is_refused() -> None:
    from workbench.models.clip import load_clip

    with pytest.raises(ModelUnavailable, match="not a CLIP/SigLIP"):
        load_clip(str(tiny_model_dir("text_classifier")), "cpu", "float32")


# ---------------------------------------------------------------------------- the shared loader


def _load_kind(kind: str, model_id: str):  # noqa: ANN202
    from workbench.models.clip import load_clip
    from workbench.models.text_classifier import load_classifier
    from workbench.models.vlm import load_vlm

    if kind == "clip":
        return load_clip(model_id, "cpu", "float32")
    if kind == "qwen2_5_vl":
        return load_vlm(model_id, "cpu", "float32")
    return load_classifier(model_id, "float32")


@pytest.mark.parametrize("kind", ["clip", "qwen2_5_vl", "text_classifier"])
def test_every_model_kind_loads_once_per_process(kind: str) -> None:
    path = str(tiny_model_dir(kind))
    first = _load_kind(kind, path)
    assert _load_kind(kind, path) is first
    assert all(not part.training for part in first if hasattr(part, "training"))


@pytest.mark.parametrize("kind, reason", [
    ("clip", "this local folder does not exist"),
    ("qwen2_5_vl", "no such folder"),
    ("text_classifier", "no such folder"),
])
def test_a_missing_local_folder_is_refused_the_same_way_for_every_kind(kind: str, reason: str,
                                                                       tmp_path: Path) -> None:
    from workbench.models.vlm import is_loaded

    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelUnavailable) as info:
        _load_kind(kind, missing)
    assert info.value.model_id == missing and info.value.reason == reason
    assert str(info.value).startswith(f"Model '{missing}' cannot be loaded: {reason}. Enter ")
    assert "config.json" in info.value.how_to_fix
    assert not is_loaded(missing, "cpu", "float32", "none")  # a failed load is not remembered


def test_model_cache_loads_each_key_once_across_threads_and_forgets_failures() -> None:
    import threading
    import time

    from workbench.models.loader import ModelCache

    cache: ModelCache[object] = ModelCache()
    calls: list[str] = []

    def slow_load() -> object:
        calls.append("load")
        time.sleep(0.05)
        return object()

    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("k", slow_load))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["load"] and len(got) == 4 and all(g is got[0] for g in got) and "k" in cache

    def failing() -> object:
        raise ModelUnavailable("m", "broken")

    with pytest.raises(ModelUnavailable):
        cache.get("bad", failing)
    assert "bad" not in cache
    cache.put("bad", 1)
    assert cache.get("bad", failing) == 1
    cache.clear()
    assert "k" not in cache


def test_a_failing_from_pretrained_becomes_model_unavailable_with_its_short_reason(tmp_path: Path) -> None:
    from workbench.models.loader import load_pretrained

    def build(path: str, kwargs: dict) -> None:
        assert path == str(tmp_path) and "local_files_only" not in kwargs
        raise OSError("no config.json in\n   this folder." + " x" * 300)

    with pytest.raises(ModelUnavailable) as info:
        load_pretrained(str(tmp_path), build, cache_dir=None)
    reason = info.value.reason
    assert reason.startswith("OSError: no config.json in this folder. x x") and reason.endswith("…")
    assert len(reason) < 420 and "huggingface-cli download" in info.value.how_to_fix


def test_auto_placement_on_this_machine() -> None:
    import torch

    placement = devices.resolve("auto", "auto")
    if torch.cuda.is_available():
        assert placement.device == "cuda" and placement.dtype in ("bfloat16", "float16")
    else:
        assert placement.device == "cpu"
        assert placement.dtype == ("bfloat16" if devices.cpu_has_bf16() else "float32")
        with pytest.raises(ValueError, match="no CUDA"):
            devices.resolve("cuda")
    assert devices.resolve("cpu", "float32") == devices.Placement("cpu", "float32")
    assert devices.free_cores() >= 1


def test_tiny_qwen_loads_through_auto_classes_and_generates() -> None:
    """The builder B2's VLM tests rely on: chat template, image tokens, generate."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_model_dir("qwen2_5_vl")
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Это токсичный мем?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    inputs = processor(text=[text], images=[render_meme("кот", size=(120, 90))], return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == int(inputs["image_grid_thw"].prod()) // 4
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_tiny_text_classifier_has_the_toxicity_labels() -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tiny_model_dir("text_classifier")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    logits = model(**tokenizer(["ненавижу всех", "кот спит"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 5)
    assert list(model.config.id2label.values()) == ["non-toxic", "insult", "obscenity", "threat", "dangerous"]


def test_a_siglip_checkpoint_works_the_same_way() -> None:
    from workbench.models.clip import load_clip, text_context

    path = tiny_model_dir("siglip")
    model, processor = load_clip(str(path), "cpu", "float32")
    assert model.config.model_type == "siglip" and text_context(model, processor) == 64
    outs = _predictor(path, dtype="float32").predict(_inputs(2, ["", LONG_TEXT]))
    assert all(o.error is None and 0 <= o.prob_toxic <= 1 for o in outs)
    assert outs[1].extra["ocr_truncated"] is True


@pytest.mark.parametrize("size", [(96, 80), (512, 300)], ids=["as-is", "box-reduced"])
def test_scores_equal_transformers_zero_shot_pipeline(tiny_clip: Path, size: tuple[int, int]) -> None:
    """One prompt per class and no OCR text: the predictor's prob_toxic is the zero-shot
    pipeline's score of the toxic prompt, on the image the model is given (a large meme is
    box-reduced first, and the pipeline gets that same fitted image)."""
    from transformers import pipeline

    predictor = _predictor(tiny_clip, dtype="float32", prompt_set="notebook", use_ocr=False)
    meme = render_meme("мем про понедельник", seed=4, size=size)
    out = predictor.predict([PredictInput(1, meme, "")])[0]
    fitted, fit = predictor.prepare_image(meme)
    assert (fit == {}) == (size == (96, 80)) and out.extra.get("image_fit", {}) == fit
    classify = pipeline("zero-shot-image-classification", model=str(tiny_clip), device="cpu")
    scores = {r["label"]: r["score"] for r in classify(fitted, candidate_labels=["токсичный мем", "нейтральный мем"],
                                                       hypothesis_template="{}")}
    assert out.prob_toxic == pytest.approx(scores["токсичный мем"], abs=1e-5)


def test_pixels_made_one_image_at_a_time_equal_one_call_on_the_batch(tiny_clip: Path) -> None:
    """The prefetch threads preprocess images one by one; joined, that is the batched call."""
    import torch

    from workbench.models.clip import concat_pixels, image_pixels, load_clip

    _, processor = load_clip(str(tiny_clip), "cpu", "float32")
    images = [render_meme("a", size=(64, 64)), render_meme("b", seed=1, size=(50, 90)), render_meme("c", size=(90, 40))]
    one_by_one = concat_pixels([image_pixels(processor, [im]) for im in images])
    batched = image_pixels(processor, images)
    assert one_by_one.keys() == batched.keys()
    assert all(torch.equal(one_by_one[k], batched[k]) for k in batched)
