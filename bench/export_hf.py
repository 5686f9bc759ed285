"""Hugging Face dataset export of many memes (issue 24): time, and the process's RSS while it
writes (at 10 / 50 / 100 % and the peak over the process before the export), sharded.

The memes: `--base` generated JPEG memes (meme-sized, ~40–60 KB each), each copied over and over
with a unique tail of bytes (so every file has its own sha256, as reposts would not), inserted
as image rows with folder labels, one person's labels on a tenth, near-duplicate groups of
three and one run's predictions for all. The export runs in a fresh process.

    python bench/export_hf.py [--n 20000] [--shard-mb 256] [--smoke]
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(tmp: Path, n: int, base: int) -> str:
    """The memes folder and database of `n` memes; returns the database URL."""
    from sqlalchemy import insert

    from tests.support.synthetic_runs import Pred, add_labels, add_run
    from workbench.store import db
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.schema import DuplicateGroup, DuplicateMember, Image

    memes = tmp / "memes"
    originals = [m.path.read_bytes() for m in write_sample_memes(tmp / "base", n=base, seed=1, size=(640, 640),
                                                                 fmt="JPEG")]
    url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    db.upgrade(url)
    rows = []
    for k in range(n):
        data = originals[k % base] + k.to_bytes(8, "big")  # JPEG decoders ignore bytes after the end marker
        folder = ("Негативно", "Нейтрально")[k % 2]
        rel = f"{folder}/meme_{k:06d}.jpg"
        (memes / folder).mkdir(parents=True, exist_ok=True)
        (memes / rel).write_bytes(data)
        rows.append({"sha256": hashlib.sha256(data).hexdigest(), "path": rel, "original_name": f"meme_{k:06d}.jpg",
                     "format": "JPEG", "width": 640, "height": 640, "bytes": len(data), "n_frames": 1,
                     "source": "folder", "folder": folder, "missing": False})
    with db.session_scope(url) as session:
        for start in range(0, n, 5000):
            session.execute(insert(Image), rows[start:start + 5000])
        ids = [i for (i,) in session.query(Image.id).order_by(Image.id)]
        add_labels(session, {i: ("toxic", "non_toxic")[k % 2] for k, i in enumerate(ids)}, "folder")
        add_labels(session, {i: "toxic" for i in ids[::10]}, "ann@example.org")
        for start in range(0, len(ids) - 3, 30):
            group = DuplicateGroup(status="active", params={})
            session.add(group)
            session.flush()
            session.add_all(DuplicateMember(group_id=group.id, image_id=i) for i in ids[start:start + 3])
        add_run(session, "clip", "CLIP", {i: Pred("toxic" if k % 3 else "non_toxic", 0.1 + 0.8 * (k % 7) / 6)
                                          for k, i in enumerate(ids)})
    return url


def child(tmp: Path, url: str, shard_mb: int) -> None:
    import datasets  # noqa: F401 - the libraries' own memory counts as "before"
    import pyarrow.parquet  # noqa: F401

    from workbench.store import db
    from workbench.store.interop.hf_dataset import export_hf_dataset

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    marks: dict[int, float] = {}

    def progress(done: int, total: int) -> None:
        for pct in (10, 50, 100):
            if pct not in marks and done * 100 >= pct * total:
                marks[pct] = rss_mb()

    t0 = time.perf_counter()
    with db.session_scope(url) as session:
        run_ids = [1]
        out = export_hf_dataset(session, tmp / "memes", tmp / "ds", run_ids, shard_bytes=shard_mb << 20,
                                progress=progress)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = sum(f.stat().st_size for f in out.files) / 2**20
    print(" ".join(str(v) for v in (sum(out.splits.values()), len(out.files), f"{size:.0f}", f"{seconds:.1f}",
                                    f"{before:.0f}", f"{peak:.0f}", *(f"{marks.get(p, 0):.0f}" for p in (10, 50, 100)))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--base", type=int, default=200, help="distinct generated memes the set is copied from")
    parser.add_argument("--shard-mb", type=int, default=256)
    parser.add_argument("--smoke", action="store_true", help="60 memes, 1 MB shards: checks the bench runs")
    parser.add_argument("--child", nargs=3, metavar=("TMP", "URL", "SHARD_MB"))
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], int(args.child[2]))
        return
    if args.smoke:
        args.n, args.base, args.shard_mb = 60, 6, 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        url = build(tmp, args.n, args.base)
        files_mb = sum(f.stat().st_size for f in (tmp / "memes").rglob("*.jpg")) / 2**20
        print(f"{args.n} memes, {files_mb:.0f} MB of JPEG files (built in {time.perf_counter() - t0:.0f} s); "
              f"export in a fresh process, shards of {args.shard_mb} MB")
        out = subprocess.run([sys.executable, __file__, "--child", str(tmp), url, str(args.shard_mb)],
                             capture_output=True, text=True, check=True).stdout.split()
        rows, shards, size, seconds, before, peak, at10, at50, at100 = out
        print(f"{'memes':>7} {'shards':>6} {'MB':>6} {'s':>6} {'memes/s':>8} {'RSS before MB':>13} "
              f"{'at 10/50/100 % MB':>18} {'peak MB':>8} {'growth MB':>9}")
        print(f"{rows:>7} {shards:>6} {size:>6} {seconds:>6} {int(rows) / float(seconds):>8.0f} {before:>13} "
              f"{at10 + '/' + at50 + '/' + at100:>18} {peak:>8} {float(peak) - float(before):>9.0f}")


if __name__ == "__main__":
    main()
