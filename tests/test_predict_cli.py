"""Predictions as jobs: `python -m workbench predict` and workbench.predictors.run over a real
SQLite file, real generated memes and a tiny CLIP loaded from a local folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.support.tiny_models import tiny_model_dir
from workbench.cli import main
from workbench.predictors import REGISTRY
from workbench.predictors.base import Option
from workbench.predictors.run import build_predictor, parse_option, predictor_spec, predictor_specs, run_predictions
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.ocr_texts import save_correction
from workbench.store.schema import Image, ModelRun, Prediction


@pytest.fixture(scope="module")
def tiny_clip() -> Path:
    return tiny_model_dir("clip")


def _memes(settings, n: int) -> list[int]:
    write_sample_memes(settings.memes_dir, n=n, size=(96, 96))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        return list(session.scalars(select(Image.id).order_by(Image.id)))


def _count(settings, run_id: int | None = None, errors: bool | None = None) -> int:
    with session_scope(settings.db_url) as session:
        query = select(func.count()).select_from(Prediction)
        if run_id is not None:
            query = query.where(Prediction.run_id == run_id)
        if errors is not None:
            query = query.where(Prediction.error.is_not(None) if errors else Prediction.error.is_(None))
        return session.scalar(query)


def test_a_job_over_20_memes_stores_20_predictions_per_run(settings, tiny_clip: Path) -> None:
    ids = _memes(settings, 20)
    assert len(ids) == 20
    with session_scope(settings.db_url) as session:  # OCR text for a few memes (manual corrections)
        for image_id in ids[:5]:
            save_correction(session, image_id, "ненавижу понедельники", "tester")
    with_ocr = build_predictor("clip", {"model": str(tiny_clip), "dtype": "float32"})
    no_ocr = build_predictor("clip", {"model": str(tiny_clip), "dtype": "float32", "use_ocr": "false"})

    first = run_predictions(settings, with_ocr, ids, batch_size=6)
    second = run_predictions(settings, no_ocr, ids, batch_size=6)
    assert (first.status, first.done, first.failed) == ("done", 20, 0)
    assert (second.status, second.done) == ("done", 20)
    assert first.run_id != second.run_id
    assert _count(settings, first.run_id) == 20 and _count(settings, second.run_id) == 20
    with session_scope(settings.db_url) as session:
        preds = {p.image_id: p for p in session.scalars(select(Prediction).where(Prediction.run_id == first.run_id))}
        run = session.get(ModelRun, first.run_id)
        assert run.status == "done" and run.kind == "clip" and run.params["threshold"] == 0.5
        assert run.fingerprint == with_ocr.fingerprint()
    assert all(preds[i].extra["ocr_in_prompt"] for i in ids[:5])
    assert not any(preds[i].extra["ocr_in_prompt"] for i in ids[5:])
    assert all(p.label in ("toxic", "non_toxic") and 0 <= p.prob_toxic <= 1 for p in preds.values())

    again = run_predictions(settings, with_ocr, ids, batch_size=6)  # same config: nothing to do
    assert (again.run_id, again.done, again.skipped) == (first.run_id, 0, 20)
    redo = run_predictions(settings, with_ocr, ids[:3], force=True)
    assert redo.done == 3 and _count(settings, first.run_id) == 20


def test_unloadable_model_fails_the_job_and_stores_nothing(settings) -> None:
    ids = _memes(settings, 3)
    summary = run_predictions(settings, build_predictor("clip", {"model": "/no/such/model"}), ids)
    assert summary.status == "failed"
    assert "/no/such/model" in summary.error and "cannot be loaded" in summary.error
    assert _count(settings) == 0


def test_cli_predict_runs_skips_and_lists_options(settings, tiny_clip: Path, capsys: pytest.CaptureFixture) -> None:
    _memes(settings, 6)
    argv = ["predict", "clip", "--model", str(tiny_clip), "--limit", "4", "--batch-size", "2",
            "-o", "dtype=float32", "-o", "threshold=0.7", "-o", "prompt_set=notebook"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 done, 0 skipped" in out
    assert _count(settings, errors=False) == 4
    with session_scope(settings.db_url) as session:
        run = session.scalars(select(ModelRun)).one()
        assert run.params["threshold"] == 0.7 and run.params["prompts"]["toxic"] == ["токсичный мем"]
    assert main(argv[:4] + argv[6:]) == 0  # all 6 now: 4 skipped, 2 new, same run
    assert "2 done, 4 skipped" in capsys.readouterr().out
    assert _count(settings) == 6
    assert main(["predict", "clip", "--list-options"]) == 0
    listed = capsys.readouterr().out
    assert "prompt_set" in listed and "threshold (float) = 0.5" in listed


@pytest.mark.parametrize("model_id, needle", [
    ("/no/such/model", "does not exist"),
    ("openai/clip-vit-large-patch14", "huggingface-cli download openai/clip-vit-large-patch14"),
])
def test_cli_unloadable_model_says_which_and_how(settings, capsys: pytest.CaptureFixture, model_id: str,
                                                 needle: str) -> None:
    _memes(settings, 2)
    assert main(["predict", "clip", "--model", model_id]) == 1
    err = capsys.readouterr().err
    assert f"Model '{model_id}' cannot be loaded" in err and needle in err
    assert _count(settings) == 0


@pytest.mark.parametrize("argv, needle", [
    (["predict", "clip", "-o", "threshold=high"], "expected a number"),
    (["predict", "clip", "-o", "colour=red"], "unknown option(s) for clip: colour"),
    (["predict", "clip", "-o", "novalue"], "NAME=VALUE"),
    (["predict", "clip", "--endpoint", "http://localhost:8000/v1"], "--endpoint does not apply to clip"),
    (["predict", "clip", "--selection", "maybe"], "--selection"),
    (["predict", "clip", "--device", "cuda:7"] , "cuda"),
    (["predict", "clip", "-o", "prompt_set=klingon"], "prompt_set"),
])
def test_cli_bad_input_is_a_clear_error(settings, capsys: pytest.CaptureFixture, argv: list[str], needle: str) -> None:
    import torch

    if "cuda:7" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _memes(settings, 1)
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
    assert _count(settings) == 0


def test_cli_empty_selection(settings, capsys: pytest.CaptureFixture, tiny_clip: Path) -> None:
    assert main(["predict", "clip", "--model", str(tiny_clip)]) == 1
    assert "no memes" in capsys.readouterr().err


@pytest.mark.parametrize("option, text, value", [
    (Option("b", True, type="bool"), "no", False),
    (Option("b", False, type="bool"), "Да", True),
    (Option("i", 1, type="int"), " 42 ", 42),
    (Option("f", 0.5, type="float"), "0.25", 0.25),
    (Option("t", "", type="text"), "line one\\nline two", "line one\nline two"),
    (Option("c", "a", type="choice", choices=("a", "b")), "b", "b"),
    (Option("s", ""), "openai/clip", "openai/clip"),
    (Option("i", 1, type="int"), 7, 7),
])
def test_parse_option(option: Option, text, value) -> None:
    assert parse_option(option, text) == value


@pytest.mark.parametrize("option, text", [
    (Option("b", True, type="bool"), "perhaps"),
    (Option("i", 1, type="int"), "1.5"),
    (Option("c", "a", type="choice", choices=("a", "b")), "z"),
])
def test_parse_option_refuses(option: Option, text: str) -> None:
    with pytest.raises(ValueError, match=option.name):
        parse_option(option, text)


def test_every_registered_kind_has_a_spec_and_a_missing_one_is_only_unavailable(monkeypatch) -> None:
    specs = predictor_specs()
    assert [s.kind for s in specs] == list(REGISTRY)
    clip = predictor_spec("clip")
    assert clip.available and clip.option("threshold").default == 0.5
    monkeypatch.setitem(REGISTRY, "ghost", "workbench.predictors.ghost_not_written_yet:Ghost")
    ghost = predictor_spec("ghost")
    assert not ghost.available and "ghost_not_written_yet" in ghost.unavailable
    with pytest.raises(ValueError, match="not available"):
        build_predictor("ghost", {})
