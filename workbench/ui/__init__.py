"""The one Streamlit helper that pages share: bootstrap (page config, settings, cached
DB engine + migrations, the grouped navigation, the running-job indicator and the annotator
in the sidebar), the job widgets (submit to the server's job worker and follow it; the jobs
panel), the form built from predictor Options, and safe text rendering. The only workbench
module that imports streamlit."""

from __future__ import annotations

import html
import logging
import math
import os
import re
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
from sqlalchemy.orm import Session

from workbench.analysis import warmup
from workbench.config import Settings, load_settings
from workbench.predictors.base import Option
from workbench.runs import background
from workbench.runs.listing import ACTIVE, active_jobs, list_jobs, mark_interrupted
from workbench.runs.step import JobSummary, Step
from workbench.store import db
from workbench.store.paths import UnsafePath, image_file
from workbench.ui import auth

APP_TITLE = "VLMemes Workbench"
POLL_S = 0.5  # how often a page following a job redraws its progress
PANEL_EVERY_S = 2.0  # how often the sidebar indicator and the jobs panel refresh while a job runs


@st.cache_resource(show_spinner="Preparing the database…")
def _migrated(url: str) -> str:
    """Run migrations once per DB URL per server process (idempotent), then mark the jobs a
    dead process left running as interrupted (a restart: the Run page offers Resume)."""
    db.upgrade(url)
    with db.session_scope(url) as session:
        mark_interrupted(session, background.PROCESS_STARTED)
    return url


@st.cache_resource(show_spinner=False)
def _warming(url: str) -> threading.Thread | None:
    """Start the warm-up of the caches the pages read at scale once per DB URL per server process
    (workbench.analysis.warmup), in the background: no page waits for it."""
    if not warmup.worth_warming(url):
        return None
    thread = threading.Thread(target=_warm, args=(url,), name="workbench-warmup", daemon=True)
    thread.start()
    return thread


def _warm(url: str) -> None:
    try:
        took = warmup.warm_caches(url)
    except Exception:  # noqa: BLE001 - a cache left cold fills on first use; never take the app down
        logging.getLogger(__name__).exception("warming the caches failed (they fill on first use)")
        return
    logging.getLogger(__name__).info("caches warmed: %s", took)


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


# Sidebar navigation, grouped (Streamlit's own would call the entry page "streamlit app"):
# (script relative to the entry script's folder, label, icon, group, permission needed or None).
NAV = (
    ("streamlit_app.py", "Home", ":material/home:", "", None),
    ("pages/1_Label.py", "Label", ":material/label:", "Label", None),
    ("pages/2_Gallery.py", "Gallery", ":material/photo_library:", "Label", None),
    ("pages/6_Dashboard.py", "Dashboard", ":material/monitoring:", "Review", None),
    ("pages/7_Disagreements.py", "Disagreements", ":material/compare:", "Review", None),
    ("pages/8_Explain.py", "Explain", ":material/visibility:", "Review", None),
    ("pages/12_Map.py", "Map", ":material/scatter_plot:", "Review", None),
    ("pages/4_Run.py", "Run OCR · jobs", ":material/text_fields:", "Models", None),
    ("pages/5_Models.py", "Models", ":material/model_training:", "Models", None),
    ("pages/10_Train.py", "Train", ":material/school:", "Models", None),
    ("pages/3_Data.py", "Data", ":material/upload_file:", "Data", None),
    ("pages/11_Duplicates.py", "Duplicates", ":material/content_copy:", "Data", None),
    ("pages/9_Export.py", "Export", ":material/download:", "Data", None),
    ("pages/13_Adjudication.py", "Adjudication", ":material/gavel:", "Team", "adjudicate"),
)


def bootstrap(title: str, icon: str = "🧪", layout: str = "wide") -> Ctx:
    """Idempotent set-up every page calls first, so any page works when opened first by URL."""
    st.set_page_config(page_title=f"{title} · {APP_TITLE}", page_icon=icon, layout=layout)
    try:
        settings = load_settings()
    except ValueError as exc:  # a bad WORKBENCH_* value: refused with its message, never a traceback
        st.error(f"The workbench is not configured correctly: {exc}", icon=":material/error:")
        st.stop()
    _migrated(settings.db_url)
    _warming(settings.db_url)
    signed_in = auth.gate(settings)  # sign-in on: stops here unless signed in with a role
    navigation(None if signed_in is None else signed_in.role, signed_in is not None)
    _job_indicator(settings.db_url)
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


