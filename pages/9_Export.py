"""Export: annotations.csv, predictions.csv, the HTML report and (when a converter is
installed) its PDF. Files are generated when their button is clicked, not on page load."""

from workbench import ui

ctx = ui.bootstrap("Export", "📦")

import streamlit as st  # noqa: E402

from workbench.analysis.outcomes import list_runs  # noqa: E402
from workbench.analysis.report import render  # noqa: E402
from workbench.store import annotations, predictions_csv  # noqa: E402
from workbench.store.catalog import stats  # noqa: E402
from workbench.store.db import session_scope  # noqa: E402
from workbench.ui.text import plural  # noqa: E402

settings = ctx.settings
with ctx.session() as session:
    counts = stats(session)
    runs = [r for r in list_runs(session) if r.n_predictions > 0]

st.title("Export")
st.caption("CSV cells that start with = + - @ get a leading ' so spreadsheets never run them as formulas.")

# ---- annotations.csv ---------------------------------------------------------------
st.subheader("Labels — annotations.csv")
st.write(f"{plural(counts['labeled'], 'labeled meme')} (consensus label; header `filename,label`, the notebook's format).")


def _annotations() -> bytes:
    with session_scope(settings.db_url) as session:
        return annotations.export_annotations(session).encode("utf-8")


st.download_button("Download annotations.csv", _annotations, file_name="annotations.csv", mime="text/csv",
                   key="exp_dl_annotations", disabled=counts["labeled"] == 0)

# ---- predictions.csv ---------------------------------------------------------------
st.subheader("Predictions — predictions.csv")
if not runs:
    st.info("No predictions yet: run a model on the Models page first.")
chosen = st.multiselect("Runs (none = all)", [r.id for r in runs], key="exp_runs",
                        format_func=lambda i: next(r.title for r in runs if r.id == i))
run_ids = tuple(chosen) or None
st.write("One row per meme × run: " + ", ".join(f"`{c}`" for c in predictions_csv.PREDICTION_COLUMNS) + ".")


def _predictions() -> bytes:
    with session_scope(settings.db_url) as session:
        return predictions_csv.export_predictions(session, run_ids).encode("utf-8")


st.download_button("Download predictions.csv", _predictions, file_name="predictions.csv", mime="text/csv",
                   key="exp_dl_predictions", disabled=not runs)

# ---- report ------------------------------------------------------------------------
st.subheader("Report")
st.write("One self-contained HTML file (opens offline): dataset summary, metrics with confidence intervals, "
         "confusion matrices and curves, McNemar comparisons, top disagreements with thumbnails, cached CAM "
         "overlays and every run's exact configuration.")
top_n = st.number_input("Disagreement cards", min_value=0, max_value=200, value=20, step=5, key="exp_top")
random_only = st.checkbox("Metrics over labels chosen at random only", key="exp_random_only",
                          help="Unbiased when most labels came from model-ranked queues (unsure, likely toxic).")
options = render.ReportOptions(run_ids=run_ids, top_n=int(top_n), random_only=random_only)


def _html() -> bytes:
    return render.report_html(settings, options).encode("utf-8")


def _pdf() -> bytes:
    return render.report_pdf(settings, options)


cols = st.columns(2)
cols[0].download_button("Download report (HTML)", _html, file_name="vlmemes_report.html", mime="text/html",
                        key="exp_dl_html")
converter = render.pdf_converter()
if converter:
    cols[1].download_button("Download report (PDF)", _pdf, file_name="vlmemes_report.pdf", mime="application/pdf",
                            key="exp_dl_pdf", help=f"Rendered with {converter}")
else:
    cols[1].caption("PDF: no converter here (install Chromium or `pip install weasyprint`); the HTML prints to PDF "
                    "from any browser.")
st.caption("Command line: `python -m workbench report OUT.html [--pdf]` · "
           "`python -m workbench export annotations PATH` · `python -m workbench export-predictions PATH`")
