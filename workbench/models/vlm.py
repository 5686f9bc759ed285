"""Image-text-to-text checkpoints (Qwen2.5-VL and the like): the cached loader shared by
the local VLM predictor and the VLM embeddings. Loaded once per process per (model, device,
dtype, quantization); raises ModelUnavailable with a reason and a way out."""

from __future__ import annotations

from typing import Any

from workbench.errors import ModelUnavailable
from workbench.models import loader

_cache: loader.ModelCache[tuple[Any, Any]] = loader.ModelCache()

MISSING_FOLDER = ("no such folder", "Enter the folder that holds config.json and the "
                  "weights (or a Hugging Face id such as Qwen/Qwen2.5-VL-3B-Instruct).")


def _load(model_id: str, device: str, dtype: str, quantization: str) -> tuple[Any, Any]:
    """(model, processor) from a hub id or local folder; ModelUnavailable when impossible."""

    def build(path: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model_kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), **kwargs}
        if quantization != "none":
            model_kwargs.update(quantization_config=_quantization_config(model_id, quantization, dtype),
                                device_map=device)
        processor = AutoProcessor.from_pretrained(path, **kwargs)
        return AutoModelForImageTextToText.from_pretrained(path, **model_kwargs), processor

    model, processor = loader.load_pretrained(model_id, build, loader.settings_cache_dir(), missing=MISSING_FOLDER)
    if getattr(processor, "chat_template", None) is None:
        raise ModelUnavailable(model_id, "its processor has no chat template (not an instruction-tuned VLM?)",
                               "Use an -Instruct checkpoint such as Qwen/Qwen2.5-VL-3B-Instruct.")
    if quantization == "none":
        model = model.to(device)
    processor.tokenizer.padding_side = "left"  # batched generation continues every row at its end
    return model.eval(), processor


def _quantization_config(model_id: str, quantization: str, dtype: str) -> Any:
    """bitsandbytes 4-bit (nf4) or 8-bit loading; ModelUnavailable when bitsandbytes is missing."""
    import torch

    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ModelUnavailable(model_id, f"{quantization} loading needs bitsandbytes ({exc})",
                               "Install it on the GPU machine: pip install bitsandbytes") from None
    return BitsAndBytesConfig(load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit",
                              bnb_4bit_compute_dtype=getattr(torch, dtype), bnb_4bit_quant_type="nf4")


def load_vlm(model_id: str, device: str = "auto", dtype: str = "auto", quantization: str = "none") -> tuple[Any, Any]:
    """(model, processor) for `model_id`, loaded once per process per placement and shared by
    every user (moderation runs, embeddings). Raises ModelUnavailable."""
    from workbench.models import devices

    placement = devices.resolve(device, dtype)
    key = (model_id, placement.device, placement.dtype, quantization)
    return _cache.get(key, lambda: _load(*key))


def is_loaded(model_id: str, device: str, dtype: str, quantization: str) -> bool:
    """Whether this exact placement is already in the cache (no loading)."""
    return (model_id, device, dtype, quantization) in _cache


def image_limits(processor: Any, max_pixels: int) -> Any:
    """What images must fit before they reach this VLM's processor at a `max_pixels` budget
    (aspect ratio ≤ 200:1 and ≤ max_pixels / factor², workbench.models.image_limits)."""
    from workbench.models.image_limits import limits_for

    return limits_for(processor, max_pixels=max_pixels)


def register_loaded(predictor: Any, model: Any, processor: Any) -> None:
    """Put an already built (model, processor) into the cache under `predictor`'s config:
    for benchmarks that build the exact architecture in memory instead of from a folder."""
    processor.tokenizer.padding_side = "left"
    _cache.put(predictor._cache_key(), (model.eval(), processor))
