"""Labeling: one meme at a time. Toxic / Neutral / Skip / Back with the keys 1 / 0 / → / ←.

Deep link: `/Label?image=ID` opens that meme (the gallery links here). The queue is
computed once per (annotator, order, folder) and kept in the session, so labeling does
not reshuffle it under the annotator's hands.
"""

from workbench import ui

ctx = ui.bootstrap("Label", "🏷️")

import streamlit as st  # noqa: E402

from workbench.store import catalog, labels, ocr_texts  # noqa: E402

LABEL_NAMES = {"toxic": "Toxic", "non_toxic": "Neutral"}
ALL_FOLDERS = "(all folders)"
state = st.session_state

# ---- sidebar: queue settings -------------------------------------------------
with ctx.session() as session:
    folder_names = catalog.folders(session)
order = st.sidebar.selectbox("Queue order", labels.QUEUE_ORDERS, key="lbl_order")
folder_choice = st.sidebar.selectbox(
    "Folder", [ALL_FOLDERS, *folder_names], key="lbl_folder", format_func=lambda f: f or "(memes root)")
auto_advance = st.sidebar.checkbox("Auto-advance after labeling", value=True, key="lbl_auto")
if st.sidebar.button("New random order" if order == "random" else "Refresh queue", key="lbl_refresh"):
    state["lbl_seed"] = state.get("lbl_seed", 0) + 1
    state.pop("lbl_queue_key", None)
st.sidebar.caption("Keys: **1** toxic · **0** neutral · **→** skip · **←** back (undo)")

folder = None if folder_choice == ALL_FOLDERS else folder_choice
annotator = ctx.annotator

# ---- queue (kept in the session; recomputed when its settings change) ---------
with ctx.session() as session:
    n_present = catalog.count_present(session)
    queue_key = (annotator, order, folder, state.get("lbl_seed", 0), n_present)
    if state.get("lbl_queue_key") != queue_key:
        if (state.get("lbl_queue_key") or (annotator,))[0] != annotator:
            state["lbl_trail"] = []  # Back must never undo another annotator's labels
        keep = state.get("lbl_current")
        queue = labels.labeling_queue(session, annotator, order, seed=state.get("lbl_seed", 0), folder=folder)
        state["lbl_queue"], state["lbl_queue_key"] = queue, queue_key
        state["lbl_pos"] = queue.index(keep) if keep in queue and order != "unlabeled first" else 0
        state.setdefault("lbl_trail", [])
queue: list[int] = state["lbl_queue"]

# Deep link ?image=ID: jump there once (afterwards the URL just follows the current meme).
linked = st.query_params.get("image")
if linked and linked != state.get("lbl_linked"):
    state["lbl_linked"] = linked
    try:
        target = int(linked)
    except ValueError:
        target = None
        st.warning("The link's image id is not a number; showing the queue instead.")
    if target is not None:
        if target in queue:
            state["lbl_pos"] = queue.index(target)
        else:  # outside the queue's folder: show it now without losing the queue position
            queue.insert(state["lbl_pos"], target)


def _current() -> int | None:
    pos = state["lbl_pos"]
    return queue[pos] if 0 <= pos < len(queue) else None


# ---- actions (callbacks run before the page re-renders) ----------------------
def _label(label: str) -> None:
    image_id = _current()
    if image_id is None or not annotator:
        return
    note = state.get(f"lbl_note_{image_id}", "").strip() or None
    with ctx.session() as s:
        labels.add_label(s, image_id, label, annotator, note)
    state["lbl_trail"].append((image_id, True))
    state["lbl_flash"] = f"Labeled #{image_id} as {LABEL_NAMES[label]}."
    if auto_advance:
        state["lbl_pos"] += 1


def _skip() -> None:
    image_id = _current()
    if image_id is None:
        return
    state["lbl_trail"].append((image_id, False))
    state["lbl_pos"] += 1
    state["lbl_flash"] = None


def _back() -> None:
    trail = state["lbl_trail"]
    if not trail:
        state["lbl_pos"] = max(0, state["lbl_pos"] - 1)
        state["lbl_flash"] = None
        return
    image_id, labeled = trail.pop()
    if labeled:
        with ctx.session() as s:
            undone = labels.undo_last(s, annotator, image_id)
        state["lbl_flash"] = f"Undid your label on #{image_id}." if undone else None
    else:
        state["lbl_flash"] = None
    if image_id in queue:
        state["lbl_pos"] = queue.index(image_id)
    else:
        queue.insert(state["lbl_pos"], image_id)


def _restart() -> None:
    state["lbl_pos"] = 0
    state.pop("lbl_queue_key", None)


# ---- page --------------------------------------------------------------------
st.title("Label memes")
with ctx.session() as session:
    mine = labels.labeled_count(session, annotator) if annotator else 0
    anyone = labels.labeled_count(session)
