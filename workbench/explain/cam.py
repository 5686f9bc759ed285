"""CAM explanations over CLIP's vision tower (pytorch-grad-cam), cached as PNG.

Two kinds of map:
- EigenCAM (`eigencam`): the first principal component of the last ViT block's patch
  tokens, as in the research notebook. Not class-specific: the same map whatever the prompt.
- Class-specific (`gradcam`, `layercam`): Grad-CAM / LayerCAM on the image-text
  similarity of a chosen class prompt. With several prompts (e.g. toxic vs neutral) the
  target is the prompt's log-softmax over them, so the map shows what pushes the image
  towards that class rather than towards the others. A class prompt may hold several
  lines: their embeddings are averaged, like the CLIP predictor's prompt ensembles.
  (EigenGradCAM is not offered: its SVD is blind to the gradient's sign, and with two
  prompts the gradients of the two classes are opposite, so both classes get one map.)

Facts that shaped the code (grad-cam 1.5.7, transformers 5): CLIP modules return output
objects, which grad-cam cannot use, so `ClipImageTower` wraps the model and returns a float
tensor; ViT activations are (batch, tokens, channels), so `vit_reshape` drops the CLS token
(CLIP; SigLIP has none) and folds the rest onto the patch grid (gradient methods fail with "Invalid grads shape"
without it); numpy has no bfloat16, so everything handed to grad-cam is cast to float32.

The model sees the whole meme squashed to its input size (no centre crop), so captions at
the top and bottom are explained too; the map is resized back to the image's size. A meme
longer than 2:1 is letterboxed first (workbench.models.image_limits) so it is not squashed
flat, and the padding is cut off the map again; huge images are box-reduced first.

Maps are cached as 8-bit grayscale PNGs at `<artefacts>/cam/<sha[:2]>/<sha256>/<request>.png`
(image content + fingerprint of model, dtype, method and prompts), with the request written
into the PNG's text chunk, so the maps of one image can be listed (reports, cards) without
knowing the request. Overlays with any opacity are drawn from the cached map.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.models.image_limits import content_box, fit_image
from workbench.runs.step import ItemResult, Step, WorkItem, fingerprint, prefetch_image
from workbench.store.db import in_batches
from workbench.store.files import DiskFull, atomic_write
from workbench.store.images import load_rgb, sha256_file
from workbench.store.schema import Image

CAM_VERSION = 2  # bump when the meaning of a stored map changes (2: extreme shapes letterboxed)
METHODS = ("eigencam", "gradcam", "layercam")
CLASS_METHODS = ("gradcam", "layercam")
METHOD_TITLES = {
    "eigencam": "EigenCAM (not class-specific)",
    "gradcam": "Grad-CAM on the class prompt",
    "layercam": "LayerCAM on the class prompt",
}
# The research notebook's prompts, used when the CLIP predictor offers none.
DEFAULT_CLASS_PROMPTS = {"toxic": "токсичный мем", "non_toxic": "нейтральный мем"}
_PNG_KEY = "workbench-cam"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class CamRequest:
    """What to explain with: the CLIP model, the method and (class methods) the prompts.

    `prompts[target]` is the class prompt; the other prompts are its contrast classes.
    EigenCAM ignores prompts (they are left out of its cache key).
    """

    model: str
    method: str = "eigencam"
    prompts: tuple[str, ...] = ()
    target: int = 0
    dtype: str = "auto"  # resolved on creation (workbench.models.devices), so the cache key is concrete

    def __post_init__(self) -> None:
        if self.dtype == "auto":
            from workbench.models import devices

            object.__setattr__(self, "dtype", devices.resolve("auto", "auto").dtype)
        if self.method not in METHODS:
            raise ValueError(f"unknown CAM method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.method in CLASS_METHODS:
            if not self.prompts or not any(p.strip() for p in self.prompts):
                raise ValueError(f"{self.method} needs a class prompt")
            if not 0 <= self.target < len(self.prompts):
                raise ValueError(f"target {self.target} is not one of the {len(self.prompts)} prompts")

    @classmethod
    def for_class(cls, model: str, method: str, label: str = "toxic", prompts: dict[str, str] | None = None,
                  dtype: str = "auto") -> CamRequest:
        """A request explaining `label` (toxic | non_toxic) against the other class's prompt."""
        prompts = prompts or class_prompts()
        order = ("toxic", "non_toxic")
        if method not in CLASS_METHODS:
            return cls(model=model, method=method, dtype=dtype)
        return cls(model=model, method=method, prompts=tuple(prompts[c] for c in order), target=order.index(label),
                   dtype=dtype)

    @property
    def class_specific(self) -> bool:
        return self.method in CLASS_METHODS

    def config(self) -> dict[str, Any]:
        """Everything that changes the map (the cache key without the image)."""
        cfg: dict[str, Any] = {"model": self.model, "dtype": self.dtype, "method": self.method, "v": CAM_VERSION}
        if self.class_specific:
            cfg["prompts"] = list(self.prompts)
            cfg["target"] = self.target
        return cfg

    def fingerprint(self) -> str:
        return fingerprint(self.config())

    def describe(self) -> str:
        if self.class_specific:
            lines = _prompt_lines(self.prompts[self.target])
            more = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""
            return f"{self.method} on “{lines[0] if lines else ''}”{more}"
        return self.method


