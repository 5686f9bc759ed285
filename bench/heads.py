"""Learned predictors and moderation signals, measured side by side in one run.

1. The 51 real memes (../shared/datasets/vlmemes, if present), real tesseract OCR:
   out-of-fold F1 / AUROC with 95% bootstrap CIs of the TF-IDF baseline, and NudeNet's
   F1 / AUROC against the folder labels plus its ms per image.
2. Generated memes (--n, known captions as the text): the same two.
3. Head training time per fold (logreg vs MLP) on random features of the real feature
   sizes (CLIP ViT-L/14 image 768, both 1536, Qwen2.5-VL-3B pooled 2048) — timing only.

    .venv/bin/python bench/heads.py [--n 40] [--ocr raw|two-pass] [--head-n 51 200] [--epochs 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REAL_MEMES = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "vlmemes" / "memes"


def fresh_workbench(root: Path, memes_dir: Path):  # noqa: ANN201
    """Settings on a new SQLite file in `root`, reading memes from `memes_dir`."""
    os.environ.update(WORKBENCH_DB_URL=f"sqlite:///{root / 'wb.sqlite3'}", WORKBENCH_MEMES_DIR=str(memes_dir),
                      WORKBENCH_ARTEFACTS_DIR=str(root / "artefacts"))
    from workbench.config import load_settings
    from workbench.store import db

    settings = load_settings()
    db.upgrade(settings.db_url)
    return settings


def ingest(settings) -> list[int]:  # noqa: ANN001
    from sqlalchemy import select

    from workbench.store.db import session_scope
    from workbench.store.ingest import scan_folder
    from workbench.store.schema import Image

    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        return list(session.scalars(select(Image.id).order_by(Image.id)))


def tesseract_ocr(settings, ids: list[int], passes: tuple[str, ...]) -> float:  # noqa: ANN001
    """OCR every image with tesseract into ocr_results; returns seconds per image."""
    from sqlalchemy import select

    from workbench.runs.step import fingerprint
    from workbench.store.db import session_scope
    from workbench.store.images import load_rgb
    from workbench.store.schema import Image, OcrResult

    try:
        from workbench.ocr.tesseract import TesseractEngine

        engine = TesseractEngine(lang="rus", passes=passes)
        config, read = engine.config(), lambda im: engine.read(im).text
    except ImportError:
        import tesserocr

        from workbench.config import TESSDATA_DIRS

        path = next(d for d in TESSDATA_DIRS if Path(d, "rus.traineddata").exists())
        config = {"engine": "tesserocr", "lang": "rus", "psm": 6}
        read = lambda im: tesserocr.image_to_text(im, lang="rus", path=path, psm=6)  # noqa: E731
    t0 = time.perf_counter()
    with session_scope(settings.db_url) as session:
        paths = dict(session.execute(select(Image.id, Image.path)).all())
        for image_id in ids:
            text = read(load_rgb(settings.memes_dir / paths[image_id])).strip()
            session.add(OcrResult(image_id=image_id, engine=config.get("engine", "tesseract"),
                                  fingerprint=fingerprint(config), config=config, text=text))
    return (time.perf_counter() - t0) / max(1, len(ids))


def run_and_score(settings, predictor, ids: list[int]) -> dict:  # noqa: ANN001
    """Run a predictor through the job runner; F1/AUROC (95% CIs) of its stored predictions."""
    from sqlalchemy import select

    from workbench.analysis.metrics import evaluate
    from workbench.predictors.run import run_predictions
    from workbench.store.db import session_scope
    from workbench.store.labels import consensus_labels
    from workbench.store.schema import Prediction

    t0 = time.perf_counter()
    summary = run_predictions(settings, predictor, ids, batch_size=16)
    seconds = time.perf_counter() - t0
    if summary.status != "done":
        return {"error": summary.error}
    with session_scope(settings.db_url) as session:
        labels = consensus_labels(session)
        preds = {p.image_id: p for p in session.scalars(select(Prediction).where(Prediction.run_id == summary.run_id))}
        rows = [(labels.get(i), preds[i].label if preds[i].error is None else "failed",
                 preds[i].prob_toxic, preds[i].latency_ms) for i in ids if i in preds]
    ev = evaluate([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    latencies = [r[3] for r in rows if r[3] is not None]
    return {"n": ev.n_labeled, "f1": ev.f1, "f1_ci": ev.ci.get("f1"), "auroc": ev.roc_auc,
            "auroc_ci": ev.ci.get("roc_auc"), "ms_per_image": sum(latencies) / max(1, len(latencies)),
            "job_s": seconds, "failed": summary.failed}


def fmt(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "   –"
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{value:.3f}"


def print_row(dataset: str, name: str, r: dict) -> None:
    if "error" in r:
        print(f"{dataset:10} {name:22} failed: {r['error']}")
        return
    print(f"{dataset:10} {name:22} n={r['n']:3}  F1 {fmt(r['f1'], r['f1_ci']):22}  AUROC {fmt(r['auroc'], r['auroc_ci']):22}"
          f"  {r['ms_per_image']:7.1f} ms/img  failed {r['failed']}")


def moderation_rows(dataset: str, settings, ids: list[int]) -> None:  # noqa: ANN001
    from workbench.predictors.run import build_predictor

    print_row(dataset, "TF-IDF 5-fold (OOF)", run_and_score(settings, build_predictor("text-tfidf", {"folds": 5}), ids))
    print_row(dataset, "NudeNet (sexual)", run_and_score(settings, build_predictor("nudenet"), ids))


def real_memes(args: argparse.Namespace) -> None:
    if not REAL_MEMES.is_dir():
        print(f"real memes: {REAL_MEMES} absent, skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        settings = fresh_workbench(Path(tmp), REAL_MEMES)
        ids = ingest(settings)
        passes = ("raw", "white") if args.ocr == "two-pass" else ("raw",)
        per_image = tesseract_ocr(settings, ids, passes)
        print(f"real memes: {len(ids)} images, tesseract {args.ocr} OCR {per_image:.2f} s/image")
        moderation_rows("real", settings, ids)


def generated_memes(args: argparse.Namespace) -> None:
    from sqlalchemy import select

    from workbench.store.db import session_scope
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ocr_texts import save_correction
    from workbench.store.schema import Image

    with tempfile.TemporaryDirectory() as tmp:
        memes = Path(tmp) / "memes"
        memes.mkdir()
        settings = fresh_workbench(Path(tmp), memes)
        samples = write_sample_memes(memes, n=args.n, seed=11, size=(256, 256))
        ids = ingest(settings)
        with session_scope(settings.db_url) as session:
            by_name = {im.original_name: im.id for im in session.scalars(select(Image))}
            for s in samples:  # the known captions stand in for OCR text
                save_correction(session, by_name[s.path.name], s.caption, "bench")
        print(f"generated: {len(ids)} memes, captions as text")
        moderation_rows("generated", settings, ids)


def head_timing(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from workbench.features.head_training import HeadConfig, cross_validate

    torch.set_num_threads(1)
    warm = np.zeros((10, 8), np.float32)
    cross_validate(warm, np.array([0, 1] * 5), [str(i) for i in range(10)], HeadConfig(epochs=1))  # imports, kernels
    print(f"head training on random features ({args.epochs} epochs, 5 folds, 1 thread): seconds per fold")
    print(f"{'n':>5} {'dim':>5} {'features':22} {'logreg':>8} {'mlp':>8} {'mlp/logreg':>10}")
    for n in args.head_n:
        for dim, what in ((768, "CLIP image"), (1536, "CLIP both"), (2048, "Qwen2.5-VL-3B pooled")):
            rng = np.random.default_rng(0)
            x = rng.normal(size=(n, dim)).astype(np.float32)
            y = np.array([i % 2 for i in range(n)])
            per_fold = {}
            for model in ("logreg", "mlp"):
                result = cross_validate(x, y, [str(i) for i in range(n)], HeadConfig(model=model, epochs=args.epochs))
                per_fold[model] = float(np.mean(result.fold_seconds))
            print(f"{n:5} {dim:5} {what:22} {per_fold['logreg']:8.2f} {per_fold['mlp']:8.2f} "
                  f"{per_fold['mlp'] / per_fold['logreg']:10.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="generated memes")
    parser.add_argument("--ocr", choices=("two-pass", "raw"), default="raw",
                        help="tesseract passes on real memes (two-pass reads more text, ~2.5x slower)")
    parser.add_argument("--head-n", type=int, nargs="+", default=[51], help="sample counts for head timing")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    if not args.skip_real:
        real_memes(args)
    generated_memes(args)
    head_timing(args)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
