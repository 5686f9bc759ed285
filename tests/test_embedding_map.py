"""The embedding map: PCA for tiny sets and real UMAP from 50 points, cached per embedding set
(a changed set makes a new map), colours, the region selection, the CLI and the Map page."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from tests.support.synthetic_runs import Pred, add_run
from workbench.analysis import embedding_map as em
from workbench.cli import main as cli_main
from workbench.features.embeddings import ClipImageEmbedder, ClipTextEmbedder, store_embeddings
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import consensus_labels
from workbench.store.schema import Image

PAGES = Path(__file__).resolve().parent.parent / "pages"
MODEL = "map-test-clip"  # vectors are stored under this model's fingerprint; no weights are loaded


def _memes(settings, n: int, seed: int = 41) -> list[int]:
    write_sample_memes(settings.memes_dir, n=n, seed=seed, size=(64, 64))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        return list(session.scalars(select(Image.id).order_by(Image.id)))


def _embed(settings, ids: list[int], dim: int = 8, seed: int = 0, text: bool = False) -> None:
    rng = np.random.default_rng(seed)
    embedder = ClipTextEmbedder(MODEL) if text else ClipImageEmbedder(MODEL)
    with session_scope(settings.db_url) as session:
        labels = consensus_labels(session)
        rows = []
        for i in ids:
            v = rng.normal(0, 1, dim).astype(np.float32)
            v[0] += 4.0 if labels.get(i) == "toxic" else -4.0  # two clusters
            rows.append((i, embedder.stored_fingerprint("") if text else embedder.fingerprint(), v))
        store_embeddings(session, embedder, rows)


def _only_set(settings, kind: str = "clip-image") -> em.EmbeddingSet:
    with session_scope(settings.db_url) as session:
        return next(s for s in em.embedding_sets(session) if s.kind == kind)


def test_pca_for_a_tiny_set_cached_until_the_set_changes(settings) -> None:
    ids = _memes(settings, 12)
    _embed(settings, ids[:10])
    emb_set = _only_set(settings)
    assert emb_set.images == 10 and emb_set.dim == 8
    with session_scope(settings.db_url) as session:
        assert em.cached_map(session, settings.artefacts_dir, emb_set) is None
    data = em.compute_map(settings.db_url, settings.artefacts_dir, emb_set)
    with session_scope(settings.db_url) as session:
        assert data.method == "pca" and data.xy.shape == (10, 2) and data.image_ids.tolist() == ids[:10]
        again = em.cached_map(session, settings.artefacts_dir, emb_set)
        assert again.current and np.array_equal(again.xy, data.xy)
    _embed(settings, ids[10:], seed=1)  # two more memes embedded: the map is out of date
    emb_set = _only_set(settings)
    with session_scope(settings.db_url) as session:
        stale = em.cached_map(session, settings.artefacts_dir, emb_set)
        assert stale is not None and not stale.current and len(stale.image_ids) == 10
    fresh = em.compute_map(settings.db_url, settings.artefacts_dir, emb_set)
    with session_scope(settings.db_url) as session:
        assert len(fresh.image_ids) == 12 and em.cached_map(session, settings.artefacts_dir, emb_set).current
    assert len(list(em.maps_dir(settings.artefacts_dir).glob("*.npz"))) == 1  # the older map is replaced
    with pytest.raises(em.MapError, match="at least 3"):
        em.project(np.zeros((2, 4)))


@pytest.mark.slow  # numba compiles UMAP on first use: ~10-20 s
def test_umap_from_fifty_points_keeps_clusters_apart(settings) -> None:
    ids = _memes(settings, 60)
    _embed(settings, ids, dim=16)
    data = em.compute_map(settings.db_url, settings.artefacts_dir, _only_set(settings))
    with session_scope(settings.db_url) as session:
        labels = consensus_labels(session)
    assert data.method == "umap" and data.xy.shape == (60, 2) and np.isfinite(data.xy).all()
    toxic = np.array([labels[i] == "toxic" for i in data.image_ids.tolist()])
    gap = np.linalg.norm(data.xy[toxic].mean(0) - data.xy[~toxic].mean(0))
    assert gap > 2 * max(data.xy[toxic].std(0).max(), data.xy[~toxic].std(0).max())


def test_points_in_box_and_colours(settings, capsys) -> None:
    from tests.support.variants import plant_reposts

    samples = write_sample_memes(settings.memes_dir, n=8, seed=43, size=(192, 192))
    plant_reposts([samples[0].path])
    ids = _memes(settings, 0)
    _embed(settings, ids)
    _embed(settings, ids, text=True, seed=3)
    assert cli_main(["duplicates", "--workers", "1"]) == 0  # these random vectors veto the pair (cosine ~0)
    assert "no near-duplicate groups" in capsys.readouterr().out
    assert cli_main(["duplicates", "--workers", "1", "--no-embeddings"]) == 0
    capsys.readouterr()
    data = em.MapData(np.array(ids), np.array([[k, -k] for k in range(len(ids))], np.float32), "pca", 0.0)
    assert em.points_in_box(data, [2.5, 0.5], [-3, 0]) == ids[1:3]
    with session_scope(settings.db_url) as session:
        labels = consensus_labels(session)
        truth = {i: labels[i] for i in ids}
        run = add_run(session, "clip", "A", {i: Pred(truth[i] if k % 3 else "toxic", 0.9) for k, i in enumerate(ids)})
        assert em.colour_values(session, ids, "consensus label") == [truth[i] for i in ids]
        right = em.colour_values(session, ids, "run right/wrong", run)
        assert {v for v in right} <= {"right", "wrong"} and right[0] == ("right" if truth[ids[0]] == "toxic" else "wrong")
        groups = em.colour_values(session, ids, "duplicate group")
        assert sum(1 for g in groups if g) == 2 and len({g for g in groups if g}) == 1
        scores = em.colour_values(session, ids, "label-issue score", run)
        assert all(0.0 <= s <= 1.0 for s in scores)
        with pytest.raises(em.MapError):
            em.colour_values(session, ids, "run right/wrong")
        kinds = {s.kind for s in em.embedding_sets(session)}
    assert kinds == {"clip-image", "clip-text"}
    text_set = _only_set(settings, "clip-text")
    with session_scope(settings.db_url) as session:
        got_ids, vectors = em.load_embedding_set(session, text_set)
    assert got_ids.tolist() == ids and vectors.shape == (len(ids), 8)  # text rows: "<fingerprint>:t<hash>"
    assert cli_main(["map", "--embedding", "clip-text", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["points"] == len(ids)


def test_map_page_draws_the_points_and_relabels_a_selected_region(settings, clear_streamlit_cache) -> None:
    from streamlit.testing.v1 import AppTest

    ids = _memes(settings, 12)
    _embed(settings, ids)
    data = em.compute_map(settings.db_url, settings.artefacts_dir, _only_set(settings))
    at = AppTest.from_file(str(PAGES / "12_Map.py"), default_timeout=120)
    at.session_state["annotator"] = "dana"
    at.run()
    assert not at.exception
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["params"][0]["name"] == "region"
    assert any(c.value.startswith("12 memes · PCA") for c in at.caption)
    x, y = data.xy[:, 0], data.xy[:, 1]
    inside = [i for i, a in zip(data.image_ids.tolist(), x) if a <= np.median(x)]
    at.session_state["map_region"] = {"x": [float(x.min()) - 1, float(np.median(x))], "y": [float(y.min()) - 1,
                                                                                             float(y.max()) + 1]}
    at.run()
    assert not at.exception
    assert at.subheader[0].value.startswith(f"{len(inside)} memes in the selected region")
    assert len(at.get("image")) == len(inside)
    at.button(key=f"map_{inside[0]}_toxic").click().run()
    with session_scope(settings.db_url) as session:
        assert consensus_labels(session)[inside[0]] == "toxic"
    at.selectbox(key="map_colour").set_value("duplicate group").run()
    assert not at.exception


FORKS: list[int] = []  # pids that forked since this module was imported
os.register_at_fork(before=lambda: FORKS.append(os.getpid()))


def _open_map_page(settings):  # noqa: ANN202
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGES / "12_Map.py"), default_timeout=120)
    at.session_state["annotator"] = "dana"
    return at


def test_map_page_shows_pca_at_once_while_umap_runs_in_a_spawned_process(settings, clear_streamlit_cache) -> None:
    """UMAP (numba compile + fit) blocked the page for 21 s on 52 points; now the first open shows a
    PCA preview and UMAP runs in another process (a new interpreter: the server is never forked)."""
    ids = _memes(settings, 60)
    _embed(settings, ids, dim=16)
    emb_set = _only_set(settings)
    before = len(FORKS)
    at = _open_map_page(settings)
    at.run()
    assert not at.exception
    assert any(c.value.startswith("60 memes · PCA (a preview until UMAP is ready)") for c in at.caption)
    assert any("UMAP is being computed in a background process" in i.value for i in at.info)
    assert json.loads(at.get("vega_lite_chart")[0].proto.spec)["params"][0]["name"] == "region"
    job = em.map_job(settings.db_url, settings.artefacts_dir, emb_set)
    assert job is not None and job.running() and job.process.pid != os.getpid()
    at.run()  # a rerun while it runs starts no second process
    assert em.map_job(settings.db_url, settings.artefacts_dir, emb_set) is job
    assert FORKS[before:] == []
    job.process.terminate()  # a projection that dies says so, and can be started again
    job.process.wait(30)
    at.run()
    assert not at.exception
    assert any("UMAP failed" in w.value for w in at.warning)
    at.button(key="map_compute").click().run()
    again = em.map_job(settings.db_url, settings.artefacts_dir, emb_set)
    assert again is not job and again.running()
    again.process.terminate()
    again.process.wait(30)


@pytest.mark.slow  # numba compiles UMAP in the background process: ~20-40 s
def test_map_page_shows_umap_once_the_background_process_is_done(settings, clear_streamlit_cache) -> None:
    ids = _memes(settings, 60)
    _embed(settings, ids, dim=16)
    emb_set = _only_set(settings)
    at = _open_map_page(settings)
    at.run()
    job = em.map_job(settings.db_url, settings.artefacts_dir, emb_set)
    assert job.wait(timeout=300), job.error()
    at.run()
    assert not at.exception
    assert any(c.value.startswith("60 memes · UMAP (") and "cached" in c.value for c in at.caption)
    assert not at.info
