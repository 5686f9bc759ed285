"""Turn a VLM's free answer into `toxic | non_toxic | unknown` plus an explanation.

Models answer in many shapes: the requested «Класс: … / Объяснение: …» lines, JSON
(often inside a ```json fence), markdown (**Класс:** …), a bare word, a sentence in
Russian or English, or a refusal. The parser reads, in order:

1. a JSON object with a label-like key (label, class, класс, verdict, toxic: true, ...);
2. a «Класс: …» / "Label: …" line (markdown stripped);
3. the whole text.

A class is decided only when the evidence points one way. Negations flip a class word
(«не токсичный», "not offensive", «не нейтральный»); an answer that names both classes
(«токсичный или нет», "toxic or neutral") or neither, or that refuses («не могу
определить»), is `unknown`. The raw text is always kept by the caller.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

TOXIC, NON_TOXIC, UNKNOWN = "toxic", "non_toxic", "unknown"


@dataclass(frozen=True)
class ParsedAnswer:
    label: str  # toxic | non_toxic | unknown
    explanation: str | None
    source: str  # json | field | text | empty: which reading decided (kept in predictions.extra)


# Words that name a class. Non-toxic ones are tried first so "non-toxic" / «нетоксичный»
# never count as "toxic". Stems match Russian endings (токсичный/-ая/-ое/-ен/-ным ...).
_NON_TOXIC_TERMS = (
    r"non[\s_-]?toxic\w*", r"not[\s_-]toxic\w*", r"не[\s-]?токсичн\w*", r"нетоксичен\w*",
    r"нейтральн\w*", r"нейтрально", r"безобидн\w*", r"безвредн\w*", r"безопасн\w*", r"приемлем\w*",
    r"neutral\w*", r"harmless", r"benign", r"inoffensive", r"safe", r"acceptable",
)
_TOXIC_TERMS = (
    r"toxic\w*", r"токсичн\w*", r"токсичен", r"оскорбительн\w*", r"оскорбля\w*", r"оскорблени\w*",
    r"унижа\w*", r"унизительн\w*", r"ненавист\w*", r"разжига\w*", r"дискриминац\w*", r"травл\w*",
    r"негативн\w*", r"offensive", r"hateful", r"hate", r"harmful", r"insult\w*", r"derogatory", r"abusive",
)
_TERM_RE = re.compile(
    "|".join([f"(?P<n{i}>(?<!\\w){t}(?!\\w))" for i, t in enumerate(_NON_TOXIC_TERMS)]
             + [f"(?P<t{i}>(?<!\\w){t}(?!\\w))" for i, t in enumerate(_TOXIC_TERMS)]),
    re.IGNORECASE,
)
# A negation a few words before a class word flips it, unless punctuation intervenes.
_NEGATIONS = {"не", "нет", "без", "ни", "not", "no", "isn't", "isnt", "is't", "aren't", "wasn't", "never",
              "nor", "without", "doesn't", "lacks", "отсутствует", "отсутствуют", "отсутствие"}
_NEGATION_WINDOW = 3  # words
# Hedges that name both classes as alternatives: «токсичный или нет», "toxic or not".
_EITHER_RE = re.compile(r"(?<!\w)(или|либо|or)\s+(нет|не\b|not\b)", re.IGNORECASE)
# Refusals / "cannot decide": a class word in them is not a verdict.
_UNDECIDED_RE = re.compile(
    r"не\s+могу\s+(однозначно\s+)?(определить|сказать|оценить|ответить|классифицировать|помочь)"
    r"|невозможно\s+(однозначно\s+)?(определить|сказать|оценить)|трудно\s+(сказать|определить|оценить)"
    r"|сложно\s+(сказать|определить|оценить)|затрудняюсь|недостаточно\s+(информации|данных|контекста)"
    r"|не\s+вижу\s+изображени|извините|к\s+сожалению"
    r"|can(?:'|no)?t\s+(?:really\s+)?(?:determine|tell|say|decide|classify|assess|help|see)"
    r"|cannot\s+(?:determine|tell|say|decide|classify|assess|help|see)|unable\s+to|hard\s+to\s+(?:say|tell)"
    r"|not\s+sure|unclear|i'm\s+sorry|i\s+am\s+sorry|as\s+an\s+ai",
    re.IGNORECASE,
)
_LABEL_KEYS = ("label", "class", "classification", "category", "verdict", "answer", "result", "prediction",
               "класс", "метка", "категория", "вердикт", "ответ", "оценка", "результат", "классификация")
_BOOL_KEYS = ("toxic", "is_toxic", "токсичный", "токсичность")
_EXPLANATION_KEYS = ("explanation", "reason", "reasoning", "rationale", "justification", "comment",
                     "объяснение", "пояснение", "причина", "обоснование", "комментарий")
_FIELD_RE = re.compile(
    r"^[ \t>#*_\-•]*(?:" + "|".join(_LABEL_KEYS) + r")[ \t*_]*[:：—–-][ \t*_]*(?P<value>.+?)[ \t*_]*$",
    re.IGNORECASE | re.MULTILINE,
)
_EXPLANATION_RE = re.compile(  # at a line start or after «;» / «.» («Класс — токсичный; причина: …»)
    r"(?:^|(?<=[.;]))[ \t>#*_\-•]*(?:" + "|".join(_EXPLANATION_KEYS) + r")[ \t*_]*[:：—–-][ \t*_]*(?P<value>.*)",
    re.IGNORECASE | re.MULTILINE | re.DOTALL,
)
# A verdict word opening a free answer («Токсичный.», "Not toxic -").
_VERDICT_RE = re.compile(
    r"^\W*(?:(?:не|not)\s+)?(?:" + "|".join(_NON_TOXIC_TERMS + _TOXIC_TERMS) + r")(?!\w)[\s.,:;!—–-]*",
    re.IGNORECASE,
)
_FENCE_RE = re.compile(r"```[a-zA-Z]*\s*|```")
_WORD_RE = re.compile(r"[\w']+|[.,;:!?()\n—]")


def parse_answer(text: str | None) -> ParsedAnswer:
    """Label + explanation from a model's answer (see the module docstring)."""
    raw = (text or "").strip()
    if not raw:
        return ParsedAnswer(UNKNOWN, None, "empty")
    from_json = _parse_json(raw)
    if from_json is not None:
        return from_json
    clean = _strip_markdown(raw)
    field = _FIELD_RE.search(clean)
    if field:
        label = classify_phrase(field.group("value"))
        if label != UNKNOWN or not _has_class_word(clean[field.end():]):
            return ParsedAnswer(label, _explanation(clean, field), "field")
    label = UNKNOWN if _UNDECIDED_RE.search(clean) else classify_phrase(clean)
    return ParsedAnswer(label, _explanation(clean, None) if label != UNKNOWN else clean or None, "text")


