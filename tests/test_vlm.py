"""The local VLM predictor on a tiny random Qwen2.5-VL built into a temp folder and loaded
through the same from_pretrained(path) code as a real checkpoint, driven by the job runner."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.support.tiny_models import tiny_model_dir
from workbench.predictors import make_predictor
from workbench.predictors.base import PredictInput, PredictorStep
from workbench.predictors.vlm import LocalVlmPredictor
from workbench.predictors.vlm_prompt import DEFAULT_PROMPT
from workbench.runs.runner import run_step
from workbench.store.demo_memes import render_meme, write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.schema import ModelRun, Prediction

SMALL = {"max_pixels": 112 * 112, "dtype": "float32", "max_new_tokens": 6, "batch_size": 4}


@pytest.fixture(scope="module")
def tiny_qwen() -> str:
    return str(tiny_model_dir("qwen2_5_vl"))


@pytest.fixture
def memes(make_memes) -> list[int]:
    return make_memes(n=5, seed=7, size=(160, 120))


def _run(settings, predictor, ids, **kw):
    return run_step(settings.db_url, PredictorStep(predictor), ids, memes_dir=settings.memes_dir,
                    lock_dir=settings.artefacts_dir, batch_size=kw.pop("batch_size", 8), **kw)


def _predictions(session, run_id: int) -> list[Prediction]:
    session.expire_all()
    rows = list(session.scalars(select(Prediction).where(Prediction.run_id == run_id).order_by(Prediction.image_id)))
    session.commit()  # end the read transaction (SQLite BEGIN IMMEDIATE) so the next job can write
    return rows


@pytest.mark.parametrize("mode", ["label+explanation", "label"])
def test_both_modes_store_valid_predictions(settings, session, memes, tiny_qwen, mode) -> None:
    predictor = make_predictor("vlm", model=tiny_qwen, mode=mode, **SMALL)
    assert isinstance(predictor, LocalVlmPredictor)
    summary = _run(settings, predictor, memes)
    assert (summary.status, summary.done, summary.failed) == ("done", len(memes), 0), summary.errors
    rows = _predictions(session, summary.run_id)
    assert len(rows) == len(memes)
    for row in rows:
        assert row.error is None
        assert row.label in {"toxic", "non_toxic", "unknown"}
        assert row.prob_toxic is not None and 0.0 <= row.prob_toxic <= 1.0
        assert row.raw_output.startswith("Класс:")
        assert row.latency_ms and row.latency_ms > 0
        assert row.extra["image_tokens"] <= 16  # max_pixels 112×112 -> at most 16 merged tokens
    # same image size for all: only the first meme's OCR correction makes its prompt longer
    assert rows[0].extra["prompt_tokens"] > max(r.extra["prompt_tokens"] for r in rows[1:])
    if mode == "label":  # no generation: the label follows the probability and the threshold
        assert all(r.label == ("toxic" if r.prob_toxic >= 0.5 else "non_toxic") for r in rows)
    run = session.get(ModelRun, summary.run_id)
    assert run.kind == "vlm" and run.params["mode"] == mode and run.params["prompt"] == DEFAULT_PROMPT
    assert run.params["max_pixels"] == 112 * 112 and run.status == "done"


def test_left_padded_batch_matches_one_by_one(tiny_qwen) -> None:
    predictor = make_predictor("vlm", model=tiny_qwen, **SMALL)
    items = [PredictInput(1, render_meme("короткий", seed=1, size=(200, 120)), ""),
             PredictInput(2, render_meme("длинный мем", seed=2, size=(90, 300)),
                          "очень длинный текст на меме, намного длиннее, чем у соседа по батчу")]
    batched = predictor.predict(items)
    alone = predictor.predict_one_by_one(items)
    assert batched[0].extra["prompt_tokens"] != batched[1].extra["prompt_tokens"]  # rows really were padded
    for b, a in zip(batched, alone, strict=True):
        assert b.raw_output == a.raw_output
        assert b.prob_toxic == pytest.approx(a.prob_toxic, abs=1e-4)


@pytest.mark.parametrize("size", [(10000, 40), (40, 10000)])
def test_an_extreme_meme_is_letterboxed_before_the_processor_sees_it(tiny_qwen, size) -> None:
    """Qwen's processor refuses aspect ratios above 200:1 ("absolute aspect ratio must be smaller
    than 200"); predict() fits the image first, batched or one by one, and says what it did."""
    predictor = make_predictor("vlm", model=tiny_qwen, mode="label", **SMALL)
    items = [PredictInput(1, render_meme("баннер", size=size), ""), PredictInput(2, render_meme("мем"), "")]
    for outs in (predictor.predict(items), predictor.predict_one_by_one(items)):
        assert [o.error for o in outs] == [None, None]
        fit = outs[0].extra["image_fit"]
        assert fit["aspect"] == 250.0 and max(fit["size"]) / min(fit["size"]) <= 16  # 112² budget: ≤ 16:1
        assert "image_fit" not in outs[1].extra  # an ordinary meme goes as it is


