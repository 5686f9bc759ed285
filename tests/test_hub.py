"""Loading hub ids when the hub cannot be reached: cached weights load from the cache, and an
uncached id fails in seconds with the "which id / why / how to supply it" message, instead
of after huggingface_hub's ~40 s of retries. The hub is made unreachable by pointing
HF_ENDPOINT at a name that never resolves; the weights are a tiny random CLIP laid out in a real
Hugging Face cache folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tiny_models import build_tiny_clip
from workbench.models import hub

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> str:
    url = "https://hub.invalid"  # the reserved .invalid domain never resolves: like a machine without DNS
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for name in hub.PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    return url


def _cache_with(model_dir: Path, cache: Path, repo_id: str) -> None:
    """A Hugging Face hub cache holding `model_dir` as `repo_id` at revision main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)


def test_probe_and_kwargs(offline: str, tmp_path: Path) -> None:
    assert hub.endpoint() == offline and not hub.reachable()
    assert hub.load_kwargs("org/model") == {"local_files_only": True}
    assert hub.load_kwargs(str(tmp_path)) == {}  # a local folder never asks the hub


LOAD_BOTH = """
import json, sys, time
from workbench.errors import ModelUnavailable
from workbench.models.clip import load_clip
cache = sys.argv[1]
t = time.monotonic()
model, _ = load_clip("tiny-org/tiny-clip", device="cpu", dtype="float32", cache_dir=cache)
cached_s = time.monotonic() - t
t = time.monotonic()
try:
    load_clip("tiny-org/not-cached", device="cpu", dtype="float32", cache_dir=cache)
    message = None
except ModelUnavailable as exc:
    message = str(exc)
print(json.dumps({"cached_s": cached_s, "clip": hasattr(model, "get_image_features"),
                  "uncached_s": time.monotonic() - t, "message": message}))
"""


def test_cached_model_loads_and_uncached_fails_fast_without_the_hub(offline: str, tmp_path: Path) -> None:
    """In a fresh process without HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (the test session sets
    them), as on a user's offline machine. Measured: the cached model loads in 7-9 s (mostly
    transformers' imports) and the uncached id fails in 0.0 s; before, huggingface_hub's
    retries took over 6 minutes for the two here, ~40 s per uncached id against huggingface.co."""
    cache = tmp_path / "hf-cache"
    _cache_with(build_tiny_clip(tmp_path / "tiny-clip"), cache, "tiny-org/tiny-clip")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run([sys.executable, "-c", LOAD_BOTH, str(cache)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["clip"] and result["cached_s"] < 60  # includes transformers' lazy imports
    assert result["uncached_s"] < 8, result
    message = result["message"] or ""
    assert "tiny-org/not-cached" in message and "cannot be reached" in message and offline in message
    assert "huggingface-cli download tiny-org/not-cached" in message and "local path" in message
