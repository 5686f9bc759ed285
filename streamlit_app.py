"""Home page of VLMemes Workbench (the entry point: `streamlit run streamlit_app.py`)."""

from workbench import ui
from workbench.catalog import stats

ctx = ui.bootstrap("Home", "🧪")

import streamlit as st  # noqa: E402

st.title("VLMemes Workbench")
st.caption("Label Russian-language memes, run OCR, CLIP and a VLM over them, and see where models and people disagree.")
with ctx.session() as session:
    counts = stats(session)
cols = st.columns(4)
cols[0].metric("Images", counts["images"])
cols[1].metric("Labeled", counts["labeled"])
cols[2].metric("Model runs", counts["model_runs"])
cols[3].metric("Predictions", counts["predictions"])
