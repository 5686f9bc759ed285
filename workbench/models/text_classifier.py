"""Sequence-classification checkpoints (the text-toxicity signal's model, e.g.
cointegrated/rubert-tiny-toxicity): the cached loader. Loaded once per process per
(id, dtype, cache); the model runs on the CPU in eval mode."""

from __future__ import annotations

from typing import Any

from workbench.models import loader

_cache: loader.ModelCache[tuple[Any, Any]] = loader.ModelCache()


def load_classifier(model_id: str, dtype: str = "float32", cache_dir: str | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) of a hub id or local folder; `cache_dir` None means the configured
    Hugging Face cache. Raises ModelUnavailable when it cannot load."""
    cache_dir = loader.settings_cache_dir(cache_dir)
    return _cache.get((model_id, dtype, cache_dir), lambda: _load(model_id, dtype, cache_dir))


def _load(model_id: str, dtype: str, cache_dir: str | None) -> tuple[Any, Any]:
    def build(path: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype), **kwargs)
        return tokenizer, model.eval()

    return loader.load_pretrained(model_id, build, cache_dir)


def clear_cache() -> None:
    """Forget loaded classifiers (tests, or freeing memory)."""
    _cache.clear()
