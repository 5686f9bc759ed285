"""What both VLM backends share: the moderation prompt, the class words, the options the
Models page and the CLI show, and turning class-word probabilities into `prob_toxic`.

No torch here: the endpoint backend and the UI import this without loading a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from workbench.config import DEFAULT_VLM_MODEL
from workbench.predictors.base import Option

MODE_GENERATE = "label+explanation"
MODE_LABEL = "label"
MODES = (MODE_GENERATE, MODE_LABEL)

DEFAULT_TOXIC_WORD = "токсичный"
DEFAULT_NON_TOXIC_WORD = "нейтральный"  # the notebook's class name; its first token differs from «токсичный»
DEFAULT_ANSWER_PREFIX = "Класс:"
MAX_OCR_CHARS = 1500  # OCR of a meme is short; a garbage OCR dump must not blow the context
MAX_NEW_TOKENS_CAP = 512

# Placeholders: {ocr_text} (a line holding it is dropped when the meme has no OCR text),
# {toxic_word}, {non_toxic_word}. Plain replacement, so other braces (JSON examples) are safe.
DEFAULT_PROMPT = """Ты — модератор контента. Перед тобой мем.
Текст на меме (распознан автоматически, возможны ошибки): «{ocr_text}»
Определи, токсичный ли этот мем. Токсичный мем оскорбляет, унижает или высмеивает людей или группы людей \
(по национальности, полу, религии, внешности, ориентации, возрасту, болезни и т. п.), разжигает ненависть, \
содержит угрозы или травлю. Мем без этого — нейтральный, даже если он грубоватый или мрачный.
Ответь строго в формате:
Класс: {toxic_word} или {non_toxic_word}
Объяснение: одно-два предложения по-русски."""

COMMON_OPTIONS: tuple[Option, ...] = (
    Option("model", DEFAULT_VLM_MODEL, "Hugging Face id or local folder (local backend); model name on the server (endpoint)"),
    Option("endpoint", "", "OpenAI-compatible base URL, e.g. http://gpu-box:8000/v1 (vLLM); empty = "
           "WORKBENCH_VLM_ENDPOINT if set, else run locally; 'local' = always run locally"),
    Option("mode", MODE_GENERATE, "label+explanation generates an answer; label scores the class words only "
           "(one prefill, no generation, much faster)", "choice", MODES),
    Option("prompt", DEFAULT_PROMPT, "moderation prompt; placeholders {ocr_text} {toxic_word} {non_toxic_word}", "text"),
    Option("toxic_word", DEFAULT_TOXIC_WORD, "the class word for toxic (scored for the probability)"),
    Option("non_toxic_word", DEFAULT_NON_TOXIC_WORD, "the class word for non-toxic"),
    Option("answer_prefix", DEFAULT_ANSWER_PREFIX, "text the answer starts with (prefilled locally) so the next "
           "token is the class word"),
    Option("use_ocr_text", True, "put the meme's OCR text into the prompt", "bool"),
    Option("max_new_tokens", 96, f"cap on generated tokens (≤ {MAX_NEW_TOKENS_CAP})", "int"),
    Option("threshold", 0.5, "label = toxic when prob_toxic ≥ threshold (label mode)", "float"),
)


def set_common_options(predictor: Any, model: str, mode: str, prompt: str, toxic_word: str, non_toxic_word: str,
                       answer_prefix: str, use_ocr_text: bool, max_new_tokens: int, threshold: float) -> None:
    """Set the options both VLM backends share (COMMON_OPTIONS), normalised the same way."""
    predictor.model_name = model
    predictor.mode = mode
    predictor.prompt = prompt
    predictor.toxic_word, predictor.non_toxic_word = toxic_word.strip(), non_toxic_word.strip()
    predictor.answer_prefix = answer_prefix
    predictor.use_ocr_text = bool(use_ocr_text)
    predictor.needs_ocr_text = predictor.use_ocr_text
    predictor.max_new_tokens = max(1, min(int(max_new_tokens), MAX_NEW_TOKENS_CAP))
    predictor.threshold = float(threshold)


def render_prompt(template: str, ocr_text: str, toxic_word: str, non_toxic_word: str) -> str:
    """The prompt for one meme: placeholders filled, the OCR line dropped when there is no text."""
    ocr = " ".join((ocr_text or "").split())
    if len(ocr) > MAX_OCR_CHARS:
        ocr = ocr[:MAX_OCR_CHARS].rsplit(" ", 1)[0] + " …"
    lines = [line for line in template.splitlines() if ocr or "{ocr_text}" not in line]
    text = "\n".join(lines)
    for key, value in (("{toxic_word}", toxic_word), ("{non_toxic_word}", non_toxic_word), ("{ocr_text}", ocr)):
        text = text.replace(key, value)
    return text.strip()


def word_variants(word: str) -> list[str]:
    """Spellings a class word may start an answer with (leading space, capital letter)."""
    word = word.strip()
    forms = dict.fromkeys([word, word.lower(), word[:1].upper() + word[1:]])
    return [prefix + form for form in forms for prefix in ("", " ")]


def prob_toxic(p_toxic_word: float, p_non_toxic_word: float) -> float | None:
    """P(toxic) renormalised over the two class words, or None when neither got any mass."""
    total = p_toxic_word + p_non_toxic_word
    return p_toxic_word / total if total > 0 else None


def prob_from_top_logprobs(top: Mapping[str, float], toxic_word: str, non_toxic_word: str) -> tuple[float, float]:
    """Probability mass of each class among a position's top alternatives (token text -> logprob).

    A token counts for a class when its text (trimmed, lower-case) is a non-empty start of
    that class word and not of the other one; servers tokenise differently, so starts are
    matched rather than exact ids.
    """
    tox, non = toxic_word.strip().lower(), non_toxic_word.strip().lower()
    p_tox = p_non = 0.0
    for token, logprob in top.items():
        piece = token.strip().lower()
        if not piece:
            continue
        starts_tox, starts_non = tox.startswith(piece) or piece.startswith(tox), non.startswith(piece) or piece.startswith(non)
        if starts_tox and not starts_non:
            p_tox += math.exp(logprob)
        elif starts_non and not starts_tox:
            p_non += math.exp(logprob)
    return p_tox, p_non
