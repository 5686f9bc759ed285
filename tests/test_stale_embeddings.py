"""Stale derived data (issue 21, point 6): text embeddings know which OCR text they were made
from; after a second OCR engine reads the memes differently they count as stale (not as
complete), a refresh re-embeds exactly those, head training names the memes it cannot use,
and a saved head trained on now-changed texts shows as stale. Tiny random CLIP from a local
folder, generated memes, a real SQLite file; the two engines' readings are stored as the
ocr_results rows an OCR job writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support.tiny_models import tiny_model_dir
from workbench.features.embeddings import (
    ClipImageEmbedder,
    ClipTextEmbedder,
    EmbedStep,
    embedder_staleness,
    embedding_counts,
    embedding_status,
    lacking_embeddings,
    load_embeddings,
    make_embedders,
    stale_note,
)
from workbench.features.head_training import head_text_status, read_head_info
from workbench.predictors.run import build_predictor, run_predictions
from workbench.runs.runner import run_step
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.ocr_texts import save_correction
from workbench.store.schema import Embedding, Image, OcrResult

FIRST, SECOND = "tesseract:v1aaaa", "easyocr:v2bbbb"  # engine:config fingerprints, as OcrStep stores them
N, CHANGED = 10, 6  # the second engine reads 6 of 10 memes differently (issue: 31 of 54)


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


def _read_with(session, fingerprint: str, texts: dict[int, str]) -> None:
    """Store one OCR engine's readings (what an OCR job leaves behind)."""
    for image_id, text in texts.items():
        session.add(OcrResult(image_id=image_id, engine=fingerprint.split(":")[0], fingerprint=fingerprint,
                              config={"v": fingerprint}, text=text))
    session.flush()


def _memes_read_by_one_engine(settings) -> list[int]:
    """N labeled memes (half toxic), each read by the first engine."""
    write_sample_memes(settings.memes_dir, n=N, size=(96, 96))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        ids = sorted(session.scalars(select(Image.id)))
        _read_with(session, FIRST, {i: f"первый движок прочёл мем {i}" for i in ids})
    return ids


