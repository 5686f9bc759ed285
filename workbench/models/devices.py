"""Device and dtype choice for torch models, in one place.

"auto" picks CUDA when present (bf16 where the GPU supports it, else fp16), else the CPU
in bfloat16 when the CPU has native bf16 (AMX / AVX512-BF16: ViT-L/14 CLIP runs ~5x faster
than fp32 there), else fp32. torch's thread count is set to the cores this process may use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Placement:
    """Where a model runs: a torch device string and a dtype name."""

    device: str  # cpu | cuda | cuda:0 | mps
    dtype: str  # float32 | bfloat16 | float16

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


def free_cores() -> int:
    """CPU cores this process may run on (affinity-aware; at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AMX or AVX512-BF16); else bf16 is
    emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    try:  # macOS / others: Apple silicon and recent ARM do bf16 well
        import torch

        return torch.backends.cpu.get_cpu_capability() in ("SVE256", "SVE512") or _is_apple_silicon()
    except Exception:  # noqa: BLE001 - unknown CPU: fp32 is the safe choice
        return False


def _is_apple_silicon() -> bool:
    import platform

    return platform.system() == "Darwin" and platform.machine() == "arm64"


def resolve(device: str = "auto", dtype: str = "auto") -> Placement:
    """The concrete placement for the user's device/dtype choices ('auto' picks the best).

    Raises ValueError for a device that is not available or a dtype name that is unknown."""
    import torch

    device = (device or "auto").strip().lower()
    dtype = (dtype or "auto").strip().lower()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        else:
            device = "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but it is not available; use cpu or auto")
    if not (device in ("cpu", "mps") or device.startswith("cuda")):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N (got {device!r})")
    if dtype == "auto":
        dtype = _auto_dtype(device)
    return Placement(device=device, dtype=dtype)


def _auto_dtype(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "mps":
        return "float16"
    return "bfloat16" if cpu_has_bf16() else "float32"


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n` (default: OMP_NUM_THREADS when set, else the free
    cores; never above OMP_THREAD_LIMIT); returns the number."""
    import torch

    n = n or _env_int("OMP_NUM_THREADS") or free_cores()
    n = min(n, _env_int("OMP_THREAD_LIMIT") or n)  # OpenMP's hard cap (the tests set it to 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block (restored after). For models too small to
    split (a head on frozen features: a 768x2 layer on 256 rows): more threads only add sync,
    and beside a busy core two threads made head training 3.4x slower (bench/learner_scale.py)."""
    import torch

    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _env_int(name: str) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 0


def describe(placement: Placement) -> str:
    """One line for logs and the UI, e.g. 'cpu · bfloat16 (AMX) · 2 threads'."""
    import torch

    if placement.device.startswith("cuda"):
        return f"{placement.device} ({torch.cuda.get_device_name()}) · {placement.dtype}"
    note = " (native bf16)" if placement.dtype == "bfloat16" and cpu_has_bf16() else ""
    return f"{placement.device} · {placement.dtype}{note} · {torch.get_num_threads()} threads"
