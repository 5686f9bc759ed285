"""Image-text-to-text checkpoints (Qwen2.5-VL and the like): the cached loader shared by
the local VLM predictor and the VLM embeddings. Loaded once per process per (model, device,
dtype, quantization); raises ModelUnavailable with a reason and a way out."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from workbench.errors import ModelUnavailable

_models: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
_models_lock = threading.Lock()


def _load(model_id: str, device: str, dtype: str, quantization: str) -> tuple[Any, Any]:
    """(model, processor) from a hub id or local folder; ModelUnavailable when impossible."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from workbench.config import load_settings
    from workbench.models import hub

    if hub.is_local(model_id) and not Path(model_id).expanduser().is_dir():
        raise ModelUnavailable(model_id, "no such folder", "Enter the folder that holds config.json and the "
                               "weights (or a Hugging Face id such as Qwen/Qwen2.5-VL-3B-Instruct).")
    cache_dir = load_settings().hf_cache_dir
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    if quantization != "none":
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise ModelUnavailable(model_id, f"{quantization} loading needs bitsandbytes ({exc})",
                                   "Install it on the GPU machine: pip install bitsandbytes") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit",
            bnb_4bit_compute_dtype=getattr(torch, dtype), bnb_4bit_quant_type="nf4")
        kwargs["device_map"] = device
    hub_kwargs = hub.load_kwargs(model_id)
    kwargs.update(hub_kwargs)
    try:
        processor = AutoProcessor.from_pretrained(model_id, **({"cache_dir": cache_dir} if cache_dir else {}),
                                                  **hub_kwargs)
        model = AutoModelForImageTextToText.from_pretrained(model_id, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any loading failure becomes the one clear error
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {first_line}".rstrip(". ")
        raise ModelUnavailable(model_id, hub.offline_reason(hub_kwargs, reason)) from None
    if getattr(processor, "chat_template", None) is None:
        raise ModelUnavailable(model_id, "its processor has no chat template (not an instruction-tuned VLM?)",
                               "Use an -Instruct checkpoint such as Qwen/Qwen2.5-VL-3B-Instruct.")
    if quantization == "none":
        model = model.to(device)
    processor.tokenizer.padding_side = "left"  # batched generation continues every row at its end
    return model.eval(), processor


def load_vlm(model_id: str, device: str = "auto", dtype: str = "auto", quantization: str = "none") -> tuple[Any, Any]:
    """(model, processor) for `model_id`, loaded once per process per placement and shared by
    every user (moderation runs, embeddings). Raises ModelUnavailable."""
    from workbench.models import devices

    placement = devices.resolve(device, dtype)
    key = (model_id, placement.device, placement.dtype, quantization)
    with _models_lock:
        if key not in _models:
            _models[key] = _load(*key)
        return _models[key]


def is_loaded(model_id: str, device: str, dtype: str, quantization: str) -> bool:
    """Whether this exact placement is already in the cache (no loading)."""
    with _models_lock:
        return (model_id, device, dtype, quantization) in _models


def register_loaded(predictor: Any, model: Any, processor: Any) -> None:
    """Put an already built (model, processor) into the cache under `predictor`'s config:
    for benchmarks that build the exact architecture in memory instead of from a folder."""
    processor.tokenizer.padding_side = "left"
    with _models_lock:
        _models[predictor._cache_key()] = (model.eval(), processor)