def classify_phrase(text: str) -> str:
    """The one class `text` points to, or `unknown` when it names both or neither."""
    if _EITHER_RE.search(text) and _has_class_word(text):
        return UNKNOWN
    text = text.replace("ё", "е")
    found = set()
    for match in _TERM_RE.finditer(text):
        kind = NON_TOXIC if (match.lastgroup or "").startswith("n") else TOXIC
        if _negated(text, match.start()):
            kind = TOXIC if kind == NON_TOXIC else NON_TOXIC
        found.add(kind)
    return found.pop() if len(found) == 1 else UNKNOWN


def _has_class_word(text: str) -> bool:
    return _TERM_RE.search(text) is not None


def _negated(text: str, start: int) -> bool:
    """Whether a negation stands within a few words before position `start` (same clause)."""
    before = _WORD_RE.findall(text[:start].lower())
    for token in reversed(before[-_NEGATION_WINDOW:]):
        if token in ".,;:!?()\n—":
            return False
        if token in _NEGATIONS:
            return True
    return False


def _strip_markdown(text: str) -> str:
    text = _FENCE_RE.sub("", text)
    text = text.replace("**", "").replace("__", "")
    text = re.sub(r"(?<!\w)[*_`]+|[*`]+(?!\w)", "", text)
    text = re.sub(r"^[ \t]*#+[ \t]*", "", text, flags=re.MULTILINE)
    return text.strip()


def _explanation(clean: str, field: re.Match[str] | None) -> str | None:
    """An «Объяснение: …» field if present, else the text around the verdict."""
    found = _EXPLANATION_RE.search(clean)
    if found:
        return found.group("value").strip() or None
    if field is not None:  # the text around the field, plus what follows the verdict on its line
        value = field.group("value")
        verdict = _VERDICT_RE.match(value)
        after = value[verdict.end():] if verdict else ""
        rest = "\n".join(part.strip() for part in (clean[: field.start()], after, clean[field.end():]) if part.strip())
        return rest or None
    verdict = _VERDICT_RE.match(clean)  # "Токсичный. Мем высмеивает ..." -> the part after the verdict
    rest = clean[verdict.end():] if verdict else clean
    return rest.strip() or None


def _parse_json(raw: str) -> ParsedAnswer | None:
    """A JSON (or Python-dict) object with a label-like key somewhere in `raw`, else None."""
    for candidate in _json_candidates(raw):
        obj = _load_object(candidate)
        if not isinstance(obj, dict):
            continue
        keys = {str(k).strip().lower(): v for k, v in obj.items()}
        explanation = next((str(keys[k]).strip() for k in _EXPLANATION_KEYS if keys.get(k) not in (None, "")), None)
        for key in _LABEL_KEYS:
            if key in keys and keys[key] is not None:
                value = keys[key]
                if isinstance(value, bool):
                    return ParsedAnswer(TOXIC if value else NON_TOXIC, explanation, "json")
                return ParsedAnswer(classify_phrase(str(value)), explanation, "json")
        for key in _BOOL_KEYS:
            if key in keys:
                value = keys[key]
                if isinstance(value, bool):
                    return ParsedAnswer(TOXIC if value else NON_TOXIC, explanation, "json")
                word = str(value).strip().lower()
                if word in {"true", "yes", "да", "1"}:
                    return ParsedAnswer(TOXIC, explanation, "json")
                if word in {"false", "no", "нет", "0"}:
                    return ParsedAnswer(NON_TOXIC, explanation, "json")
    return None


def _json_candidates(raw: str) -> list[str]:
    """Balanced {...} spans of `raw`, outermost first."""
    spans, depth, start = [], 0, -1
    for i, ch in enumerate(raw):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(raw[start : i + 1])
    return spans


def _load_object(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:  # models sometimes answer with a Python dict ({'label': 'toxic'})
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
