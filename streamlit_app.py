"""Home page of VLMemes Workbench (the entry point: `streamlit run streamlit_app.py`).

An overview of what is stored; on an empty database it greets the user with the three
ways to get memes in: upload, generate a demo set, scan the memes folder.
"""

from workbench import ui

ctx = ui.bootstrap("Home", "🧪")

import streamlit as st  # noqa: E402

from workbench.store import demo_memes, ingest, users  # noqa: E402
from workbench.store.catalog import stats  # noqa: E402

st.title("VLMemes Workbench")
st.caption("Label Russian-language memes, run OCR, CLIP and a VLM over them, and see where models and people disagree.")


def _scan() -> None:
    with ctx.session() as session:
        report = ingest.scan_folder(session, ctx.settings.memes_dir, actor=ctx.actor)  # admins only with sign-in
    st.session_state["home_flash"] = f"Scanned {ctx.settings.memes_dir}: {report.summary()}"


def _demo() -> None:
    with ctx.session() as session:
        users.require(session, ctx.actor, users.ADMIN)  # before any file is written
    seed = demo_memes.next_free_seed(ctx.settings.memes_dir)
    written = demo_memes.write_sample_memes(ctx.settings.memes_dir, n=40, seed=seed)
    with ctx.session() as session:
        report = ingest.scan_folder(session, ctx.settings.memes_dir, actor=ctx.actor)
    st.session_state["home_flash"] = f"Generated {len(written)} demo memes. Ingest: {report.summary()}"


with ctx.session() as session:
    counts = stats(session)
if st.session_state.get("home_flash"):
    st.success(ui.md_escape(st.session_state.pop("home_flash")))

admin = ctx.can(users.ADMIN)  # sign-in on: adding memes is for admins
if counts["images"] == 0:
    st.info("Welcome! There are no memes in the database yet. Pick one way to start:")
    c = st.columns(3)
    with c[0]:
        st.markdown("**Upload memes**")
        files = st.file_uploader("Drop jpg/png/gif/webp files", accept_multiple_files=True, key="home_upload")
        if st.button("Store uploads", key="home_store", disabled=not files or not admin):
            with ctx.session() as session:
                report = ingest.store_uploads(session, ctx.settings.memes_dir, ((f.name, f.getvalue()) for f in files),
                                              actor=ctx.actor)
            st.session_state["home_flash"] = f"Uploads: {report.summary()} (details on the Data page)"
            st.rerun()
    with c[1]:
        st.markdown("**Try a demo set**")
        st.caption("40 generated memes with Russian captions, half toxic, half neutral.")
        st.button("Generate demo set", key="home_demo", on_click=_demo, type="primary", disabled=not admin)
    with c[2]:
        st.markdown("**Scan the memes folder**")
        st.caption(f"`{ctx.settings.memes_dir}` — subfolders `Негативно/` and `Нейтрально/` become labels "
                   "(set WORKBENCH_MEMES_DIR to use another folder).")
        st.button("Scan folder", key="home_scan", on_click=_scan, disabled=not admin)
    st.stop()

cols = st.columns(5)
cols[0].metric("Memes", counts["images"])
cols[1].metric("Labeled", counts["labeled"])
cols[2].metric("Unlabeled", counts["unlabeled"])
cols[3].metric("Model runs", counts["model_runs"])
cols[4].metric("Predictions", counts["predictions"])
by_label = counts["by_label"]
st.caption(f"Consensus labels: {by_label.get('toxic', 0)} toxic · {by_label.get('non_toxic', 0)} neutral · "
           f"{counts['annotators']} annotators · {counts['ocr_results']} OCR results"
           + (f" · ⚠️ {counts['missing_files']} files missing since the last scan" if counts["missing_files"] else ""))

st.subheader("Where to next")
links = st.columns(3)
links[0].page_link("pages/1_Label.py", label="Label memes (keys 1 / 0 / → / ←)", icon=":material/label:")
links[1].page_link("pages/2_Gallery.py", label="Browse the gallery", icon=":material/photo_library:")
links[2].page_link("pages/3_Data.py", label="Scan, upload, import, export", icon=":material/upload_file:")
st.button("Re-scan the memes folder", key="home_rescan", on_click=_scan, disabled=not admin,
          help="Adds new files, recognises moved ones, marks deleted ones missing.")
