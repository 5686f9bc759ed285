"""Near-duplicates, measured side by side in one run.

1. Pair precision / recall per repost kind: the real memes (../shared/datasets/vlmemes, if
   present) and --n generated memes, each with one repost of each kind (re-encoded at ~70 %;
   cropped by 5–7 % per border + watermark), grouped by `duplicates` exactly as shipped.
2. Hashing speed through the job runner (1 and 2 worker processes; the whole job and the rate
   once the workers have started) against a full decode of the same files on one core.
3. Grouping time at 10,000 and 100,000 hashes: --grid-n rendered memes (5 % of them with a
   repost) hashed for real; the 100,000 are ten copies of that set, each XOR-ed with its own
   random mask (distances inside a copy are real, across copies random).
4. Out-of-fold F1 of the TF-IDF baseline with and without grouping, on a set with planted
   reposts: generated memes whose labels are random (nothing to learn but the copies), and the
   real memes with two reposts each (real tesseract OCR of every file).
5. Map: server time of the Map page opening a cached projection of --map-n points (and the
   time UMAP took to make it).

    .venv/bin/python bench/duplicates.py [--n 150] [--speed-n 2000] [--grid-n 10000] [--map-n 10000]
                                         [--only pairs speed grouping oof map]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
REAL_MEMES = REPO.parent / "shared" / "datasets" / "vlmemes" / "memes"
SECTIONS = ("pairs", "speed", "grouping", "oof", "map")


def workspace(prefix: str):  # noqa: ANN201
    """A fresh workbench (memes dir, SQLite, artefacts) in a temporary folder; its settings."""
    from tests.support.workspace import temp_workspace
    from workbench.config import load_settings
    from workbench.store import db

    root = temp_workspace(prefix)
    settings = load_settings()
    db.upgrade(settings.db_url)
    return root, settings


def ingest(settings) -> dict[str, int]:  # noqa: ANN001
    """Scan the memes folder; relative path -> image id."""
    from sqlalchemy import select

    from workbench.store.db import session_scope
    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Image

    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        return {p: i for i, p in session.execute(select(Image.id, Image.path))}


def hash_all(settings, workers: int, force: bool = False, on_progress=None):  # noqa: ANN001, ANN201
    from workbench.features.image_hashes import HASH_BATCH, HashStep
    from workbench.runs.runner import run_step
    from workbench.store.catalog import image_ids
    from workbench.store.db import session_scope

    with session_scope(settings.db_url) as session:
        ids = image_ids(session)
    return run_step(settings.db_url, HashStep(), ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir,
                    batch_size=HASH_BATCH, workers=workers, force=force, on_progress=on_progress)


def timed_hash(settings, workers: int) -> tuple[float, float]:  # noqa: ANN001
    """(img/s of the whole job, worker start-up included; img/s from the first batch stored to the
    last: the rate the workers keep once started)."""
    marks: list[tuple[float, int]] = []
    summary = hash_all(settings, workers, force=True,
                       on_progress=lambda progress: marks.append((time.perf_counter(), progress.processed)))
    (t_first, n_first), (t_last, n_last) = next(m for m in marks if m[1] > 0), marks[-1]
    return summary.done / summary.seconds, (n_last - n_first) / (t_last - t_first)


def copy_real(memes: Path, limit: int | None = None) -> list[Path]:
    out = []
    for path in sorted(p for p in REAL_MEMES.rglob("*") if p.is_file())[:limit]:
        target = memes / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        out.append(target)
    return out


def generated(memes: Path, n: int, seed: int, sides: tuple[int, int] = (256, 640), png_share: float = 0.0) -> list[Path]:
    """n generated memes with sides drawn from `sides`, JPEG (quality 90) or, for `png_share` of them, PNG."""
    from workbench.config import LABEL_FOLDERS
    from workbench.store.demo_memes import caption_set, render_meme

    rng = random.Random(seed)
    out = []
    for i, (caption, label) in enumerate(caption_set(n, seed)):
        w, h = rng.randint(*sides), rng.randint(*sides)
        png = rng.random() < png_share
        path = memes / LABEL_FOLDERS[label] / f"gen_{seed}_{i:05d}.{'png' if png else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = render_meme(caption, seed=seed * 100_000 + i, size=(w, h))
        image.save(path, "PNG") if png else image.save(path, "JPEG", quality=90)
        out.append(path)
    return out


# ---------------------------------------------------------------- 1: pairs

def bench_pairs(n: int) -> None:
    import numpy as np

    from tests.support.variants import VARIANT_KINDS, write_variant
    from tests.support.workspace import remove_workspace
    from workbench.features.image_hashes import load_hash_table
    from workbench.features.near_duplicates import (
        DEFAULT_THRESHOLD,
        GroupingParams,
        candidate_pairs,
        pair_distances,
        regroup,
    )
    from workbench.store.db import session_scope

    root, settings = workspace("wb-bench-dup-")
    memes = settings.memes_dir
    originals = {"real": copy_real(memes) if REAL_MEMES.is_dir() else [], "generated": generated(memes, n, seed=7)}
    source_of: dict[Path, tuple[Path, str]] = {}
    for k, path in enumerate(itertools.chain(*originals.values())):
        for kind in VARIANT_KINDS:
            target = path.with_name(f"{path.stem}.{kind}.jpg")
            source_of[write_variant(kind, path, target, seed=k)] = (path, kind)
    ids = ingest(settings)
    hash_all(settings, 2)
    result, _ = regroup(settings.db_url, GroupingParams())
    with session_scope(settings.db_url) as session:
        table = load_hash_table(session)
    by_id = {i: memes / p for p, i in ids.items()}
    id_of = {path: i for i, path in by_id.items()}
    root_of = {i: source_of.get(path, (path, None))[0] for i, path in by_id.items()}
    kind_of = {i: source_of[path][1] for i, path in by_id.items() if path in source_of}
    predicted = {tuple(sorted(p)) for g in result.groups for p in itertools.combinations(g.members, 2)}
    print(f"{sum(map(len, originals.values()))} originals ({len(originals['real'])} real, {n} generated) "
          f"+ {len(source_of)} reposts")
    print(f"\n## Pair precision / recall (threshold {DEFAULT_THRESHOLD}; {len(result.groups)} groups)")
    print(f"{'originals':10} {'repost kind':16} {'pairs':>6} {'recall':>7} {'precision':>9}")
    for origin, paths in originals.items():
        members = {id_of[p] for p in paths} | {i for i, r in root_of.items() if r in set(paths)}
        for kind in VARIANT_KINDS:
            truth = {tuple(sorted((i, id_of[root_of[i]]))) for i in members if kind_of.get(i) == kind}
            involved = {p for p in predicted if any(kind_of.get(x) == kind and x in members for x in p)}
            right = {p for p in involved if root_of[p[0]] == root_of[p[1]]}
            recall = len(truth & predicted) / len(truth) if truth else float("nan")
            precision = len(right) / len(involved) if involved else float("nan")
            print(f"{origin:10} {kind:16} {len(truth):6d} {recall:7.3f} {precision:9.3f}")
    wrong = sum(1 for a, b in predicted if root_of[a] != root_of[b])
    print(f"all predicted pairs: {len(predicted)}, joining different memes: {wrong}")
    pairs = candidate_pairs(table.short, ~table.flat)
    dist = pair_distances(table.long, pairs)
    same = np.array([root_of[int(table.image_ids[a])] == root_of[int(table.image_ids[b])] for a, b in pairs.tolist()],
                    bool)
    print(f"candidate pairs checked: {len(pairs)} of {len(table) * (len(table) - 1) // 2} possible; "
          f"distance of true pairs max {dist[same].max():.3f}, of other candidates min {dist[~same].min():.3f}")
    remove_workspace(root)


# ---------------------------------------------------------------- 2: hashing speed

def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def cpu_available() -> float:
    """How many cores this machine gives two processes right now (2.0 = both, idle)."""
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    _spin(10_000_000)
    one = time.perf_counter() - t0
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_spin, [1000, 1000]))  # start the workers first
        t0 = time.perf_counter()
        list(pool.map(_spin, [10_000_000] * 2))
        return 2 * one / (time.perf_counter() - t0)


def bench_speed(n: int) -> None:
    from PIL import Image

    from tests.support.workspace import remove_workspace

    print(f"\n## Hashing speed, img/s; cores free for two processes now: {cpu_available():.2f} of 2")
    print("decode: one core, PIL open + load of the full image (what every other step does); hashing: the job\n"
          "runner with 1 and 2 worker processes, as a whole job (worker start-up included) and once started\n"
          "(first stored batch to last); ratio: hashing img/s per worker ÷ decode img/s")
    print(f"{'files':58} {'decode':>7} {'1 worker':>15} {'2 workers':>15} {'ratio per worker':>17}")
    print(f"{'':58} {'':>7} {'job / started':>15} {'job / started':>15} {'1w / 2w started':>17}")
    real = REAL_MEMES.is_dir()
    for name, sides, png_share in ((f"{n} meme-sized: the real memes + generated 600–1200 px, 1/3 PNG",
                                    (600, 1200), 1 / 3),
                                   (f"{n} small JPEG reposts: generated 256–512 px", (256, 512), 0.0)):
        root, settings = workspace("wb-bench-hash-")
        files = copy_real(settings.memes_dir) if real and png_share else []
        files += generated(settings.memes_dir, n - len(files), seed=9, sides=sides, png_share=png_share)
        ingest(settings)
        hash_all(settings, 1, force=True)  # warm the page cache for every measurement
        t0 = time.perf_counter()
        for path in files:
            with Image.open(path) as im:
                im.load()
        decode = len(files) / (time.perf_counter() - t0)
        rates = {workers: timed_hash(settings, workers) for workers in (1, 2)}
        cells = [f"{rates[w][0]:6.0f} / {rates[w][1]:<6.0f}" for w in (1, 2)]
        ratios = " / ".join(f"{rates[w][1] / decode / w:.2f}" for w in (1, 2))
        print(f"{name:58} {decode:7.0f} {cells[0]:>15} {cells[1]:>15} {ratios:>17}")
        remove_workspace(root)


# ---------------------------------------------------------------- 3: grouping time

def _render_and_hash(args: tuple[int, bool]):  # noqa: ANN202 - runs in a worker process
    from PIL import Image

    from tests.support.variants import make_variant
    from workbench.features.image_hashes import compute_hashes
    from workbench.store.demo_memes import render_meme

    k, with_repost = args
    rng = random.Random(k)
    image = render_meme(f"мем {k} {rng.choice(['кот', 'пятница', 'работа', 'ипотека'])}", seed=k,
                        size=(rng.randint(160, 320), rng.randint(160, 320)))
    out = [compute_hashes(image)]
    if with_repost:
        variant = Image.open(io.BytesIO(make_variant(("reencode", "crop_watermark")[k % 2], image, rng)))
        out.append(compute_hashes(variant.convert("RGB")))
    return out


def bench_grouping(n: int) -> None:
    import multiprocessing

    import numpy as np

    from workbench.features.image_hashes import HashTable, table_from_hashes
    from workbench.features.near_duplicates import GroupingParams, find_groups

    t0 = time.perf_counter()
    n_reposts = n // 20
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        made = pool.map(_render_and_hash, [(k, k < n_reposts) for k in range(n - n_reposts)], chunksize=64)
    hashes = [h for group in made for h in group]
    table = table_from_hashes(list(range(len(hashes))), hashes)
    print(f"\n## Grouping time ({len(table)} hashes of rendered memes made in {time.perf_counter() - t0:.0f} s)")
    rng = np.random.default_rng(0)
    for copies in (1, 10):
        if copies == 1:
            big = table
        else:
            masks = rng.integers(0, 2**63, size=(copies, 4), dtype=np.int64).astype(np.uint64) * np.uint64(2) + \
                rng.integers(0, 2, size=(copies, 4)).astype(np.uint64)
            long = np.concatenate([table.long ^ m[None, None, :] for m in masks])
            bits = np.unpackbits(long.astype(">u8").view(np.uint8).reshape(len(long), long.shape[1], 32), axis=2)
            short = np.packbits(bits.reshape(len(long), long.shape[1], 16, 16)[:, :, :8, :8]
                                .reshape(len(long), long.shape[1], 64), axis=2).view(">u8").astype(np.uint64)[..., 0]
            big = HashTable(np.arange(len(long)), short, long, np.tile(table.flat, copies))
        t0 = time.perf_counter()
        result = find_groups(big, GroupingParams())
        seconds = time.perf_counter() - t0
        times = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
        print(f"{len(big):>7} hashes: {seconds:6.2f} s ({times}); {result.n_candidates} candidate pairs, "
              f"{len(result.groups)} groups")


# ---------------------------------------------------------------- 4: out-of-fold F1

def _oof(settings) -> dict[str, dict]:  # noqa: ANN001
    from workbench.predictors.out_of_fold import read_training_report
    from workbench.predictors.run import build_predictor, run_predictions
    from workbench.store.catalog import image_ids
    from workbench.store.db import session_scope

    with session_scope(settings.db_url) as session:
        ids = image_ids(session)
    out = {}
    for grouped in (False, True):
        predictor = build_predictor("text-tfidf", {"group_duplicates": grouped})
        summary = run_predictions(settings, predictor, ids)
        assert summary.status == "done", summary.error
        out["grouped" if grouped else "ungrouped"] = read_training_report(predictor.fingerprint())["metrics"]
    return out


def bench_oof(n: int) -> None:
    from sqlalchemy import select

    from tests.support.variants import VARIANT_KINDS, plant_reposts
    from tests.support.workspace import remove_workspace
    from workbench.cli import main as cli_main
    from workbench.config import LABEL_FOLDERS
    from workbench.features.near_duplicates import GroupingParams, regroup
    from workbench.store.db import session_scope
    from workbench.store.demo_memes import caption_set, render_meme
    from workbench.store.ocr_texts import save_correction
    from workbench.store.schema import Image

    print("\n## Out-of-fold F1 of the TF-IDF baseline, folds split by near-duplicate group or not")
    print(f"{'set':44} {'ungrouped F1':>12} {'grouped F1':>11} {'AUROC u/g':>12}")

    def row(name: str, metrics: dict) -> None:
        u, g = metrics["ungrouped"], metrics["grouped"]
        print(f"{name:44} {u['f1']:12.3f} {g['f1']:11.3f} {u['auroc']:6.3f}/{g['auroc']:.3f}")

    # Generated memes, random labels: each original's caption is its own; two reposts each.
    root, settings = workspace("wb-bench-oof-")
    rng = random.Random(3)
    captions = {}
    for i, (caption, _) in enumerate(caption_set(n, seed=11)):
        label = rng.choice(("toxic", "non_toxic"))
        path = settings.memes_dir / LABEL_FOLDERS[label] / f"oof_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        render_meme(caption, seed=50_000 + i, size=(320, 320)).save(path, "JPEG", quality=90)
        captions[path.name] = f"{caption} {rng.randint(0, 10**6)}"  # the number makes every caption unique
    sources = sorted(settings.memes_dir.rglob("oof_*.jpg"))
    for kind in VARIANT_KINDS:
        for repost, source in plant_reposts(sources, kinds=(kind,)).items():
            captions[repost.name] = captions[source.name]
    ingest(settings)
    with session_scope(settings.db_url) as session:
        for image_id, path in session.execute(select(Image.id, Image.path)):
            save_correction(session, image_id, captions[Path(path).name], "bench")
    hash_all(settings, 2)
    regroup(settings.db_url, GroupingParams())
    row(f"{n} generated + 2 reposts each, random labels", _oof(settings))
    remove_workspace(root)

    if not REAL_MEMES.is_dir():
        print("(real memes absent: skipped)")
        return
    for with_reposts in (False, True):
        root, settings = workspace("wb-bench-oof-real-")
        sources = copy_real(settings.memes_dir)
        if with_reposts:
            for kind in VARIANT_KINDS:
                plant_reposts(sources, kinds=(kind,))
        ingest(settings)
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # progress bars
            assert cli_main(["ocr", "--engine", "tesseract", "--workers", "2"]) in (0, 1)
        hash_all(settings, 2)
        regroup(settings.db_url, GroupingParams())
        name = "51 real memes + 2 reposts each (tesseract)" if with_reposts else "51 real memes alone (tesseract)"
        row(name, _oof(settings))
        remove_workspace(root)


# ---------------------------------------------------------------- 5: map

def bench_map(n: int) -> None:
    import numpy as np

    from tests.support.synthetic_runs import add_images, add_labels
    from tests.support.workspace import remove_workspace
    from workbench.analysis.embedding_map import compute_map, embedding_sets
    from workbench.features.embeddings import ClipImageEmbedder, store_embeddings
    from workbench.store.db import session_scope

    root, settings = workspace("wb-bench-map-")
    rng = np.random.default_rng(0)
    with session_scope(settings.db_url) as session:
        ids = add_images(session, n)
        add_labels(session, {i: "toxic" if k % 2 else "non_toxic" for k, i in enumerate(ids)}, "folder")
        embedder = ClipImageEmbedder("bench-map")
        centres = rng.normal(0, 1, (20, 768)).astype(np.float32)
        store_embeddings(session, embedder, [(i, embedder.fingerprint(), centres[k % 20] + rng.normal(0, 0.5, 768))
                                             for k, i in enumerate(ids)])
    with session_scope(settings.db_url) as session:
        (emb_set,) = embedding_sets(session)
    data = compute_map(settings.db_url, settings.artefacts_dir, emb_set)
    print(f"\n## Map of {n} points: {data.method.upper()} took {data.seconds:.1f} s (once; cached per set)")
    import logging

    from streamlit.testing.v1 import AppTest

    logging.getLogger("streamlit").setLevel(logging.ERROR)  # "missing ScriptRunContext" in bare mode

    at = AppTest.from_file(str(REPO / "pages" / "12_Map.py"), default_timeout=300)
    at.session_state["annotator"] = "bench"
    for name in ("first open (imports included)", "open again", "open again"):
        t0 = time.perf_counter()
        at.run()
        assert not at.exception, at.exception
        print(f"{name:32} {time.perf_counter() - t0:6.2f} s server time")
    t0 = time.perf_counter()
    at.selectbox(key="map_colour").set_value("duplicate group").run()
    print(f"{'recolour by duplicate group':32} {time.perf_counter() - t0:6.2f} s")
    remove_workspace(root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=150, help="generated memes for pairs and out-of-fold F1")
    parser.add_argument("--speed-n", type=int, default=2000, help="files for the hashing speed")
    parser.add_argument("--grid-n", type=int, default=10_000, help="hashes for the grouping time (x10 for the second)")
    parser.add_argument("--map-n", type=int, default=10_000, help="points of the map")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args()
    sections = set(args.only)
    if "pairs" in sections:
        bench_pairs(args.n)
    if "speed" in sections:
        bench_speed(args.speed_n)
    if "grouping" in sections:
        bench_grouping(args.grid_n)
    if "oof" in sections:
        bench_oof(args.n)
    if "map" in sections:
        bench_map(args.map_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
