"""Run: OCR a selection of memes as a server job, and every job (OCR, predictors,
embeddings, CAM, hashes) with its progress, throughput and ETA, Cancel while it runs, and
Resume for one a restart or a cancel stopped.

Jobs run on the server: leaving this page, closing the tab or signing out does not stop
them. Running the same engine and config again reads only the memes still missing.
"""

from workbench import ui

ctx = ui.bootstrap("Run", "⚙️")

import os  # noqa: E402

import streamlit as st  # noqa: E402

from workbench.ocr import DEFAULT_ENGINE, ENGINE_HELP, ENGINES, LANGS, make_engine  # noqa: E402
from workbench.ocr.step import PARALLEL_ENGINES, OcrStep  # noqa: E402
from workbench.store import catalog, users  # noqa: E402

SELECTIONS = {"all": "All memes", "unlabeled": "Unlabeled memes", "folder": "One folder"}
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

st.title("Run OCR")
st.caption("Reads meme captions into the database. Each engine + config keeps its own results; a correction "
           "typed on the Label page is used before any engine's text.")

engine_name = st.selectbox("Engine", ENGINES, index=ENGINES.index(DEFAULT_ENGINE),
                           format_func=lambda e: f"{e} — {ENGINE_HELP[e]}", key="run_engine")
lang = "rus"
if engine_name != "easyocr":
    lang = st.selectbox("Tesseract languages", LANGS, key="run_lang",
                        help="rus+eng also reads Latin words, but turns some Cyrillic letters into Latin look-alikes.")
selection = st.radio("Images", list(SELECTIONS), format_func=SELECTIONS.__getitem__, horizontal=True, key="run_sel")
with ctx.session() as session:
    folder = None
    if selection == "folder":
        folder_names = catalog.folders(session)
        folder = st.selectbox("Folder", folder_names, format_func=lambda f: f or "(memes folder root)",
                              key="run_folder") if folder_names else None
    ids = [] if selection == "folder" and folder is None else catalog.image_ids(
        session, "all" if selection == "folder" else selection, folder=folder)
parallel = engine_name in PARALLEL_ENGINES
workers = int(st.number_input("Worker processes", min_value=1, max_value=max(1, CORES), value=max(1, CORES),
                              disabled=not parallel, key="run_workers",
                              help="Tesseract engines use one process per core; EasyOCR runs in one."))
force = st.checkbox("Redo memes already read with this engine (force)", key="run_force")
cluster = ui.cluster_field(ctx, key="run_cluster")
st.caption(f"{len(ids)} memes selected.")

engine = make_engine(engine_name, ctx.settings, lang=lang)
if engine_name == "easyocr":
    from workbench.ocr.easyocr_engine import how_to_supply, missing_weights

    missing = missing_weights(engine.model_dir)  # type: ignore[attr-defined]
    if missing:
        st.warning(f"EasyOCR cannot run here: {', '.join(missing)} missing.")
        st.text(how_to_supply(engine.model_dir))  # type: ignore[attr-defined]

admin = ctx.can(users.ADMIN)  # sign-in on: jobs are for admins (run_job_widget checks again)
if not admin:
    st.caption("Running OCR is for admins; you can see every job below.")
if st.button("Start OCR", type="primary", disabled=not ids or not admin, key="run_start"):
    ui.run_job_widget(ctx, OcrStep(engine), ids, workers=workers if parallel else 1, force=force, key="run_job",
                      cluster=cluster)

st.subheader("Jobs")
st.caption("Jobs run on the server: they go on when you leave this page. One runs at a time; others wait their turn.")
ui.jobs_panel(ctx, limit=None)
