"""One-shot GPU benchmark: everything worth knowing about the workbench's models on one GPU,
side by side, in one run of at most ~8 minutes. Architectures are exact (random weights, bf16):
openai/clip-vit-large-patch14 and Qwen/Qwen2.5-VL-3B-Instruct.

  A. the bf16 matmul peak of this GPU, measured now (the yardstick for "% of peak");
  B. CLIP ViT-L/14 image tower at several batch sizes: img/s, GFLOP/img, % of peak;
  C. Qwen2.5-VL-3B at several batch sizes: label-only (one prefill, class-word probabilities)
     vs generate (--new-tokens tokens): img/s and % of peak;
  D. bitsandbytes 4-bit (nf4, loaded through the workbench's own loader) vs bf16: speed and
     peak memory, label-only and generate (skipped without CUDA or bitsandbytes);
  E. end to end: the job runner on generated memes (decode, fit, preprocess in the prefetch
     threads; per-batch commits) vs the model alone at the same batch size, and the runner
     without prefetching for contrast.

Usage:
  python bench/gpu.py                    # on a CUDA machine (≈ 5–8 min on one GPU)
  python bench/gpu.py --smoke            # tiny random models on the CPU in seconds (the test suite runs it)
  python bench/gpu.py --smoke --device cuda   # the same on a GPU (the GPU-only test)
Options: --clip-batches 1,16,64,256 --vlm-batches 1,8,32 --new-tokens 32 --memes 1024 --budget-s 480
Sections still to run when --budget-s is spent are skipped with a note, never silently.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VLM_NAME = "random-qwen2.5-vl-3b"  # a cache key: the full-size VLM is built in memory, never loaded


@dataclass
class Config:
    smoke: bool
    device: str
    dtype: str
    clip_batches: list[int]
    vlm_batches: list[int]
    new_tokens: int
    max_pixels: int
    memes: int
    vlm_memes: int
    matmul_size: int
    min_seconds: float
    budget_s: float


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models, tiny sizes (CPU unless --device cuda)")
    p.add_argument("--device", default=None, help="cuda (default) | cpu")
    p.add_argument("--clip-batches", default=None, help="CLIP batch sizes (default 1,16,64,256)")
    p.add_argument("--vlm-batches", default=None, help="VLM batch sizes (default 1,8,32)")
    p.add_argument("--new-tokens", type=int, default=None, help="generated tokens per meme (default 32)")
    p.add_argument("--max-pixels", type=int, default=None, help="VLM image budget (default 448×448 = 256 tokens)")
    p.add_argument("--memes", type=int, default=None, help="generated memes for the CLIP end-to-end run (default 1024)")
    p.add_argument("--budget-s", type=float, default=480.0, help="skip what is left after this many seconds")
    a = p.parse_args(argv)
    smoke = a.smoke

    def sizes(text: str | None, default: str) -> list[int]:
        return [int(x) for x in (text or default).split(",") if x.strip()]

    return Config(
        smoke=smoke, device=a.device or ("cpu" if smoke else "cuda"), dtype="float32" if smoke else "bfloat16",
        clip_batches=sizes(a.clip_batches, "1,4" if smoke else "1,16,64,256"),
        vlm_batches=sizes(a.vlm_batches, "1,4" if smoke else "1,8,32"),
        new_tokens=a.new_tokens or (4 if smoke else 32), max_pixels=a.max_pixels or (112 * 112 if smoke else 448 * 448),
        memes=a.memes or (8 if smoke else 1024), vlm_memes=8 if smoke else 256, matmul_size=256 if smoke else 8192,
        min_seconds=0.05 if smoke else 1.0, budget_s=a.budget_s)


# ---------------------------------------------------------------------------- measuring


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], Any], device: str, min_seconds: float) -> float:
    """Wall seconds of one call: one warm-up, then repeated until `min_seconds` have passed."""
    fn()
    synchronize(device)
    calls, t0 = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - t0 < min_seconds:
        fn()
        synchronize(device)
        calls += 1
    return (time.perf_counter() - t0) / calls


def peak_memory_gb(fn: Callable[[], Any], device: str) -> float | None:
    """Peak GPU memory (GB) allocated while `fn` runs, weights included; None off CUDA."""
    import torch

    if not device.startswith("cuda"):
        fn()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats()
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated() / 1e9


def row(section: str, variant: str, batch: int | None, seconds_per_image: float, flops: float | None,
        peak: float, memory_gb: float | None = None) -> dict[str, Any]:
    gflops = flops / seconds_per_image / 1e9 if flops else None
    return {"section": section, "variant": variant, "batch": batch, "img/s": 1.0 / seconds_per_image,
            "GFLOP/img": flops / 1e9 if flops else None, "GFLOP/s": gflops,
            "% of peak": 100 * gflops / peak if gflops else None, "peak mem GB": memory_gb}


class Budget:
    """Seconds left of --budget-s; `spent(name)` says (and prints) when a section is skipped."""

    def __init__(self, seconds: float) -> None:
        self.t0, self.seconds = time.monotonic(), seconds

    def spent(self, name: str, skipped: list[str]) -> bool:
        elapsed = time.monotonic() - self.t0
        if elapsed > self.seconds:
            skipped.append(f"{name}: skipped, the {self.seconds:.0f} s budget was spent ({elapsed:.0f} s)")
            return True
        return False


# ---------------------------------------------------------------------------- models


def clip_model(cfg: Config, root: Path) -> tuple[str, Any, Any]:
    """(folder, model, processor): ViT-L/14 with random weights written to `root` (tiny CLIP in
    --smoke), loaded through the workbench's loader on the device."""
    from workbench.models.clip import load_clip

    if cfg.smoke:
        from tests.support.tiny_models import tiny_model_dir

        folder = str(tiny_model_dir("clip"))
    else:
        import torch

        from tests.support.tiny_models import build_clip_vit_l14

        folder = str(build_clip_vit_l14(root / "clip-vit-l14", dtype=torch.bfloat16))
    model, processor = load_clip(folder, cfg.device, cfg.dtype)
    return folder, model, processor