def test_ocr_text_goes_into_the_prompt(tiny_qwen) -> None:
    predictor = make_predictor("vlm", model=tiny_qwen, **SMALL)
    with_text = predictor.prompt_for(PredictInput(1, render_meme("x"), "Когда пятница"))
    without = predictor.prompt_for(PredictInput(1, render_meme("x"), ""))
    assert "«Когда пятница»" in with_text and "Текст на меме" not in without
    assert "токсичный или нейтральный" in with_text
    off = make_predictor("vlm", model=tiny_qwen, use_ocr_text=False, **SMALL)
    assert not off.needs_ocr_text and "Когда пятница" not in off.prompt_for(PredictInput(1, render_meme("x"), "Когда пятница"))


def test_rerun_skips_and_a_new_prompt_is_a_new_run(settings, session, memes, tiny_qwen) -> None:
    predictor = make_predictor("vlm", model=tiny_qwen, mode="label", **SMALL)
    first = _run(settings, predictor, memes)
    again = _run(settings, make_predictor("vlm", model=tiny_qwen, mode="label", **SMALL), memes)
    assert (again.run_id, again.skipped, again.done) == (first.run_id, len(memes), 0)
    edited = "Это мем. Ответь: Класс: {toxic_word} или {non_toxic_word}."
    other = make_predictor("vlm", model=tiny_qwen, mode="label", prompt=edited, **SMALL)
    assert other.fingerprint() != predictor.fingerprint()
    third = _run(settings, other, memes)
    assert third.run_id != first.run_id and third.done == len(memes)
    assert session.get(ModelRun, third.run_id).params["prompt"] == edited


def test_quantization_on_cpu_is_refused_clearly(tiny_qwen) -> None:
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        make_predictor("vlm", model=tiny_qwen, quantization="4bit", device="cpu")


def test_unknown_option_and_mode_are_rejected(tiny_qwen) -> None:
    with pytest.raises(ValueError, match="unknown vlm option"):
        make_predictor("vlm", model=tiny_qwen, temprature=0.3)
    with pytest.raises(ValueError, match="mode must be one of"):
        make_predictor("vlm", model=tiny_qwen, mode="fast")


def test_unloadable_model_fails_the_job_clearly_and_stores_nothing(settings, session, memes, tmp_path) -> None:
    missing = str(tmp_path / "no-such-model")
    summary = _run(settings, make_predictor("vlm", model=missing, **SMALL), memes)
    assert summary.status == "failed"
    assert f"Model '{missing}' cannot be loaded: no such folder" in summary.error
    not_a_model = tmp_path / "empty-folder"
    not_a_model.mkdir()
    summary = _run(settings, make_predictor("vlm", model=str(not_a_model), **SMALL), memes)
    assert summary.status == "failed"
    assert f"Model '{not_a_model}' cannot be loaded: ValueError: Unrecognized" in summary.error and "huggingface-cli" in summary.error
    assert session.scalar(select(func.count()).select_from(Prediction)) == 0


def test_full_job_over_twenty_memes_stores_twenty_predictions_per_run(settings, session, tiny_qwen) -> None:
    write_sample_memes(settings.memes_dir, n=20, seed=11, size=(120, 96))
    scan_folder(session, settings.memes_dir)
    session.commit()
    from workbench.store.schema import Image

    ids = list(session.scalars(select(Image.id)))
    session.commit()
    for mode in ("label", "label+explanation"):
        summary = _run(settings, make_predictor("vlm", model=tiny_qwen, mode=mode, **SMALL), ids, batch_size=8)
        assert (summary.status, summary.done, summary.failed) == ("done", 20, 0), summary.errors
        assert len(_predictions(session, summary.run_id)) == 20
        again = _run(settings, make_predictor("vlm", model=tiny_qwen, mode=mode, **SMALL), ids)
        assert (again.run_id, again.done, again.skipped) == (summary.run_id, 0, 20)
