"""The VLM moderator (`vlm`): Qwen2.5-VL (or any image-text-to-text model transformers
loads) asked a Russian moderation prompt, run locally, or on an OpenAI-compatible server
(vlm_endpoint.py).

Local backend, two modes:
- "label+explanation": batched greedy generation (left padding; on CPU batching pays,
  decode being memory-bound). The answer starts with a prefilled prefix («Класс:»), so the
  first generated token is the class word: its logits give `prob_toxic`, the parser
  (vlm_parse.py) reads label + explanation from the text.
- "label": the same prefill, no generation: the class-word probabilities of the next token
  give `prob_toxic` and the label (threshold). One forward pass per batch.

Images are fitted to the processor's limits before they reach it (`prepare_image`, in the
job runner's prefetch threads): Qwen's resize refuses aspect ratios above 200:1 and cannot
keep images beyond max_pixels/28²:1 inside the pixel budget, so such memes are letterboxed;
huge ones are box-reduced first. `extra["image_fit"]` records what was done.

Models load lazily, once per process per (model, device, dtype, quantization).
"""

from __future__ import annotations

import time
from typing import Any

from workbench.config import DEFAULT_VLM_MODEL
from workbench.models.image_limits import IMAGE_FIT_VERSION, fit_image
from workbench.models.vlm import image_limits, is_loaded, load_vlm
from workbench.predictors.base import Option, PredictInput, Predictor, PredictOutput, note_fits, prepare_inputs
from workbench.predictors.vlm_parse import parse_answer
from workbench.predictors.vlm_prompt import (
    COMMON_OPTIONS,
    MODE_LABEL,
    MODES,
    prob_toxic,
    render_prompt,
    set_common_options,
    word_variants,
)
from workbench.store.db import in_batches

QUANTIZATIONS = ("none", "8bit", "4bit")
CPU_MAX_PIXELS = 448 * 448  # ≈ 256 image tokens: ~10 s prefill per meme for the 3B model on one CPU core
GPU_MAX_PIXELS = 1280 * 28 * 28  # Qwen's own default
DEFAULT_MIN_PIXELS = 56 * 56

LOCAL_OPTIONS: tuple[Option, ...] = (
    Option("device", "auto", "auto | cpu | cuda | cuda:N | mps"),
    Option("dtype", "auto", "auto = bf16/fp16 on GPU, bf16 on CPUs that have it, else fp32", "choice",
           ("auto", "bfloat16", "float16", "float32")),
    Option("quantization", "none", "4bit/8bit through bitsandbytes: CUDA only", "choice", QUANTIZATIONS),
    Option("min_pixels", DEFAULT_MIN_PIXELS, "smallest image area the processor resizes to", "int"),
    Option("max_pixels", 0, f"largest image area (0 = auto: {CPU_MAX_PIXELS} on CPU ≈ 448×448, "
           f"{GPU_MAX_PIXELS} on GPU); tokens ≈ pixels / 784", "int"),
    Option("batch_size", 4, "images per forward/generate call (left-padded)", "int"),
)


