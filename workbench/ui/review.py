"""Streamlit pieces of the data-centric review, shared by the Duplicates and Map pages and the
Label page: a meme tile with its labels, a grid of memes with relabel buttons, and the
"N near-copies" panel."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from workbench.analysis.duplicates import Member, near_copies
from workbench.errors import PermissionDenied
from workbench.store.db import in_batches
from workbench.store.labels import LabelError, add_label
from workbench.ui import Ctx, md_escape, page_link, thumbnail

LABEL_BUTTONS = {"toxic": "🟥 toxic", "non_toxic": "🟩 non_toxic"}
FLASH = "review_flash"


def flash() -> None:
    """Show (once) the message the last review action left."""
    message = st.session_state.pop(FLASH, None)
    if message:
        (st.warning if message.startswith("Not saved") else st.success)(md_escape(message))


def relabel(ctx: Ctx, image_id: int, label: str) -> None:
    """Button callback: the annotator's label on one meme (history kept, undoable on the Label page)."""
    try:
        with ctx.session() as session:
            add_label(session, image_id, label, ctx.annotator)
        st.session_state[FLASH] = f"Meme #{image_id} labeled {label} by {ctx.annotator}."
    except (LabelError, PermissionDenied) as exc:
        st.session_state[FLASH] = f"Not saved: {exc}"


def member_tile(ctx: Ctx, member: Member, *, show_link: bool = True) -> None:
    """One meme: thumbnail (or a missing-file note), path, consensus, each annotator's label."""
    thumb = None if member.missing else thumbnail(ctx, member.sha256, member.path)
    if thumb is not None:
        st.image(str(thumb), width="stretch")
    else:
        st.caption("⚠️ file missing or unreadable (its labels and history are kept)")
    st.caption(md_escape(f"#{member.image_id} {member.path}"))
    st.markdown(f"**{md_escape(member.consensus or 'unlabeled')}**")
    for annotator, label in member.labels:
        st.text(f"{annotator}: {label}")
    if member.distance is not None:
        cosine = f" · cosine {member.cosine:.2f}" if member.cosine is not None else ""
        st.caption(f"hash distance {member.distance:.2f}{cosine}")
    if show_link:
        page_link("pages/1_Label.py", label="Open on the Label page", icon=":material/label:",
                  query_params={"image": str(member.image_id)})


def meme_grid(ctx: Ctx, members: Sequence[Member], key: str, columns: int = 6) -> None:
    """Memes as a grid of tiles, each with relabel buttons (keys `{key}_{image_id}_{label}`)."""
    for row in in_batches(members, columns):
        for col, member in zip(st.columns(columns), row):
            with col:
                member_tile(ctx, member, show_link=False)
                for label, text in LABEL_BUTTONS.items():
                    st.button(text, key=f"{key}_{member.image_id}_{label}", on_click=relabel,
                              args=(ctx, member.image_id, label), disabled=not ctx.annotator,
                              help="Adds your label (history is kept)")
    if members and not ctx.annotator:
        st.caption("Enter your name in the sidebar to relabel.")


def near_copies_panel(ctx: Ctx, image_id: int) -> None:
    """"N near-copies" of a meme with their labels and links (nothing when it has none)."""
    with ctx.session() as session:
        copies = near_copies(session, image_id)
    if not copies:
        return
    labels = sorted({c.consensus or "unlabeled" for c in copies})
    with st.expander(f"{len(copies)} near-cop{'y' if len(copies) == 1 else 'ies'} · labeled {', '.join(labels)}",
                     expanded=True):
        cols = st.columns(min(len(copies), 4))
        for k, copy in enumerate(copies):
            with cols[k % len(cols)]:
                member_tile(ctx, copy)
        page_link("pages/11_Duplicates.py", label="Review near-duplicate groups", icon=":material/content_copy:")
