"""The project's model choices: which CLIP, VLM (and VLM server), text model and embedding
model every page and command uses unless a run says otherwise.

- Kept in the settings table, so they survive reloads and restarts, and shared by the app
  and `python -m workbench` (`models set NAME VALUE` / `models list --json`).
- Changed by admins only: checked and written to the audit log (`model choice`), like
  labels per meme (workbench.store.overlap).
- An unset choice falls back: `embedding` to the `clip` choice, every other one to its
  built-in default (workbench.config). `workbench.predictors.model_defaults` turns them into
  the defaults of the predictors' model options (Models page form, CLI `-o` flags); a run
  can still name another model.
- A value is a hub id (accepted as is: no network needed) or a local folder (it must exist;
  stored as an absolute path, so the app and the command line find the same folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from workbench.config import DEFAULT_CLIP_MODEL, DEFAULT_TEXT_TOXICITY_MODEL, DEFAULT_VLM_MODEL
from workbench.models.hub import is_local
from workbench.store import users
from workbench.store.labels import get_setting, set_setting

SETTING_PREFIX = "model_choice:"
MAX_LENGTH = 1000
AUDIT_ACTION = "model choice"


@dataclass(frozen=True)
class Choice:
    """One model choice: its name, built-in default, what it is for."""

    name: str
    default: str
    help: str
    fallback: str | None = None  # the choice whose value an unset one takes
    endpoint: bool = False  # a server URL rather than a model


CHOICES: tuple[Choice, ...] = (
    Choice("clip", DEFAULT_CLIP_MODEL, "CLIP / SigLIP for the zero-shot `clip` predictor, Explain (CAM) and "
           "`cam`: hub id or local folder"),
    Choice("vlm", DEFAULT_VLM_MODEL, "VLM moderator (`vlm`, VLM embeddings, heads on them): hub id or local "
           "folder; with an endpoint, the model's name on the server"),
    Choice("vlm-endpoint", "", "OpenAI-compatible base URL of a VLM server, e.g. http://gpu-box:8000/v1; "
           "'local' = run the VLM here; unset = WORKBENCH_VLM_ENDPOINT if set, else here", endpoint=True),
    Choice("text", DEFAULT_TEXT_TOXICITY_MODEL, "text classifier of the OCR text (`text-toxicity`): hub id or "
           "local folder"),
    Choice("embedding", DEFAULT_CLIP_MODEL, "CLIP whose embeddings heads train on (Train page, `embed clip`, the "
           "head's clip_model): hub id or local folder; unset = the clip choice", fallback="clip"),
)
BY_NAME = {c.name: c for c in CHOICES}


def choice(name: str) -> Choice:
    """The choice called `name`; ValueError naming the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"no model choice {name!r}; choose one of: {', '.join(BY_NAME)}") from None


def stored_choice(session: Session, name: str) -> str | None:
    """The value set for `name`, or None when it is unset."""
    value = get_setting(session, SETTING_PREFIX + choice(name).name)
    return str(value) if value else None


def get_choice(session: Session, name: str) -> str:
    """The value in use for `name`: the stored one, else its fallback's, else the built-in default."""
    c = choice(name)
    stored = stored_choice(session, name)
    if stored:
        return stored
    return get_choice(session, c.fallback) if c.fallback else c.default


def list_choices(session: Session) -> list[dict[str, Any]]:
    """Every choice as {"name", "value" (in use), "stored" (None = unset), "default", "help"}."""
    return [{"name": c.name, "value": get_choice(session, c.name), "stored": stored_choice(session, c.name),
             "default": f"the {c.fallback} choice" if c.fallback else c.default, "help": c.help} for c in CHOICES]


def validate(name: str, value: str) -> str:
    """`value` as it would be stored for `name`: trimmed; a local folder made absolute.
    ValueError when it is empty, too long, a local folder that does not exist, or (vlm-endpoint)
    not an http(s) URL or 'local'."""
    c = choice(name)
    text = (value or "").strip()
    if not text:
        raise ValueError(f"model choice {name}: give a value (or unset it to use the default)")
    if len(text) > MAX_LENGTH or "\n" in text or "\x00" in text:
        raise ValueError(f"model choice {name}: not a model id, folder or URL ({len(text)} characters)")
    if c.endpoint:
        if text.lower() == "local":
            return "local"
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"model choice {name}: expected an http(s) URL such as http://gpu-box:8000/v1 "
                             f"or 'local', not {text!r}")
        return text
    if "://" in text:
        raise ValueError(f"model choice {name}: {text!r} is a URL; a VLM server's URL is the vlm-endpoint choice, "
                         "and this one takes a hub id or a local folder")
    if is_local(text):
        folder = Path(text).expanduser()
        if not folder.exists():
            raise ValueError(f"model choice {name}: the local folder {text!r} does not exist; give an existing "
                             "folder holding the model, or a Hugging Face id such as org/name")
        if not folder.is_dir():
            raise ValueError(f"model choice {name}: {text!r} is a file, not the folder holding the model")
        return str(folder.resolve())
    return text  # a hub id: checked when a run loads it (no network needed here)


def set_choice(session: Session, name: str, value: str, actor: str | None = None) -> str:
    """Set the choice `name` (admins only; audited). Returns the value as stored (see validate)."""
    stored = validate(name, value)
    users.authorize(session, actor, users.ADMIN, AUDIT_ACTION, {"name": name, "value": stored})
    set_setting(session, SETTING_PREFIX + name, stored)
    return stored


def unset_choice(session: Session, name: str, actor: str | None = None) -> bool:
    """Go back to the default for `name` (admins only; audited). False when it was not set."""
    choice(name)
    if stored_choice(session, name) is None:
        return False
    users.authorize(session, actor, users.ADMIN, AUDIT_ACTION, {"name": name, "value": None})
    set_setting(session, SETTING_PREFIX + name, None)
    return True


def update_choices(session: Session, values: dict[str, str], actor: str | None = None) -> list[str]:
    """Apply a form of choices at once: a non-empty value sets its choice, an empty one unsets it.
    Returns the names that changed. Raises (ValueError, PermissionDenied) before the caller's
    transaction commits, so a bad value leaves every choice as it was."""
    changed = []
    for name, value in values.items():
        text = (value or "").strip()
        before = stored_choice(session, name)
        if not text:
            if unset_choice(session, name, actor):
                changed.append(name)
        elif validate(name, text) != before:
            set_choice(session, name, text, actor)
            changed.append(name)
    return changed


def embedder_model(session: Session, source: str) -> str:
    """The model `embed clip|vlm` and the Train page's embeddings use by default."""
    return get_choice(session, "embedding" if source == "clip" else "vlm")