class LocalVlmPredictor(Predictor):
    """Qwen2.5-VL-style model through transformers' AutoModelForImageTextToText."""

    kind = "vlm"
    title = "VLM moderator (local transformers)"
    options = COMMON_OPTIONS + LOCAL_OPTIONS
    needs_ocr_text = True

    def __init__(self, model: str, mode: str, prompt: str, toxic_word: str, non_toxic_word: str,
                 answer_prefix: str, use_ocr_text: bool, max_new_tokens: int, threshold: float,
                 device: str, dtype: str, quantization: str, min_pixels: int, max_pixels: int,
                 batch_size: int) -> None:
        from workbench.models import devices

        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)} (got {quantization!r})")
        placement = devices.resolve(device, dtype)
        if quantization != "none" and not placement.device.startswith("cuda"):
            raise ValueError(
                f"{quantization} loading needs a CUDA GPU (bitsandbytes); this run is on {placement.device}. "
                "Use quantization=none (bf16 on CPU), or run on a GPU machine / a vLLM endpoint.")
        self.placement = placement
        set_common_options(self, model, mode, prompt, toxic_word, non_toxic_word, answer_prefix, use_ocr_text,
                           max_new_tokens, threshold)
        self.quantization = quantization
        self.min_pixels = int(min_pixels)
        auto_max = GPU_MAX_PIXELS if placement.device.startswith("cuda") else CPU_MAX_PIXELS
        self.max_pixels = int(max_pixels) or auto_max
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels})")
        self.batch_size = max(1, int(batch_size))
        self._class_ids: tuple[list[int], list[int]] | None = None

    # ----------------------------------------------------------------- identity

    def config(self) -> dict[str, Any]:
        config = {
            "backend": "local", "model": self.model_name, "mode": self.mode, "prompt": self.prompt,
            "toxic_word": self.toxic_word, "non_toxic_word": self.non_toxic_word,
            "answer_prefix": self.answer_prefix, "use_ocr_text": self.use_ocr_text,
            "device": self.placement.device, "dtype": self.placement.dtype, "quantization": self.quantization,
            "min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "threshold": self.threshold,
            "image_fit": IMAGE_FIT_VERSION,
        }
        if self.mode != MODE_LABEL:  # label mode generates nothing: the cap does not change its output
            config["max_new_tokens"] = self.max_new_tokens
        return config

    def _cache_key(self) -> tuple[str, str, str, str]:
        return (self.model_name, self.placement.device, self.placement.dtype, self.quantization)

    # ----------------------------------------------------------------- loading

    def load(self) -> None:
        from workbench.models import devices

        devices.set_threads()
        _, processor = load_vlm(self.model_name, self.placement.device, self.placement.dtype, self.quantization)
        self._limits = image_limits(processor, self.max_pixels)
        self._class_ids = None

    def _loaded(self) -> tuple[Any, Any]:
        if not is_loaded(*self._cache_key()) or not hasattr(self, "_limits"):
            self.load()
        return load_vlm(*self._cache_key())

    def prepare_image(self, image: Any) -> tuple[Any, dict[str, Any]]:
        self._loaded()
        return fit_image(image, self._limits)

    def decode_side(self) -> int:
        self._loaded()
        return self._limits.decode_side()

    # ----------------------------------------------------------------- predicting

    def predict(self, batch: list[PredictInput]) -> list[PredictOutput]:
        outputs: list[PredictOutput] = []
        try:
            batch = prepare_inputs(self, batch)
        except Exception:  # noqa: BLE001 - fitted one by one below, so one bad image fails alone
            return self.predict_one_by_one(batch)
        for chunk in in_batches(batch, self.batch_size):
            try:
                outputs.extend(self._predict_chunk(chunk))
            except Exception as exc:  # noqa: BLE001 - retry one by one so one bad meme fails alone
                if len(chunk) == 1:
                    outputs.append(PredictOutput("unknown", error=f"{type(exc).__name__}: {exc}"))
                else:
                    outputs.extend(self.predict_one_by_one(chunk))
        return note_fits(batch, outputs)

    def predict_one_by_one(self, batch: list[PredictInput]) -> list[PredictOutput]:
        """Each image alone (no padding): the notebook's way, and the fallback of a failed batch."""
        outputs = []
        for item in batch:
            try:
                outputs.extend(note_fits([item], self._predict_chunk(prepare_inputs(self, [item]))))
            except Exception as exc:  # noqa: BLE001 - per-item error, the run goes on
                outputs.append(PredictOutput("unknown", error=f"{type(exc).__name__}: {exc}"))
        return outputs

    def prompt_for(self, item: PredictInput) -> str:
        """The user prompt for one meme (OCR text in when enabled)."""
        ocr = item.ocr_text if self.use_ocr_text else ""
        return render_prompt(self.prompt, ocr, self.toxic_word, self.non_toxic_word)

    def _predict_chunk(self, chunk: list[PredictInput]) -> list[PredictOutput]:
        import torch

        model, processor = self._loaded()
        texts = [self._chat_text(processor, item) for item in chunk]
        t0 = time.perf_counter()
        inputs = processor(
            text=texts, images=[item.image for item in chunk], padding=True, return_tensors="pt",
            size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
        ).to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        prompt_len = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            if self.mode == MODE_LABEL:
                first_logits = model(**inputs, logits_to_keep=1).logits[:, -1, :]
                answers = None
            else:
                generated = model.generate(
                    **inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                    output_logits=True, return_dict_in_generate=True)
                first_logits = generated.logits[0]
                answers = processor.batch_decode(generated.sequences[:, prompt_len:], skip_special_tokens=True)
        per_item_ms = (time.perf_counter() - t0) * 1000 / len(chunk)
        class_probs = self._class_probs(processor, first_logits)
        image_tokens = (inputs["image_grid_thw"].prod(-1) // _merge(processor) ** 2).tolist() \
            if "image_grid_thw" in inputs else [None] * len(chunk)
        outputs = []
        for i, (p_tox, p_non) in enumerate(class_probs):
            prob = prob_toxic(p_tox, p_non)
            extra = {"p_toxic_word": p_tox, "p_non_toxic_word": p_non, "image_tokens": image_tokens[i],
                     "prompt_tokens": int(inputs["attention_mask"][i].sum())}
            if answers is None:
                label = "unknown" if prob is None else ("toxic" if prob >= self.threshold else "non_toxic")
                word = {"toxic": self.toxic_word, "non_toxic": self.non_toxic_word}.get(label, "?")
                raw = f"{self.answer_prefix} {word}".strip()
                outputs.append(PredictOutput(label, prob, None, raw, per_item_ms, extra=extra))
            else:
                raw = (self.answer_prefix + answers[i]).strip()
                parsed = parse_answer(raw)
                extra["parsed_from"] = parsed.source
                outputs.append(PredictOutput(parsed.label, prob, parsed.explanation, raw, per_item_ms, extra=extra))
        return outputs

    def _chat_text(self, processor: Any, item: PredictInput) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt_for(item)}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + self.answer_prefix

    def _class_probs(self, processor: Any, logits: Any) -> list[tuple[float, float]]:
        """Per row: probability of the next token starting the toxic / non-toxic class word."""
        import torch

        if self._class_ids is None:
            self._class_ids = _class_token_ids(processor.tokenizer, self.toxic_word, self.non_toxic_word)
        tox_ids, non_ids = self._class_ids
        probs = torch.softmax(logits.float(), dim=-1)
        p_tox = probs[:, tox_ids].sum(-1) if tox_ids else torch.zeros(len(probs))
        p_non = probs[:, non_ids].sum(-1) if non_ids else torch.zeros(len(probs))
        return [(float(a), float(b)) for a, b in zip(p_tox.tolist(), p_non.tolist(), strict=True)]


