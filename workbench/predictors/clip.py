"""Zero-shot CLIP / SigLIP predictor (`clip`): cosine similarity of the image to class
prompts, softmax over the two classes -> prob_toxic, label by a threshold.

- Any checkpoint transformers' AutoModel loads as CLIP or SigLIP, by hub id or local path.
- Prompt sets: Russian, English or both, several templates per class whose normalised
  embeddings are averaged (the CLIP prompt-ensemble recipe); or custom lines.
- OCR text goes into every prompt when present («токсичный мем с текстом: «…»»), cut at a
  token boundary so the prompt fits the model's text context (77 tokens for CLIP).
- Class prompts without OCR text are encoded once per (model, prompts) and cached.
- Models load through `workbench.models.clip.load_clip`, shared with embeddings and CAM.
- Images are fitted to the processor's limits first (`prepare_image`: banners letterboxed to
  2:1 so the centre crop keeps half of them, huge images box-reduced), and turned into pixel
  tensors (`preprocess_images`, one processor call per batch) in the job runner's prefetch threads.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

from workbench.config import DEFAULT_CLIP_MODEL
from workbench.models.clip import concat_pixels, embed_pixels, encode_texts, image_pixels, limits, load_clip, text_context
from workbench.models.image_limits import IMAGE_FIT_VERSION, fit_image
from workbench.predictors.base import Option, PredictInput, Predictor, PredictOutput, note_fits, prepare_inputs

CLASSES = ("toxic", "non_toxic")

PROMPT_SETS: dict[str, dict[str, list[str]]] = {
    # The research notebook's two prompts.
    "notebook": {"toxic": ["токсичный мем"], "non_toxic": ["нейтральный мем"]},
    "ru": {
        "toxic": ["токсичный мем", "оскорбительный мем", "мем, разжигающий ненависть", "грубый унизительный мем"],
        "non_toxic": ["нейтральный мем", "безобидный мем", "добрый смешной мем", "обычный весёлый мем"],
    },
    "en": {
        "toxic": ["a toxic meme", "an offensive meme", "a hateful meme", "a rude, insulting meme"],
        "non_toxic": ["a neutral meme", "a harmless meme", "a wholesome funny meme", "an ordinary joke meme"],
    },
}
PROMPT_SETS["ru+en"] = {c: PROMPT_SETS["ru"][c] + PROMPT_SETS["en"][c] for c in CLASSES}

# How OCR text joins a class prompt; "auto" picks by the prompt's language.
OCR_TEMPLATE_RU = "{prompt} с текстом: «{text}»"
OCR_TEMPLATE_EN = '{prompt} with the text: "{text}"'
ELLIPSIS = "…"

_CYRILLIC = re.compile(r"[\u0400-\u04FF]")
_class_embeddings: dict[tuple[Any, ...], Any] = {}  # (model key, prompts) -> [classes, dim]
_class_lock = threading.Lock()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


# ---------------------------------------------------------------------------- prompts


def fit_text(tokenizer: Any, template: str, prompt: str, text: str, context: int) -> tuple[str, bool]:
    """`template` filled with `prompt` and the longest prefix of `text` that fits in
    `context` tokens (special tokens included), ending with an ellipsis when cut.
    Returns (prompt text, truncated?). Works with any tokenizer (binary search on the
    prefix length, ~log2(len(text)) tokenizer calls)."""

    def n_tokens(candidate: str) -> int:
        return len(tokenizer(candidate, verbose=False)["input_ids"])

    full = template.format(prompt=prompt, text=text)
    if n_tokens(full) <= context:
        return full, False
    lo, hi = 0, len(text)  # invariant: prefix lo fits (0 fits unless the template alone is too long)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if n_tokens(template.format(prompt=prompt, text=text[:mid].rstrip() + ELLIPSIS)) <= context:
            lo = mid
        else:
            hi = mid - 1
    return template.format(prompt=prompt, text=text[:lo].rstrip() + ELLIPSIS), True


# ---------------------------------------------------------------------------- predictor


class ClipPredictor(Predictor):
    """Zero-shot CLIP/SigLIP: softmax over class-prompt similarities, OCR text in the prompt."""

    kind = "clip"
    title = "CLIP / SigLIP zero-shot"
    needs_ocr_text = True
    options = (
        Option("model", DEFAULT_CLIP_MODEL, "Hugging Face id or local folder of a CLIP or SigLIP checkpoint. "
               "For Russian text use a multilingual one, e.g. google/siglip2-base-patch16-256. The form starts from "
               "the project's clip choice (Models page, `models set clip`)."),
        Option("device", "auto", "auto | cpu | cuda | cuda:N | mps (auto = CUDA if present, else CPU)"),
        Option("dtype", "auto", "auto = bf16/fp16 on GPU, bf16 on CPUs with AMX/AVX512-BF16, else fp32",
               "choice", ("auto", "float32", "bfloat16", "float16")),
        Option("prompt_set", "ru+en", "Class prompts: several templates per class, embeddings averaged. "
               "'notebook' = «токсичный мем» / «нейтральный мем»; 'custom' = the two boxes below.",
               "choice", ("ru+en", "ru", "en", "notebook", "custom")),
        Option("toxic_prompts", "\n".join(PROMPT_SETS["ru+en"]["toxic"]),
               "Custom prompts for the toxic class, one per line (used when prompt_set = custom)", "text"),
        Option("non_toxic_prompts", "\n".join(PROMPT_SETS["ru+en"]["non_toxic"]),
               "Custom prompts for the non-toxic class, one per line (used when prompt_set = custom)", "text"),
        Option("use_ocr", True, "Put the meme's OCR text into the prompts", "bool"),
        Option("ocr_template", "auto", "How OCR text joins a prompt, with {prompt} and {text}; auto = "
               f"'{OCR_TEMPLATE_RU}' for Russian prompts, '{OCR_TEMPLATE_EN}' for others"),
        Option("threshold", 0.5, "Label toxic when prob_toxic >= threshold", "float"),
    )

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, device: str = "auto", dtype: str = "auto",
                 prompt_set: str = "ru+en", toxic_prompts: str | list[str] = "", non_toxic_prompts: str | list[str] = "",
                 use_ocr: bool = True, ocr_template: str = "auto", threshold: float = 0.5,
                 cache_dir: str | None = None) -> None:
        from workbench.models import devices

        self.model_name = str(model).strip() or DEFAULT_CLIP_MODEL
        self.placement = devices.resolve(device, dtype)  # ValueError for a device that is not here
        if prompt_set == "custom":
            prompts = {"toxic": _as_lines(toxic_prompts), "non_toxic": _as_lines(non_toxic_prompts)}
        elif prompt_set in PROMPT_SETS:
            prompts = {c: list(PROMPT_SETS[prompt_set][c]) for c in CLASSES}
        else:
            raise ValueError(f"prompt_set must be one of {', '.join(PROMPT_SETS)}, custom (got {prompt_set!r})")
        for cls in CLASSES:
            if not prompts[cls]:
                raise ValueError(f"no prompts for class {cls}: enter at least one line")
        self.prompt_set = prompt_set
        self.prompts = prompts
        if ocr_template != "auto" and ("{prompt}" not in ocr_template or "{text}" not in ocr_template):
            raise ValueError("ocr_template must contain {prompt} and {text} (or be 'auto')")
        self.ocr_template = ocr_template
        self.use_ocr = bool(use_ocr)
        self.needs_ocr_text = self.use_ocr  # no OCR lookups when the prompts do not use them
        self.threshold = float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be between 0 and 1")
        self.cache_dir = cache_dir
        self._class_emb: Any = None  # [classes, dim], prompts without OCR text
        self.text_encoder_calls = 0  # observable cost: how often the text tower ran

    # -- identity

    def config(self) -> dict[str, Any]:
        return {
            "model": self.model_name, "device": self.placement.device, "dtype": self.placement.dtype,
            "prompt_set": self.prompt_set, "prompts": self.prompts, "use_ocr": self.use_ocr,
            "ocr_template": self.ocr_template, "threshold": self.threshold, "image_fit": IMAGE_FIT_VERSION,
        }

    def template_for(self, prompt: str) -> str:
        if self.ocr_template != "auto":
            return self.ocr_template
        return OCR_TEMPLATE_RU if _CYRILLIC.search(prompt) else OCR_TEMPLATE_EN

    # -- model

    def load(self) -> None:
        self.model, self.processor = load_clip(self.model_name, self.placement.device, self.placement.dtype,
                                               self.cache_dir)
        self.limits = limits(self.processor)

    def prepare_image(self, image: Any) -> tuple[Any, dict[str, Any]]:
        self._loaded()
        return fit_image(image, self.limits)

    def decode_side(self) -> int:
        self._loaded()
        return self.limits.decode_side()

    def preprocess_images(self, images: list[Any]) -> list[Any]:
        """One processor call for the batch, split into per-image tensors (views, no copies)."""
        if not images:
            return []
        batch = image_pixels(self._loaded()[1], images)
        return [{key: value[i : i + 1] for key, value in batch.items()} for i in range(len(images))]

    def _loaded(self) -> tuple[Any, Any]:
        if not hasattr(self, "model"):
            self.load()
        return self.model, self.processor

    def class_embeddings(self) -> Any:
        """[2, dim] averaged, re-normalised class-prompt embeddings without OCR text, computed
        once per process per (model, prompts)."""
        if self._class_emb is None:
            key = (self.model_name, self.placement.device, self.placement.dtype, self.cache_dir,
                   json.dumps(self.prompts, sort_keys=True, ensure_ascii=False))
            with _class_lock:
                cached = _class_embeddings.get(key)
            if cached is None:
                cached = self._ensemble([self.prompts[c] for c in CLASSES])
                with _class_lock:
                    _class_embeddings[key] = cached
            self._class_emb = cached
        return self._class_emb

    def _ensemble(self, groups: list[list[str]]) -> Any:
        """One averaged normalised embedding per group of prompts (one text-tower call)."""
        import torch

        model, processor = self._loaded()
        flat = [p for group in groups for p in group]
        emb = encode_texts(model, processor, flat)
        self.text_encoder_calls += 1
        out, start = [], 0
        for group in groups:
            out.append(emb[start : start + len(group)].mean(0))
            start += len(group)
        return torch.nn.functional.normalize(torch.stack(out), dim=-1)

    def ocr_prompts(self, text: str) -> tuple[dict[str, list[str]], bool]:
        """The class prompts with `text` in them, each fitted to the text context."""
        model, processor = self._loaded()
        context = text_context(model, processor)
        out: dict[str, list[str]] = {}
        truncated = False
        for cls in CLASSES:
            out[cls] = []
            for prompt in self.prompts[cls]:
                filled, cut = fit_text(processor.tokenizer, self.template_for(prompt), prompt, text, context)
                out[cls].append(filled)
                truncated |= cut
        return out, truncated

    # -- predict

    def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        try:
            batch = prepare_inputs(self, batch)
            return note_fits(batch, self._predict(batch))
        except Exception:  # noqa: BLE001 - isolate the bad item: retry one by one
            if len(batch) == 1:
                raise
            outputs = []
            for item in batch:
                try:
                    outputs.extend(note_fits([item], self._predict(prepare_inputs(self, [item]))))
                except Exception as exc:  # noqa: BLE001
                    outputs.append(PredictOutput(label="unknown", error=f"{type(exc).__name__}: {exc}"))
            return outputs

    def _predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        import torch

        model = self._loaded()[0]
        t0 = time.perf_counter()
        image_emb = embed_pixels(model, concat_pixels([item.pixels for item in batch]))  # set by prepare_inputs
        scale = float(model.logit_scale.detach().float().exp()) if hasattr(model, "logit_scale") else 100.0
        rows = []  # (text, prompts, truncated, class embeddings) per item
        for item in batch:
            text = " ".join((item.ocr_text or "").split()) if self.use_ocr else ""
            if text:
                prompts, truncated = self.ocr_prompts(text)
                rows.append((text, prompts, truncated, self._ensemble([prompts[c] for c in CLASSES])))
            else:
                rows.append((text, {c: self.prompts[c] for c in CLASSES}, False, self.class_embeddings()))
        # cosine similarity of each image to its classes, and the softmax, for the whole batch at once
        sims = torch.einsum("nd,ncd->nc", image_emb, torch.stack([row[3] for row in rows]))
        probs = torch.softmax(scale * sims, dim=-1)[:, CLASSES.index("toxic")].tolist()
        outputs = []
        for (text, prompts, truncated, _), row_sims, prob_toxic in zip(rows, sims.tolist(), probs, strict=True):
            similarity = dict(zip(CLASSES, row_sims, strict=True))
            outputs.append(PredictOutput(
                label="toxic" if prob_toxic >= self.threshold else "non_toxic", prob_toxic=prob_toxic,
                raw_output=json.dumps({c: round(v, 6) for c, v in similarity.items()}),
                extra={"similarity": similarity, "logit_scale": scale, "ocr_in_prompt": bool(text),
                       "ocr_truncated": truncated, "prompt_example": prompts["toxic"][0]},
            ))
        per_item_ms = (time.perf_counter() - t0) * 1000 / max(1, len(batch))
        for out in outputs:
            out.latency_ms = per_item_ms
        return outputs


def _as_lines(value: str | list[str]) -> list[str]:
    return [v.strip() for v in value if v.strip()] if isinstance(value, list) else _lines(value)
