"""Server-side render time of the labeling page and a gallery page with N memes (default
10,000) + labels in a temporary database: AppTest run time, median of several runs.

Targets: labeling page <= 300 ms, gallery page <= 500 ms.

    .venv/bin/python bench/ui.py [--n 10000] [--runs 7]

The N image rows point at hard links of a few hundred generated memes (real files, so
thumbnails and st.image do real work), each row with its own content hash. Labels: a
'folder' label on 60 %, two people on ~30 %, and OCR text on half, like a working project.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.support.workspace import remove_workspace, temp_workspace  # noqa: E402 - the repo root is on sys.path now

os.environ.setdefault("OMP_NUM_THREADS", "1")


def build_db(tmp: Path, n: int, distinct_files: int = 200) -> None:  # noqa: PLR0914
    """Fill WORKBENCH_* (already pointing into tmp) with n images, labels and OCR rows."""
    from sqlalchemy import insert

    from workbench.config import load_settings
    from workbench.store import db
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.schema import Image, Label, OcrResult

    settings = load_settings()
    db.upgrade(settings.db_url)
    pool = write_sample_memes(tmp / "pool", n=distinct_files, size=(384, 384), fmt="JPEG")
    rng = random.Random(0)
    images, labels, ocr = [], [], []
    for i in range(n):
        sample = pool[i % len(pool)]
        folder = "Негативно" if sample.label == "toxic" else "Нейтрально"
        if i % 5 == 4:
            folder = "inbox"  # unlabeled by folder
        rel = f"{folder}/meme_{i:05d}.jpg"
        target = settings.memes_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(sample.path, target)
        images.append(dict(id=i + 1, sha256=f"{i:064x}", path=rel, original_name=target.name, format="JPEG",
                           width=384, height=384, bytes=target.stat().st_size, n_frames=1, source="folder",
                           folder=folder, mtime=target.stat().st_mtime, missing=False))
        if folder != "inbox":
            labels.append(dict(image_id=i + 1, label=sample.label, annotator="folder"))
        for person in ("alice", "bob"):
            if rng.random() < 0.3:
                labels.append(dict(image_id=i + 1, label=rng.choice(["toxic", "non_toxic"]), annotator=person))
        if i % 2 == 0:
            ocr.append(dict(image_id=i + 1, engine="tesseract", fingerprint="tesseract:bench", config={},
                            text=sample.caption, boxes=[]))
    with db.session_scope(settings.db_url) as session:
        session.execute(insert(Image), images)
        session.execute(insert(Label), labels)
        session.execute(insert(OcrResult), ocr)


_COMPONENTS = []


def _components():  # noqa: ANN202
    if not _COMPONENTS:
        from streamlit.components.v2.component_manager import BidiComponentManager

        manager = BidiComponentManager()
        manager.discover_and_register_components(start_file_watching=False)
        _COMPONENTS.append(manager)
    return _COMPONENTS[0]


def time_page(page: str | None, runs: int, annotator: str = "alice") -> tuple[float, float, list[float]]:
    """(first run of a fresh session, median rerun) in ms for one page."""
    from streamlit.testing.v1 import AppTest

    firsts, reruns = [], []
    for _ in range(runs):
        at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
        # A server scans installed packages for components once per process; AppTest does it once
        # per AppTest (~1.4 s here). Share one scan so "first run" measures our page, not that.
        at._bidi_component_manager = _components()
        if page:
            at.switch_page(page)
        at.session_state["annotator"] = annotator
        t0 = time.perf_counter()
        at.run()
        firsts.append((time.perf_counter() - t0) * 1000)
        if at.exception:
            raise RuntimeError(f"{page}: {at.exception[0].message}")
        t0 = time.perf_counter()
        at.run()
        reruns.append((time.perf_counter() - t0) * 1000)
    return statistics.median(firsts), statistics.median(reruns), firsts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="memes in the database")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per page (median reported)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary database and files")
    args = parser.parse_args()
    tmp = temp_workspace("wb-bench-ui-")
    t0 = time.perf_counter()
    build_db(tmp, args.n)
    print(f"built {args.n} memes + labels + OCR in {time.perf_counter() - t0:.1f} s ({tmp})")
    time_page("pages/2_Gallery.py", 1)  # warm-up: imports, migrations check, thumbnails of page 1
    time_page("pages/1_Label.py", 1)
    results = {}
    for name, page, target in (("labeling", "pages/1_Label.py", 300), ("gallery", "pages/2_Gallery.py", 500)):
        first, rerun, _ = time_page(page, args.runs)
        results[name] = (first, rerun, target)
    print(f"{'page':10} {'first run':>10} {'rerun':>8} {'target':>7}")
    for name, (first, rerun, target) in results.items():
        verdict = "ok" if max(first, rerun) <= target else "SLOW"
        print(f"{name:10} {first:8.0f}ms {rerun:6.0f}ms {target:5d}ms  {verdict}")
    print("first run = a new browser session opening the page; rerun = the same session after an interaction")
    remove_workspace(tmp, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
