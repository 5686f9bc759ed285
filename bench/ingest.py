"""Ingest throughput: N generated memes (default 2,000) scanned into a fresh SQLite DB,
against a raw PIL decode of the same files in the same run (the floor ingest cannot beat,
since it validates by fully decoding each file).

    .venv/bin/python bench/ingest.py [--n 2000] [--size 512] [--format JPEG]

Prints images/s for both, the ratio, and the cost of an incremental re-scan.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def raw_decode(paths: list[Path]) -> float:
    """Seconds to open and fully decode every file with PIL (no hashing, no DB)."""
    from PIL import Image

    t0 = time.perf_counter()
    for path in paths:
        with Image.open(path) as im:
            im.load()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="number of generated memes")
    parser.add_argument("--size", type=int, default=512, help="side of the square memes in pixels")
    parser.add_argument("--format", default="JPEG", choices=("JPEG", "PNG", "WEBP"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    args = parser.parse_args()

    from workbench.store import db
    from workbench.store.ingest import scan_folder

    tmp = Path(tempfile.mkdtemp(prefix="wb-bench-ingest-"))
    memes = tmp / "memes"
    url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    db.upgrade(url)
    t0 = time.perf_counter()
    # A few dozen rendered memes, each saved again with one changed pixel, so every file has its
    # own content hash (duplicates would be skipped) without rendering N pictures.
    from workbench.store.demo_memes import caption_set, render_meme

    pool = [(render_meme(caption, seed=i, size=(args.size, args.size)), label)
            for i, (caption, label) in enumerate(caption_set(min(args.n, 24)))]
    ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}[args.format]
    paths = []
    for i in range(args.n):
        base, label = pool[i % len(pool)]
        folder = memes / ("Негативно" if label == "toxic" else "Нейтрально")
        folder.mkdir(parents=True, exist_ok=True)
        im = base.copy()
        im.putpixel((i % args.size, i // args.size % args.size), (i % 256, i // 256 % 256, 7))
        path = folder / f"meme_{i:05d}{ext}"
        im.save(path, args.format, **({"quality": 90} if args.format != "PNG" else {}))
        paths.append(path)
    total_mb = sum(p.stat().st_size for p in paths) / 2**20
    print(f"generated {args.n} {args.format} memes of {args.size}px ({total_mb:.0f} MB) in "
          f"{time.perf_counter() - t0:.1f} s")

    decode_s = raw_decode(paths)
    with db.session_scope(url) as session:
        t0 = time.perf_counter()
        report = scan_folder(session, memes)
        ingest_s = time.perf_counter() - t0
    assert report.count("added") == args.n, report.summary()
    with db.session_scope(url) as session:
        t0 = time.perf_counter()
        rescan = scan_folder(session, memes)
        rescan_s = time.perf_counter() - t0
    assert rescan.count("unchanged") == args.n, rescan.summary()

    print(f"{'raw PIL decode':24} {args.n / decode_s:8.0f} images/s  ({decode_s:.2f} s)")
    print(f"{'ingest (validate+hash+DB)':24} {args.n / ingest_s:8.0f} images/s  ({ingest_s:.2f} s)")
    print(f"{'ratio ingest / decode':24} {decode_s / ingest_s:8.2f}")
    print(f"{'incremental re-scan':24} {args.n / rescan_s:8.0f} images/s  ({rescan_s:.2f} s, nothing decoded)")
    db.dispose_all()
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
