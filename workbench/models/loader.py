"""The one way pretrained Hugging Face models are loaded: CLIP/SigLIP (clip.py), image-text-to-text
VLMs (vlm.py) and text classifiers (text_classifier.py) all go through here.

- `ModelCache`: a per-process, thread-safe cache keyed by placement (id, device, dtype, ...);
  each key loads once, a failed load is not remembered.
- `load_pretrained(model_id, build, cache_dir)`: a local path must be an existing folder
  (else ModelUnavailable with a hint); `build(path, kwargs)` gets the `from_pretrained`
  keyword arguments (cache_dir, and local_files_only when the hub cannot be reached) and
  calls the Auto classes; any failure in it becomes ModelUnavailable(id, why).

A model kind's module keeps only what is its own: which Auto classes, dtype/quantisation,
and checks of what was loaded (such as "not a CLIP model" or "no chat template").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Generic, TypeVar

from workbench.errors import ModelUnavailable
from workbench.models import hub

T = TypeVar("T")

NO_FOLDER = "no such folder"
NO_FOLDER_FIX = "Enter the folder that holds config.json and the weights, or a Hugging Face id."


class ModelCache(Generic[T]):
    """Loaded models of one kind, once per process per key. The lock is held while a model
    loads, so concurrent callers of the same kind wait for one load instead of each loading."""

    def __init__(self) -> None:
        self._items: dict[Hashable, T] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The cached value for `key`, loading it with `load()` the first time."""
        with self._lock:
            if key not in self._items:
                self._items[key] = load()
            return self._items[key]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: Hashable, value: T) -> None:
        """Cache an already built value under `key` (replacing any)."""
        with self._lock:
            self._items[key] = value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def settings_cache_dir(cache_dir: str | None = None) -> str | None:
    """`cache_dir`, or the configured Hugging Face cache (WORKBENCH_HF_CACHE; None = HF's default)."""
    if cache_dir is not None:
        return cache_dir
    from workbench.config import load_settings

    return load_settings().hf_cache_dir


def from_pretrained_kwargs(model_id: str, cache_dir: str | None) -> dict[str, Any]:
    """Keyword arguments every `from_pretrained` call of `model_id` takes: the cache folder
    when one is set, and `local_files_only=True` for a hub id while the hub is unreachable."""
    kwargs: dict[str, Any] = {"cache_dir": cache_dir} if cache_dir else {}
    kwargs.update(hub.load_kwargs(model_id))
    return kwargs


def load_pretrained(model_id: str, build: Callable[[str, dict[str, Any]], T], cache_dir: str | None = None,
                    missing: tuple[str, str] = (NO_FOLDER, NO_FOLDER_FIX)) -> T:
    """`build(path, kwargs)` for a hub id or local folder, where `path` is what to pass to
    `from_pretrained` and `kwargs` come from `from_pretrained_kwargs`.

    A local path that is not a folder raises ModelUnavailable(model_id, *missing); any
    exception in `build` (missing weights, no hub, wrong architecture, missing package)
    becomes ModelUnavailable with its short reason, saying when the hub was unreachable.
    A ModelUnavailable raised by `build` itself passes through unchanged."""
    local = hub.is_local(model_id)
    if local and not Path(model_id).expanduser().is_dir():
        raise ModelUnavailable(model_id, *missing)
    path = str(Path(model_id).expanduser()) if local else model_id
    kwargs = from_pretrained_kwargs(model_id, cache_dir)
    try:
        return build(path, kwargs)
    except ModelUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - hub/network/format problems all mean "cannot load"
        raise ModelUnavailable(model_id, hub.offline_reason(kwargs, short_reason(exc))) from exc


def short_reason(exc: BaseException, limit: int = 400) -> str:
    """'ExcType: message' on one line, at most `limit` characters of message, no final period."""
    text = " ".join(str(exc).split()).rstrip(".")
    return f"{type(exc).__name__}: {text[:limit]}{'…' if len(text) > limit else ''}"
