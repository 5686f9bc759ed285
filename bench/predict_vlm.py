"""VLM benchmark: the research notebook's way vs the workbench default, side by side in one
run, on the exact Qwen/Qwen2.5-VL-3B-Instruct architecture with random weights (same compute).

  (a) notebook: one meme at a time, full generation (processor + generate per image);
  (b) default:  the `vlm` predictor, "label+explanation" mode, batched generation with left
      padding, through the job runner;
  (c) default, "label" mode: one prefill per batch, class-word probabilities, no generation;
  (d) a re-run on unchanged data (expected: 0 model calls).
Both generation variants produce exactly --new-tokens tokens per meme (min_new_tokens), same
dtype and pixel budget, so the ratio isolates batching. Achieved GFLOP/s (prefill counted by
torch's FlopCounterMode, decode as 2 × LM parameters per token) against a bf16/fp32 matmul
peak measured in the same run.

The random 3B model is built without transformers' weight initialisation (uninitialised
tensors filled from a small random pool: seconds instead of minutes on 2 cores); it needs
~9 GB of RAM. Keep the default run short: 3B on 2 CPU cores is slow (minutes).

Usage: .venv/bin/python bench/predict_vlm.py [--n 3] [--new-tokens 16] [--max-pixels 50176]
       [--batch-size 4] [--threads N] [--device auto]
Also callable as a section of bench/predict.py: `bench_vlm(args, peaks)`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODEL_NAME = "random-qwen2.5-vl-3b"  # a cache key, never loaded from disk


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3, help="memes per variant (default 3)")
    p.add_argument("--new-tokens", type=int, default=16, help="generated tokens per meme (default 16)")
    p.add_argument("--max-pixels", type=int, default=224 * 224,
                   help="image pixel budget (default 224×224 = 64 image tokens; the app's CPU default is 448×448)")
    p.add_argument("--batch-size", type=int, default=4, help="batch of the default variant (default 4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the free cores)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    return p.parse_args(argv)


def fast_random_qwen2_5_vl_3b(dtype: Any) -> tuple[Any, Any]:
    """(model, processor): the exact 3B architecture, weights from a random pool (no init pass)."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    from tests.support.tiny_models import qwen2_5_vl_3b_config, tiny_model_dir

    processor = AutoProcessor.from_pretrained(tiny_model_dir("qwen2_5_vl"))  # tiny tokenizer + Qwen image processor
    config = qwen2_5_vl_3b_config(tokenizer=processor.tokenizer)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    gen = torch.Generator().manual_seed(0)
    pool = (torch.randn(1 << 22, generator=gen) * 0.02).to(dtype)
    with torch.no_grad():
        for i, (name, param) in enumerate(model.named_parameters()):
            flat = param.view(-1)
            if "norm" in name:
                flat.fill_(1.0)
                continue
            source = pool.roll((i * 7919) % pool.numel())  # different weights per tensor, no RNG pass over 3.8 B values
            for start in range(0, flat.numel(), pool.numel()):
                chunk = flat[start : start + pool.numel()]
                chunk.copy_(source[: chunk.numel()])
    return model, processor


