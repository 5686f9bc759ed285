"""The Models page through Streamlit's AppTest on a real SQLite file: the form built from
Predictor.options, a CLIP run over real generated memes with a tiny local CLIP, an
unloadable model, and a predictor kind whose module is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from tests.support.tiny_models import tiny_model_dir
from workbench.predictors import REGISTRY
from workbench.predictors.base import Option
from workbench.predictors.run import predictor_specs
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.schema import ModelRun, Prediction

PAGE = Path(__file__).resolve().parent.parent / "pages" / "5_Models.py"
TIMEOUT = 120


@pytest.fixture
def memes(settings) -> int:
    write_sample_memes(settings.memes_dir, n=5, size=(96, 96))
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
    return 5


def _open() -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


# The widget ui.option_form renders for each Option type ("str" and anything else: text_input).
WIDGETS = {"int": "number_input", "float": "number_input", "bool": "checkbox", "choice": "selectbox", "text": "text_area"}


def option_values(at: AppTest, options: tuple[Option, ...] | list[Option], prefix: str) -> dict:
    """{option name: its widget's value}, each widget found by its type and key `{prefix}_{name}` (KeyError if absent)."""
    return {o.name: getattr(at, WIDGETS.get(o.type, "text_input"))(key=f"{prefix}_{o.name}").value for o in options}


def _predictions(settings) -> int:
    with session_scope(settings.db_url) as session:
        return session.scalar(select(func.count()).select_from(Prediction))


def test_form_is_built_from_the_options_and_a_run_stores_predictions(settings, memes, clear_streamlit_cache) -> None:
    at = _open()
    assert at.selectbox(key="models_kind").value == "clip"
    assert at.text_area(key="models_clip_toxic_prompts").value.startswith("токсичный мем")
    assert at.number_input(key="models_clip_threshold").value == 0.5
    assert at.checkbox(key="models_clip_use_ocr").value is True
    at.text_input(key="models_clip_model").set_value(str(tiny_model_dir("clip")))
    at.selectbox(key="models_clip_dtype").set_value("float32")
    at.number_input(key="models_clip_threshold").set_value(0.3)
    at.button(key="models_run").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("5 done" in s.value for s in at.success), [s.value for s in at.success]
    assert _predictions(settings) == 5
    with session_scope(settings.db_url) as session:
        run = session.scalars(select(ModelRun)).one()
        assert run.status == "done" and run.params["threshold"] == 0.3
    table = at.dataframe[-1].value  # the runs table is the last one
    assert list(table["predictions"]) == [5] and list(table["status"]) == ["done"]


def test_unloadable_model_shows_which_and_how_and_stores_nothing(settings, memes, clear_streamlit_cache) -> None:
    at = _open()
    at.text_input(key="models_clip_model").set_value("/no/such/clip")
    at.button(key="models_run").click().run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "no/such/clip" in errors and "cannot be loaded" in errors
    assert _predictions(settings) == 0


def test_bad_option_value_is_an_error_not_a_crash(settings, memes, clear_streamlit_cache) -> None:
    at = _open()
    at.selectbox(key="models_clip_prompt_set").set_value("custom")
    at.text_area(key="models_clip_toxic_prompts").set_value("   ")
    at.button(key="models_run").click().run()
    assert not at.exception
    assert any("no prompts" in e.value for e in at.error)
    assert _predictions(settings) == 0


def test_a_missing_predictor_module_is_shown_as_unavailable(settings, clear_streamlit_cache, monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "ghost", "workbench.predictors.ghost_not_written_yet:Ghost")
    at = _open()
    assert "ghost — unavailable" in at.selectbox(key="models_kind").options
    at.selectbox(key="models_kind").set_value("ghost").run()
    assert not at.exception
    assert any("cannot be used here" in w.value for w in at.warning)
    at.selectbox(key="models_kind").set_value("vlm").run()  # the others still render their forms
    assert not at.exception
    assert at.text_area(key="models_vlm_prompt").value


def test_every_option_of_every_predictor_gets_a_widget_holding_its_default(settings, clear_streamlit_cache) -> None:
    specs = [s for s in predictor_specs() if s.available]
    assert {"clip", "vlm", "text-tfidf", "head"} <= {s.kind for s in specs}
    at = _open()
    for spec in specs:
        at.selectbox(key="models_kind").set_value(spec.kind).run()
        assert not at.exception, [e.message for e in at.exception]
        assert option_values(at, spec.options, f"models_{spec.kind}") == {o.name: o.default for o in spec.options}


@pytest.mark.parametrize("url,shown", [
    ("postgresql+psycopg://me:s3cret@db.example:5432/memes", "postgresql+psycopg://me:***@db.example:5432/memes"),
    ("postgresql://me:p%40ss@host/memes", "postgresql://me:***@host/memes"),
    ("postgresql://me:p@ss@host/memes", "<unparseable database URL>"),  # a raw '@' in the password: show none of it
    ("postgresql://me:pw@host:port/memes", "<unparseable database URL>"),
    ("not a url", "<unparseable database URL>"),
    ("sqlite:////data/wb.sqlite3", "sqlite:////data/wb.sqlite3"),
])
def test_the_sidebar_db_url_never_shows_a_password(url: str, shown: str) -> None:
    from workbench.ui import _short_url

    assert _short_url(url) == shown
    assert "s3cret" not in _short_url(url) and "ss@" not in _short_url(url)


# ---- the project's model choices (workbench.models.choices) ------------------------------------

def _choice_audit(settings) -> list[tuple[str, dict]]:
    from workbench.store.audit import recent

    with session_scope(settings.db_url) as session:
        return [(e["actor"], e["detail"]) for e in recent(session, action="model choice")]


def test_model_choices_set_on_the_page_are_every_form_default_and_survive_a_reload(
        settings, memes, clear_streamlit_cache) -> None:
    from workbench.config import DEFAULT_CLIP_MODEL
    from workbench.models.choices import get_choice

    clip, siglip = str(tiny_model_dir("clip").resolve()), str(tiny_model_dir("siglip").resolve())
    at = _open()
    assert at.text_input(key="models_clip_model").value == DEFAULT_CLIP_MODEL
    assert at.text_input(key="models_choice_clip").value == ""  # unset: the default shows as the placeholder
    at.text_input(key="models_choice_clip").set_value("/no/such/clip")
    at.button(key="models_choice_save").click().run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)
    assert _choice_audit(settings) == []  # refused: nothing stored, nothing recorded
    at.text_input(key="models_choice_clip").set_value(clip)
    at.button(key="models_choice_save").click().run()
    assert not at.exception
    assert any("Saved: clip" in s.value for s in at.success)
    assert at.text_input(key="models_clip_model").value == clip  # the form starts from the new choice
    at.selectbox(key="models_kind").set_value("head").run()
    assert at.text_input(key="models_head_clip_model").value == clip  # embedding unset: the clip choice
    at = _open()  # a reload (a new session)
    assert at.text_input(key="models_choice_clip").value == clip
    assert at.text_input(key="models_clip_model").value == clip
    at.selectbox(key="models_clip_dtype").set_value("float32")
    at.number_input(key="models_limit").set_value(2)
    at.button(key="models_run").click().run()  # the stored choice
    at.text_input(key="models_clip_model").set_value(siglip)  # a per-run override
    at.button(key="models_run").click().run()
    assert not at.exception, [e.message for e in at.exception]
    with session_scope(settings.db_url) as session:
        assert sorted(session.scalars(select(ModelRun.model_id))) == sorted([clip, siglip])
        assert get_choice(session, "clip") == clip  # the override did not change the choice
    actor, detail = _choice_audit(settings)[0]
    assert actor.startswith("os:") and detail == {"name": "clip", "value": clip}
    at.text_input(key="models_choice_clip").set_value("")  # empty: back to the default
    at.button(key="models_choice_save").click().run()
    assert at.text_input(key="models_clip_model").value == DEFAULT_CLIP_MODEL
    assert _choice_audit(settings)[0][1] == {"name": "clip", "value": None}


def test_with_sign_in_an_annotator_cannot_change_the_model_choices(settings, monkeypatch,
                                                                  clear_streamlit_cache) -> None:
    import time

    from workbench.store import users

    with session_scope(settings.db_url) as session:
        users.add_user(session, "anna@team.org", "annotator")
        users.add_user(session, "boss@team.org", "admin")
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")

    def open_as(email: str) -> AppTest:
        at = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT)
        at.user = {"is_logged_in": True, "email": email, "iat": int(time.time()) - 60}
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        return at

    at = open_as("anna@team.org")
    assert at.text_input(key="models_choice_clip").disabled and at.button(key="models_choice_save").disabled
    at = open_as("boss@team.org")
    assert not at.button(key="models_choice_save").disabled
    at.text_input(key="models_choice_vlm").set_value("Qwen/Qwen2.5-VL-7B-Instruct")
    at.button(key="models_choice_save").click().run()
    assert not at.exception
    assert _choice_audit(settings) == [("boss@team.org", {"name": "vlm", "value": "Qwen/Qwen2.5-VL-7B-Instruct"})]
    at.selectbox(key="models_kind").set_value("vlm").run()
    assert at.text_input(key="models_vlm_model").value == "Qwen/Qwen2.5-VL-7B-Instruct"
