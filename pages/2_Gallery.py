"""Gallery: thumbnails with filters (label, folder, annotator, text in file name / OCR)
and pagination; each meme links to the Label page for (re)labeling. "Edit meme texts"
turns the OCR snippets into text boxes; one Save stores each changed text as a manual
correction (the text every model and export then uses)."""

from workbench import ui

ctx = ui.bootstrap("Gallery", "🖼️")

import streamlit as st  # noqa: E402

from workbench.store import catalog, labels  # noqa: E402
from workbench.store.db import in_batches  # noqa: E402
from workbench.store.ocr_texts import best_texts, save_correction  # noqa: E402
from workbench.ui.text import plural  # noqa: E402

LABEL_FILTERS = {"any label": None, "toxic": "toxic", "neutral": "non_toxic", "unlabeled": "unlabeled"}
LABEL_BADGES = {"toxic": ":red[toxic]", "non_toxic": ":green[neutral]", None: ":gray[unlabeled]"}
ANY = "(any)"
COLUMNS = 6
state = st.session_state

with ctx.session() as session:
    folder_names = catalog.folders(session)
    annotator_names = labels.annotators(session)

st.title("Gallery")
f = st.columns([1, 1, 1, 2, 1])
label_choice = f[0].selectbox("Label", list(LABEL_FILTERS), key="gal_label")
folder_choice = f[1].selectbox("Folder", [ANY, *folder_names], key="gal_folder",
                               format_func=lambda x: x or "(memes root)")
annotator_choice = f[2].selectbox("Labeled by", [ANY, *annotator_names], key="gal_annotator")
text = f[3].text_input("Search file name and meme text", key="gal_text", max_chars=200).strip()
page_size = f[4].selectbox("Per page", (24, 48, 96), index=1, key="gal_page_size")

filters = (label_choice, folder_choice, annotator_choice, text, page_size)
if state.get("gal_filters") != filters:  # new filters start at the first page
    state["gal_filters"], state["gal_page"] = filters, 0

with ctx.session() as session:
    cards, total = catalog.gallery_page(
        session, label=LABEL_FILTERS[label_choice], folder=None if folder_choice == ANY else folder_choice,
        annotator=None if annotator_choice == ANY else annotator_choice, text=text or None,
        page=state["gal_page"], page_size=page_size)
    ocr_texts = best_texts(session, [card.id for card in cards])
n_pages = max(1, -(-total // page_size))
state["gal_page"] = min(state["gal_page"], n_pages - 1)


def _turn(delta: int) -> None:
    state["gal_page"] = max(0, min(n_pages - 1, state["gal_page"] + delta))


nav = st.columns([1, 1, 3, 1])
nav[0].button("← Previous", key="gal_prev", on_click=_turn, args=(-1,), disabled=state["gal_page"] == 0)
nav[1].button("Next →", key="gal_next", on_click=_turn, args=(1,), disabled=state["gal_page"] >= n_pages - 1)
nav[2].caption(f"{plural(total, 'meme')} {'matches' if total == 1 else 'match'} · page {state['gal_page'] + 1} of {n_pages}")
editing = nav[3].toggle("Edit meme texts", key="gal_edit", disabled=not ctx.annotator,
                        help="Correct the OCR text of the memes on this page, then press Save texts."
                        if ctx.annotator else "Type your name in the sidebar (Annotator) to correct texts.")
editing = editing and bool(ctx.annotator)

if not cards:
    filtered = label_choice != "any label" or folder_choice != ANY or annotator_choice != ANY or bool(text)
    st.info("No memes match these filters." if filtered else "No memes yet. Add some on the Data page.")
# While editing, the grid is one form: typing does not rerun the page, one Save stores all changes.
grid = st.form("gal_texts", border=False) if editing and cards else st.container()
with grid:
    for row in in_batches(cards, COLUMNS):
        for col, card in zip(st.columns(COLUMNS), row):
            with col:
                thumb = ui.thumbnail(ctx, card.sha256, card.path)
                if thumb is not None:
                    st.image(str(thumb), width="stretch")
                else:
                    st.caption(":orange[file missing or unreadable]")
                ui.page_link("pages/1_Label.py", label=ui.md_escape(card.path.rsplit("/", 1)[-1][:60]),
                             query_params={"image": str(card.id)}, help=f"Open #{card.id} on the Label page")
                st.caption(LABEL_BADGES.get(card.label, card.label))
                if editing:
                    st.text_area("Text on the meme", value=ocr_texts.get(card.id, ""), key=f"gal_txt_{card.id}",
                                 height=90, label_visibility="collapsed", placeholder="No text yet")
                elif ocr_texts.get(card.id):
                    snippet = " ".join(ocr_texts[card.id].split())
                    st.caption(ui.md_escape(snippet[:80] + ("…" if len(snippet) > 80 else "")), help="OCR text")
    saved = st.form_submit_button("Save texts", type="primary") if editing and cards else False

if saved:
    changed = {card.id: state[f"gal_txt_{card.id}"] for card in cards
               if state.get(f"gal_txt_{card.id}", "").strip() != ocr_texts.get(card.id, "").strip()}
    if changed:
        with ctx.session() as session:
            for image_id, new_text in changed.items():
                save_correction(session, image_id, new_text, ctx.annotator)
        st.toast(f"Saved {plural(len(changed), 'text correction')}.")
    else:
        st.toast("No text was changed.")
