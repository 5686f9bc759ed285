"""bench/gpu.py runs: its tiny version on the CPU in the suite (`--smoke`), and the same on a
GPU where there is one (skipped cleanly without CUDA). The full run is for a GPU machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_gpu_bench(*args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "bench/gpu.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def test_gpu_bench_smoke_on_cpu() -> None:
    out = run_gpu_bench("--smoke")
    assert "SMOKE (tiny models) cpu" in out and "A. matmul peak" in out
    for line in ("B clip   image tower", "C vlm    label-only (prefill)", "C vlm    generate 4 tokens",
                 "CLIP (tiny): job runner, prefetch threads", "VLM label-only: job runner, no prefetch",
                 "D bitsandbytes 4-bit: skipped, needs CUDA"):
        assert line in out, out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_gpu_bench_smoke_on_cuda() -> None:
    out = run_gpu_bench("--smoke", "--device", "cuda")
    assert "SMOKE (tiny models) cuda" in out and "peak mem GB" in out
    assert "D 4-bit nf4" in out or "bitsandbytes is not installed" in out


def test_scale_bench_smoke() -> None:
    """bench/scale.py at N = 300 on SQLite: every row of its table is measured and printed."""
    done = subprocess.run([sys.executable, "bench/scale.py", "--smoke", "--db", "sqlite"], cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "300 memes" in out, out
    for row in ("| rescan of the unchanged tree | ≥ 5,000 files/s | ", "| Label, team k=2: label → next | ≤ 300 ms | ",
                "| Gallery: filter change | ≤ 500 ms | ", "| Dashboard, 3 runs with CIs | ≤ 2,000 ms | ",
                "| Disagreements, run A vs run B | ≤ 2,000 ms | ", "| export annotations | ≤ 30 s | ",
                "| backup + restore | ≤ 900 s | ", "| database on disk | | ", "| peak RSS of the app process"):
        assert row in out, out
    assert "sqlite export: 262 rows" in out and ", 8 groups," in out, out  # the data as built, and the planted pairs
