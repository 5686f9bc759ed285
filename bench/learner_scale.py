"""How long one learner refresh takes at scale, through the real code (2 cores, SQLite).

At `--n` memes (default 100,000): the TF-IDF learner over `--labels` human labels (default
10,000) on OCR text, and the head learner over `--n` cached `--dim`-d CLIP image embeddings
(default 768, float16 in the embeddings table, the way `embed clip` stores them) with the same
labels. Each refresh is `workbench.analysis.learner.refresh`: out-of-fold P(toxic) for the
labelled memes, full-fit P(toxic) for every other, stored as a learner run through the one job
runner. Targets (issue 23): ≤ 30 s each.

    .venv/bin/python bench/learner_scale.py [--n 100000] [--labels 10000] [--dim 768] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from tests.support.class_captions import add_captioned_memes  # noqa: E402
from tests.support.synthetic_runs import add_labels  # noqa: E402
from workbench.analysis import learner  # noqa: E402
from workbench.config import load_settings  # noqa: E402
from workbench.features.embeddings import ClipImageEmbedder, to_blob  # noqa: E402
from workbench.models.choices import embedder_model  # noqa: E402
from workbench.store import db  # noqa: E402
from workbench.store.schema import Embedding  # noqa: E402

TARGET_S = 30.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the suite runs this)")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.labels, args.dim = 400, 100, 16
    with tempfile.TemporaryDirectory(prefix="bench-learner-") as tmp:
        root = Path(tmp)
        os.environ["WORKBENCH_DB_URL"] = f"sqlite:///{root / 'wb.sqlite3'}"
        os.environ["WORKBENCH_MEMES_DIR"] = str(root / "memes")
        os.environ["WORKBENCH_ARTEFACTS_DIR"] = str(root / "artefacts")
        (root / "memes").mkdir()
        settings = load_settings()
        db.upgrade(settings.db_url)
        t0 = time.perf_counter()
        with db.session_scope(settings.db_url) as session:
            truth = add_captioned_memes(session, args.n, seed=0)
            ids = sorted(truth)
            labelled = random.Random(0).sample(ids, args.labels)
            add_labels(session, {i: truth[i] for i in labelled}, "anna")
            fp = ClipImageEmbedder(embedder_model(session, "clip")).fingerprint()
        # vectors that carry the class a little (a frozen CLIP's image features would, more or less)
        rng = np.random.default_rng(0)
        direction = rng.normal(size=args.dim)
        with db.session_scope(settings.db_url) as session:
            for start in range(0, len(ids), 5000):
                chunk = ids[start:start + 5000]
                vecs = rng.normal(size=(len(chunk), args.dim)) + np.outer(
                    [0.8 if truth[i] == "toxic" else -0.8 for i in chunk], direction) / np.sqrt(args.dim) * 4
                session.execute(insert(Embedding), [{"image_id": i, "fingerprint": fp, "kind": "clip-image",
                                                     "dim": args.dim, "vector": to_blob(v)}
                                                    for i, v in zip(chunk, vecs)])
        print(f"built {args.n} memes, {args.labels} labels, {args.n} x {args.dim}-d embeddings in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        for name, kwargs in (("TF-IDF on OCR text", {"learner": "text-tfidf"}),
                             (f"head on {args.dim}-d CLIP image embeddings", {"learner": "head", "embedding": "image"})):
            t0 = time.perf_counter()
            result = learner.refresh(settings, **kwargs)
            wall = time.perf_counter() - t0
            rows.append((name, wall, result))
            print(f"{name}: {wall:.1f} s (recorded {result.seconds:.1f} s), {result.labels} labels, out-of-fold F1 "
                  f"{result.oof_f1:.3f}", flush=True)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\n{args.n} memes, {args.labels} labels, {os.cpu_count()} cores, SQLite; peak RSS {peak_mb:.0f} MB")
        print("| refresh | seconds | target | out-of-fold F1 |")
        print("|---|---|---|---|")
        for name, wall, result in rows:
            verdict = "met" if wall <= TARGET_S else "MISSED"
            print(f"| {name} | {wall:.1f} | ≤ {TARGET_S:.0f} s ({verdict}) | {result.oof_f1:.3f} |")
        db.dispose_all()


if __name__ == "__main__":
    main()