@dataclass
class CamResult:
    """A map in [0, 1] with the image's (height, width), where it is cached, and whether it was computed now."""

    cam: np.ndarray
    path: Path
    computed: bool
    seconds: float = 0.0


def class_prompts(prompt_set: str | None = None) -> dict[str, str]:
    """{'toxic': prompt, 'non_toxic': prompt}, one line per ensemble member: the CLIP
    predictor's prompt set (its default set when None), else the notebook's two prompts."""
    try:
        from workbench.predictors.clip import PROMPT_SETS, ClipPredictor

        if prompt_set is None:
            prompt_set = next(o.default for o in ClipPredictor.options if o.name == "prompt_set")
        chosen = PROMPT_SETS[prompt_set]
        return {c: "\n".join(chosen[c]) for c in ("toxic", "non_toxic")}
    except (ImportError, KeyError, StopIteration):
        return dict(DEFAULT_CLASS_PROMPTS)


def _prompt_lines(prompt: str) -> list[str]:
    return [line.strip() for line in prompt.splitlines() if line.strip()]


# ---------------------------------------------------------------- the model side

def _torch():  # noqa: ANN202 - torch is imported lazily: the app must start without it
    import torch

    return torch


def _is_square(n: int) -> bool:
    return int(round(n**0.5)) ** 2 == n


def vit_reshape(tensor: Any) -> Any:
    """(batch, [CLS +] h*w, channels) ViT tokens -> (batch, channels, h, w) float32, CLS dropped
    (CLIP has one; SigLIP has none)."""
    if isinstance(tensor, tuple):  # some layers return (hidden, attn)
        tensor = tensor[0]
    n = tensor.shape[1]
    patches = tensor if _is_square(n) and not _is_square(n - 1) else tensor[:, 1:, :]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"{n} ViT tokens do not form a square patch grid")
    grid = patches.reshape(tensor.shape[0], side, side, tensor.shape[2])
    return grid.permute(0, 3, 1, 2).float()  # float32: numpy cannot hold bfloat16


def _features(output: Any) -> Any:
    """The embedding tensor from get_*_features (a tensor in transformers 4, an output object in 5)."""
    return output if hasattr(output, "shape") else output.pooler_output


