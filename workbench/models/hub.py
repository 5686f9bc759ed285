"""Hugging Face hub access for model loading: when the hub cannot be reached, load from the
local cache only.

Without this, `from_pretrained("openai/clip-vit-large-patch14")` on a machine without
network retries the hub for ~40 s before it says the weights are missing, and a cached
model fails the same way. One TCP connect (2 s timeout, remembered for a minute) decides
instead; HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) still forces offline mode, and
behind a proxy the hub is assumed reachable (a direct connect says nothing there).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 2.0
REMEMBER_S = 60.0
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")

_last: dict[str, tuple[float, bool]] = {}
_lock = threading.Lock()


def endpoint() -> str:
    """The hub URL in use (HF_ENDPOINT, e.g. a mirror, or huggingface.co)."""
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def is_local(model_id: str) -> bool:
    """Whether `model_id` means a path on this machine rather than a hub id ("org/name"):
    it starts like a path, has a backslash or more than one "/", or exists here."""
    return (model_id.startswith(("/", ".", "~")) or "\\" in model_id or model_id.count("/") > 1
            or Path(model_id).expanduser().exists())


def reachable(url: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub's host opens within `timeout` s (remembered for
    REMEMBER_S); True when a proxy is configured."""
    url = url or endpoint()
    if any(os.environ.get(name) for name in PROXY_VARS):
        return True
    now = time.monotonic()
    with _lock:
        cached = _last.get(url)
        if cached and now - cached[0] < REMEMBER_S:
            return cached[1]
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            ok = True
    except OSError:  # no DNS, no route, refused, timed out
        ok = False
    with _lock:
        _last[url] = (time.monotonic(), ok)
    return ok


def load_kwargs(model_id: str) -> dict[str, Any]:
    """Extra `from_pretrained` arguments: `local_files_only=True` for a hub id while the hub
    cannot be reached (cached weights still load; missing ones fail at once)."""
    offline = any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
                  for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if is_local(model_id) or offline:  # offline mode already loads from the cache only
        return {}
    return {} if reachable() else {"local_files_only": True}


def offline_reason(kwargs: dict[str, Any], reason: str) -> str:
    """`reason` for a failed load, saying the hub was unreachable when that is why only the
    cache was tried."""
    if kwargs.get("local_files_only"):
        return (f"{endpoint()} cannot be reached from this machine and the weights are not in the "
                f"local cache ({reason})")
    return reason
