"""The one Streamlit helper that pages share: bootstrap (page config, settings, cached
DB engine + migrations, annotator in the sidebar), the job-progress widget, the form built
from predictor Options, and safe text rendering. The only workbench module that imports streamlit."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
from sqlalchemy.orm import Session

from workbench.config import Settings, load_settings
from workbench.predictors.base import Option
from workbench.runs.lock import JobBusy
from workbench.runs.runner import run_step
from workbench.runs.step import JobSummary, Progress, Step
from workbench.store import db
from workbench.ui import auth

APP_TITLE = "VLMemes Workbench"


@st.cache_resource(show_spinner="Preparing the database…")
def _migrated(url: str) -> str:
    """Run migrations once per DB URL per server process (idempotent)."""
    db.upgrade(url)
    return url


@dataclass
class Ctx:
    """What every page gets from bootstrap()."""

    settings: Settings
    annotator: str
    user: str | None = None  # the signed-in email (sign-in on), else None
    role: str | None = None  # their role, read at this page load

    @property
    def db_url(self) -> str:
        return self.settings.db_url

    @property
    def actor(self) -> str | None:
        """Whom library functions check and record (workbench.store.users): the signed-in user, or None."""
        return self.user

    def can(self, permission: str) -> bool:
        """Whether this page's user may do `permission` (always, with sign-in off)."""
        from workbench.store.users import has_permission

        return self.user is None or has_permission(self.role, permission)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A committing session on the app's DB."""
        with db.session_scope(self.settings.db_url) as session:
            yield session


# Sidebar navigation (Streamlit's own would call the entry page "streamlit app").
NAV = (
    ("streamlit_app.py", "Home", ":material/home:"),
    ("pages/1_Label.py", "Label", ":material/label:"),
    ("pages/2_Gallery.py", "Gallery", ":material/photo_library:"),
    ("pages/3_Data.py", "Data", ":material/upload_file:"),
    ("pages/4_Run.py", "Run OCR", ":material/text_fields:"),
    ("pages/5_Models.py", "Models", ":material/model_training:"),
    ("pages/6_Dashboard.py", "Dashboard", ":material/monitoring:"),
    ("pages/7_Disagreements.py", "Disagreements", ":material/compare:"),
    ("pages/8_Explain.py", "Explain", ":material/visibility:"),
    ("pages/9_Export.py", "Export", ":material/download:"),
    ("pages/10_Train.py", "Train", ":material/school:"),
    ("pages/11_Duplicates.py", "Duplicates", ":material/content_copy:"),
    ("pages/12_Map.py", "Map", ":material/scatter_plot:"),
    ("pages/13_Adjudication.py", "Adjudication", ":material/gavel:"),
)


def bootstrap(title: str, icon: str = "🧪", layout: str = "wide") -> Ctx:
    """Idempotent set-up every page calls first, so any page works when opened first by URL."""
    st.set_page_config(page_title=f"{title} · {APP_TITLE}", page_icon=icon, layout=layout)
    settings = load_settings()
    _migrated(settings.db_url)
    signed_in = auth.gate(settings)  # sign-in on: stops here unless signed in with a role
    _navigation()
    if signed_in is not None:  # the annotator is the signed-in user: no name field
        st.sidebar.caption(f"DB: `{_short_url(settings.db_url)}`  \nMemes: `{settings.memes_dir}`")
        return Ctx(settings=settings, annotator=signed_in.email, user=signed_in.email, role=signed_in.role)
    annotator = _annotator_sidebar(settings)
    return Ctx(settings=settings, annotator=annotator)


