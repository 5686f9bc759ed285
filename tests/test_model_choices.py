"""The project's model choices (workbench.models.choices) on a real SQLite file: validation,
fallbacks, admins only and audited; `python -m workbench models set/list/unset` in this process
and in a new one; every page (Explain, Train) and command (predict, embed) starting from them,
with a per-run override; and a head that finds the embeddings made with the chosen CLIP (or an
error that names the model whose embeddings exist)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from tests.support.tiny_models import tiny_model_dir
from workbench.cli import main
from workbench.config import DEFAULT_CLIP_MODEL, DEFAULT_VLM_MODEL
from workbench.errors import PermissionDenied
from workbench.models import choices
from workbench.predictors.model_defaults import resolved_spec, resolved_values
from workbench.store import audit, users
from workbench.store.db import session_scope
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.ocr_texts import save_correction
from workbench.store.schema import Image, ModelRun

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGES = REPO_ROOT / "pages"
ADMIN, ANNA = "admin@team.org", "anna@team.org"


@pytest.fixture(scope="module")
def tiny_clip() -> str:
    return str(tiny_model_dir("clip").resolve())


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def memes(settings, n: int = 6) -> list[int]:
    samples = write_sample_memes(settings.memes_dir, n=n, size=(64, 64))  # into the label folders: labeled
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        by_name = {im.original_name: im.id for im in session.scalars(select(Image))}
        for s in samples:  # OCR text without an OCR engine
            save_correction(session, by_name[s.path.name], s.caption, "tester")
        return sorted(by_name.values())


# ---- the library -------------------------------------------------------------------------------

def test_defaults_fallbacks_and_validation(session, tmp_path: Path) -> None:
    assert choices.get_choice(session, "clip") == DEFAULT_CLIP_MODEL
    assert choices.get_choice(session, "embedding") == DEFAULT_CLIP_MODEL  # unset: the clip choice
    assert choices.get_choice(session, "vlm-endpoint") == ""
    folder = tmp_path / "my-clip"
    folder.mkdir()
    assert choices.set_choice(session, "clip", f"  {folder}  ") == str(folder.resolve())
    assert choices.get_choice(session, "embedding") == str(folder.resolve())  # follows clip while unset
    assert choices.set_choice(session, "embedding", "google/siglip2-base-patch16-256") == "google/siglip2-base-patch16-256"
    assert choices.get_choice(session, "clip") == str(folder.resolve())
    assert choices.set_choice(session, "vlm-endpoint", "http://gpu-box:8000/v1") == "http://gpu-box:8000/v1"
    assert choices.set_choice(session, "vlm-endpoint", "LOCAL") == "local"
    (tmp_path / "weights.bin").write_bytes(b"x")
    bad = [("clip", "", "give a value"), ("clip", "   ", "give a value"),
           ("clip", str(tmp_path / "nope"), "does not exist"), ("text", "./no-such-folder", "does not exist"),
           ("clip", str(tmp_path / "weights.bin"), "is a file"), ("vlm-endpoint", "gpu-box:8000", "http(s) URL"),
           ("vlm-endpoint", "ftp://gpu-box/v1", "http(s) URL"),
           ("vlm", "http://gpu-box:8000/v1", "is the vlm-endpoint choice"), ("clip", "x" * 2000, "not a model id"),
           ("gpt", "org/name", "no model choice 'gpt'")]
    for name, value, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            choices.set_choice(session, name, value)
    assert choices.stored_choice(session, "text") is None  # refused values leave nothing behind
    assert choices.unset_choice(session, "clip") is True and choices.unset_choice(session, "clip") is False
    assert choices.get_choice(session, "clip") == DEFAULT_CLIP_MODEL
    rows = {r["name"]: r for r in choices.list_choices(session)}
    assert set(rows) == {"clip", "vlm", "vlm-endpoint", "text", "embedding"}
    assert rows["clip"]["stored"] is None and rows["embedding"]["stored"] == "google/siglip2-base-patch16-256"


def test_admins_only_and_every_change_audited(session, monkeypatch) -> None:
    users.add_user(session, ADMIN, "admin")
    users.add_user(session, ANNA, "annotator")
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    with pytest.raises(PermissionDenied, match="admin"):
        choices.set_choice(session, "clip", "org/clip", actor=ANNA)
    assert choices.stored_choice(session, "clip") is None
    choices.set_choice(session, "clip", "org/clip", actor=ADMIN)
    with pytest.raises(PermissionDenied):
        choices.unset_choice(session, "clip", actor=ANNA)
    assert choices.update_choices(session, {"clip": "org/clip", "text": "org/text", "vlm": ""}, actor=ADMIN) == ["text"]
    choices.unset_choice(session, "clip", actor=ADMIN)
    session.commit()
    entries = [(e["actor"], e["detail"]) for e in audit.recent(session, action="model choice")]
    assert entries == [(ADMIN, {"name": "clip", "value": None}), (ADMIN, {"name": "text", "value": "org/text"}),
                       (ADMIN, {"name": "clip", "value": "org/clip"})]


def test_predictor_options_default_to_the_choices_and_a_given_value_wins(session) -> None:
    choices.set_choice(session, "clip", "org/clip")
    choices.set_choice(session, "vlm", "org/vlm")
    choices.set_choice(session, "text", "org/text")
    defaults = {kind: {o.name: o.default for o in resolved_spec(session, kind).options}
                for kind in ("clip", "vlm", "text-toxicity", "head", "text-tfidf")}
    assert defaults["clip"]["model"] == "org/clip" and defaults["clip"]["threshold"] == 0.5
    assert (defaults["vlm"]["model"], defaults["vlm"]["endpoint"]) == ("org/vlm", "")
    assert defaults["text-toxicity"]["model"] == "org/text"
    assert (defaults["head"]["clip_model"], defaults["head"]["vlm_model"]) == ("org/clip", "org/vlm")
    choices.set_choice(session, "embedding", "org/embedder")
    assert resolved_spec(session, "head").option("clip_model").default == "org/embedder"
    assert resolved_values(session, "clip", {"model": "org/other", "threshold": "0.7"}) == {
        "model": "org/other", "threshold": "0.7"}
    assert resolved_values(session, "head", {"features": "image"}) == {
        "features": "image", "clip_model": "org/embedder", "vlm_model": "org/vlm"}
    assert resolved_values(session, "text-tfidf", {}) == {}


# ---- the command line ----------------------------------------------------------------------------

def test_cli_set_list_unset_round_trip_and_a_new_process_keeps_it(settings, capsys, tiny_clip: str) -> None:
    code, out, _ = cli(capsys, "models", "set", "clip", tiny_clip)
    assert code == 0 and out.strip() == f"clip = {tiny_clip}"
    assert cli(capsys, "models", "set", "vlm", "Qwen/Qwen2.5-VL-7B-Instruct")[0] == 0
    code, out, _ = cli(capsys, "models", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert (rows["clip"]["value"], rows["clip"]["stored"]) == (tiny_clip, tiny_clip)
    assert rows["embedding"]["value"] == tiny_clip and rows["embedding"]["stored"] is None
    assert rows["vlm"]["value"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert rows["text"]["stored"] is None and rows["text"]["value"] == rows["text"]["default"]
    code, _, err = cli(capsys, "models", "set", "clip", "/no/such/clip")
    assert code == 2 and "does not exist" in err
    code, _, err = cli(capsys, "models", "set", "clip", "  ")
    assert code == 2 and "give a value" in err
    # a restart: a new process reads the same choices from the database
    done = subprocess.run([sys.executable, "-m", "workbench", "models", "list", "--json"], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert {r["name"]: r["value"] for r in json.loads(done.stdout)} == {r["name"]: r["value"] for r in rows.values()}
    code, out, _ = cli(capsys, "models", "unset", "vlm")
    assert code == 0 and out.strip() == f"vlm = {DEFAULT_VLM_MODEL} (back to the default)"
    code, out, _ = cli(capsys, "models")
    assert code == 0 and f"clip          {tiny_clip}  (set)" in out
    code, out, _ = cli(capsys, "audit", "--json")
    actions = [(e["action"], e["detail"]) for e in json.loads(out) if e["action"] == "model choice"]
    assert actions == [("model choice", {"name": "vlm", "value": None}),
                       ("model choice", {"name": "vlm", "value": "Qwen/Qwen2.5-VL-7B-Instruct"}),
                       ("model choice", {"name": "clip", "value": tiny_clip})]
    assert all(e["actor"].startswith("os:") for e in json.loads(out))


def test_cli_with_sign_in_an_annotator_is_refused(settings, capsys, monkeypatch) -> None:
    assert cli(capsys, "users", "add", ADMIN, "--role", "admin")[0] == 0
    assert cli(capsys, "users", "add", ANNA, "--role", "annotator")[0] == 0
    monkeypatch.setenv("WORKBENCH_AUTH", "oidc")
    monkeypatch.setenv("WORKBENCH_CLI_OPERATOR", "trusted")  # --as stands for a user (see test_team)
    code, _, err = cli(capsys, "models", "set", "clip", "org/clip", "--as", ANNA)
    assert code == 2 and "may not" in err and "admin role" in err
    assert cli(capsys, "models", "unset", "clip", "--as", ANNA)[0] == 0  # nothing set: nothing to refuse
    assert cli(capsys, "models", "set", "clip", "org/clip", "--as", ADMIN)[0] == 0
    code, _, err = cli(capsys, "models", "unset", "clip", "--as", ANNA)
    assert code == 2 and "may not" in err
    code, out, _ = cli(capsys, "audit", "--json")
    assert [(e["actor"], e["detail"]) for e in json.loads(out) if e["action"] == "model choice"] == [
        (ADMIN, {"name": "clip", "value": "org/clip", "operator": users.actor_name(None)})]  # who ran --as


def test_predict_and_embed_start_from_the_choice_and_a_run_can_override_it(settings, capsys, tiny_clip: str) -> None:
    ids = memes(settings, 6)
    assert cli(capsys, "models", "set", "clip", tiny_clip)[0] == 0
    code, out, _ = cli(capsys, "predict", "clip", "--list-options")
    assert code == 0 and f"model (str) = {tiny_clip}" in out
    code, out, err = cli(capsys, "predict", "clip", "-o", "dtype=float32", "--limit", "2")
    assert code == 0, err
    siglip = str(tiny_model_dir("siglip").resolve())
    code, _, err = cli(capsys, "predict", "clip", "--model", siglip, "-o", "dtype=float32", "--limit", "2")
    assert code == 0, err  # a per-run override; the choice stays
    with session_scope(settings.db_url) as session:
        assert sorted(session.scalars(select(ModelRun.model_id))) == sorted([tiny_clip, siglip])
        assert choices.get_choice(session, "clip") == tiny_clip
    # embeddings without --model: the embedding choice (unset: the clip choice); a head then finds them
    code, out, err = cli(capsys, "embed", "clip", "--dtype", "float32")
    assert code == 0 and f"clip-image:{tiny_clip}" in out, err
    code, out, err = cli(capsys, "predict", "head", "-o", "features=image", "-o", "head=logreg",
                         "-o", "epochs=3", "-o", "folds=2")
    assert code == 0, err
    with session_scope(settings.db_url) as session:
        heads = [m for m in session.scalars(select(ModelRun.model_id)) if m.startswith("logreg:")]
    assert heads == [f"logreg:clip:{tiny_clip} · image"]
    assert len(ids) == 6


def test_a_head_on_missing_embeddings_says_which_model_has_them_and_how_to_fix_it(settings, capsys,
                                                                                  tiny_clip: str) -> None:
    memes(settings, 6)
    assert cli(capsys, "embed", "clip", "--model", tiny_clip, "--dtype", "float32")[0] == 0
    code, out, err = cli(capsys, "predict", "head", "-o", "features=image", "-o", "epochs=2", "-o", "folds=2")
    assert code == 1  # the default CLIP has no embeddings here
    message = out + err
    assert f"no labeled image has clip:{DEFAULT_CLIP_MODEL} · image embeddings yet" in message
    assert f"Embeddings are cached for: {tiny_clip} (6 images)" in message
    assert f"-o clip_model={tiny_clip}" in message and f"python -m workbench models set embedding {tiny_clip}" in message
    assert f"python -m workbench embed clip --model {DEFAULT_CLIP_MODEL}" in message
    assert cli(capsys, "models", "set", "embedding", tiny_clip)[0] == 0  # the fix it names works
    code, _, err = cli(capsys, "predict", "head", "-o", "features=image", "-o", "epochs=2", "-o", "folds=2")
    assert code == 0, err


# ---- the pages ------------------------------------------------------------------------------------

def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_explain_and_train_start_from_the_stored_choices(settings, capsys, tmp_path: Path,
                                                          clear_streamlit_cache) -> None:
    memes(settings, 2)
    clip, embedder, vlm = (tmp_path / n for n in ("clip", "embedder", "vlm"))
    for folder in (clip, embedder, vlm):
        folder.mkdir()
    assert cli(capsys, "models", "set", "clip", str(clip))[0] == 0
    assert cli(capsys, "models", "set", "vlm", str(vlm))[0] == 0
    at = _page("8_Explain.py")
    assert at.text_input(key="exp_model").value == str(clip.resolve())
    at = _page("10_Train.py")
    assert at.text_input(key="train_embed_model_clip").value == str(clip.resolve())  # embedding unset: clip
    at.radio(key="train_embed_source").set_value("vlm").run()
    assert at.text_input(key="train_embed_model_vlm").value == str(vlm.resolve())
    assert cli(capsys, "models", "set", "embedding", str(embedder))[0] == 0
    at = _page("10_Train.py")  # a reload
    assert at.text_input(key="train_embed_model_clip").value == str(embedder.resolve())
    at.radio(key="train_what").set_value("Head on embeddings").run()
    assert at.text_input(key="train_head_clip_model").value == str(embedder.resolve())
    assert at.text_input(key="train_head_vlm_model").value == str(vlm.resolve())