def _make_tower(clip: Any, text_embeds: Any | None) -> Any:
    torch = _torch()

    class ClipImageTower(torch.nn.Module):
        """CLIP's vision tower as a plain tensor function for grad-cam: image embeddings, or
        logit-scaled cosine similarities to fixed text embeddings (one column per prompt)."""

        def __init__(self) -> None:
            super().__init__()
            self.clip = clip
            self.register_buffer("text_embeds", text_embeds, persistent=False)

        def forward(self, pixel_values: Any) -> Any:
            image = _features(self.clip.get_image_features(pixel_values=pixel_values)).float()
            if self.text_embeds is None:
                return image
            image = image / image.norm(dim=-1, keepdim=True)
            scale = self.clip.logit_scale.exp().float() if hasattr(self.clip, "logit_scale") else 100.0
            return scale * image @ self.text_embeds.T

    return ClipImageTower()


@contextmanager
def _backward_stops_at_embeddings(clip: Any) -> Iterator[None]:
    """Gradients flow from the target back to the vision tower's embeddings and no further.

    The embeddings' output is made a leaf that requires grad, and the loaded weights are frozen
    (workbench.models.clip), so the backward computes only what grad-cam reads (the target
    layer's gradients): no weight gradients and no backward through the patch-embedding
    convolution. That convolution's bf16 backward (oneDNN's brgemm_convolution_bwd_weights)
    hung forever on CPUs with AMX, and its result was never used."""
    handle = clip.vision_model.embeddings.register_forward_hook(
        lambda _module, _inputs, output: output.detach().requires_grad_(True))
    try:
        yield
    finally:
        handle.remove()


def target_layer(clip: Any) -> Any:
    """The layer explained: the last encoder block's first LayerNorm. Its patch tokens still
    feed the CLS token through that block's attention, so gradients reach them (at the block's
    output only the CLS token is used and patch gradients would be zero)."""
    return clip.vision_model.encoder.layers[-1].layer_norm1


def pixel_values(clip: Any, processor: Any, image: PILImage.Image) -> Any:
    """The whole image squashed to the model's input size, normalised like the processor does."""
    torch = _torch()
    side = int(clip.config.vision_config.image_size)
    ip = getattr(processor, "image_processor", processor)
    mean = np.asarray(getattr(ip, "image_mean", None) or OPENAI_CLIP_MEAN, dtype=np.float32)
    std = np.asarray(getattr(ip, "image_std", None) or OPENAI_CLIP_STD, dtype=np.float32)
    arr = np.asarray(image.convert("RGB").resize((side, side), PILImage.Resampling.BICUBIC), dtype=np.float32) / 255.0
    arr = (arr - mean) / std
    param = next(clip.parameters())
    return torch.from_numpy(arr.transpose(2, 0, 1)[None].copy()).to(device=param.device, dtype=param.dtype)


# model -> {prompts: embeddings}: a batch explains many images with the same prompts, so the
# text tower runs once per model and prompt set (weak keys: a dropped model frees its entry).
_text_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def text_embeddings(clip: Any, processor: Any, prompts: Sequence[str]) -> Any:
    """One L2-normalised float32 embedding per class prompt (lines of a prompt averaged, as the
    CLIP predictor's ensembles), on the model's device, without gradients; cached per model."""
    torch = _torch()
    from workbench.models.clip import encode_texts

    per_model = _text_cache.setdefault(clip, {})
    key = tuple(prompts)
    if key not in per_model:
        groups = [_prompt_lines(p) or [p] for p in prompts]
        emb = encode_texts(clip, processor, [line for group in groups for line in group])
        out, start = [], 0
        for group in groups:
            out.append(emb[start : start + len(group)].mean(0))
            start += len(group)
        per_model[key] = torch.nn.functional.normalize(torch.stack(out), dim=-1).to(next(clip.parameters()).device)
    return per_model[key]


def fit_for_cam(clip: Any, processor: Any, image: PILImage.Image) -> tuple[PILImage.Image, dict[str, Any]]:
    """The image fitted to the vision tower's square input (letterbox beyond 2:1, box-reduce
    when huge) and what was done: `compute_cam`'s first step, shared by the batch step."""
    from workbench.models.image_limits import fixed_limits

    ip = getattr(processor, "image_processor", processor)
    mean = tuple(getattr(ip, "image_mean", None) or OPENAI_CLIP_MEAN)
    return fit_image(image, fixed_limits(int(clip.config.vision_config.image_size), mean))