def page_link(page: str, **kwargs: object) -> None:
    """st.page_link that degrades to nothing where no page registry exists (one page run alone)."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.page_link(page, **kwargs)
    except StreamlitAPIException:
        pass


def _navigation() -> None:
    from streamlit.errors import StreamlitAPIException

    root = Path(__file__).resolve().parent.parent
    with st.sidebar:
        try:
            for page, label, icon in NAV:
                if (root / page).exists():
                    st.page_link(page, label=label, icon=icon)
        except StreamlitAPIException:
            # A page run on its own (AppTest of one file) has no page registry to link to.
            pass
        st.divider()


def _annotator_sidebar(settings: Settings) -> str:
    from workbench.store.labels import get_setting, set_setting

    if "annotator" not in st.session_state:
        with db.session_scope(settings.db_url) as session:
            st.session_state["annotator"] = str(get_setting(session, "last_annotator", "") or "")

    def _remember() -> None:
        name = st.session_state["_annotator_input"].strip()[:128]
        st.session_state["annotator"] = name
        if name:
            with db.session_scope(settings.db_url) as session:
                set_setting(session, "last_annotator", name)

    st.sidebar.text_input(
        "Annotator", value=st.session_state["annotator"], key="_annotator_input", on_change=_remember,
        placeholder="your name", help="Your labels are stored under this name (remembered).",
    )
    if not st.session_state["annotator"]:
        st.sidebar.caption("Enter your name to label memes.")
    st.sidebar.caption(f"DB: `{_short_url(settings.db_url)}`  \nMemes: `{settings.memes_dir}`")
    return st.session_state["annotator"]


def _short_url(url: str) -> str:
    """The DB URL as the sidebar shows it: never with its password (see store.db.mask_password)."""
    return db.mask_password(url)


def option_form(
    options: Sequence[Option], key_prefix: str, *, overrides: Mapping[str, Any] | None = None, columns: int = 2,
) -> dict[str, Any]:
    """One widget per option (keyed `{key_prefix}_{option.name}`), by its type; returns
    {name: value} ready for build_predictor. Options named in `overrides` get no widget and
    take the given value (the page sets them itself). Single-line options fill `columns`
    columns; multi-line text options follow at full width."""
    overrides = dict(overrides or {})
    shown = [o for o in options if o.name not in overrides]
    values: dict[str, Any] = {}
    short = [o for o in shown if o.type != "text"]
    cols = st.columns(columns) if short else []
    for i, option in enumerate(short):
        with cols[i % columns]:
            values[option.name] = option_widget(option, f"{key_prefix}_{option.name}")
    for option in shown:
        if option.type == "text":
            values[option.name] = option_widget(option, f"{key_prefix}_{option.name}")
    return {o.name: overrides[o.name] if o.name in overrides else values[o.name] for o in options}


def option_widget(option: Option, key: str) -> Any:
    """The input for one option, by its type (text | bool | int | float | choice | str); returns its value."""
    label, help_text = option.name, option.help or None
    if option.type == "text":
        return st.text_area(label, value=str(option.default), help=help_text, key=key, height=140)
    if option.type == "bool":
        return st.checkbox(label, value=bool(option.default), help=help_text, key=key)
    if option.type == "int":
        return int(st.number_input(label, value=int(option.default), step=1, help=help_text, key=key))
    if option.type == "float":
        default = float(option.default)
        # 0.05 for thresholds and the like; one unit of the leading digit for small values (lr 1e-3 -> 1e-3)
        step = min(0.05, 10.0 ** math.floor(math.log10(abs(default)))) if default else 0.05
        return float(st.number_input(label, value=default, step=step, format="%.4g", help=help_text, key=key))
    if option.type == "choice" and option.choices:
        choices = list(option.choices)
        index = choices.index(option.default) if option.default in choices else 0
        return st.selectbox(label, choices, index=index, help=help_text, key=key)
    return st.text_input(label, value=str(option.default), help=help_text, key=key)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")


def md_escape(text: str | None) -> str:
    """User/model text made inert for st.markdown (no markdown, no HTML)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text or "", quote=False)).replace("\n", "  \n")


def run_job_widget(
    ctx: Ctx, step: Step, image_ids: Sequence[int], *, batch_size: int = 8, workers: int = 1, force: bool = False,
    key: str = "job",
) -> JobSummary | None:
    """Run a step with a progress bar, rate and ETA. The Cancel button reruns the page,
    which stops the job after the batch in flight (that batch is already committed)."""
    if ctx.actor is not None:  # sign-in on: running jobs is for admins, checked and recorded here
        from workbench.errors import PermissionDenied
        from workbench.store.users import ADMIN, authorize

        try:
            with ctx.session() as session:
                authorize(session, ctx.actor, ADMIN, "job", {"step": step.name, "images": len(image_ids)})
        except PermissionDenied as exc:
            st.error(md_escape(str(exc)))
            return None
    bar = st.progress(0.0, text=f"{step.name}: starting…")
    st.button("Cancel", key=f"{key}_cancel", help="Stops after the current batch; finished batches are kept.")

    def on_progress(p: Progress) -> None:
        bar.progress(p.fraction, text=f"{step.name}: {p.describe()}")

    try:
        summary = run_step(
            ctx.db_url, step, image_ids, memes_dir=ctx.settings.memes_dir, lock_dir=ctx.settings.artefacts_dir,
            batch_size=batch_size, workers=workers, force=force, on_progress=on_progress,
        )
    except JobBusy as exc:
        bar.empty()
        st.warning(md_escape(str(exc)))
        return None
    show_job_summary(summary)
    return summary


def show_job_summary(summary: JobSummary) -> None:
    text = md_escape(summary.describe())  # holds user-typed model ids and model errors
    if summary.status == "failed":
        st.error(text)
    elif summary.failed or summary.status == "cancelled":
        st.warning(text)
    else:
        st.success(text)
    if summary.errors:
        with st.expander(f"Per-image errors ({summary.failed})"):
            st.dataframe([{"image": i, "error": e} for i, e in summary.errors], hide_index=True)


def thumbnail(ctx: Ctx, sha256: str, rel_path: str) -> Path | None:
    """Cached thumbnail path for display (None when the file is unreadable)."""
    from workbench.store.images import ensure_thumbnail

    try:
        return ensure_thumbnail(ctx.settings.thumbnails_dir, sha256, ctx.settings.memes_dir / rel_path)
    except Exception:  # noqa: BLE001 - a broken file shows as a placeholder, never breaks the page
        return None