def app_pages() -> tuple[Path, dict[str, str]]:
    """The entry script's folder and the pages Streamlit registered ({real path: page name}),
    read from the running script, so no path is guessed from this module's location."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    run_ctx = get_script_run_ctx()
    if run_ctx is None:
        return Path.cwd(), {}
    root = Path(os.path.realpath(run_ctx.main_script_path)).parent
    pages = run_ctx.pages_manager.get_pages()
    return root, {os.path.realpath(p["script_path"]): str(p["page_name"]) for p in pages.values()}


def nav_entries(role: str | None, signed_in: bool) -> list[tuple[str, str, str, str]]:
    """(page, label, icon, group) of every NAV page this role may open (all of them with sign-in off)."""
    from workbench.store.users import has_permission

    return [(page, label, icon, group) for page, label, icon, group, needs in NAV
            if needs is None or not signed_in or has_permission(role, needs)]


def navigation(role: str | None, signed_in: bool) -> None:
    """The sidebar's page links, grouped, for the pages this role may open; a page Streamlit
    registered that NAV does not name is listed under "Other", so no page is ever unreachable."""
    root, registered = app_pages()
    if len(registered) < 2:  # one page run alone (AppTest of one file): nothing to link to
        return
    with st.sidebar:
        group_shown = ""
        for page, label, icon, group in nav_entries(role, signed_in):
            if os.path.realpath(root / page) not in registered:
                continue
            if group and group != group_shown:
                st.caption(group)
                group_shown = group
            st.page_link(page, label=label, icon=icon)
        other = sorted(set(registered) - {os.path.realpath(root / entry[0]) for entry in NAV})
        if other:
            st.caption("Other")
            for path in other:
                page_link(os.path.relpath(path, root), label=registered[path])
        st.divider()


def _job_indicator(db_url: str) -> None:
    """"running: OCR 312/5,000" in the sidebar while any job runs (this server's or a CLI's),
    refreshed every PANEL_EVERY_S seconds without rerunning the page."""
    if not _active_lines(db_url):
        return
    with st.sidebar:
        st.fragment(_job_indicator_body, run_every=PANEL_EVERY_S)(db_url)


def _active_lines(db_url: str) -> list[str]:
    with db.session_scope(db_url) as session:
        rows = active_jobs(session)
    lines = [f"{'cancelling' if r['status'] == 'cancelling' else 'running'}: "
             f"{background.KIND_LABEL.get(r['step'], r['name'])} {r['done'] + r['failed']:,}/{r['total'] - r['skipped']:,}"
             for r in rows]
    lines += [t.describe() for t in background.jobs().active() if t.state == "queued"]  # "OCR queued (N memes)"
    return lines


def _job_indicator_body(db_url: str) -> None:
    lines = _active_lines(db_url)
    if lines:
        st.caption("  \n".join(f":material/hourglass_top: {md_escape(line)}" for line in lines))
        page_link("pages/4_Run.py", label="Jobs", icon=":material/pending_actions:")


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
    # A value put in session state by a page (e.g. a new model choice) rules; passing a default
    # too would make Streamlit warn, and a default alone cannot move a widget the browser shows.
    value = {} if key in st.session_state else {"value": str(option.default)}
    if option.type == "text":
        return st.text_area(label, help=help_text, key=key, height=140, **value)
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
    return st.text_input(label, help=help_text, key=key, **value)


# What makes plain text markdown in Streamlit: emphasis, code, links and directives
# (`[`), headings, tables, strikethrough, LaTeX (`$`). Other punctuation only counts at
# the start of a line (lists, setext headings), and is escaped only there.
_MD_INLINE = re.compile(r"([\\`*_\[\]#|~$])")
_MD_BULLET = re.compile(r"^([ \t]*)([-+=])", re.MULTILINE)  # lists, setext headings, rules
_MD_NUMBERED = re.compile(r"^([ \t]*\d+)([.)])", re.MULTILINE)  # "1." / "1)" lists
# A URL is left as it is: Streamlit turns it into a link, and a backslash inside one shows.
_URL = re.compile(r"(?:https?|ftp)://[^\s<>]+|www\.[^\s<>]+")
_URL_TRAILING = ".,:;!?'\")]*_~"


def md_escape(text: str | None) -> str:
    """User/model text made inert for st.markdown / st.error and friends: no markdown and no
    HTML, and no stray backslashes where none are needed (URLs stay as they are)."""
    text = text or ""
    out, pos = [], 0
    for match in _URL.finditer(text):
        url = match.group(0).rstrip(_URL_TRAILING)
        out.append(_escape_plain(text[pos:match.start()]))
        out.append(url)
        pos = match.start() + len(url)
    out.append(_escape_plain(text[pos:]))
    return "".join(out).replace("\n", "  \n")


def _escape_plain(text: str) -> str:
    text = _MD_INLINE.sub(r"\\\1", html.escape(text, quote=False))
    text = _MD_BULLET.sub(r"\1\\\2", text)
    return _MD_NUMBERED.sub(r"\1\\\2", text)


def _authorized_job(ctx: Ctx, what: str, details: dict[str, Any]) -> bool:
    """Sign-in on: jobs are for admins, checked and recorded; False (with an error shown) when not."""
    if ctx.actor is None:
        return True
    from workbench.errors import PermissionDenied
    from workbench.store.users import ADMIN, authorize

    try:
        with ctx.session() as session:
            authorize(session, ctx.actor, ADMIN, what, details)
    except PermissionDenied as exc:
        st.error(md_escape(str(exc)))
        return False
    return True


def run_job_widget(
    ctx: Ctx, step: Step, image_ids: Sequence[int], *, batch_size: int = 8, workers: int = 1, force: bool = False,
    key: str = "job", cluster: str | None = None,
) -> JobSummary | None:
    """Run a step as a server job (workbench.runs.background) and follow it here: a progress
    bar with rate and ETA and a Cancel button while it runs, the summary when it ends, which
    is returned. Leaving the page, closing the tab or signing out stops only the following:
    the job goes on, the sidebar shows it, and the Run page lists it. None when it did not run
    (not allowed, another job holding the lock, cancelled while queued) or is followed no more.
    `cluster`: a Dask scheduler's address to run the batches on (see `cluster_field`)."""
    if not _authorized_job(ctx, "job", {"step": step.name, "images": len(image_ids)}):
        return None
    ticket = background.jobs().submit(
        ctx.db_url, step, image_ids, memes_dir=ctx.settings.memes_dir, lock_dir=ctx.settings.artefacts_dir,
        batch_size=batch_size, workers=workers, force=force, cluster=cluster,
    )
    return follow_job(ticket, key=key)