def compute_cam(clip: Any, processor: Any, image: PILImage.Image, request: CamRequest,
                fitted: tuple[PILImage.Image, dict[str, Any]] | None = None) -> np.ndarray:
    """The map for one image, float32 in [0, 1], shape (image height, image width).
    `fitted`: `fit_for_cam`'s result when already made (the batch step's prefetch threads)."""
    torch = _torch()
    from pytorch_grad_cam import EigenCAM, GradCAM, LayerCAM

    model_image, fit = fitted or fit_for_cam(clip, processor, image)
    x = pixel_values(clip, processor, model_image)
    if request.class_specific:
        tower = _make_tower(clip, text_embeddings(clip, processor, request.prompts))
        method = GradCAM if request.method == "gradcam" else LayerCAM
        index, contrast = request.target, len(request.prompts) > 1

        def target(output: Any) -> Any:
            return torch.log_softmax(output, dim=-1)[index] if contrast else output[index]

        def class_map(model: Any, pixels: Any) -> np.ndarray:
            with torch.enable_grad(), _backward_stops_at_embeddings(model.clip), \
                    method(model=model, target_layers=[target_layer(model.clip)], reshape_transform=vit_reshape) as cam:
                return cam(input_tensor=pixels, targets=[target])

        grayscale = class_map(tower, x)
        if x.dtype != torch.float32 and not np.isfinite(grayscale).all():
            # bf16/fp16 gradients can overflow grad-cam's float32 grads × activations into inf/NaN
            # (seen with LayerCAM): redo this one map on a float32 copy rather than store a blank map.
            import copy

            grayscale = class_map(copy.deepcopy(tower).float(), x.detach().float())
    else:
        tower = _make_tower(clip, None)
        with torch.no_grad(), EigenCAM(model=tower, target_layers=[target_layer(clip)],
                                       reshape_transform=vit_reshape) as cam:
            grayscale = cam(input_tensor=x, targets=None)
    grid = np.nan_to_num(np.asarray(grayscale[0], dtype=np.float32))
    cam_map = PILImage.fromarray(grid, mode="F")
    if fit.get("pad"):  # back onto the letterboxed image, then the padding cut off
        cam_map = cam_map.resize(model_image.size, PILImage.Resampling.BILINEAR).crop(content_box(fit, model_image.size))
    resized = np.asarray(cam_map.resize(image.size, PILImage.Resampling.BILINEAR))
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- cache

def cam_dir(artefacts_dir: Path) -> Path:
    return artefacts_dir / "cam"


def image_cam_dir(artefacts_dir: Path, sha256: str) -> Path:
    """The folder holding every cached map of one image."""
    return cam_dir(artefacts_dir) / sha256[:2] / sha256


def cam_path(artefacts_dir: Path, sha256: str, request: CamRequest) -> Path:
    """Where the map of this image under this request is cached."""
    return image_cam_dir(artefacts_dir, sha256) / f"{request.fingerprint()}.png"


