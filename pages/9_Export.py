"""Export: annotations.csv, predictions.csv, the HTML report and (when a converter is
installed) its PDF, a Hugging Face dataset and a Label Studio project, written into a folder
under the artefacts folder with a progress bar. Files are generated when their button is
clicked, not on page load."""

from workbench import ui

ctx = ui.bootstrap("Export", "📦")

import streamlit as st  # noqa: E402

from workbench.analysis.agreement import agreement_report  # noqa: E402
from workbench.analysis.outcomes import list_runs  # noqa: E402
from workbench.analysis.report import render  # noqa: E402
from workbench.store import annotations, label_history, predictions_csv  # noqa: E402
from workbench.store.catalog import stats  # noqa: E402
from workbench.store.db import session_scope  # noqa: E402
from workbench.store.interop import hf_dataset, label_studio  # noqa: E402
from workbench.store.paths import check_rel_path  # noqa: E402
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


def _label_history() -> bytes:
    with session_scope(settings.db_url) as session:
        return b"".join(label_history.label_history_chunks(session))


st.download_button("Download labels.csv (every label, with how its meme was chosen)", _label_history,
                   file_name="labels.csv", mime="text/csv", key="exp_dl_labels", disabled=counts["labeled"] == 0,
                   help="Every label row, undone ones too: annotator, time, queue order, rank, score, exploration "
                        "pick, the learner's suggestion and whether it was shown, seconds spent.")

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

# ---- other tools: folders under the artefacts folder ------------------------------------------
EXPORTS = settings.artefacts_dir / "exports"


def _out_dir(name: str) -> object:
    """The export folder under EXPORTS, or None (with an error shown) when the name is not a plain relative path."""
    problem = check_rel_path(name.strip())
    if problem:
        st.error(ui.md_escape(f"Folder name {name!r}: {problem}"))
        return None
    return EXPORTS / name.strip()


st.subheader("Hugging Face dataset")
st.write("Parquet shards and a dataset card (`README.md`) that `datasets.load_dataset(FOLDER)` loads: the image, "
         "the consensus `label`, `ocr_text`, people's labels, the near-duplicate group and the chosen runs' "
         "predictions. Train and test never split a near-duplicate group and are stratified by label.")
cols = st.columns(3)
hf_name = cols[0].text_input(f"Folder under `{EXPORTS}`", value="hf-dataset", key="exp_hf_dir")
hf_split = cols[1].toggle("Train / test split", value=True, key="exp_hf_split")
hf_test = cols[2].number_input("Test share", min_value=0.05, max_value=0.5, value=0.2, step=0.05, key="exp_hf_test",
                               disabled=not hf_split)
st.caption("Prediction columns: the runs chosen above (none chosen: no prediction columns).")
if st.button("Write Hugging Face dataset", key="exp_hf_write", disabled=counts["images"] == 0):
    out_dir = _out_dir(hf_name)
    if out_dir is not None:
        bar = st.progress(0.0, text="Writing shards…")
        with session_scope(settings.db_url) as session:
            alpha = agreement_report(session)["overall"]["alpha"]
            done = hf_dataset.export_hf_dataset(
                session, settings.memes_dir, out_dir, list(chosen), test_size=float(hf_test) if hf_split else None,
                alpha=alpha, progress=lambda n, total: bar.progress(n / max(total, 1), text=f"{n} / {total} memes"))
        bar.empty()
        sizes = ", ".join(f"{side}: {plural(n, 'meme')}" for side, n in done.splits.items())
        st.success(ui.md_escape(f"Wrote {plural(len(done.files), 'Parquet shard')} ({sizes}) and README.md to "
                                f"{done.out_dir}"))

st.subheader("Label Studio")
st.write("`tasks.json` (each meme with its OCR text, the chosen runs' predictions and people's current labels), "
         "`label_config.xml` (Toxic / Neutral) and a README on how to import them. Label it there, export JSON "
         "and import it back on the Data page.")
cols = st.columns(2)
ls_name = cols[0].text_input(f"Folder under `{EXPORTS}`", value="label-studio", key="exp_ls_dir")
ls_prefix = cols[1].text_input("Image URL prefix (empty: Label Studio's local files)", key="exp_ls_prefix")
if st.button("Write Label Studio project", key="exp_ls_write", disabled=counts["images"] == 0):
    out_dir = _out_dir(ls_name)
    if out_dir is not None:
        bar = st.progress(0.0, text="Writing tasks…")
        with session_scope(settings.db_url) as session:
            done = label_studio.export_label_studio(
                session, settings.memes_dir, out_dir, list(chosen), image_url_prefix=ls_prefix.strip() or None,
                progress=lambda n, total: bar.progress(n / max(total, 1), text=f"{n} / {total} memes"))
        bar.empty()
        st.success(ui.md_escape(f"Wrote {plural(done.tasks, 'task')} ({plural(done.predictions, 'prediction')}, "
                                f"{plural(done.annotations, 'annotation')}) to {done.out_dir}"))

st.caption("Command line: `python -m workbench report OUT.html [--pdf]` · "
           "`python -m workbench export annotations PATH` · `python -m workbench export-predictions PATH` · "
           "`python -m workbench export hf-dataset OUT_DIR` · `python -m workbench export label-studio OUT_DIR`")
