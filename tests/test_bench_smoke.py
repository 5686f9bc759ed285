"""bench/gpu.py runs: its tiny version on the CPU in the suite (`--smoke`), and the same on a
GPU where there is one (skipped cleanly without CUDA). The full run is for a GPU machine.
bench/export_hf.py, bench/active.py and bench/learner_scale.py run their tiny versions too."""

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


def test_export_bench_smoke() -> None:
    """bench/export_hf.py --smoke: 60 memes through the Hugging Face export in a fresh process."""
    done = subprocess.run([sys.executable, "bench/export_hf.py", "--smoke"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = done.stdout.strip().splitlines()
    assert rows[0].startswith("60 memes") and "peak MB" in rows[1]
    memes, shards = rows[2].split()[:2]
    assert memes == "60" and int(shards) >= 2  # 1 MB shards: the export is split


def _bench(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def test_active_learning_bench_smoke() -> None:
    """bench/active.py at a tiny size: the real queue, learner refresh and database, every order."""
    out = _bench("bench/active.py", "--n", "160", "--test", "60", "--budget", "40", "--every", "20", "--seeds", "1")
    for order in ("random", "unsure", "likely-toxic"):
        assert f"| {order} |" in out, out
    assert "toxic in first 50" not in out and "target = 95 % of the all-labels F1" in out


def test_learner_scale_bench_smoke() -> None:
    """bench/learner_scale.py --smoke: a TF-IDF and a head refresh over a few hundred memes."""
    out = _bench("bench/learner_scale.py", "--smoke")
    assert "| TF-IDF on OCR text |" in out and "| head on 16-d CLIP image embeddings |" in out, out