if n_present == 0:
    st.info("No memes yet. Add some on the Data page (scan the folder, upload, or generate a demo set).")
    ui.page_link("pages/3_Data.py", label="Go to Data", icon=":material/upload_file:")
    st.stop()

progress_text = (f"You ({ui.md_escape(annotator)}) labeled {mine} of {n_present}" if annotator
                 else f"{anyone} of {n_present} labeled by anyone")
st.progress(min(1.0, (mine if annotator else anyone) / n_present), text=progress_text)
if not annotator:
    st.warning("Enter your name in the sidebar (Annotator) to label. Labels are stored under that name.")
if state.get("lbl_flash"):
    st.caption(state["lbl_flash"])

image_id = _current()
if image_id is None:
    st.query_params.pop("image", None)
    st.success(f"End of the queue ({len(queue)} memes). You labeled {mine} of {n_present}.")
    cols = st.columns(2)
    cols[0].button("Back", key="lbl_back", shortcut="Left", on_click=_back, disabled=not queue)
    cols[1].button("Start over", key="lbl_restart", on_click=_restart)
    st.stop()

with ctx.session() as session:
    meme = catalog.meme_view(session, image_id)
if meme is None:
    st.error(f"There is no meme with id {image_id}.")
    st.button("Skip", key="lbl_skip", shortcut="Right", on_click=_skip)
    st.stop()
current, consensus, history, ocr_text, predictions = (meme.current, meme.consensus, meme.history, meme.ocr_text,
                                                     meme.predictions)
st.query_params["image"] = str(image_id)  # the URL always names the meme on screen
state["lbl_linked"], state["lbl_current"] = str(image_id), image_id

mine_now = meme.label_of(annotator)
st.caption(f"Meme {state['lbl_pos'] + 1} of {len(queue)} in this queue · id {image_id}")
st.text(meme.path)
b = st.columns(4)
b[0].button("Toxic", key="lbl_toxic", shortcut="1", icon=":material/report:", type="primary" if mine_now == "toxic" else "secondary",
            on_click=_label, args=("toxic",), disabled=not annotator, width="stretch")
b[1].button("Neutral", key="lbl_neutral", shortcut="0", icon=":material/sentiment_satisfied:",
            type="primary" if mine_now == "non_toxic" else "secondary",
            on_click=_label, args=("non_toxic",), disabled=not annotator, width="stretch")
b[2].button("Skip", key="lbl_skip", shortcut="Right", on_click=_skip, width="stretch")
b[3].button("Back (undo)", key="lbl_back", shortcut="Left", on_click=_back, width="stretch",
            help="Go back; if you labeled the previous meme, that label is undone.")

left, right = st.columns([3, 2], gap="large")
with left:
    path = ctx.settings.memes_dir / meme.path
    if meme.missing or not path.is_file():
        st.error("The file is missing from the memes folder (moved or deleted since the last scan).")
    else:
        st.image(str(path), width=640)  # large, but capped so a whole meme fits on a laptop screen

with right:
    st.text_input("Note (optional, saved with your next label)", key=f"lbl_note_{image_id}", max_chars=2000)

    st.subheader("Labels")
    if current:
        st.markdown(f"Consensus: **{LABEL_NAMES.get(consensus, consensus)}**")
        st.dataframe([{"annotator": c.annotator, "label": c.label, "since": c.created_at.strftime("%Y-%m-%d %H:%M")}
                      for c in current], hide_index=True)
    else:
        st.caption("Not labeled yet.")
    with st.expander(f"History ({len(history)} label rows)"):
        st.dataframe([{"annotator": h.annotator, "label": h.label, "note": h.note or "",
                       "at": h.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                       "undone": h.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if h.revoked_at else ""}
                      for h in history], hide_index=True)

    st.subheader("Text on the meme")
    edited = st.text_area("OCR text (edit and save to correct it)", value=ocr_text, key=f"lbl_ocr_{image_id}",
                          height=100, placeholder="No OCR text yet — run OCR on the Run page, or type it here.")
    # Never disabled by "unchanged": the browser commits the typed text together with this click.
    if st.button("Save text", key="lbl_save_text", disabled=not annotator):
        if edited.strip() == ocr_text.strip():
            st.toast("The text is unchanged.")
        else:
            with ctx.session() as session:
                ocr_texts.save_correction(session, image_id, edited, annotator)
            st.toast("Text correction saved.")

    st.subheader("Models")
    if predictions:
        st.dataframe([{"run": p.run_name, "kind": p.kind, "label": p.label, "P(toxic)": p.prob_toxic,
                       "explanation": p.explanation or "", "error": p.error or ""} for p in predictions],
                     hide_index=True, column_config={"P(toxic)": st.column_config.NumberColumn(format="%.3f")})
    else:
        st.caption("No model has judged this meme yet.")
