"""Moderation signals and the TF-IDF baseline: real NudeNet and real tesseract OCR on the 51
real memes (skipped when absent), the tiny text classifier through the job runner, and
clear failures when weights are missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from tests.support.tiny_models import TOXICITY_LABELS, tiny_model_dir
from workbench.predictors.base import PredictorStep
from workbench.predictors.nudenet import NudeNetPredictor
from workbench.predictors.out_of_fold import read_training_report
from workbench.predictors.run import build_predictor, run_predictions
from workbench.predictors.text_toxicity import toxicity_probability
from workbench.runs.runner import run_step
from workbench.runs.step import fingerprint
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import consensus_labels
from workbench.store.ocr_texts import save_correction
from workbench.store.schema import Image, OcrResult, Prediction


def _ingest(settings, memes_dir: Path) -> list[int]:
    with session_scope(settings.db_url) as session:
        scan_folder(session, memes_dir)
        return list(session.scalars(select(Image.id).order_by(Image.id)))


def _run(settings, predictor, ids: list[int], memes_dir: Path):  # noqa: ANN202
    return run_step(settings.db_url, PredictorStep(predictor), ids, memes_dir=memes_dir,
                    lock_dir=settings.artefacts_dir, batch_size=8)


def _predictions(settings, run_id: int) -> dict[int, Prediction]:
    with session_scope(settings.db_url) as session:
        rows = session.scalars(select(Prediction).where(Prediction.run_id == run_id)).all()
        session.expunge_all()
        return {p.image_id: p for p in rows}


def ocr_with_tesseract(settings, memes_dir: Path, ids: list[int]) -> None:
    """Real tesseract OCR (the OCR helper's two-pass engine when present) stored as OCR results."""
    from workbench.store.images import load_rgb

    try:
        from workbench.ocr.tesseract import TesseractEngine

        engine = TesseractEngine(lang="rus")
        config, read = engine.config(), lambda im: engine.read(im).text
    except ImportError:  # before the OCR module exists: tesserocr directly
        import tesserocr

        from workbench.config import TESSDATA_DIRS

        path = next(d for d in TESSDATA_DIRS if Path(d, "rus.traineddata").exists())
        config = {"engine": "tesserocr", "lang": "rus", "psm": 6}
        read = lambda im: tesserocr.image_to_text(im, lang="rus", path=path, psm=6)  # noqa: E731
    fp = fingerprint(config)
    with session_scope(settings.db_url) as session:
        paths = dict(session.execute(select(Image.id, Image.path).where(Image.id.in_(ids))).all())
        for image_id in ids:
            text = read(load_rgb(memes_dir / paths[image_id]))
            session.add(OcrResult(image_id=image_id, engine=config["engine"], fingerprint=fp, config=config,
                                  text=text.strip()))


# ------------------------------------------------------------------ real memes


@pytest.mark.slow  # ~10 s alone, ~30 s on 2 busy cores
def test_nudenet_over_all_real_memes_without_failures(settings, real_memes: Path) -> None:
    ids = _ingest(settings, real_memes)
    assert len(ids) == 51
    summary = _run(settings, NudeNetPredictor(), ids, real_memes)
    assert (summary.status, summary.done, summary.failed) == ("done", 51, 0), summary.errors
    preds = _predictions(settings, summary.run_id)
    assert len(preds) == 51
    for p in preds.values():
        assert p.error is None and 0.0 <= p.prob_toxic <= 1.0 and p.latency_ms > 0
        assert p.label in ("toxic", "non_toxic")
        assert isinstance(p.extra["detections"], list)
        assert p.explanation.startswith(("detected:", "nothing detected"))
    # Some real memes show faces: the detector does see things on them.
    assert sum(1 for p in preds.values() if p.extra["detections"]) >= 5
    print(f"\nNudeNet: {np.mean([p.latency_ms for p in preds.values()]):.0f} ms/image, "
          f"{sum(p.label == 'toxic' for p in preds.values())} flagged")


@pytest.mark.slow
def test_tfidf_baseline_on_real_memes_with_real_ocr(settings, real_memes: Path) -> None:
    from workbench.analysis.metrics import evaluate

    ids = _ingest(settings, real_memes)
    ocr_with_tesseract(settings, real_memes, ids)
    predictor = build_predictor("text-tfidf", {"folds": 5})
    summary = _run(settings, predictor, ids, real_memes)
    assert (summary.status, summary.done, summary.failed) == ("done", 51, 0), summary.error
    preds = _predictions(settings, summary.run_id)
    with session_scope(settings.db_url) as session:
        labels = consensus_labels(session)
    assert len(labels) == 51  # folder labels: Негативно / Нейтрально
    assert all(p.extra["out_of_fold"] and p.extra["fold"] in range(5) for p in preds.values())
    ev = evaluate([labels[i] for i in ids], [preds[i].label for i in ids], [preds[i].prob_toxic for i in ids])
    report = read_training_report(predictor.fingerprint())
    assert report is not None and report["metrics"]["folds"] == 5
    # The stored out-of-fold predictions are the ones the report's numbers come from.
    assert ev.f1 == pytest.approx(report["metrics"]["f1"]) and ev.roc_auc == pytest.approx(report["metrics"]["auroc"])
    assert 0.0 <= ev.f1 <= 1.0 and 0.0 <= ev.roc_auc <= 1.0
    print(f"\nTF-IDF 5-fold out-of-fold on 51 real memes: F1 {ev.f1:.3f} {ev.ci.get('f1')}, "
          f"AUROC {ev.roc_auc:.3f} {ev.ci.get('roc_auc')}")


# ------------------------------------------------------------------ generated memes, tiny models


def _demo_with_text(settings, n: int) -> list[int]:
    samples = write_sample_memes(settings.memes_dir, n=n, size=(96, 96))
    ids = _ingest(settings, settings.memes_dir)
    with session_scope(settings.db_url) as session:
        by_name = {im.original_name: im.id for im in session.scalars(select(Image))}
        for s in samples[:-1]:  # the last meme has no OCR text
            save_correction(session, by_name[s.path.name], s.caption, "tester")
    return ids


def test_text_toxicity_with_the_tiny_classifier(settings) -> None:
    ids = _demo_with_text(settings, 6)
    predictor = build_predictor("text-toxicity", {"model": str(tiny_model_dir("text_classifier"))})
    summary = run_predictions(settings, predictor, ids, batch_size=4)
    assert summary.status == "done" and summary.done == 5 and summary.failed == 1
    assert "no OCR text" in summary.errors[0][1]
    preds = [p for p in _predictions(settings, summary.run_id).values() if p.error is None]
    for p in preds:
        assert set(p.extra["scores"]) == set(TOXICITY_LABELS) and 0 <= p.prob_toxic <= 1 and p.latency_ms > 0
        s = p.extra["scores"]
        assert p.prob_toxic == pytest.approx(1 - s["non-toxic"] * (1 - s["dangerous"]))


def test_text_toxicity_missing_weights_fail_the_job_clearly(settings) -> None:
    ids = _demo_with_text(settings, 2)
    missing = str(settings.artefacts_dir / "no-such-model")
    summary = run_predictions(settings, build_predictor("text-toxicity", {"model": missing}), ids)
    assert summary.status == "failed" and f"Model '{missing}' cannot be loaded" in summary.error


@pytest.mark.parametrize("logits,id2label,multi,expected", [
    ([0.0, 0.0], {0: "non-toxic", 1: "toxic"}, False, 0.5),
    ([2.0, 0.0], {0: "neutral", 1: "toxic"}, False, 1 / (1 + np.exp(2.0))),
    ([0.0, 3.0], {0: "LABEL_0", 1: "LABEL_1"}, False, 1 / (1 + np.exp(-3.0))),
    ([0.0, 0.0, 0.0, 0.0, 0.0], dict(enumerate(TOXICITY_LABELS)), True, 0.75),
])
def test_toxicity_probability_rules(logits, id2label, multi, expected) -> None:
    assert toxicity_probability(np.array(logits), id2label, multi)[0] == pytest.approx(expected)


def test_nudenet_prob_counts_only_exposed_classes() -> None:
    p = NudeNetPredictor()
    face = [{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 5, 5]}]
    assert p.to_output(face, 1.0).prob_toxic == 0.0
    exposed = face + [{"class": "BUTTOCKS_EXPOSED", "score": 0.7, "box": [1, 1, 2, 2]}]
    out = p.to_output(exposed, 1.0)
    assert (out.label, out.prob_toxic) == ("toxic", 0.7) and "BUTTOCKS_EXPOSED 0.70" in out.explanation
    feet = [{"class": "FEET_EXPOSED", "score": 0.8, "box": [0, 0, 1, 1]}]
    assert p.to_output(feet, 1.0).prob_toxic == 0.0
    assert NudeNetPredictor(exposed="all").to_output(feet, 1.0).prob_toxic == 0.8