def vlm_predictor(cfg: Config, mode: str, model_name: str | None = None, quantization: str = "none") -> Any:
    from workbench.predictors.run import build_predictor

    return build_predictor("vlm", {
        "model": model_name or VLM_NAME, "endpoint": "local", "mode": mode, "device": cfg.device, "dtype": cfg.dtype,
        "quantization": quantization, "max_pixels": cfg.max_pixels, "max_new_tokens": cfg.new_tokens,
        "batch_size": max(cfg.vlm_batches)})


def vlm_model(cfg: Config) -> tuple[Any, Any, str]:
    """(model, processor, name): Qwen2.5-VL-3B with random weights in memory, registered in the
    workbench's VLM cache under `name` (the tiny Qwen2.5-VL through the real loader in --smoke)."""
    from workbench.models.vlm import load_vlm, register_loaded

    if cfg.smoke:
        from tests.support.tiny_models import tiny_model_dir

        name = str(tiny_model_dir("qwen2_5_vl"))
        model, processor = load_vlm(name, cfg.device, cfg.dtype)
        return model, processor, name
    import torch

    from tests.support.tiny_models import random_qwen2_5_vl_3b

    model, processor = random_qwen2_5_vl_3b(dtype=torch.bfloat16, max_pixels=cfg.max_pixels)
    model = model.to(cfg.device)
    register_loaded(vlm_predictor(cfg, "label"), model, processor)
    return model, processor, VLM_NAME


def vlm_inputs(predictor: Any, processor: Any, model: Any, batch: int) -> Any:
    """A batch exactly as the predictor builds it (prompt, pixel budget, left padding) on the device."""
    from workbench.predictors.base import PredictInput, prepare_inputs
    from workbench.store.demo_memes import render_meme

    items = prepare_inputs(predictor, [PredictInput(i, render_meme(f"мем {i}", seed=i, size=(512, 512)), "")
                                       for i in range(batch)])
    inputs = processor(text=[predictor._chat_text(processor, it) for it in items], images=[it.image for it in items],
                       padding=True, return_tensors="pt",
                       size={"shortest_edge": predictor.min_pixels, "longest_edge": predictor.max_pixels}).to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def lm_params(model: Any) -> int:
    return sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()