def cluster_field(ctx: Ctx, key: str) -> str | None:
    """The Cluster field of a page that runs jobs: a Dask scheduler's address (default
    WORKBENCH_DASK_SCHEDULER), or empty for this server. Returns the address or None."""
    value = st.text_input(
        "Cluster (Dask scheduler)", value=ctx.settings.dask_scheduler or "", key=key,
        placeholder="tcp://HOST:8786 — empty: run here",
        help="Run the batches on a Dask cluster's workers (`dask scheduler` on one machine, `dask worker "
             "tcp://HOST:8786` on the others); this server still reads the memes and stores the results.")
    value = value.strip()
    return None if value in ("", "local") else value


def follow_job(ticket: background.Ticket, key: str = "job") -> JobSummary | None:
    """Poll a ticket from the page's own script thread (the job's thread never touches
    Streamlit): progress while it runs, Cancel only while it runs, then its summary."""
    bar = st.progress(0.0, text=f"{ticket.step_name}: {_ticket_text(ticket)}")
    cancel = st.empty()
    cancel.button("Cancel", key=f"{key}_cancel", on_click=ticket.cancel,
                  help="Stops after the current batch; finished batches are kept.")
    while not ticket.wait(POLL_S):
        # each redraw is also where Streamlit stops this script when the user leaves the page
        bar.progress(ticket.fraction, text=f"{ticket.step_name}: {_ticket_text(ticket)}")
    cancel.empty()
    if ticket.summary is None:
        bar.empty()
        st.warning(md_escape(ticket.error or "the job did not run"))
        return None
    bar.progress(ticket.fraction, text=f"{ticket.step_name}: {ticket.summary.status}")
    show_job_summary(ticket.summary)
    return ticket.summary


def _ticket_text(ticket: background.Ticket) -> str:
    if ticket.state == "queued":
        ahead = [t for t in background.jobs().active() if t.key != ticket.key and t.submitted_at <= ticket.submitted_at]
        return "queued behind " + ", ".join(t.describe() for t in ahead) if ahead else "queued"
    if ticket.cancel_requested:
        return "cancelling after the current batch…"
    return ticket.progress.describe() if ticket.progress is not None else "starting…"


def show_job_summary(summary: JobSummary) -> None:
    """A job's outcome: an error, a warning (cancelled, or some memes failed) or a success box,
    and the first per-image errors."""
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


