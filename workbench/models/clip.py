"""CLIP / SigLIP checkpoints: the cached loader and the two encoders (L2-normalised image
and text embeddings). The zero-shot predictor, the embeddings cache and the CAM explainers
all load through `load_clip`, so one process holds one copy per (id, device, dtype, cache).
`limits(processor)` is what images must fit before they reach it (workbench.models.image_limits)."""

from __future__ import annotations

from typing import Any

from workbench.config import DEFAULT_CLIP_MODEL
from workbench.errors import ModelUnavailable
from workbench.models import loader

_cache: loader.ModelCache[tuple[Any, Any]] = loader.ModelCache()

MISSING_FOLDER = ("this local folder does not exist",
                  "Enter the path of a folder holding config.json and the weights, or a hub id.")


def load_clip(model_id: str = DEFAULT_CLIP_MODEL, device: str = "auto", dtype: str = "auto",
              cache_dir: str | None = None) -> tuple[Any, Any]:
    """(model, processor) of a CLIP or SigLIP checkpoint (hub id or local folder), in eval
    mode on the resolved device/dtype; loaded once per process per (id, device, dtype, cache).

    `device`/`dtype` accept "auto" (see workbench.models.devices). Raises ModelUnavailable with the
    id, the reason and how to supply the weights when it cannot load; ValueError for an
    unavailable device."""
    from workbench.models import devices

    placement = devices.resolve(device, dtype)
    cache_dir = loader.settings_cache_dir(cache_dir)
    key = (str(model_id), placement.device, placement.dtype, cache_dir)
    return _cache.get(key, lambda: _load(str(model_id), placement, cache_dir))


def _load(model_id: str, placement: Any, cache_dir: str | None) -> tuple[Any, Any]:
    from workbench.models import devices

    def build(path: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        from transformers import AutoModel, AutoProcessor

        return (AutoModel.from_pretrained(path, dtype=placement.torch_dtype, **kwargs),
                AutoProcessor.from_pretrained(path, **kwargs))

    model, processor = loader.load_pretrained(model_id, build, cache_dir, missing=MISSING_FOLDER)
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ModelUnavailable(model_id, f"it is a {type(model).__name__}, not a CLIP/SigLIP image-text model",
                               "Choose a CLIP or SigLIP checkpoint (e.g. openai/clip-vit-large-patch14).")
    if placement.device == "cpu":
        devices.set_threads()
    # Inference only: frozen weights, so a backward (CAM) never computes weight gradients.
    model = model.to(placement.device).eval().requires_grad_(False)
    return model, processor


def limits(processor: Any) -> Any:
    """The image limits of a CLIP/SigLIP processor (shortest edge or fixed size, aspect ratio)."""
    from workbench.models.image_limits import limits_for

    return limits_for(processor)


def clear_cache() -> None:
    """Forget loaded models (tests, or freeing memory)."""
    _cache.clear()


def _features(out: Any) -> Any:
    """transformers 5 returns a ModelOutput from get_*_features; older versions a tensor."""
    return out if hasattr(out, "norm") else out.pooler_output


def text_context(model: Any, processor: Any) -> int:
    """Tokens the text tower takes (77 for CLIP, 64 for SigLIP)."""
    limit = int(getattr(model.config.text_config, "max_position_embeddings", 77))
    tok_limit = getattr(processor.tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit
    return limit


def _pads_to_max(model: Any) -> bool:
    # SigLIP was trained on max-length padded text and has no attention mask: pad the same way.
    return str(model.config.model_type).startswith("siglip")


def encode_texts(model: Any, processor: Any, texts: list[str]) -> Any:
    """L2-normalised text embeddings (float32, on CPU), truncated to the text context."""
    import torch

    tokenizer = processor.tokenizer
    enc = tokenizer(texts, padding="max_length" if _pads_to_max(model) else True, truncation=True,
                    max_length=text_context(model, processor), return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "position_ids")}
    if _pads_to_max(model):
        inputs.pop("attention_mask", None)
    with torch.inference_mode():
        emb = _features(model.get_text_features(**inputs)).float().cpu()
    return torch.nn.functional.normalize(emb, dim=-1)


def image_pixels(processor: Any, images: list[Any]) -> dict[str, Any]:
    """The processor's tensors of `images` (pixel_values [n, 3, H, W], plus e.g. SigLIP2's
    attention mask), on CPU: the model-free half of `encode_images`, which the job runner's
    prefetch threads run on their share of a batch.

    Images of one size are resized in one call (`disable_grouping=False`; transformers
    resizes one by one on CPU by default): the same tensors, and less per-image Python
    holding the GIL beside the decode threads (small fitted images: 0.16 → 0.11 ms each;
    at CLIP-L's 224 it made no measurable difference)."""
    return dict(processor.image_processor(images=images, return_tensors="pt", disable_grouping=False))


def concat_pixels(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-image `image_pixels` results joined into one batch (what one call on all gives)."""
    import torch

    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def embed_pixels(model: Any, pixels: dict[str, Any]) -> Any:
    """L2-normalised image embeddings (float32, on CPU) of tensors from `image_pixels`."""
    import torch

    inputs = {k: (v.to(model.device, model.dtype) if v.is_floating_point() else v.to(model.device))
              for k, v in pixels.items()}
    with torch.inference_mode():
        emb = _features(model.get_image_features(**inputs)).float().cpu()
    return torch.nn.functional.normalize(emb, dim=-1)


def encode_images(model: Any, processor: Any, images: list[Any]) -> Any:
    """L2-normalised image embeddings (float32, on CPU)."""
    return embed_pixels(model, image_pixels(processor, images))