# ---------------------------------------------------------------------------- sections


def bench_clip(cfg: Config, model: Any, peak: float) -> tuple[list[dict[str, Any]], dict[int, float]]:
    """B: the image tower on ready pixel tensors (no decode, no preprocessing)."""
    import torch
    from predict import count_flops

    side = int(model.config.vision_config.image_size)
    rows, model_only = [], {}
    for batch in cfg.clip_batches:
        pixels = torch.randn(batch, 3, side, side, device=model.device, dtype=model.dtype)

        def forward(pixels: Any = pixels) -> Any:
            with torch.inference_mode():
                return model.get_image_features(pixel_values=pixels)

        seconds = seconds_per_call(forward, cfg.device, cfg.min_seconds) / batch
        flops = count_flops(forward) / batch
        model_only[batch] = 1.0 / seconds
        rows.append(row("B clip", "image tower", batch, seconds, flops, peak, peak_memory_gb(forward, cfg.device)))
    return rows, model_only


def bench_vlm(cfg: Config, model: Any, processor: Any, name: str, peak: float, section: str = "C vlm",
              batches: list[int] | None = None, quantization: str = "none",
              params: int | None = None) -> tuple[list[dict[str, Any]], dict[int, float]]:
    """C (and D): label-only prefill vs generation, per batch size. `params`: the language
    model's parameter count for the decode FLOPs (a 4-bit model packs two in a byte)."""
    import torch
    from predict import count_flops

    predictor = vlm_predictor(cfg, "label", name, quantization)
    predictor.load()  # the cached model: the same one as `model`
    rows, label_only = [], {}
    decode_flops = 2 * (params or lm_params(model)) * cfg.new_tokens
    model.generation_config.min_new_tokens = cfg.new_tokens  # random weights may stop early: equal lengths
    for batch in batches or cfg.vlm_batches:
        inputs = vlm_inputs(predictor, processor, model, batch)

        def label(inputs: Any = inputs) -> Any:
            with torch.inference_mode():
                return model(**inputs, logits_to_keep=1)

        def generate(inputs: Any = inputs) -> Any:
            with torch.inference_mode():
                return model.generate(**inputs, max_new_tokens=cfg.new_tokens, do_sample=False)

        prefill = count_flops(label) / batch
        seconds = seconds_per_call(label, cfg.device, cfg.min_seconds) / batch
        label_only[batch] = 1.0 / seconds
        rows.append(row(section, "label-only (prefill)", batch, seconds, prefill, peak, peak_memory_gb(label, cfg.device)))
        seconds = seconds_per_call(generate, cfg.device, cfg.min_seconds) / batch
        rows.append(row(section, f"generate {cfg.new_tokens} tokens", batch, seconds, prefill + decode_flops, peak,
                        peak_memory_gb(generate, cfg.device)))
    return rows, label_only


def bench_bnb(cfg: Config, model: Any, processor: Any, peak: float, root: Path) -> tuple[list[dict[str, Any]], str | None]:
    """D: the same VLM saved and loaded again in 4-bit through workbench.models.vlm (bitsandbytes)."""
    import torch

    if not cfg.device.startswith("cuda") or not torch.cuda.is_available():
        return [], "D bitsandbytes 4-bit: skipped, needs CUDA"
    if importlib.util.find_spec("bitsandbytes") is None:
        return [], "D bitsandbytes 4-bit: skipped, bitsandbytes is not installed (pip install bitsandbytes)"
    from workbench.models.vlm import load_vlm

    folder = root / "vlm-bf16"
    params = lm_params(model)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    batch = [b for b in cfg.vlm_batches if b <= 8][-1:] or cfg.vlm_batches[:1]
    before = torch.cuda.memory_allocated()
    quantized, q_processor = load_vlm(str(folder), cfg.device, cfg.dtype, "4bit")
    weights_gb = (torch.cuda.memory_allocated() - before) / 1e9
    rows, _ = bench_vlm(cfg, quantized, q_processor, str(folder), peak, section="D 4-bit nf4", batches=batch,
                        quantization="4bit", params=params)
    rows[0]["variant"] += f" (weights {weights_gb:.1f} GB)"
    return rows, None