def bench_vlm(args: argparse.Namespace, peaks: dict[str, float]) -> None:
    """Notebook one-by-one generation vs batched default vs label-only, Qwen2.5-VL-3B architecture."""
    import torch
    from predict import count_flops, print_table, temp_workspace

    from workbench.models import devices
    from workbench.models.vlm import register_loaded
    from workbench.predictors.run import build_predictor, run_predictions
    from workbench.store.images import load_rgb

    n = getattr(args, "vlm_n", None) or min(args.n, 4)
    new_tokens = getattr(args, "new_tokens", 16)
    max_pixels = getattr(args, "max_pixels", 224 * 224)
    batch = getattr(args, "vlm_batch_size", None) or min(args.batch_size, 4)
    placement = devices.resolve(args.device)
    t0 = time.perf_counter()
    model, processor = fast_random_qwen2_5_vl_3b(placement.torch_dtype)
    model = model.to(placement.device)
    model.generation_config.min_new_tokens = new_tokens  # random weights may hit EOS: force equal lengths
    params_lm = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    print(f"\nbuilt random Qwen2.5-VL-3B ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, "
          f"{placement.dtype}) in {time.perf_counter() - t0:.1f} s")
    torch.set_num_threads(args.threads)

    common = {"model": MODEL_NAME, "device": placement.device, "dtype": placement.dtype,
              "max_pixels": max_pixels, "max_new_tokens": new_tokens, "batch_size": batch}
    generate = build_predictor("vlm", dict(common, mode="label+explanation"))
    label = build_predictor("vlm", dict(common, mode="label"))
    register_loaded(generate, model, processor)  # both share one cached model (same cache key)

    with tempfile.TemporaryDirectory(prefix="bench-vlm-") as tmp:
        settings, ids, paths = temp_workspace(n * 2, Path(tmp))
        images = [load_rgb(p) for p in paths]
        size = {"shortest_edge": 56 * 56, "longest_edge": max_pixels}

        # (a) the notebook: each meme alone, prompt -> processor -> generate -> decode.
        def notebook_one(image: Any) -> str:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": generate.prompt}]}]
            text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = processor(text=[text], images=[image], return_tensors="pt", size=size).to(model.device)
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
            return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

        with torch.inference_mode():  # warm-up (kernel choice, first touch of the weights) outside the timing
            tiny = processor(text=[label._chat_text(processor, _item(images[0]))], images=[images[0]],
                             return_tensors="pt", size={"shortest_edge": 56 * 56, "longest_edge": 56 * 56})
            model(**tiny.to(model.device), logits_to_keep=1)
        t0 = time.perf_counter()
        for image in images[:n]:
            notebook_one(image)
        nb_s = (time.perf_counter() - t0) / n

        # (b) default: batched generation through the job runner (first half of the memes).
        gen_run = run_predictions(settings, generate, ids[:n], batch_size=batch)
        assert gen_run.done == n, gen_run.describe()
        gen_s = gen_run.seconds / n
        # (c) label-only mode (second half: nothing cached from (b)).
        label_run = run_predictions(settings, label, ids[n:], batch_size=batch)
        assert label_run.done == n, label_run.describe()
        label_s = label_run.seconds / n
        # (d) re-run of both on unchanged data.
        t0 = time.perf_counter()
        again = [run_predictions(settings, p, ids[:n] if p is generate else ids[n:], batch_size=batch)
                 for p in (generate, label)]
        rerun_s = time.perf_counter() - t0
        assert all(r.done == 0 for r in again)

        sample = processor(text=[label._chat_text(processor, _item(images[0]))], images=[images[0]],
                           return_tensors="pt", size=size).to(model.device)
        prefill_flops = count_flops(lambda: model(**sample, logits_to_keep=1))
        decode_flops = 2 * params_lm * new_tokens
        tokens = int(sample["input_ids"].shape[1])

    peak = peaks.get(placement.dtype) or peaks.get("bfloat16") or 1.0
    rows = [
        _row("(a) notebook: 1 meme at a time, generate", nb_s, prefill_flops + decode_flops, peak),
        _row(f"(b) default: label+explanation, batch {batch}, left-padded", gen_s, prefill_flops + decode_flops, peak),
        _row(f"(c) default: label only (prefill, no generation), batch {batch}", label_s, prefill_flops, peak),
    ]
    print_table(f"Qwen2.5-VL-3B (random weights), {n} memes, ≤{max_pixels} px ({tokens} prompt tokens), "
                f"{new_tokens} new tokens, {placement.device} {placement.dtype}, {args.threads} threads", rows)
    print(f"\nspeed-up batched generation vs notebook: {nb_s / gen_s:.2f}x   label-only vs notebook: "
          f"{nb_s / label_s:.2f}x")
    print(f"re-run on unchanged data ({2 * n} memes, both modes): {rerun_s:.2f} s, "
          f"{sum(r.done for r in again)} predicted, {sum(r.skipped for r in again)} skipped")


def _item(image: Any) -> Any:
    from workbench.predictors.base import PredictInput

    return PredictInput(0, image, "")


def _row(name: str, seconds: float, flops: int, peak: float) -> dict[str, Any]:
    gflops = flops / seconds / 1e9
    return {"variant": name, "s/img": seconds, "img/min": 60 / seconds, "GFLOP/img": flops / 1e9,
            "GFLOP/s": gflops, "% of matmul peak": 100 * gflops / peak}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import os

    from workbench.models import devices

    args.threads = args.threads or devices.free_cores()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    from predict import matmul_peak

    torch.set_num_threads(args.threads)
    placement = devices.resolve(args.device)
    peaks = {placement.dtype: matmul_peak(placement.torch_dtype, placement.device)}
    print(f"device {placement.device}, {args.threads} threads; {placement.dtype} matmul peak (2048²): "
          f"{peaks[placement.dtype]:,.0f} GFLOP/s")
    args.vlm_n, args.vlm_batch_size = args.n, args.batch_size
    bench_vlm(args, peaks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