def read_cam(path: Path) -> np.ndarray:
    with PILImage.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def write_cam(path: Path, cam: np.ndarray, request: CamRequest | None = None) -> None:
    """Store a map as an 8-bit grayscale PNG (written atomically), the request in its text chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if request is not None:
        info.add_itxt(_PNG_KEY, json.dumps(request.config(), ensure_ascii=False))
    with atomic_write(path) as fh:
        PILImage.fromarray(np.round(np.clip(cam, 0, 1) * 255).astype(np.uint8), mode="L").save(fh, "PNG", pnginfo=info)


def read_request(path: Path) -> CamRequest | None:
    """The request a cached map was made with (from its PNG text chunk), or None."""
    try:
        with PILImage.open(path) as im:
            cfg = json.loads(im.text.get(_PNG_KEY, "null"))  # type: ignore[attr-defined]
        if not cfg:
            return None
        return CamRequest(model=cfg["model"], method=cfg["method"], prompts=tuple(cfg.get("prompts", ())),
                          target=int(cfg.get("target", 0)), dtype=cfg.get("dtype", "float32"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cached_cams(artefacts_dir: Path, sha256: str) -> list[tuple[CamRequest, Path]]:
    """Every cached map of one image with its request (EigenCAM first), never computing."""
    folder = image_cam_dir(artefacts_dir, sha256)
    found = []
    for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        request = read_request(path)
        if request is not None:
            found.append((request, path))
    return sorted(found, key=lambda rp: (rp[0].class_specific, rp[0].method, rp[0].target))


ModelLoader = Callable[[CamRequest], tuple[Any, Any]]


def load_clip_for(request: CamRequest) -> tuple[Any, Any]:
    """(model, processor) for the request, through the CLIP predictor's cached loader
    (one load per model and dtype per process; ModelUnavailable when it cannot load)."""
    from workbench.models.clip import load_clip

    return load_clip(request.model, device="auto", dtype=request.dtype)


def explain(
    artefacts_dir: Path,
    image_path: Path,
    request: CamRequest,
    *,
    sha256: str | None = None,
    loader: ModelLoader = load_clip_for,
    force: bool = False,
    prepared: tuple[PILImage.Image, tuple[PILImage.Image, dict[str, Any]]] | None = None,
) -> CamResult:
    """The map of one image: read from the cache, or computed (model loaded on demand) and cached.
    `prepared`: the decoded image and its `fit_for_cam` result when already made."""
    sha256 = sha256 or sha256_file(image_path)
    path = cam_path(artefacts_dir, sha256, request)
    if path.exists() and not force:
        return CamResult(read_cam(path), path, computed=False)
    image, fitted = prepared if prepared is not None else (load_rgb(image_path), None)
    clip, processor = loader(request)
    t0 = time.perf_counter()
    cam = compute_cam(clip, processor, image, request, fitted)
    seconds = time.perf_counter() - t0
    write_cam(path, cam, request)
    return CamResult(read_cam(path), path, computed=True, seconds=seconds)


def cached_cam(artefacts_dir: Path, sha256: str, request: CamRequest) -> np.ndarray | None:
    """The cached map, or None (never computes: for reports and cards)."""
    path = cam_path(artefacts_dir, sha256, request)
    return read_cam(path) if path.exists() else None


# ---------------------------------------------------------------- overlays

def heatmap(cam: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as an RGB uint8 'jet' heatmap (OpenCV's colormap, as grad-cam uses)."""
    import cv2

    bgr = cv2.applyColorMap(np.uint8(np.round(np.clip(cam, 0, 1) * 255)), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(image: PILImage.Image, cam: np.ndarray, opacity: float = 0.5) -> PILImage.Image:
    """The image with the heatmap blended on top; `opacity` 0 = image only, 1 = heatmap only."""
    # Hand-written rather than grad-cam's show_cam_on_image: that one needs a float image of the
    # map's size and divides the blend by its maximum (brightening dark memes); ours resizes the
    # map to the meme and keeps its colours exact at every opacity.
    opacity = float(min(1.0, max(0.0, opacity)))
    rgb = image.convert("RGB")
    if cam.shape != (rgb.height, rgb.width):
        cam = np.asarray(PILImage.fromarray(cam.astype(np.float32), mode="F").resize(rgb.size, PILImage.Resampling.BILINEAR))
    base = np.asarray(rgb, dtype=np.float32)
    blended = (1.0 - opacity) * base + opacity * heatmap(cam).astype(np.float32)
    return PILImage.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8), mode="RGB")