def bench_end_to_end(cfg: Config, clip_folder: str, model_only: dict[int, float], vlm_name: str,
                     vlm_label_only: dict[int, float], root: Path) -> list[dict[str, Any]]:
    """E: the job runner on generated 512×512 memes vs the model alone at the same batch size."""
    from predict import temp_workspace

    from workbench.predictors.base import PredictorStep
    from workbench.predictors.run import build_predictor
    from workbench.runs.runner import run_step

    settings, ids, _ = temp_workspace(max(cfg.memes, cfg.vlm_memes), root)
    rows = []
    clip = build_predictor("clip", {"model": clip_folder, "device": cfg.device, "dtype": cfg.dtype})
    clip.load()
    vlm = vlm_predictor(cfg, "label", vlm_name)
    vlm.load()
    jobs = [("CLIP ViT-L/14" if not cfg.smoke else "CLIP (tiny)", clip, ids[: cfg.memes], max(cfg.clip_batches), model_only),
            ("VLM label-only", vlm, ids[: cfg.vlm_memes], max(cfg.vlm_batches), vlm_label_only)]
    for title, predictor, job_ids, batch, alone in jobs:
        for prefetch, how in ((None, "job runner, prefetch threads"), (0, "job runner, no prefetch")):
            run_step(settings.db_url, PredictorStep(predictor), job_ids[:batch], memes_dir=settings.memes_dir,
                     lock_dir=settings.artefacts_dir, batch_size=batch, force=True, prefetch=prefetch)  # warm-up
            summary = run_step(settings.db_url, PredictorStep(predictor), job_ids, memes_dir=settings.memes_dir,
                               lock_dir=settings.artefacts_dir, batch_size=batch, force=True, prefetch=prefetch)
            assert summary.failed == 0, summary.errors
            rate = summary.done / summary.seconds
            rows.append({"section": "E end-to-end", "variant": f"{title}: {how}", "batch": batch, "img/s": rate,
                         "model alone img/s": alone[batch], "of model alone": f"{100 * rate / alone[batch]:.0f} %"})
    return rows


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    import torch
    from predict import matmul_peak, print_table

    from workbench.models import devices

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --smoke (CPU) or on a GPU machine")
        return 2
    if cfg.smoke and cfg.device == "cpu":
        devices.set_threads(1)  # tiny models: intra-op threads only add overhead
    budget, skipped = Budget(cfg.budget_s), []
    dtype = getattr(torch, cfg.dtype)
    where = torch.cuda.get_device_name() if cfg.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    peak = matmul_peak(dtype, cfg.device, size=cfg.matmul_size)
    print(f"{'SMOKE (tiny models) ' if cfg.smoke else ''}{cfg.device} ({where}), {cfg.dtype}; "
          f"A. matmul peak {cfg.matmul_size}²: {peak:,.0f} GFLOP/s")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        clip_folder, clip, _ = clip_model(cfg, root)
        vlm, processor, vlm_name = vlm_model(cfg)
        print(f"models ready in {time.perf_counter() - t0:.1f} s")
        clip_rows, clip_alone = bench_clip(cfg, clip, peak)
        results += clip_rows
        vlm_label_only: dict[int, float] = {}
        if not budget.spent("C vlm", skipped):
            vlm_rows, vlm_label_only = bench_vlm(cfg, vlm, processor, vlm_name, peak)
            results += vlm_rows
        if not budget.spent("D bitsandbytes 4-bit", skipped):
            bnb_rows, why = bench_bnb(cfg, vlm, processor, peak, root)
            results += bnb_rows
            skipped += [why] if why else []
        e2e: list[dict[str, Any]] = []
        if vlm_label_only and not budget.spent("E end-to-end", skipped):
            e2e = bench_end_to_end(cfg, clip_folder, clip_alone, vlm_name, vlm_label_only, root / "e2e")
    print_table("B–D: model alone (ready tensors), img/s and % of the measured matmul peak", results)
    print_table("E: end to end through the job runner vs the model alone", e2e)
    for note in skipped:
        print(note)
    print(f"\ntotal {time.monotonic() - budget.t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