def _second_engine(settings, ids: list[int]) -> list[int]:
    """The second engine reads CHANGED memes (half of each class) differently and the rest the same
    (up to spacing)."""
    from workbench.store.labels import consensus_labels

    with session_scope(settings.db_url) as session:
        labels = consensus_labels(session)
        changed = sorted([i for i in ids if labels[i] == "toxic"][:CHANGED // 2]
                         + [i for i in ids if labels[i] == "non_toxic"][:CHANGED // 2])
        _read_with(session, SECOND, {i: (f"второй движок: мем {i}" if i in changed else f"первый  движок прочёл мем {i} ")
                                     for i in ids})
    return changed


def _embed(settings, clip: str, ids: list[int]) -> None:
    for embedder in make_embedders("clip", clip, dtype="float32"):
        summary = run_step(settings.db_url, EmbedStep(embedder), ids, memes_dir=settings.memes_dir,
                           lock_dir=settings.artefacts_dir, batch_size=4)
        assert (summary.status, summary.failed) == ("done", 0)


def test_a_second_ocr_engine_makes_text_embeddings_stale_and_a_refresh_makes_them_fresh(settings, tiny_clip) -> None:
    ids = _memes_read_by_one_engine(settings)
    _embed(settings, tiny_clip, ids)
    text_e, image_e = ClipTextEmbedder(tiny_clip, dtype="float32"), ClipImageEmbedder(tiny_clip, dtype="float32")
    with session_scope(settings.db_url) as session:
        first = embedder_staleness(session, text_e)
        assert (len(first.fresh), first.stale, first.missing) == (N, [], [])
        sources = dict(session.execute(select(Embedding.image_id, Embedding.text_source)
                                       .where(Embedding.kind == "clip-text")).all())
        ocr_ids = dict(session.execute(select(OcrResult.image_id, OcrResult.id)).all())
    assert sources == {i: f"{FIRST}#{ocr_ids[i]}" for i in ids}  # engine + config + the row its text came from

    changed = _second_engine(settings, ids)
    with session_scope(settings.db_url) as session:
        # The defect as reported: the stored rows still count N memes for clip-text ("complete") ...
        assert {r["kind"]: r["images"] for r in embedding_counts(session)} == {"clip-image": N, "clip-text": N}
        # ... while only the memes whose text did not change have a usable text embedding.
        unchanged = [i for i in ids if i not in changed]
        assert sorted(load_embeddings(session, text_e, ids)) == unchanged
        # Now the staleness is visible: per set, fresh / stale / missing, and which engine's text moved.
        stale = embedder_staleness(session, text_e, ids)
        assert (stale.fresh, stale.stale, stale.missing) == (unchanged, changed, [])
        assert stale.changes == {"tesseract → easyocr": CHANGED}
        assert stale.describe() == f"{N - CHANGED} fresh, {CHANGED} stale, 0 missing (text changed: tesseract → easyocr {CHANGED})"
        assert embedder_staleness(session, image_e, ids).describe() == f"{N} fresh, 0 stale, 0 missing"
        assert stale_note(session, "clip-text", text_e.fingerprint()) == (
            f"{CHANGED} of {N} memes in this clip-text set have a stale embedding: their OCR text changed since it was "
            f"embedded (tesseract → easyocr: {CHANGED}), so they sit where their old text put them. Refresh them on "
            "the Train page or with `python -m workbench embed clip|vlm --stale`, then recompute the map.")
        assert stale_note(session, "clip-image", image_e.fingerprint()) is None
        status = {r["kind"]: (r["fresh"], r["stale"], r["missing"]) for r in embedding_status(session)}
        assert status == {"clip-image": (N, 0, 0), "clip-text": (N - CHANGED, CHANGED, 0)}
        todo = stale.todo

    refresh = run_step(settings.db_url, EmbedStep(text_e), todo, memes_dir=settings.memes_dir,
                       lock_dir=settings.artefacts_dir)
    assert (refresh.status, refresh.done, refresh.failed) == ("done", CHANGED, 0)
    with session_scope(settings.db_url) as session:
        assert embedder_staleness(session, text_e, ids).describe() == f"{N} fresh, 0 stale, 0 missing"
        assert stale_note(session, "clip-text", text_e.fingerprint()) is None
        assert sorted(load_embeddings(session, text_e, ids)) == ids
        sources = dict(session.execute(select(Embedding.image_id, Embedding.text_source)
                                       .where(Embedding.kind == "clip-text")).all())
        second_ids = dict(session.execute(select(OcrResult.image_id, OcrResult.id)
                                          .where(OcrResult.fingerprint == SECOND)).all())
    assert all(sources[i] == f"{SECOND}#{second_ids[i]}" for i in changed)
    assert all(sources[i].startswith(f"{FIRST}#") for i in unchanged)  # same text: kept, not re-embedded


def test_a_meme_without_ocr_text_is_stale_once_it_gets_text_and_missing_ones_are_counted(settings, tiny_clip) -> None:
    ids = _memes_read_by_one_engine(settings)
    with session_scope(settings.db_url) as session:
        session.query(OcrResult).filter(OcrResult.image_id == ids[0]).delete()
    text_e = ClipTextEmbedder(tiny_clip, dtype="float32")
    run_step(settings.db_url, EmbedStep(text_e), ids[:-1], memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir)
    with session_scope(settings.db_url) as session:
        assert session.scalar(select(Embedding.text_source).where(Embedding.image_id == ids[0])) == "-"  # no text
        save_correction(session, ids[0], "исправленный текст", "anna")
    with session_scope(settings.db_url) as session:
        st = embedder_staleness(session, text_e, ids)
        assert (st.stale, st.missing, st.changes) == ([ids[0]], [ids[-1]], {"no text → manual": 1})
        lacking = lacking_embeddings(session, [text_e, ClipImageEmbedder(tiny_clip)], ids[:2])
    assert [(lack.image_id, lack.missing, lack.stale) for lack in lacking] == [
        (ids[0], ("clip-image",), ("clip-text",)), (ids[1], ("clip-image",), ())]
    assert lacking[0].reason == ("no clip-image embedding; clip-text embedding is stale (its OCR text changed "
                                 "since it was embedded)")
    assert lacking[0].path.endswith(".png")


def test_head_training_names_the_memes_it_lacks_and_a_saved_head_shows_stale_texts(settings, tiny_clip) -> None:
    ids = _memes_read_by_one_engine(settings)
    _embed(settings, tiny_clip, ids)
    changed = _second_engine(settings, ids)
    options = {"features": "both", "clip_model": tiny_clip, "head": "logreg", "epochs": 3, "folds": 2}
    predictor = build_predictor("head", options)
    with session_scope(settings.db_url) as session:
        notice = predictor.input_notice(session, ids)
    assert notice.startswith(f"{CHANGED} memes lack a current clip-image/clip-text embedding ({CHANGED} stale")
    assert f"python -m workbench embed clip --model {tiny_clip}" in notice
    assert all(f"{i} (" in notice for i in changed)
    summary = run_predictions(settings, predictor, ids)
    assert summary.failed == CHANGED and {i for i, _ in summary.errors} == set(changed)
    assert all("clip-text embedding is stale" in e and f"embed clip --model {tiny_clip}" in e for _, e in summary.errors)

    _embed(settings, tiny_clip, ids)  # the refresh: re-embeds the stale ones
    retrained = build_predictor("head", options)
    with session_scope(settings.db_url) as session:
        assert retrained.input_notice(session, ids) is None
    summary = run_predictions(settings, retrained, ids)
    assert (summary.status, summary.failed) == ("done", 0)
    assert retrained.fingerprint() != predictor.fingerprint()  # refreshed texts make a new run
    info = read_head_info(settings.artefacts_dir / "heads" / retrained.fingerprint())
    assert len(info["meta"]["texts"]["by_sha"]) == N
    with session_scope(settings.db_url) as session:
        assert head_text_status(session, info) == f"current ({N} training texts)"
        save_correction(session, ids[-1], "совсем другой текст", "anna")
    with session_scope(settings.db_url) as session:
        assert head_text_status(session, info) == (f"stale: 1 of {N} training texts changed since "
                                                   "(refresh embeddings, retrain)")
        image_only = {"feature_model": {"features": "image"}, "meta": {}}
        assert head_text_status(session, image_only) == "no text features"


def test_cli_embed_status_and_stale(settings, tiny_clip, capsys) -> None:
    from workbench.cli import main

    ids = _memes_read_by_one_engine(settings)
    _embed(settings, tiny_clip, ids[:-1])
    _second_engine(settings, ids)
    capsys.readouterr()
    assert main(["embed", "clip", "--model", tiny_clip, "--status", "--json"]) == 0
    rows = {r["kind"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])}
    assert (rows["clip-text"]["fresh"], rows["clip-text"]["stale"], rows["clip-text"]["missing"]) == (
        N - CHANGED - 1, CHANGED, 1)
    assert (rows["clip-image"]["fresh"], rows["clip-image"]["missing"]) == (N - 1, 1)
    assert main(["embed", "--status"]) == 0  # every cached set
    out = capsys.readouterr().out
    assert f"{N - CHANGED - 1} fresh, {CHANGED} stale, 1 missing  text changed: tesseract → easyocr: {CHANGED}" in out
    assert "refresh: python -m workbench embed" in out
    assert main(["embed", "clip", "--model", tiny_clip, "--stale"]) == 0  # stale only: the missing one stays
    out = capsys.readouterr().out
    assert "clip-image" in out and "no stale embeddings" in out
    with session_scope(settings.db_url) as session:
        st = embedder_staleness(session, ClipTextEmbedder(tiny_clip), ids)
    assert (len(st.fresh), st.stale, st.missing) == (N - 1, [], [ids[-1]])
    assert main(["embed"]) == 2  # no source and no --status


def test_predict_cli_says_which_memes_lack_embeddings_before_training(settings, tiny_clip, capsys) -> None:
    from workbench.cli import main

    ids = _memes_read_by_one_engine(settings)
    _embed(settings, tiny_clip, ids)
    _second_engine(settings, ids)
    capsys.readouterr()
    assert main(["predict", "head", "-o", f"clip_model={tiny_clip}", "-o", "features=text", "-o", "epochs=2",
                 "-o", "folds=2"]) == 1
    err = capsys.readouterr().err
    assert f"note: {CHANGED} memes lack a current clip-text embedding ({CHANGED} stale" in err
    assert f"Embed them first: python -m workbench embed clip --model {tiny_clip}" in err


def test_train_page_shows_stale_counts_and_refreshes_them(settings, tiny_clip, clear_streamlit_cache) -> None:
    from streamlit.testing.v1 import AppTest

    ids = _memes_read_by_one_engine(settings)
    _embed(settings, tiny_clip, ids)
    _second_engine(settings, ids)
    page = Path(__file__).resolve().parent.parent / "pages" / "10_Train.py"
    at = AppTest.from_file(str(page), default_timeout=120).run()
    assert not at.exception, at.exception
    at.text_input(key="train_embed_model_clip").set_value(tiny_clip).run()
    table = at.dataframe[0].value
    text_row = table[table["kind"] == "clip-text"].iloc[0]
    assert (text_row["fresh"], text_row["stale"], text_row["missing"]) == (N - CHANGED, CHANGED, 0)
    assert any(f"clip-text: {N - CHANGED} fresh, {CHANGED} stale, 0 missing" in t.value for t in at.text)
    at.button(key="train_embed_refresh").click().run()
    assert not at.exception, at.exception
    assert any(f"clip-text: {N} fresh, 0 stale, 0 missing" in t.value for t in at.text)
    with session_scope(settings.db_url) as session:
        assert embedder_staleness(session, ClipTextEmbedder(tiny_clip), ids).describe() == f"{N} fresh, 0 stale, 0 missing"


def test_train_page_lists_memes_lacking_embeddings_and_embeds_them(settings, tiny_clip, clear_streamlit_cache) -> None:
    from streamlit.testing.v1 import AppTest

    ids = _memes_read_by_one_engine(settings)
    _embed(settings, tiny_clip, ids)
    changed = _second_engine(settings, ids)
    page = Path(__file__).resolve().parent.parent / "pages" / "10_Train.py"
    at = AppTest.from_file(str(page), default_timeout=120).run()
    at.radio(key="train_what").set_value("Head on embeddings").run()
    at.selectbox(key="train_head_features").set_value("text")
    at.text_input(key="train_head_clip_model").set_value(tiny_clip).run()
    assert not at.exception, at.exception
    assert any(w.value.replace("\\", "").startswith(f"{CHANGED} memes lack a current clip-text embedding") for w in at.warning)
    lacking = at.dataframe[-1].value
    assert sorted(lacking["image"]) == changed
    at.button(key="train_embed_lacking").click().run()
    assert not at.exception, at.exception
    assert not any("lack a current" in w.value for w in at.warning)
    with session_scope(settings.db_url) as session:
        assert embedder_staleness(session, ClipTextEmbedder(tiny_clip), ids).stale == []


def test_map_page_says_which_points_rest_on_stale_text(settings, tiny_clip, clear_streamlit_cache) -> None:
    from streamlit.testing.v1 import AppTest

    ids = _memes_read_by_one_engine(settings)
    _embed(settings, tiny_clip, ids)
    page = Path(__file__).resolve().parent.parent / "pages" / "12_Map.py"
    at = AppTest.from_file(str(page), default_timeout=120)
    at.session_state["annotator"] = "alice"
    at.run()
    assert not at.exception, at.exception
    sets = at.selectbox(key="map_set").options
    text_set = next(o for o in sets if "clip-text" in o)
    at.selectbox(key="map_set").select(text_set).run()
    assert not [w for w in at.warning if "stale" in w.value]  # fresh: nothing to say
    _second_engine(settings, ids)
    at.run()
    assert not at.exception, at.exception
    assert any(f"{CHANGED} of {N} memes" in w.value and "stale" in w.value for w in at.warning)
