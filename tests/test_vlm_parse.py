"""The VLM answer parser over a table of realistic answers (RU / EN / JSON / markdown /
negations / hedges / refusals)."""

from __future__ import annotations

import pytest

from workbench.predictors.vlm_parse import classify_phrase, parse_answer

T, N, U = "toxic", "non_toxic", "unknown"

ANSWERS = [
    # the requested format
    ("Класс: токсичный\nОбъяснение: мем высмеивает людей по национальности.", T),
    ("Класс: нейтральный\nОбъяснение: безобидная шутка про котов.", N),
    ("Класс: нетоксичный\nОбъяснение: просто шутка.", N),
    ("Класс: не токсичный\nОбъяснение: в меме нет оскорблений.", N),
    ("Класс: Токсичный.\nОбъяснение: унижает женщин.", T),
    ("класс:токсичная\nобъяснение: травля", T),
    ("Ответ: нейтрально. Мем про погоду.", N),
    ("Категория — токсичный; причина: оскорбления.", T),
    # markdown
    ("**Класс:** токсичный\n**Объяснение:** мем содержит оскорбления.", T),
    ("### Класс: нейтральный\n- Объяснение: шутка о работе", N),
    ("*Класс*: *нетоксичный*", N),
    ("- **Label**: non_toxic\n- **Explanation**: a joke about Mondays", N),
    ("Класс: `токсичный`", T),
    # bare words / prefilled continuation
    ("токсичный", T),
    ("нейтральный", N),
    ("Токсичный", T),
    (" нетоксичный", N),
    ("toxic", T),
    ("non_toxic", N),
    ("Non-toxic.", N),
    ("NON_TOXIC", N),
    # sentences
    ("Этот мем токсичный, потому что высмеивает внешность человека.", T),
    ("Этот мем не является токсичным: это добрая шутка.", N),
    ("Мем не токсичный, он просто ироничный.", N),
    ("Мем не содержит оскорблений и выглядит безобидно.", N),
    ("Мем оскорбительный и разжигает ненависть к мигрантам.", T),
    ("Это не нейтральный юмор, а прямое оскорбление.", T),
    ("Токсичный. Мем унижает пожилых людей.", T),
    ("This meme is toxic because it mocks a religious group.", T),
    ("The meme is not toxic; it is a harmless pun.", N),
    ("This meme isn't offensive, just a neutral joke.", N),
    ("Neutral. It's a joke about programmers.", N),
    ("The meme is hateful towards women.", T),
    # JSON
    ('{"label": "toxic", "explanation": "insults a group"}', T),
    ('```json\n{"класс": "нейтральный", "объяснение": "шутка"}\n```', N),
    ('{"toxic": false, "reason": "a harmless joke"}', N),
    ('{"is_toxic": true}', T),
    ("{'label': 'non_toxic', 'explanation': 'про котов'}", N),
    ('Вот ответ: {"class": "токсичный", "reason": "оскорбление"} Надеюсь, помог.', T),
    ('{"label": "unknown"}', U),
    ('{"verdict": "не токсичный"}', N),
    # both / neither / hedges / refusals
    ("Класс: токсичный или нейтральный", U),
    ("Трудно сказать, токсичный он или нет.", U),
    ("Мем может быть как токсичным, так и нейтральным в зависимости от контекста.", U),
    ("Не могу определить, токсичный ли этот мем.", U),
    ("I cannot determine whether this meme is toxic.", U),
    ("I'm sorry, I can't help with that.", U),
    ("Извините, я не вижу изображения.", U),
    ("Мем про котика.", U),
    ("", U),
    ("   ", U),
    ("Да", U),
    ("Toxic or not? Hard to say.", U),
]


@pytest.mark.parametrize(("answer", "expected"), ANSWERS)
def test_parse_answer_table(answer: str, expected: str) -> None:
    assert parse_answer(answer).label == expected


def test_table_is_large_and_covers_every_label() -> None:
    assert len(ANSWERS) >= 40
    assert {label for _, label in ANSWERS} == {T, N, U}


def test_explanation_comes_from_its_field() -> None:
    parsed = parse_answer("Класс: токсичный\nОбъяснение: мем высмеивает людей по национальности.")
    assert parsed.explanation == "мем высмеивает людей по национальности."
    assert parsed.source == "field"


def test_explanation_after_a_leading_verdict_word() -> None:
    parsed = parse_answer("Токсичный. Мем унижает пожилых людей.")
    assert (parsed.label, parsed.explanation) == (T, "Мем унижает пожилых людей.")


def test_json_explanation_and_source() -> None:
    parsed = parse_answer('```json\n{"label": "toxic", "explanation": "insults a group"}\n```')
    assert (parsed.label, parsed.explanation, parsed.source) == (T, "insults a group", "json")


def test_unknown_keeps_the_text_as_explanation() -> None:
    parsed = parse_answer("Не могу определить, токсичный ли этот мем.")
    assert parsed.label == U and parsed.explanation == "Не могу определить, токсичный ли этот мем."


@pytest.mark.parametrize(("phrase", "expected"), [
    ("не токсичный", N), ("нетоксичный", N), ("не нейтральный", T), ("not harmless", T),
    ("токсичный, не нейтральный", T), ("токсичный и нейтральный", U),
])
def test_negation_flips_a_class_word(phrase: str, expected: str) -> None:
    assert classify_phrase(phrase) == expected


@pytest.mark.parametrize(("answer", "explanation"), [
    ("Ответ: нейтрально. Мем про погоду.", "Мем про погоду."),
    ("Категория — токсичный; причина: оскорбления.", "оскорбления."),
    ("Класс: токсичный", None),
])
def test_explanation_around_a_field(answer: str, explanation: str | None) -> None:
    assert parse_answer(answer).explanation == explanation
