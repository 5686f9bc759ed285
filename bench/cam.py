"""CAM cost: seconds per image for EigenCAM and the class-specific Grad-CAM beside the
plain CLIP image forward, on the ViT-L/14 architecture with random weights (same compute
as openai/clip-vit-large-patch14), measured side by side in one run.

    .venv/bin/python bench/cam.py [--n 2] [--dtype float32|bfloat16|both] [--threads N]

Prints s/image for each and the ratio to the plain forward. Images are generated memes
(512x512); each map is computed from the image (no cache), exactly as workbench.explain.cam
does on a cache miss. The first call of each kind is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def seconds_per_image(fn, images) -> float:  # noqa: ANN001
    fn(images[0])  # warm-up (allocations, one-time set-up)
    t0 = time.perf_counter()
    for image in images:
        fn(image)
    return (time.perf_counter() - t0) / len(images)


def run(dtype_name: str, n: int) -> dict[str, float]:
    import torch

    from tests.support.tiny_models import random_clip_vit_l14
    from workbench.explain.cam import CamRequest, class_prompts, compute_cam, pixel_values
    from workbench.store.demo_memes import write_sample_memes
    from workbench.store.images import load_rgb

    dtype = getattr(torch, dtype_name)
    t0 = time.perf_counter()
    model, processor = random_clip_vit_l14(dtype=dtype)
    print(f"  built ViT-L/14 CLIP ({dtype_name}) in {time.perf_counter() - t0:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="wb-bench-cam-") as tmp:
        images = [load_rgb(m.path) for m in write_sample_memes(Path(tmp), n=n, seed=0, size=(512, 512))]

    def forward(image) -> None:  # noqa: ANN001 - the plain image forward, as the CLIP predictor runs it
        with torch.inference_mode():
            model.get_image_features(pixel_values=pixel_values(model, processor, image))

    prompts = class_prompts()
    eigen = CamRequest("vit-l14-random", "eigencam", dtype=dtype_name)
    gradcam = CamRequest.for_class("vit-l14-random", "gradcam", "toxic", prompts, dtype=dtype_name)
    return {
        "forward": seconds_per_image(forward, images),
        "eigencam": seconds_per_image(lambda im: compute_cam(model, processor, im, eigen), images),
        "gradcam": seconds_per_image(lambda im: compute_cam(model, processor, im, gradcam), images),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2, help="timed images per method (default 2)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="float32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: free cores)")
    args = parser.parse_args()

    import torch

    from workbench.models.devices import free_cores

    torch.set_num_threads(args.threads or free_cores())
    print(f"CAM bench: ViT-L/14 random weights, CPU, {torch.get_num_threads()} threads, {args.n} images per method")
    for dtype in (("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)):
        r = run(dtype, args.n)
        base = r["forward"]
        print(f"  {dtype:9} plain forward   {base:6.3f} s/image   1.00x")
        print(f"  {dtype:9} EigenCAM        {r['eigencam']:6.3f} s/image   {r['eigencam'] / base:.2f}x")
        print(f"  {dtype:9} Grad-CAM class  {r['gradcam']:6.3f} s/image   {r['gradcam'] / base:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
