"""Peak memory of an annotations.csv import against the file's size (issue 22): the same CSV
imported from bytes held in memory (the upload's way) and streamed from its path (the CLI's
way), each in a fresh process, side by side. Rows alternate between two ingested memes, so
what grows is the import itself, not the per-row state of an all-or-nothing check.

    python bench/import_memory.py [--mb 100]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def child(tmp: Path, mode: str) -> None:
    from workbench.store import db
    from workbench.store.annotations import import_annotations

    url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    csv_path = tmp / "big.csv"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with db.session_scope(url) as session:
        data = csv_path.read_bytes() if mode == "bytes" else csv_path
        report = import_annotations(session, tmp / "memes", data, all_or_nothing=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{report.rows} {before} {peak} {seconds:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--child", nargs=2, metavar=("TMP", "MODE"))
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return
    from workbench.store import db
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        memes = write_sample_memes(tmp / "memes", n=2, seed=1, size=(64, 64))
        url = f"sqlite:///{tmp / 'bench.sqlite3'}"
        db.upgrade(url)
        with db.session_scope(url) as session:
            scan_folder(session, tmp / "memes")
        rels = [m.path.relative_to(tmp / "memes").as_posix() for m in memes]
        target = int(args.mb * 2**20)
        with open(tmp / "big.csv", "w", encoding="utf-8") as fh:
            fh.write("filename,label\n")
            chunk = "".join(f"{rels[i % 2]},toxic\n" for i in range(10_000))
            while fh.tell() < target:
                fh.write(chunk)
        size_mb = (tmp / "big.csv").stat().st_size / 2**20
        print(f"annotations.csv of {size_mb:.0f} MB; peak RSS growth over the process before the import")
        print(f"{'mode':8} {'rows':>10} {'RSS before MB':>14} {'peak MB':>8} {'growth MB':>10} {'x file':>7} {'s':>6}")
        for mode in ("bytes", "stream"):
            out = subprocess.run([sys.executable, __file__, "--child", str(tmp), mode], capture_output=True,
                                 text=True, check=True).stdout.split()
            rows, before, peak, seconds = int(out[0]), int(out[1]) / 1024, int(out[2]) / 1024, out[3]
            print(f"{mode:8} {rows:>10} {before:>14.0f} {peak:>8.0f} {peak - before:>10.0f} "
                  f"{(peak - before) / size_mb:>7.2f} {seconds:>6}")


if __name__ == "__main__":
    main()