def test_tfidf_on_generated_memes_is_out_of_fold_and_unlabeled_get_the_final_model(settings) -> None:
    ids = _demo_with_text(settings, 20)
    extra = write_sample_memes(settings.memes_dir, n=2, seed=9, size=(96, 96), into_label_folders=False)
    ids = _ingest(settings, settings.memes_dir)
    with session_scope(settings.db_url) as session:
        for s in extra:
            image_id = session.scalar(select(Image.id).where(Image.original_name == s.path.name))
            save_correction(session, image_id, s.caption, "tester")
    predictor = build_predictor("text-tfidf", {"folds": 4})
    summary = run_predictions(settings, predictor, ids)
    assert (summary.status, summary.done, summary.failed) == ("done", 22, 0)
    preds = _predictions(settings, summary.run_id)
    with session_scope(settings.db_url) as session:
        labels = consensus_labels(session)
    for image_id, p in preds.items():
        assert p.extra["out_of_fold"] is (image_id in labels)
        assert p.explanation  # the n-grams that drove it (or why there are none)
    assert sum(1 for i in preds if i not in labels) == 2
    # The captions are separable: the baseline learns them out of fold.
    assert read_training_report(predictor.fingerprint())["metrics"]["auroc"] > 0.7


def test_tfidf_out_of_fold_probabilities_equal_sklearn_cross_val_predict() -> None:
    """The baseline's folds come from the heads' shared splitter: same numbers as scikit-learn's
    cross_val_predict of the same pipeline with StratifiedKFold(shuffle, seed)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from workbench.predictors.tfidf import TfidfPredictor
    from workbench.store.demo_memes import caption_set

    captions = caption_set(24, seed=5)
    predictor = TfidfPredictor(folds=4, seed=3)
    predictor.labels = {i: label for i, (_, label) in enumerate(captions)}
    predictor.texts = {i: text for i, (text, _) in enumerate(captions)}
    fitted = predictor.fit()
    ids = sorted(predictor.labels)
    got = [predictor.score(fitted.fold_models[fitted.fold_of[i]], [predictor.texts[i]])[0][0] for i in ids]
    y = np.array([1 if predictor.labels[i] == "toxic" else 0 for i in ids])
    ref = cross_val_predict(predictor._pipeline(), [predictor.texts[i] for i in ids], y,
                            cv=StratifiedKFold(4, shuffle=True, random_state=3), method="predict_proba")[:, 1]
    assert np.allclose(got, ref)
    assert fitted.metrics["folds"] == 4 and fitted.metrics["n"] == len(ids)


def test_tfidf_folds_are_split_by_near_duplicate_group(settings, capsys) -> None:
    """Reposts carry their original's caption: split by group, no caption is ever scored by a
    model that trained on its copy; the report records the grouping."""
    from tests.support.variants import plant_reposts
    from workbench.cli import main
    from workbench.features.near_duplicates import active_groups

    samples = write_sample_memes(settings.memes_dir, n=16, seed=12, size=(256, 256))
    reposts = plant_reposts([s.path for s in samples[:6]])
    ids = _ingest(settings, settings.memes_dir)
    caption = {s.path.name: s.caption for s in samples} | {r.name: dict((s.path.name, s.caption) for s in samples)[src.name]
                                                          for r, src in reposts.items()}
    with session_scope(settings.db_url) as session:
        for image_id, path in session.execute(select(Image.id, Image.path)):
            save_correction(session, image_id, caption[Path(path).name], "tester")
    assert main(["duplicates", "--workers", "1"]) == 0
    capsys.readouterr()
    predictor = build_predictor("text-tfidf", {"folds": 4})
    summary = run_predictions(settings, predictor, ids)
    assert (summary.status, summary.failed) == ("done", 0)
    preds = _predictions(settings, summary.run_id)
    with session_scope(settings.db_url) as session:
        groups = active_groups(session)
    assert len(groups) == 6
    for members in groups.values():
        assert len({preds[i].extra["fold"] for i in members}) == 1
    report = read_training_report(predictor.fingerprint())
    assert report["metrics"]["grouping"]["method"] == "StratifiedGroupKFold"
    assert report["metrics"]["grouping"]["grouped_images"] == 12
    plain = build_predictor("text-tfidf", {"folds": 4, "group_duplicates": False})
    unsplit = run_predictions(settings, plain, ids)
    assert unsplit.run_id != summary.run_id
    assert read_training_report(plain.fingerprint())["metrics"]["grouping"] == {"method": "StratifiedKFold", "by": "none"}