def _merge(processor: Any) -> int:
    return int(getattr(processor.image_processor, "merge_size", 2))


def _class_token_ids(tokenizer: Any, toxic_word: str, non_toxic_word: str) -> tuple[list[int], list[int]]:
    """First token ids of each class word's spellings; ids shared by both classes are dropped
    (they would not tell the classes apart)."""
    def first_ids(word: str) -> set[int]:
        ids = set()
        for form in word_variants(word):
            encoded = tokenizer.encode(form, add_special_tokens=False)
            if encoded:
                ids.add(int(encoded[0]))
        return ids

    tox, non = first_ids(toxic_word), first_ids(non_toxic_word)
    shared = tox & non
    return sorted(tox - shared), sorted(non - shared)


def make_vlm_predictor(**options: Any) -> Predictor:
    """The `vlm` predictor: the endpoint backend when `endpoint` (or WORKBENCH_VLM_ENDPOINT)
    is set, else local transformers. Options of the other backend are ignored."""
    from workbench.config import load_settings
    from workbench.predictors.vlm_endpoint import ENDPOINT_OPTIONS, VlmEndpointPredictor

    known = {o.name for o in make_vlm_predictor.options}  # type: ignore[attr-defined]
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown vlm option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {o.name: o.default for o in make_vlm_predictor.options}  # type: ignore[attr-defined]
    values.update({k: v for k, v in options.items() if v is not None})
    if values["mode"] not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} (got {values['mode']!r})")
    settings = load_settings()
    endpoint = str(values.get("endpoint") or "").strip()
    if endpoint.lower() == "local":  # run locally even when WORKBENCH_VLM_ENDPOINT is set
        endpoint = ""
    elif not endpoint:
        endpoint = settings.vlm_endpoint or ""
    if endpoint:
        values["endpoint"] = endpoint
        if values["model"] == DEFAULT_VLM_MODEL and settings.vlm_endpoint_model:  # the server's own name for it
            values["model"] = settings.vlm_endpoint_model
        names = {o.name for o in COMMON_OPTIONS + ENDPOINT_OPTIONS}
        return VlmEndpointPredictor(**{k: v for k, v in values.items() if k in names})
    names = {o.name for o in LocalVlmPredictor.options} - {"endpoint"}
    return LocalVlmPredictor(**{k: v for k, v in values.items() if k in names})


def _all_options() -> tuple[Option, ...]:
    from workbench.predictors.vlm_endpoint import ENDPOINT_OPTIONS

    return COMMON_OPTIONS + LOCAL_OPTIONS + ENDPOINT_OPTIONS


# The Models page and the CLI read a factory's options like a class's.
make_vlm_predictor.kind = "vlm"  # type: ignore[attr-defined]
make_vlm_predictor.title = "VLM moderator (Qwen2.5-VL: local or OpenAI-compatible endpoint)"  # type: ignore[attr-defined]
make_vlm_predictor.needs_ocr_text = True  # type: ignore[attr-defined]
make_vlm_predictor.options = _all_options()  # type: ignore[attr-defined]
