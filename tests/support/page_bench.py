"""Builders and page timing shared by bench/ui.py and bench/scale.py: N meme files as hard
links of a few generated ones, a database filled with bulk inserts (images, labels, OCR text,
model runs, perceptual hashes), and the server time of a page through AppTest, as a server
runs it (scripts compiled once, components scanned once).

Rows are inserted with core INSERTs of dicts in chunks (executemany), never the ORM per row,
and generated chunk by chunk, so a million images build in minutes with flat memory.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent
TEAM = [f"annotator{i}@bench.org" for i in range(12)]
CHUNK = 10_000


@dataclass(frozen=True)
class MemeFile:
    """One image row's file: path relative to the memes dir, its sample's label and caption, size, mtime,
    and which pool file it links to."""

    rel: str
    label: str
    caption: str
    size: int
    mtime: float
    pool_index: int


def build_files(tmp: Path, n: int, distinct_files: int = 200, size: tuple[int, int] = (384, 384)) -> list[MemeFile]:
    """n hard links under WORKBENCH_MEMES_DIR to `distinct_files` generated memes (real files, so
    thumbnails and st.image do real work); every fifth in inbox/ (unlabeled by folder)."""
    from workbench.config import load_settings
    from workbench.store.demo_memes import write_sample_memes

    memes_dir = load_settings().memes_dir
    pool = write_sample_memes(tmp / "pool", n=distinct_files, size=size, fmt="JPEG")
    pool_stats = [p.path.stat() for p in pool]
    width = max(5, len(str(n - 1)))
    made: set[Path] = set()
    files = []
    for i in range(n):
        k = i % len(pool)
        sample = pool[k]
        folder = "Негативно" if sample.label == "toxic" else "Нейтрально"
        if i % 5 == 4:
            folder = "inbox"  # unlabeled by folder
        rel = f"{folder}/meme_{i:0{width}d}.jpg"
        target = memes_dir / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        os.link(sample.path, target)  # a hard link shares the pool file's inode: same size and mtime
        files.append(MemeFile(rel, sample.label, sample.caption, pool_stats[k].st_size, pool_stats[k].st_mtime, k))
    return files


def _chunks(rows: Iterable[dict], size: int = CHUNK) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def bulk_insert(db_url: str, table: type, rows: Iterable[dict]) -> int:
    """Insert rows (dicts) into an ORM table in chunks of CHUNK, one transaction per chunk; returns the count."""
    from sqlalchemy import insert

    from workbench.store import db

    n = 0
    for chunk in _chunks(rows):
        with db.session_scope(db_url) as session:
            session.execute(insert(table), chunk)
        n += len(chunk)
    return n


def fill_db(db_url: str, files: list[MemeFile], people: str = "pair") -> None:
    """Migrate the database at db_url and insert the images, labels, OCR rows and the team's users.

    Labels: a 'folder' label on every meme outside inbox/; people: "pair" — alice and bob each on
    ~30 % (bench/ui.py), or "team" — one of TEAM on 30 % of the memes and a second one on a tenth
    of those (k = 2). OCR text on every other meme."""
    from workbench.store import db
    from workbench.store.schema import Image, Label, OcrResult, User

    db.upgrade(db_url)

    def images() -> Iterator[dict]:
        for i, f in enumerate(files):
            folder = f.rel.split("/", 1)[0]
            yield dict(id=i + 1, sha256=f"{i:064x}", path=f.rel, original_name=f.rel.rsplit("/", 1)[1], format="JPEG",
                       width=384, height=384, bytes=f.size, n_frames=1, source="folder", folder=folder, mtime=f.mtime,
                       missing=False)

    def labels() -> Iterator[dict]:
        rng = random.Random(0)
        for i, f in enumerate(files):
            if not f.rel.startswith("inbox/"):
                yield dict(image_id=i + 1, label=f.label, annotator="folder", queue_order="folder")
            if people == "pair":
                for person in ("alice", "bob"):
                    if rng.random() < 0.3:
                        yield dict(image_id=i + 1, label=rng.choice(["toxic", "non_toxic"]), annotator=person)
            elif rng.random() < 0.3:
                who = rng.sample(TEAM, 2 if rng.random() < 0.1 else 1)
                for person in who:
                    label = f.label if rng.random() < 0.85 else ("non_toxic" if f.label == "toxic" else "toxic")
                    yield dict(image_id=i + 1, label=label, annotator=person, queue_order="random")

    def ocr() -> Iterator[dict]:
        for i, f in enumerate(files):
            if i % 2 == 0:
                yield dict(image_id=i + 1, engine="tesseract", fingerprint="tesseract:bench", config={}, text=f.caption,
                           boxes=[])

    bulk_insert(db_url, Image, images())
    bulk_insert(db_url, Label, labels())
    bulk_insert(db_url, OcrResult, ocr())
    with db.session_scope(db_url) as session:
        from sqlalchemy import insert

        session.execute(insert(User), [dict(email=e, role="annotator", added_by="bench") for e in TEAM])


def add_runs(db_url: str, files: list[MemeFile], kinds: tuple[str, ...] = ("vlm", "clip", "head"), seed: int = 0) -> list[int]:
    """One finished model run per kind predicting every image (bulk): right ~80 % of the time, a
    probability per answer except for the VLM (it answers a class), ~3 % 'unknown'. Returns the run ids."""
    from workbench.store import db
    from workbench.store.schema import ModelRun, Prediction

    run_ids = []
    for r, kind in enumerate(kinds):
        with db.session_scope(db_url) as session:
            run = ModelRun(kind=kind, model_id=f"bench/{kind}", name=f"bench {kind}", params={"threshold": 0.5},
                           fingerprint=f"bench-{kind}-{seed}-{r}", status="done")
            session.add(run)
            session.flush()
            run_ids.append(run.id)
        rng = np.random.default_rng(seed + r)
        n = len(files)
        truth = np.array([f.label == "toxic" for f in files])
        noise = rng.random(n)
        right = noise < 0.8
        prob = np.where(truth == right, 0.5 + rng.random(n) / 2, rng.random(n) / 2)
        unknown = rng.random(n) < 0.03

        def rows(run_id: int = run.id, kind: str = kind, prob: np.ndarray = prob, unknown: np.ndarray = unknown) -> Iterator[dict]:
            has_prob = kind != "vlm"
            for i, (p, u) in enumerate(zip(prob.tolist(), unknown.tolist())):
                label = "unknown" if u else ("toxic" if p >= 0.5 else "non_toxic")
                yield dict(run_id=run_id, image_id=i + 1, label=label, prob_toxic=p if has_prob and not u else None,
                           explanation=None, raw_output=None, latency_ms=12.5, error=None, extra={})

        bulk_insert(db_url, Prediction, rows())
    return run_ids


def add_hashes(db_url: str, n: int, dup_share: float = 0.05, seed: int = 0) -> int:
    """Cached perceptual hashes (current config) for images 1..n: random 256-bit hashes per crop level
    (their 64-bit keys cut from them as the hasher does), and near-copies planted on `dup_share` of the
    images in pairs (the second a copy of the first with ~4 % of its bits flipped). Returns planted pairs."""
    from workbench.features.image_hashes import CROP_LEVELS, LONG_BITS, hash_fingerprint
    from workbench.store.schema import ImageHash

    levels, words = len(CROP_LEVELS), LONG_BITS // 64
    fp = hash_fingerprint()
    rng = np.random.default_rng(seed)
    every = max(2, round(2 / dup_share)) if dup_share > 0 else 0
    planted = 0

    def rows() -> Iterator[dict]:
        nonlocal planted
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            long = rng.integers(0, 2**63, size=(m, levels, words), dtype=np.int64).astype(np.uint64) * np.uint64(2) \
                + rng.integers(0, 2, size=(m, levels, words)).astype(np.uint64)
            if every:
                firsts = [j for j in range(m - 1) if (start + j) % every == 0]
                for j in firsts:  # the copy: the same hash with ~10 of 256 bits flipped per level
                    flips = np.zeros((levels, words), np.uint64)
                    for _ in range(10):
                        flips[:, rng.integers(words)] |= np.uint64(1) << np.uint64(rng.integers(64))
                    long[j + 1] = long[j] ^ flips
                planted += len(firsts)
            bits = np.unpackbits(long.astype(">u8").view(np.uint8).reshape(m, levels, 32), axis=2)
            short = np.packbits(bits.reshape(m, levels, 16, 16)[:, :, :8, :8].reshape(m, levels, 64), axis=2) \
                .view(">u8").astype(np.uint64)[..., 0]
            short_b, long_b = short.astype("<u8"), long.astype("<u8")
            for j in range(m):
                yield dict(image_id=start + j + 1, fingerprint=fp, short_hashes=short_b[j].tobytes(),
                           long_hashes=long_b[j].tobytes(), flat=False, error=None, duration_ms=1.0)

    bulk_insert(db_url, ImageHash, rows())
    return planted


def analyze(db_url: str) -> None:
    """What a settled database has after a bulk load: fresh planner statistics (autovacuum on
    PostgreSQL, ANALYZE on SQLite, which the app never runs itself)."""
    from workbench.store import db

    with db.get_engine(db_url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE" if not db_url.startswith("sqlite") else "ANALYZE")


# ---- page timing through AppTest ---------------------------------------------------------

_COMPONENTS: list = []


def _components():  # noqa: ANN202
    if not _COMPONENTS:
        from streamlit.components.v2.component_manager import BidiComponentManager

        manager = BidiComponentManager()
        manager.discover_and_register_components(start_file_watching=False)
        _COMPONENTS.append(manager)
    return _COMPONENTS[0]


_SCRIPTS: dict = {}


def _share_script_cache() -> None:
    """A server compiles each script once per process (one ScriptCache); AppTest compiles them again
    on every run (~60 ms here). Share one cache, so a run measures our page, not the compiler."""
    from streamlit.runtime.scriptrunner import script_cache

    if getattr(script_cache.ScriptCache, "_bench_shared", False):
        return
    original = script_cache.ScriptCache.__init__

    def init(self) -> None:  # noqa: ANN001
        original(self)
        self._cache = _SCRIPTS

    script_cache.ScriptCache.__init__ = init
    script_cache.ScriptCache._bench_shared = True


def app(page: str | None):  # noqa: ANN201
    """An AppTest of the app opened at `page` (None: home), sharing one script cache and one component scan."""
    from streamlit.testing.v1 import AppTest

    _share_script_cache()
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
    # A server scans installed packages for components once per process; AppTest does it once
    # per AppTest (~1.4 s here). Share one scan so "first run" measures our page, not that.
    at._bidi_component_manager = _components()
    if page:
        at.switch_page(page)
    return at


def timed(at, action: Callable[[], object] | None = None) -> float:  # noqa: ANN001
    """ms of one run of `at` (after `action`, e.g. a widget change); raises on a page exception."""
    if action is not None:
        action()
    t0 = time.perf_counter()
    at.run()
    ms = (time.perf_counter() - t0) * 1000
    if at.exception:
        raise RuntimeError(at.exception[0].message)
    return ms


def time_page(page: str | None, runs: int, annotator: str = "alice") -> tuple[float, float, list[float]]:
    """(first run of a fresh session, median rerun) in ms for one page."""
    firsts, reruns = [], []
    for _ in range(runs):
        at = app(page)
        at.session_state["annotator"] = annotator
        firsts.append(timed(at))
        reruns.append(timed(at))
    return statistics.median(firsts), statistics.median(reruns), firsts


def time_labeling(runs: int, team: bool, presses: int = 2) -> tuple[float, float]:
    """(median first open, median label -> next) of the Label page, one person or a signed-in team member."""
    firsts, nexts = [], []
    for r in range(runs):
        at = app("pages/1_Label.py")
        if team:
            at.user = {"is_logged_in": True, "email": TEAM[r % len(TEAM)], "iat": int(time.time())}
        else:
            at.session_state["annotator"] = f"bench{r}"
        firsts.append(timed(at))
        for _ in range(presses):
            before = at.query_params.get("image")
            at.button(key="lbl_toxic").click()
            nexts.append(timed(at))
            if at.query_params.get("image") == before:
                raise RuntimeError("the Label page did not move to the next meme")
    return statistics.median(firsts), statistics.median(nexts)