def cached_overlays(artefacts_dir: Path, sha256: str, image: PILImage.Image, opacity: float = 0.5,
                    limit: int = 3) -> list[tuple[str, PILImage.Image]]:
    """(caption, overlay) for each cached map of an image (EigenCAM first), for cards and
    reports; never computes."""
    out = []
    for request, path in cached_cams(artefacts_dir, sha256)[:limit]:
        caption = METHOD_TITLES.get(request.method, request.method)
        if request.class_specific:
            caption += f": “{_prompt_lines(request.prompts[request.target])[0]}”"
        out.append((caption, overlay(image, read_cam(path), opacity)))
    return out


# ---------------------------------------------------------------- batch step

@dataclass
class CamStep(Step):
    """Computes and caches one kind of map for a selection through the job runner.
    The PNG files are the stored result; the jobs table tracks progress."""

    request: CamRequest
    artefacts_dir: Path
    loader: ModelLoader = load_clip_for
    kind = "cam"  # type: ignore[misc]
    prefetches = True  # type: ignore[misc]
    _model: tuple[Any, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = f"cam:{self.request.describe()}:{self.request.model}"

    def fingerprint(self) -> str:
        return self.request.fingerprint()

    def done_ids(self, session: Session, image_ids: Sequence[int]) -> set[int]:
        ids = list(image_ids)
        done: set[int] = set()
        for chunk in in_batches(ids):
            rows = session.execute(select(Image.id, Image.sha256).where(Image.id.in_(chunk)))
            done.update(i for i, sha in rows if cam_path(self.artefacts_dir, sha, self.request).exists())
        return done

    def load(self) -> None:
        if self._model is None:
            self._model = self.loader(self.request)

    def prefetch(self, item: WorkItem) -> Any:
        """The decoded image and its fit to the vision tower (prefetch threads), or the item's error."""
        self.load()
        clip, processor = self._model  # type: ignore[misc]
        return prefetch_image(item, lambda image: (image, fit_for_cam(clip, processor, image)))

    def process(self, items: list[WorkItem]) -> list[ItemResult]:
        self.load()
        loaded = self._model
        results = []
        for item in items:
            t0 = time.perf_counter()
            prepared = item.prepared if item.prepared is not None else self.prefetch(item)
            if isinstance(prepared, ItemResult):
                results.append(prepared)
                continue
            try:
                result = explain(self.artefacts_dir, item.path, self.request, loader=lambda _r: loaded, force=True,
                                 prepared=prepared)
                results.append(ItemResult(item.image_id, value=str(result.path), duration_ms=(time.perf_counter() - t0) * 1000))
            except DiskFull:
                raise  # the job ends failed with "disk full: PATH"; the next meme would not fit either
            except Exception as exc:  # noqa: BLE001 - one unreadable meme must not stop the batch
                results.append(ItemResult(item.image_id, error=f"{type(exc).__name__}: {exc}"))
        return results

    def use_scratch(self, folder: Path) -> None:
        """On a cluster worker: maps go to a folder of the worker's, and travel back (remote_result)."""
        self.artefacts_dir = folder

    def remote_result(self, result: ItemResult) -> ItemResult:
        """On a cluster worker: the map's PNG as (path under the artefacts folder, bytes), its file removed."""
        if result.error is None and isinstance(result.value, str):
            path = Path(result.value)
            result.value = (path.relative_to(self.artefacts_dir).as_posix(), path.read_bytes())
            path.unlink(missing_ok=True)
        return result

    def save(self, session: Session, results: list[ItemResult], force: bool) -> None:
        """Nothing to add to the DB: each map was written to its PNG in `process`, or, computed
        on a cluster worker, comes back as bytes and is written here."""
        for result in results:
            if result.error is None and isinstance(result.value, tuple):
                rel, data = result.value
                target = self.artefacts_dir / rel
                if ".." in Path(rel).parts or Path(rel).is_absolute():
                    raise ValueError(f"a worker sent a map path outside the artefacts folder: {rel!r}")
                with atomic_write(target) as fh:
                    fh.write(data)
