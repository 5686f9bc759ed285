"""Predictor benchmark: the research notebook's way vs the workbench default, side by side
in one run, with the exact model architectures and random weights (same compute).

CLIP (exact openai/clip-vit-large-patch14 architecture):
  (a) notebook: fp32, one image at a time, the class prompts re-encoded with every image;
  (b) default:  ClipPredictor with device/dtype "auto" (bf16 on AMX CPUs) through the job
      runner, class-prompt embeddings cached; plus (b') the same with OCR text in the
      prompts (the text tower runs per image), and (c) a re-run on unchanged data.
  Achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode) against a matmul peak
  measured in the same run, per dtype.

Usage: .venv/bin/python bench/predict.py [--n 4] [--threads N] [--only clip|vlm|pipeline]

Sections are functions in SECTIONS, each `(args, peaks) -> None` printing its own table;
the VLM part (Qwen2.5-VL-3B architecture: notebook one-by-one generation vs batched,
label-only mode) is `bench_vlm` (predict_vlm.py); the job runner's prefetch pipeline vs the
sequential path vs raw decode (tiny CLIP, generated and real memes) is `bench_pipeline`
(predict_pipeline.py, its options --pipeline-n, --pipeline-reps, --flat-n). `--cluster` runs
only `bench_cluster` (predict_cluster.py): the runner on a local Dask cluster, 1 vs 2 workers,
OCR and tiny CLIP (--cluster-n, --cluster-clip-n).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4, help="memes per measured variant (default 4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the free cores)")
    p.add_argument("--device", default="auto", help="device for the default variant (auto | cpu | cuda)")
    p.add_argument("--batch-size", type=int, default=8, help="job batch size of the default variant")
    p.add_argument("--only", help="run only this section (e.g. clip, vlm)")
    p.add_argument("--new-tokens", type=int, default=16, help="VLM: new tokens generated per meme (default 16)")
    p.add_argument("--max-pixels", type=int, default=224 * 224, help="VLM: image pixel budget (default 224x224)")
    add_pipeline_args(p)
    add_cluster_args(p)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- shared


def matmul_peak(dtype: Any, device: str = "cpu", size: int = 2048, seconds: float = 1.5) -> float:
    """GFLOP/s of a square matmul in `dtype` (a practical peak for this machine right now)."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up (kernel choice, AMX tile set-up)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * size**3 * n / (time.perf_counter() - t0) / 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call, counted by torch's FlopCounterMode (matmuls/convs/attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n== {title}")
    if not rows:
        return
    cols = list(rows[0])
    cells = [[c for c in cols]] + [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for k, row in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def temp_workspace(n: int, root: Path) -> Any:
    """A fresh SQLite DB + n generated memes (512×512) ingested; returns (settings, ids, paths)."""
    from workbench.config import load_settings
    from workbench.store import db
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.ingest import scan_folder

    os.environ["WORKBENCH_DB_URL"] = f"sqlite:///{root / 'bench.sqlite3'}"
    os.environ["WORKBENCH_MEMES_DIR"] = str(root / "memes")
    os.environ["WORKBENCH_ARTEFACTS_DIR"] = str(root / "artefacts")
    settings = load_settings()
    db.upgrade(settings.db_url)
    memes = write_sample_memes(settings.memes_dir, n=n)
    with db.session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        from sqlalchemy import select

        from workbench.store.schema import Image

        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
    return settings, ids, [m.path for m in memes]


# ---------------------------------------------------------------------------- CLIP


def bench_clip(args: argparse.Namespace, peaks: dict[str, float]) -> None:
    """Notebook CLIP vs the workbench default on the exact ViT-L/14 architecture."""
    import torch
    from PIL import Image as PILImage

    from tests.support.tiny_models import build_clip_vit_l14
    from workbench.models.clip import encode_images, encode_texts, load_clip
    from workbench.predictors.run import build_predictor, run_predictions
    from workbench.store.db import session_scope
    from workbench.store.ocr_texts import save_correction

    with tempfile.TemporaryDirectory(prefix="bench-clip-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        model_dir = build_clip_vit_l14(root / "clip-vit-l14", dtype=torch.bfloat16)
        print(f"built random ViT-L/14 CLIP in {time.perf_counter() - t0:.1f} s -> {model_dir}")
        settings, ids, paths = temp_workspace(args.n * 2, root)  # two halves: without / with OCR text

        # (a) the notebook: fp32, one image at a time, prompts re-encoded with every image.
        model32, processor = load_clip(str(model_dir), "cpu", "float32")
        torch.set_num_threads(args.threads)
        prompts = ["токсичный мем", "нейтральный мем"]

        def notebook_one(path: Path) -> float:
            image = PILImage.open(path).convert("RGB")
            inputs = processor(text=prompts, images=image, return_tensors="pt", padding=True)
            with torch.inference_mode():
                out = model32(**inputs)
            return float(out.logits_per_image.softmax(dim=1)[0, 0])

        notebook_one(paths[0])  # warm-up
        t0 = time.perf_counter()
        for path in paths[: args.n]:
            notebook_one(path)
        nb_s = (time.perf_counter() - t0) / args.n
        sample = PILImage.open(paths[0]).convert("RGB")
        nb_flops = count_flops(lambda: model32(**processor(text=prompts, images=sample, return_tensors="pt",
                                                           padding=True)))

        # (b) the default predictor through the job runner (class prompts cached).
        default = build_predictor("clip", {"model": str(model_dir), "device": args.device})
        default.load()
        torch.set_num_threads(args.threads)
        dtype = default.placement.dtype
        default.predict(_inputs(paths[:1]))  # warm-up + class-prompt cache
        first = run_predictions(settings, default, ids[: args.n], batch_size=args.batch_size)
        df_s = first.seconds / max(1, first.done)
        img_flops = count_flops(lambda: encode_images(default.model, default.processor, [sample]))

        # (b') OCR text in the prompts: the text tower runs for every image.
        with session_scope(settings.db_url) as session:
            for image_id in ids[args.n :]:
                save_correction(session, image_id, "когда наконец пятница а начальник сказал выйти в субботу",
                                "bench")
        calls_before = default.text_encoder_calls
        ocr = run_predictions(settings, default, ids[args.n :], batch_size=args.batch_size)
        ocr_s = ocr.seconds / max(1, ocr.done)
        print(f"(b') text-tower calls: {default.text_encoder_calls - calls_before} for {ocr.done} memes with OCR text")
        ocr_prompts, _ = default.ocr_prompts("когда наконец пятница а начальник сказал выйти в субботу")
        txt_flops = count_flops(lambda: encode_texts(default.model, default.processor,
                                                     ocr_prompts["toxic"] + ocr_prompts["non_toxic"]))

        # (c) re-run on unchanged data: every image is already done -> no model calls.
        calls_before = default.text_encoder_calls
        rerun = run_predictions(settings, default, ids, batch_size=args.batch_size)
        assert rerun.done == 0 and rerun.skipped == len(ids), rerun.describe()

        rows = [
            _row("(a) notebook: fp32, 1 image, prompts re-encoded", "float32", nb_s, nb_flops, peaks),
            _row(f"(b) default: {default.placement.device} {dtype}, job batch {args.batch_size}, cached prompts",
                 dtype, df_s, img_flops, peaks),
            _row(f"(b') default + OCR text in {len(ocr_prompts['toxic']) * 2} prompts", dtype, ocr_s,
                 img_flops + txt_flops, peaks),
        ]
        print_table(f"CLIP ViT-L/14 (random weights), {args.n} memes of 512×512, {args.threads} threads", rows)
        print(f"\nspeed-up default vs notebook: {nb_s / df_s:.2f}x   (with OCR prompts: {nb_s / ocr_s:.2f}x)")
        print(f"re-run on unchanged data ({len(ids)} memes): {rerun.seconds:.2f} s, {rerun.done} predicted, "
              f"{rerun.skipped} skipped, text-tower calls {default.text_encoder_calls - calls_before}")


def _inputs(paths: list[Path]) -> list[Any]:
    from workbench.predictors.base import PredictInput
    from workbench.store.images import load_rgb

    return [PredictInput(i, load_rgb(p)) for i, p in enumerate(paths)]


def _row(name: str, dtype: str, seconds: float, flops: int, peaks: dict[str, float]) -> dict[str, Any]:
    gflops = flops / seconds / 1e9
    return {"variant": name, "s/img": seconds, "img/s": 1 / seconds, "GFLOP/img": flops / 1e9,
            "GFLOP/s": gflops, "matmul peak": f"{peaks[dtype]:,.0f} ({dtype})",
            "% of peak": 100 * gflops / peaks[dtype]}


# ---------------------------------------------------------------------------- main

# Each section: (name, function(args, peaks)). The VLM owner appends ("vlm", bench_vlm).
SECTIONS: list[tuple[str, Callable[[argparse.Namespace, dict[str, float]], None]]] = [("clip", bench_clip)]

from predict_cluster import add_args as add_cluster_args  # noqa: E402
from predict_cluster import bench_cluster  # noqa: E402
from predict_pipeline import add_args as add_pipeline_args  # noqa: E402 - bench/ is on sys.path as a script
from predict_pipeline import bench_pipeline  # noqa: E402
from predict_vlm import bench_vlm  # noqa: E402

SECTIONS += [("vlm", bench_vlm), ("pipeline", bench_pipeline)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cluster:  # the workers do the model work; no matmul peaks needed here
        bench_cluster(args, {})
        return 0
    from workbench.models import devices

    args.threads = args.threads or devices.free_cores()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # load_clip's set_threads honours it
    import torch

    torch.set_num_threads(args.threads)
    device = devices.resolve(args.device).device
    peaks = {name: matmul_peak(getattr(torch, name), device) for name in ("float32", "bfloat16")}
    if device.startswith("cuda"):
        peaks["float16"] = matmul_peak(torch.float16, device)
    print(f"device {device}, {args.threads} threads; matmul peak (2048²): "
          + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in peaks.items()))
    for name, section in SECTIONS:
        if args.only and name != args.only:
            continue
        section(args, peaks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
