"""OCR benchmark: CER and seconds/image of raw Tesseract, the research two-pass baseline,
the `tesseract` engine, the `accurate` engine with axis-aligned line boxes only (its
previous form) and as shipped (the default), and EasyOCR (when its weights are present),
side by side on generated memes with known captions, the same memes turned by a few
degrees, and optionally hand-transcribed images; then images/s of the default engine
through the job runner with 1 vs 2 worker processes.

    .venv/bin/python bench/ocr.py                    # 60 generated + 20 tilted (~6 min on 2 cores)
    .venv/bin/python bench/ocr.py --n 20 --real      # + the real memes in ../shared (no ground truth:
                                                     #   share with >= 3 letters read)
    .venv/bin/python bench/ocr.py --truth a.csv --truth b.csv  # + CER on hand-transcribed images
                                                     #   (CSV: path,text; one table per file)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import csv  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("OMP_THREAD_LIMIT", "1")

from PIL import Image as PILImage  # noqa: E402

from workbench.config import REPO_ROOT, load_settings  # noqa: E402
from workbench.errors import ModelUnavailable  # noqa: E402
from workbench.ocr import DEFAULT_ENGINE, make_engine  # noqa: E402
from workbench.ocr.metrics import mean_cer  # noqa: E402
from workbench.ocr.tesseract import TesseractEngine  # noqa: E402
from workbench.store.demo_memes import write_sample_memes  # noqa: E402
from workbench.store.images import load_rgb  # noqa: E402

REAL = REPO_ROOT.parent / "shared" / "datasets" / "vlmemes" / "memes"


def engines(skip: set[str]) -> dict[str, object]:
    settings = load_settings()
    out = {
        "raw tesseract (psm 6)": TesseractEngine(passes=("raw",), drop_below=0, min_line_letters=0, min_letter_share=0),
        "baseline raw+white": TesseractEngine(passes=("raw", "white"), drop_below=0, min_line_letters=0,
                                             min_letter_share=0),
        "tesseract engine": make_engine("tesseract", settings),
        "accurate, box crops": make_engine("accurate", settings, crops=("box",)),
        "accurate (default)": make_engine("accurate", settings),
        "easyocr": make_engine("easyocr", settings),
    }
    return {k: v for k, v in out.items() if not any(s in k for s in skip)}


def score(engine, images: list, truths: list[str] | None) -> tuple[float | None, float, float, list[str]]:
    """(CER or None, wall s/image, CPU s/image, texts) of one engine, in this process."""
    engine.load()
    engine.read(images[0])  # warm-up: first-call set-up is not per-image cost
    wall, cpu = time.perf_counter(), time.process_time()
    texts = [engine.read(im).text for im in images]
    wall, cpu = (time.perf_counter() - wall) / len(images), (time.process_time() - cpu) / len(images)
    cer = mean_cer(list(zip(texts, truths))) if truths else None
    return cer, wall, cpu, texts


def compare(title: str, images: list, truths: list[str] | None, skip: set[str]) -> None:
    print(f"\n{title}")
    print(f"{'engine':24} {'CER':>6} {'with text':>9} {'s/img':>6} {'CPU s/img':>9}")
    for name, engine in engines(skip).items():
        try:
            cer, wall, cpu, texts = score(engine, images, truths)
        except ModelUnavailable as exc:
            print(f"{name:24} unavailable: {exc.reason}")
            continue
        with_text = sum(sum(ch.isalpha() for ch in t) >= 3 for t in texts) / len(texts)
        print(f"{name:24} {'-' if cer is None else f'{cer:.3f}':>6} {with_text:>9.0%} {wall:>6.2f} {cpu:>9.2f}",
              flush=True)


def workers_ratio(n: int) -> None:
    """images/s of the default engine through run_step with 1 and 2 workers (same images)."""
    from sqlalchemy import select

    from workbench.ocr.step import OcrStep
    from workbench.runs.runner import run_step
    from workbench.store import db
    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        memes = root / "memes"
        write_sample_memes(memes, n=n, seed=11)
        url = f"sqlite:///{root / 'bench.sqlite3'}"
        db.upgrade(url)
        with db.session_scope(url) as session:
            scan_folder(session, memes)
            ids = list(session.scalars(select(Image.id)))
        step = OcrStep(make_engine(DEFAULT_ENGINE, load_settings()))
        rates = {}
        for workers in (1, 2):
            summary = run_step(url, step, ids, memes_dir=memes, lock_dir=root, workers=workers, force=True,
                               batch_size=4)
            rates[workers] = summary.done / summary.seconds
        db.dispose_all()
    print(f"\njob runner, default engine ({DEFAULT_ENGINE}), {n} images: 1 worker {rates[1]:.2f} img/s, 2 workers {rates[2]:.2f} img/s "
          f"-> ratio {rates[2] / rates[1]:.2f}x ({len(os.sched_getaffinity(0))} cores; pool start-up included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60, help="generated memes (default 60)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers-n", type=int, default=16, help="images for the 1-vs-2-workers run (0: skip)")
    parser.add_argument("--real", action="store_true", help=f"also read the real memes in {REAL}")
    parser.add_argument("--tilt", type=float, default=10.0, help="degrees the tilted set is turned (0: skip)")
    parser.add_argument("--tilt-n", type=int, default=20, help="generated memes in the tilted set")
    parser.add_argument("--truth", type=Path, action="append", default=[],
                        help="CSV (path,text) of hand-transcribed images to score (repeatable)")
    parser.add_argument("--skip", default="", help="comma-separated engine name parts to leave out, e.g. accurate")
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    with tempfile.TemporaryDirectory() as tmp:
        samples = write_sample_memes(Path(tmp), n=args.n, seed=args.seed)
        images = [load_rgb(s.path) for s in samples]
    compare(f"generated memes: {args.n} (seed {args.seed}), CER against the rendered captions", images,
            [s.caption for s in samples], skip)
    if args.tilt and args.tilt_n:
        tilted = [im.rotate(args.tilt, resample=PILImage.Resampling.BICUBIC, fillcolor=(128, 128, 128))
                  for im in images[:args.tilt_n]]
        compare(f"the first {len(tilted)} generated memes turned by {args.tilt:g} degrees", tilted,
                [s.caption for s in samples[:len(tilted)]], skip)
    for truth in args.truth:
        rows = list(csv.DictReader(truth.open(encoding="utf-8")))
        compare(f"hand-transcribed images: {len(rows)} from {truth}", [load_rgb(r["path"]) for r in rows],
                [r["text"] for r in rows], skip)
    if args.real:
        if not REAL.is_dir():
            print(f"\n{REAL} is not present: real memes skipped")
        else:
            files = sorted(p for p in REAL.rglob("*") if p.is_file())
            compare(f"real memes: {len(files)} (no ground truth)", [load_rgb(p) for p in files], None, skip)
    if args.workers_n:
        workers_ratio(args.workers_n)


if __name__ == "__main__":
    main()
