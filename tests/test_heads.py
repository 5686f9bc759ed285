"""Heads on frozen features: training, the out-of-fold guarantee, save/load, the feature-model
check, and embeddings cached through the job runner (tiny random CLIP from a local folder,
real generated memes, real SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from tests.support.tiny_models import tiny_model_dir
from workbench.features import head_training
from workbench.features.embeddings import (
    ClipImageEmbedder,
    ClipTextEmbedder,
    EmbedStep,
    from_blob,
    load_embeddings,
    make_embedders,
    to_blob,
)
from workbench.predictors.out_of_fold import read_training_report
from workbench.predictors.run import build_predictor, run_predictions
from workbench.runs.runner import run_step
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import add_label
from workbench.store.ocr_texts import best_texts, save_correction
from workbench.store.schema import Embedding, Image, Prediction

FAST = {"epochs": 8}


@pytest.fixture(scope="module")
def tiny_clip() -> str:
    return str(tiny_model_dir("clip"))


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_data(n: int = 40, dim: int = 24, seed: int = 0, signal: float = 0.0):
    rng = np.random.default_rng(seed)
    y = np.array([i % 2 for i in range(n)])
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[:, 0] += signal * (2 * y - 1)
    return x, y, [f"k{i}" for i in range(n)]


# ------------------------------------------------------------------ pure training


def test_folds_are_stratified_and_shrink_to_the_smallest_class() -> None:
    y = np.array([1] * 10 + [0] * 20)
    folds = head_training.stratified_folds(y, 5, seed=0)
    for f in range(5):
        assert (y[folds == f] == 1).sum() == 2 and (y[folds == f] == 0).sum() == 4
    assert head_training.stratified_folds(np.array([1, 1, 1, 0, 0, 0, 0]), 5).max() == 2  # 3 toxic -> 3 folds
    with pytest.raises(head_training.HeadError, match="at least 2 labeled images of each class"):
        head_training.stratified_folds(np.array([1, 0, 0, 0]), 5)


def test_a_near_duplicate_group_never_spans_folds() -> None:
    rng = np.random.default_rng(3)
    y = np.array([i % 2 for i in range(40)])
    groups = head_training.fold_groups(list(range(40)), {k: k // 4 for k in range(0, 24)})  # 6 groups of 4 copies
    y[:24] = np.repeat(rng.integers(0, 2, 6), 4)  # copies share their original's label
    for seed in range(5):
        folds = head_training.stratified_folds(y, 5, seed=seed, groups=groups)
        for g in range(6):
            assert len(set(folds[g * 4:(g + 1) * 4])) == 1, (seed, g)
        assert set(folds) == set(range(5))
    cv = head_training.out_of_fold(y, 5, 0, lambda train, val, fold: set(groups[train].tolist()),
                                   lambda seen, val: np.array([float(g in seen) for g in groups[val]]), groups)
    assert not cv.prob.any()  # no held-out sample's group was ever in its fold model's training data
    assert cv.metrics["grouping"] == {"method": "StratifiedGroupKFold", "by": "near-duplicate groups", "groups": 6,
                                      "grouped_images": 24}
    assert head_training.describe_grouping(cv.metrics["grouping"]) == (
        "Folds split by near-duplicate group (StratifiedGroupKFold): 6 groups, 24 labeled memes, each group kept "
        "inside one fold.")
    singletons = head_training.fold_groups(list(range(40)), {})
    assert np.array_equal(head_training.stratified_folds(y, 5, 0, singletons), head_training.stratified_folds(y, 5, 0))


def test_out_of_fold_matches_sklearn_cross_val_predict_with_the_same_splitter() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x, y, _ = _random_data(n=30, dim=5, signal=1.0, seed=4)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def fit(train: np.ndarray, val: np.ndarray, fold: int) -> LogisticRegression:
        seen.append((train, val))
        return LogisticRegression().fit(x[train], y[train])

    cv = head_training.out_of_fold(y, 4, 2, fit, lambda model, val: model.predict_proba(x[val])[:, 1])
    assert np.array_equal(cv.folds, head_training.stratified_folds(y, 4, seed=2))
    for fold, (train, val) in enumerate(seen):
        assert np.array_equal(val, np.flatnonzero(cv.folds == fold)) and not set(train) & set(val)
    ref = cross_val_predict(LogisticRegression(), x, y, cv=StratifiedKFold(4, shuffle=True, random_state=2),
                            method="predict_proba")[:, 1]
    assert np.allclose(cv.prob, ref)
    assert cv.metrics == {**head_training.binary_metrics(y, cv.prob), "folds": 4,
                          "grouping": {"method": "StratifiedKFold", "by": "none"}}
    assert len(cv.models) == len(cv.seconds) == 4


@pytest.mark.parametrize("features,dim", [("image", 8), ("text", 8), ("both", 16), ("interaction", 8)])
def test_feature_sets(features: str, dim: int) -> None:
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    assert head_training.compose_features(image, text, features).shape == (3, dim)
    with pytest.raises(head_training.HeadError):
        head_training.compose_features(image, None, "both")


def test_out_of_fold_predictions_never_come_from_a_head_that_saw_the_sample() -> None:
    # Random labels: a big MLP memorises its training set, so a leak would show as ~100% accuracy.
    x, y, keys = _random_data(n=40, dim=24, seed=3)
    y = np.random.default_rng(7).permutation(y)
    result = head_training.cross_validate(x, y, keys, head_training.HeadConfig(model="mlp", epochs=30, lr=3e-2), {"fingerprint": "f"})
    for fold, head in enumerate(result.fold_heads):
        val = result.folds == fold
        assert not set(np.array(keys)[val]) & set(head.meta["train_keys"])
        assert len(head.meta["train_keys"]) + int(val.sum()) == len(keys)
        assert np.allclose(head.predict_proba(x[val]), result.oof_prob[val])
    in_sample = ((result.final.predict_proba(x) >= 0.5) == y).mean()
    out_of_fold = ((result.oof_prob >= 0.5) == y).mean()
    assert in_sample >= 0.95  # it can memorise ...
    assert out_of_fold <= 0.75  # ... but the stored numbers are not memorised ones


def test_curves_have_loss_and_val_f1_per_epoch_per_fold() -> None:
    x, y, keys = _random_data(n=24, dim=4, signal=3.0)
    result = head_training.cross_validate(x, y, keys, head_training.HeadConfig(model="logreg", epochs=15, lr=0.05, folds=4))
    assert len(result.curves) == 4 * 15
    assert {"fold", "epoch", "train_loss", "val_loss", "val_f1"} <= set(result.curves[0])
    assert result.metrics["f1"] > 0.8 and result.metrics["auroc"] > 0.9  # a strong signal is learned


def test_save_load_round_trip_and_mismatched_features_refused(tmp_path: Path) -> None:
    x, y, keys = _random_data(n=20, signal=1.0)
    result = head_training.cross_validate(x, y, keys, head_training.HeadConfig(epochs=5), {"fingerprint": "clipA", "description": "A"})
    head_training.save_head(result.final, tmp_path / "h", result.curves)
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["head.json", "head.safetensors"]
    assert b"pickle" not in (tmp_path / "h" / "head.safetensors").read_bytes()[:200]
    loaded = head_training.load_head(tmp_path / "h", "clipA")
    assert np.array_equal(loaded.predict_proba(x), result.final.predict_proba(x))
    with pytest.raises(head_training.FeatureModelMismatch, match="trained on features 'A'.*fingerprint clipA"):
        head_training.load_head(tmp_path / "h", "clipB", "B")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "head.json").write_text("{not json")
    with pytest.raises(head_training.HeadError, match="cannot read"):
        head_training.load_head(tmp_path / "bad")


def test_float16_blob_round_trip() -> None:
    v = np.linspace(-1, 1, 17, dtype=np.float32)
    assert len(to_blob(v)) == 34
    assert np.allclose(from_blob(to_blob(v), 17), v, atol=1e-3)


# ------------------------------------------------------------------ through the DB and the runner


def _memes(settings, n: int, unlabeled: int = 0) -> list[int]:
    samples = write_sample_memes(settings.memes_dir, n=n, size=(96, 96))
    if unlabeled:
        write_sample_memes(settings.memes_dir, n=unlabeled, seed=5, size=(96, 96), into_label_folders=False)
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        by_name = {im.original_name: im.id for im in session.scalars(select(Image))}
        for s in samples:  # OCR text (as manual corrections: no OCR engine needed here)
            save_correction(session, by_name[s.path.name], s.caption, "tester")
        return sorted(by_name.values())


def _embed(settings, clip: str, ids: list[int]) -> None:
    for embedder in make_embedders("clip", clip, dtype="float32"):
        summary = run_step(settings.db_url, EmbedStep(embedder), ids, memes_dir=settings.memes_dir,
                           lock_dir=settings.artefacts_dir, batch_size=5)
        assert (summary.status, summary.failed) == ("done", 0)


def test_embeddings_are_cached_resumable_and_text_ones_follow_ocr_corrections(settings, tiny_clip: str) -> None:
    ids = _memes(settings, 6)
    _embed(settings, tiny_clip, ids)
    image_e, text_e = ClipImageEmbedder(tiny_clip, dtype="float32"), ClipTextEmbedder(tiny_clip, dtype="float32")
    again = run_step(settings.db_url, EmbedStep(image_e), ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir)
    assert (again.done, again.skipped) == (0, 6)
    with session_scope(settings.db_url) as session:
        rows = session.scalars(select(Embedding)).all()
        assert len(rows) == 12 and {r.kind for r in rows} == {"clip-image", "clip-text"}
        assert all(len(r.vector) == 2 * r.dim for r in rows)  # float16
        before = load_embeddings(session, text_e, ids)[ids[0]]
        save_correction(session, ids[0], "совсем другой текст", "tester")
    redo = run_step(settings.db_url, EmbedStep(text_e), ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir)
    assert (redo.done, redo.skipped) == (1, 5)  # only the corrected image is stale
    with session_scope(settings.db_url) as session:
        after = load_embeddings(session, text_e, ids)[ids[0]]
        assert not np.allclose(before, after)
        assert session.scalar(select(Embedding).where(Embedding.kind == "clip-text", Embedding.image_id == ids[0])) is not None
        assert len(session.scalars(select(Embedding).where(Embedding.image_id == ids[0])).all()) == 2  # old one replaced


def test_text_embeddings_never_read_the_image_file(settings, tiny_clip: str) -> None:
    ids = _memes(settings, 3)
    with session_scope(settings.db_url) as session:
        path = settings.memes_dir / session.get(Image, ids[1]).path
    path.write_bytes(b"no longer an image")
    args = {"memes_dir": settings.memes_dir, "lock_dir": settings.artefacts_dir}
    text = run_step(settings.db_url, EmbedStep(ClipTextEmbedder(tiny_clip, dtype="float32")), ids, **args)
    assert (text.done, text.failed) == (3, 0)  # the OCR text is in the database: the file is not needed
    image = run_step(settings.db_url, EmbedStep(ClipImageEmbedder(tiny_clip, dtype="float32")), ids, **args)
    assert (image.done, image.failed) == (2, 1) and image.errors[0][1].startswith("cannot read image")


def test_head_run_is_out_of_fold_for_labeled_images_and_saves_a_loadable_head(settings, tiny_clip: str) -> None:
    ids = _memes(settings, 16, unlabeled=3)
    _embed(settings, tiny_clip, ids)
    predictor = build_predictor("head", {"features": "both", "clip_model": tiny_clip, **FAST})
    summary = run_predictions(settings, predictor, ids)
    assert (summary.status, summary.done, summary.failed) == ("done", 19, 0)
    fitted = predictor.fitted
    with session_scope(settings.db_url) as session:
        sha = dict(session.execute(select(Image.id, Image.sha256)).all())
        preds = {p.image_id: p for p in session.scalars(select(Prediction).where(Prediction.run_id == summary.run_id))}
    labeled = [i for i in ids if i in fitted.fold_of]
    assert len(labeled) == 16
    for image_id in labeled:
        pred = preds[image_id]
        fold = pred.extra["fold"]
        assert pred.extra["out_of_fold"] is True and fold == fitted.fold_of[image_id]
        assert sha[image_id] not in fitted.fold_models[fold].meta["train_keys"]
        assert pred.latency_ms is not None
    unlabeled = [i for i in ids if i not in fitted.fold_of]
    assert len(unlabeled) == 3 and all(preds[i].extra["fold"] is None for i in unlabeled)
    report = read_training_report(predictor.fingerprint())
    assert report and len(report["curves"]) == 8 * report["metrics"]["folds"]

    # Round trip: predicting with the saved head gives identical predictions.
    saved = settings.artefacts_dir / "heads" / predictor.fingerprint()
    reloaded = build_predictor("head", {"features": "both", "clip_model": tiny_clip, "head_path": str(saved)})
    second = run_predictions(settings, reloaded, ids)
    assert (second.status, second.done) == ("done", 19)
    with session_scope(settings.db_url) as session:
        again = {p.image_id: p for p in session.scalars(select(Prediction).where(Prediction.run_id == second.run_id))}
    for image_id in ids:
        assert again[image_id].prob_toxic == pytest.approx(preds[image_id].prob_toxic, abs=1e-6)
        assert again[image_id].extra["fold"] == preds[image_id].extra["fold"]

    # A head trained on 'both' refuses 'image' features (another feature model).
    wrong = build_predictor("head", {"features": "image", "clip_model": tiny_clip, "head_path": str(saved)})
    refused = run_predictions(settings, wrong, ids)
    assert refused.status == "failed" and "trained on features" in refused.error and refused.done == 0


def test_head_folds_are_split_by_near_duplicate_group(settings, tiny_clip: str, capsys) -> None:
    from tests.support.variants import plant_reposts
    from workbench.cli import main
    from workbench.features.near_duplicates import active_groups

    samples = write_sample_memes(settings.memes_dir, n=12, seed=21, size=(96, 96))
    plant_reposts([s.path for s in samples[:4]])
    plant_reposts([samples[0].path], kinds=("crop_watermark",))  # the first meme has two reposts
    ids = _memes(settings, 0)
    _embed(settings, tiny_clip, ids)
    assert main(["duplicates", "--workers", "1"]) == 0
    capsys.readouterr()
    predictor = build_predictor("head", {"features": "image", "clip_model": tiny_clip, "head": "logreg", **FAST})
    summary = run_predictions(settings, predictor, ids)
    assert (summary.status, summary.failed) == ("done", 0)
    with session_scope(settings.db_url) as session:
        groups = active_groups(session)
        folds = {p.image_id: p.extra["fold"] for p in session.scalars(select(Prediction).where(
            Prediction.run_id == summary.run_id))}
    assert sorted(len(m) for m in groups.values()) == [2, 2, 2, 3]
    for members in groups.values():
        assert len({folds[i] for i in members}) == 1  # a group never spans folds
    report = read_training_report(predictor.fingerprint())
    assert report["metrics"]["grouping"] == {"method": "StratifiedGroupKFold", "by": "near-duplicate groups",
                                             "groups": 4, "grouped_images": 9}
    assert "fold_groups" in report["config"]
    ungrouped = build_predictor("head", {"features": "image", "clip_model": tiny_clip, "head": "logreg",
                                         "group_duplicates": False, **FAST})
    assert ungrouped.fingerprint() != predictor.fingerprint()


def test_new_labels_make_a_new_run_and_missing_embeddings_are_per_image_errors(settings, tiny_clip: str) -> None:
    ids = _memes(settings, 8, unlabeled=2)
    _embed(settings, tiny_clip, ids[:-1])  # the last image has no embedding
    first = run_predictions(settings, build_predictor("head", {"features": "image", "clip_model": tiny_clip,
                                                               "head": "logreg", **FAST}), ids)
    assert first.status == "done" and first.failed == 1
    assert "python -m workbench embed clip" in first.errors[0][1]
    again = run_predictions(settings, build_predictor("head", {"features": "image", "clip_model": tiny_clip,
                                                               "head": "logreg", **FAST}), ids)
    assert again.run_id == first.run_id and again.skipped == len(ids) - 1
    with session_scope(settings.db_url) as session:
        add_label(session, ids[-2], "toxic", "alice")  # a new human label
    relabeled = run_predictions(settings, build_predictor("head", {"features": "image", "clip_model": tiny_clip,
                                                                   "head": "logreg", **FAST}), ids)
    assert relabeled.run_id != first.run_id


def test_too_few_labels_fail_the_job_clearly(settings, tiny_clip: str) -> None:
    ids = _memes(settings, 2, unlabeled=2)
    summary = run_predictions(settings, build_predictor("text-tfidf"), ids)
    assert summary.status == "failed" and "at least 2 labeled images of each class" in summary.error


def test_cli_embed_and_head_commands(settings, tiny_clip: str, capsys) -> None:
    from workbench.cli import main

    ids = _memes(settings, 10)
    assert main(["embed", "clip", "--model", tiny_clip, "--dtype", "float32"]) == 0
    assert "clip-image" in capsys.readouterr().out
    assert main(["predict", "head", "-o", f"clip_model={tiny_clip}", "-o", "features=interaction", "-o", "epochs=3"]) == 0
    assert main(["head", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(listed) == 1 and "interaction" in listed[0]["features"]
    assert main(["head", "copy", listed[0]["name"], str(settings.artefacts_dir / "kept")]) == 0
    assert main(["head", "show", str(settings.artefacts_dir / "kept")]) == 0
    assert main(["head", "show", "nope"]) == 2
    assert len(ids) == 10


def test_train_page_trains_a_head_and_plots_its_curves(settings, tiny_clip: str, clear_streamlit_cache) -> None:
    from streamlit.testing.v1 import AppTest

    ids = _memes(settings, 10)
    _embed(settings, tiny_clip, ids)
    page = Path(__file__).resolve().parent.parent / "pages" / "10_Train.py"
    at = AppTest.from_file(str(page), default_timeout=120).run()
    assert not at.exception
    at.radio(key="train_what").set_value("Head on embeddings").run()
    at.selectbox(key="train_head_features").set_value("interaction")
    at.number_input(key="train_head_epochs").set_value(4)
    at.text_input(key="train_head_clip_model").set_value(tiny_clip)
    at.button(key="train_run").click().run()
    assert not at.exception, at.exception
    assert any("Out-of-fold F1" == m.label for m in at.metric)
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["facet"]["column"]["field"] == "metric"  # one panel per metric: train/val loss, val F1
    encoding = spec["spec"]["encoding"]
    assert (encoding["x"]["field"], encoding["y"]["field"], encoding["color"]["field"]) == ("epoch", "value", "fold")
    assert len(at.dataframe) >= 1  # the saved heads table


def test_vlm_pooled_embeddings_through_the_runner_match_one_at_a_time(settings) -> None:
    """Mean-pooled last hidden state of a tiny Qwen2.5-VL: one vector per meme, the same
    whether the meme is embedded alone or in a left-padded batch with others."""
    qwen = str(tiny_model_dir("qwen2_5_vl"))
    ids = _memes(settings, 3)
    (embedder,) = make_embedders("vlm", qwen, dtype="float32", use_ocr_text=True)
    summary = run_step(settings.db_url, EmbedStep(embedder), ids, memes_dir=settings.memes_dir,
                       lock_dir=settings.artefacts_dir, batch_size=3)
    assert (summary.status, summary.done, summary.failed) == ("done", 3, 0)
    with session_scope(settings.db_url) as session:
        stored = load_embeddings(session, embedder, ids)
        paths = {i: settings.memes_dir / p for i, p in session.execute(select(Image.id, Image.path))}
        texts = {i: t for i, t in best_texts(session, ids).items()}
    assert set(stored) == set(ids) and len({v.shape for v in stored.values()}) == 1
    from workbench.store.images import load_rgb

    alone = embedder.embed([load_rgb(paths[ids[1]])], [texts[ids[1]]])[0]
    assert np.allclose(alone, stored[ids[1]], atol=2e-2)  # float16 storage
    assert not np.allclose(stored[ids[0]], stored[ids[1]], atol=1e-3)


def test_train_page_forms_are_the_predictors_options_and_train_with_the_typed_values(settings,
                                                                                     clear_streamlit_cache) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.test_models_page import option_values
    from workbench.predictors.head import HeadPredictor
    from workbench.predictors.tfidf import TfidfPredictor
    from workbench.store.schema import ModelRun

    _memes(settings, 10)
    page = Path(__file__).resolve().parent.parent / "pages" / "10_Train.py"
    at = AppTest.from_file(str(page), default_timeout=120).run()
    assert not at.exception
    tfidf = TfidfPredictor.options
    assert option_values(at, tfidf, "train_tfidf") == {o.name: o.default for o in tfidf}
    at.radio(key="train_what").set_value("Head on embeddings").run()
    head = [o for o in HeadPredictor.options if o.name != "head_path"]  # a saved head is used from tab 3
    assert option_values(at, head, "train_head") == {o.name: o.default for o in head}
    with pytest.raises(KeyError):
        at.text_input(key="train_head_head_path")
    at.radio(key="train_what").set_value("TF-IDF baseline (OCR text, no weights needed)").run()
    at.number_input(key="train_tfidf_ngram_max").set_value(3)
    at.number_input(key="train_tfidf_folds").set_value(3)
    at.button(key="train_run").click().run()
    assert not at.exception, at.exception
    assert any("Out-of-fold F1" == m.label for m in at.metric)
    # the report says how folds were split: not by near-duplicate group, none being stored here
    assert any(c.value.startswith("Folds: StratifiedKFold, not split by near-duplicate group") for c in at.caption)
    with session_scope(settings.db_url) as session:
        params = session.scalars(select(ModelRun)).one().params
    assert (params["model"], params["ngram_range"], params["folds"]) == ("tfidf-char-logreg", [2, 3], 3)