def jobs_panel(ctx: Ctx, limit: int | None = 50) -> None:
    """Every job (newest first): running ones with progress, throughput, ETA and Cancel, queued
    ones, and Resume for those a restart or a cancel stopped. Refreshes itself while a job runs."""
    every = PANEL_EVERY_S if _active_lines(ctx.db_url) else None
    st.fragment(_jobs_panel_body, run_every=every)(ctx, limit)


def _jobs_panel_body(ctx: Ctx, limit: int | None) -> None:
    from workbench.store.users import ADMIN

    admin = ctx.can(ADMIN)
    flash = st.session_state.pop("jobs_flash", None)
    if flash:
        (st.warning if flash.startswith("Not ") else st.success)(md_escape(flash))
    with ctx.session() as session:
        rows = list_jobs(session, limit=limit)
    for row in (r for r in rows if r["status"] in ACTIVE):
        left, right = st.columns([5, 1], vertical_alignment="bottom")
        rate = f" · {row['per_s']:.2f} img/s" if row["per_s"] else ""
        eta = f" · ETA {row['eta_s']:,} s" if row["eta_s"] is not None else ""
        where = f" · on {row['host']}" if row["host"] and row["host"] != socket.gethostname() else ""
        left.progress(row["progress"], text=md_escape(
            f"job {row['job']} · {row['name']} · {row['status']}: {row['done'] + row['failed']:,}/"
            f"{row['total'] - row['skipped']:,} ({row['failed']} failed, {row['skipped']} already done)"
            f"{rate}{eta}{where}"))
        right.button("Cancel", key=f"jobs_cancel_{row['job']}", on_click=_cancel_job, args=(ctx, row["job"]),
                     disabled=not admin or row["status"] != "running",
                     help="Stops after the current batch; finished batches are kept.")
    for ticket in (t for t in background.jobs().active() if t.state == "queued"):
        left, right = st.columns([5, 1], vertical_alignment="bottom")
        left.caption(md_escape(f"queued: {ticket.step_name} · {len(ticket.image_ids):,} memes"))
        right.button("Cancel", key=f"jobs_cancel_q_{ticket.key}", on_click=ticket.cancel, disabled=not admin)
    for row in (r for r in rows if r["resumable"]):
        left, right = st.columns([5, 1], vertical_alignment="bottom")
        left.caption(md_escape(f"job {row['job']} · {row['name']} · {row['status']} at "
                               f"{row['done'] + row['failed']:,}/{row['total'] - row['skipped']:,}"))
        right.button("Resume", key=f"jobs_resume_{row['job']}", on_click=_resume_job, args=(ctx, row["job"]),
                     disabled=not admin, help="Runs the same step over the same memes; what is done is skipped.")
    if rows:
        st.dataframe([{k: v for k, v in r.items() if k != "resumable"} for r in rows], hide_index=True, width="stretch",
                     column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)})
    else:
        st.caption("No jobs yet.")


def _cancel_job(ctx: Ctx, job_id: int) -> None:
    from workbench.runs.runner import request_cancel

    if not _authorized_job(ctx, "job cancel", {"job": job_id}):
        return
    for ticket in background.jobs().active():
        if ticket.job_id == job_id:
            ticket.cancel()
    with ctx.session() as session:
        asked = request_cancel(session, job_id)
    st.session_state["jobs_flash"] = (f"Job {job_id} stops after its current batch." if asked
                                      else f"Not cancelled: job {job_id} is not running.")


def _resume_job(ctx: Ctx, job_id: int) -> None:
    if not _authorized_job(ctx, "job resume", {"job": job_id}):
        return
    try:
        ticket = background.resume(ctx.settings, job_id)
    except ValueError as exc:
        st.session_state["jobs_flash"] = f"Not resumed: {exc}"
        return
    st.session_state["jobs_flash"] = f"Job {job_id} resumed: {ticket.step_name} over {len(ticket.image_ids):,} memes."


def meme_file(ctx: Ctx, rel_path: str) -> Path | None:
    """The meme's file through the guarded resolver (store.paths), or None when its stored path
    leaves the memes folder (such a meme shows as missing, its file is never served)."""
    try:
        return image_file(ctx.settings.memes_dir, rel_path)
    except UnsafePath:
        return None


def thumbnail(ctx: Ctx, sha256: str, rel_path: str) -> Path | None:
    """Cached thumbnail path for display (None when the file is unreadable)."""
    from workbench.store.images import ensure_thumbnail

    try:
        return ensure_thumbnail(ctx.settings.thumbnails_dir, sha256, image_file(ctx.settings.memes_dir, rel_path))
    except Exception:  # noqa: BLE001 - a broken file shows as a placeholder, never breaks the page
        return None
