"""Data: scan the memes folder, upload memes, import / export annotations.csv, import predictions
made elsewhere, Label Studio exports and Hugging Face datasets, demo set.

Every action shows a per-file (or per-row) report table; a bad file never stops the rest.
"""

from workbench import ui

ctx = ui.bootstrap("Data", "📥")

import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import streamlit as st  # noqa: E402

from workbench.errors import PermissionDenied  # noqa: E402
from workbench.store import annotations, demo_memes, ingest, users  # noqa: E402
from workbench.store.interop import common, hf_dataset, label_studio, predictions  # noqa: E402
from workbench.ui.text import plural  # noqa: E402

UPLOAD_TARGETS = {"unlabeled (uploads/)": None, "toxic (Негативно/)": "toxic", "neutral (Нейтрально/)": "non_toxic"}
IMPORT_MODES = {
    "All or nothing: any problem row → nothing is imported": True,
    "Valid rows only: import good rows, skip and list the problem rows": False,
}
state = st.session_state


def show_ingest_report(report: ingest.IngestReport, key: str) -> None:
    """Summary line + the per-file table (problems first)."""
    rejected = report.count("rejected")
    (st.warning if rejected else st.success)(f"{plural(len(report.files), 'file')}: {report.summary()}")
    order = {"rejected": 0, "duplicate": 1, "moved": 2, "added": 3, "ignored": 4, "unchanged": 5}
    rows = sorted(report.rows(), key=lambda r: order.get(str(r["status"]), 9))
    if rows:
        st.dataframe(rows, hide_index=True, key=key, column_config={"reason": st.column_config.TextColumn(width="large")})


st.title("Data")
st.caption(f"Memes folder: `{ctx.settings.memes_dir}` — files are stored relative to it.")
admin = ctx.can(users.ADMIN)  # sign-in on: scanning, uploading, importing and the demo set are for admins
if not admin:
    st.info(f"You are signed in as {ui.md_escape(ctx.role or '')}: scanning, uploading and importing are for admins. "
            "You can download annotations.csv below.")

# ---- scan --------------------------------------------------------------------
st.subheader("Scan the memes folder")
st.caption("`Негативно`/`toxic` → toxic, `Нейтрально`/`neutral`/`non_toxic` → neutral, other folders → unlabeled. "
           "Re-scans only read new or changed files; moved files keep their labels.")
if st.button("Scan folder", key="data_scan", type="primary", disabled=not admin):
    bar = st.progress(0.0, text="Scanning…")
    try:
        with ctx.session() as session:
            report = ingest.scan_folder(session, ctx.settings.memes_dir, actor=ctx.actor,
                                        on_progress=lambda n, total: bar.progress(n / total, text=f"{n} / {total} files"))
    except PermissionDenied as exc:
        st.error(ui.md_escape(str(exc)))
    else:
        show_ingest_report(report, "data_scan_report")
    bar.empty()

# ---- upload ------------------------------------------------------------------
st.subheader("Upload memes")
state.setdefault("data_upload_round", 0)
target = st.radio("Put the uploaded memes into", list(UPLOAD_TARGETS), horizontal=True, key="data_upload_target")
uploaded = st.file_uploader("jpg / png / gif / webp, up to 25 MB each — drag and drop many at once",
                            accept_multiple_files=True, key=f"data_upload_{state['data_upload_round']}")
label = UPLOAD_TARGETS[target]
if label and not ctx.annotator:
    st.caption("Without an annotator name the label is stored as coming from the folder ('folder').")
if st.button(f"Store {plural(len(uploaded or []), 'file')}", key="data_store", disabled=not uploaded or not admin):
    try:
        with ctx.session() as session:
            report = ingest.store_uploads(session, ctx.settings.memes_dir, ((f.name, f.getvalue()) for f in uploaded),
                                          label=label, annotator=ctx.annotator or None, actor=ctx.actor)
    except PermissionDenied as exc:
        st.error(ui.md_escape(str(exc)))
    else:
        state["data_upload_round"] += 1  # a fresh uploader, so the same files are not stored twice by accident
        state["data_upload_report"] = report
if state.get("data_upload_report") is not None:
    show_ingest_report(state["data_upload_report"], "data_upload_report_table")

# ---- import ------------------------------------------------------------------
st.subheader("Import annotations.csv")
st.caption("The notebook's format: header `filename,label`, `filename` relative to the memes folder, "
           "`label` toxic or non_toxic. Labels are stored by the annotator `import` (people's labels outrank it).")
csv_file = st.file_uploader("annotations.csv", type=["csv", "txt"], key="data_import_file")
mode = st.radio("When some rows have problems", list(IMPORT_MODES), key="data_import_mode")
if st.button("Import", key="data_import", disabled=csv_file is None or not admin):
    try:
        with ctx.session() as session:
            result = annotations.import_annotations(session, ctx.settings.memes_dir, csv_file.getvalue(),
                                                    all_or_nothing=IMPORT_MODES[mode], actor=ctx.actor)
    except PermissionDenied as exc:
        st.error(ui.md_escape(str(exc)))
    else:
        (st.success if result.applied and not result.issues else st.warning if result.applied else st.error)(
            ui.md_escape(result.summary()))
        if result.issues:
            st.dataframe([{"line": i.line, "filename": i.filename, "problem": i.problem} for i in result.issues],
                         hide_index=True, key="data_import_report")



def show_import_report(result: annotations.ImportReport, summary: str, key: str) -> None:
    """The summary (green when all applied) and each problem row."""
    (st.success if result.applied and not result.issues else st.warning if result.applied else st.error)(
        ui.md_escape(summary))
    if result.issues:
        st.dataframe([{"row": i.line, "item": i.filename, "problem": i.problem} for i in result.issues],
                     hide_index=True, key=key)


@contextmanager
def saved_upload(upload) -> Iterator[Path]:  # noqa: ANN001 - an UploadedFile
    """The uploaded file in a private temporary folder under its own name (the importers read
    paths), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="workbench-import-") as folder:
        target = Path(folder) / (Path(upload.name).name or "upload")
        target.write_bytes(upload.getvalue())
        yield target


# ---- predictions made elsewhere ---------------------------------------------------------
st.subheader("Import predictions made elsewhere")
st.caption("CSV or JSONL with `image` (a path in the memes folder, the file's sha256 or an image id), `label` "
           "(toxic / non_toxic, or the VLM prompt's class words), optional `prob_toxic` and `explanation`. "
           "They become one model run of kind `external`; the same file imported again adds nothing.")
pred_file = st.file_uploader("predictions file", type=["csv", "jsonl", "ndjson", "json", "txt"], key="data_pred_file")
cols = st.columns(2)
pred_name = cols[0].text_input("Run name (default: the file's name)", key="data_pred_name")
pred_model = cols[1].text_input("Model (default: the run name)", key="data_pred_model")
pred_mode = st.radio("When some rows have problems", list(IMPORT_MODES), key="data_pred_mode")
if st.button("Import predictions", key="data_pred_import", disabled=pred_file is None or not admin):
    try:
        with ctx.session() as session, saved_upload(pred_file) as pred_path:
            result, run_id = predictions.import_predictions(
                session, pred_path, name=pred_name or None, model=pred_model or None,
                all_or_nothing=IMPORT_MODES[pred_mode], actor=ctx.actor)
    except (PermissionDenied, ValueError) as exc:
        st.error(ui.md_escape(str(exc)))
    else:
        where = f" as run #{run_id}" if run_id is not None else ""
        show_import_report(result, f"{result.rows} rows: {result.imported} predictions imported{where}, "
                                   f"{result.unchanged} already there, {result.problems} problems", "data_pred_report")

# ---- Label Studio --------------------------------------------------------------------------
st.subheader("Import a Label Studio export")
st.caption("Label Studio's JSON export (Export → JSON). Each annotation becomes its person's label (their email, "
           "or `ls-user-ID`); cancelled and skipped ones are left out; the time spent is kept. Tasks are matched "
           "by `meme_id`, else by file name, else by the local file's sha256.")
ls_file = st.file_uploader("Label Studio JSON export", type=["json"], key="data_ls_file")
ls_map = st.text_input("Other choices (CHOICE=toxic, comma-separated; Toxic and Neutral are known)", key="data_ls_map")
ls_mode = st.radio("When some tasks have problems", list(IMPORT_MODES), key="data_ls_mode")
if st.button("Import Label Studio export", key="data_ls_import", disabled=ls_file is None or not admin):
    try:
        mapping = common.parse_mapping([p for p in ls_map.split(",") if p.strip()])
        with ctx.session() as session, saved_upload(ls_file) as ls_path:
            result = label_studio.import_label_studio(session, ls_path, mapping, all_or_nothing=IMPORT_MODES[ls_mode],
                                                      actor=ctx.actor)
    except (PermissionDenied, ValueError) as exc:
        st.error(ui.md_escape(str(exc)))
    else:
        show_import_report(result, f"{result.rows} annotations: {result.imported} labels imported, "
                                   f"{result.unchanged} unchanged, {result.problems} problems", "data_ls_report")

# ---- Hugging Face dataset -----------------------------------------------------------------
st.subheader("Import a Hugging Face dataset")
st.caption("A local dataset on this server (no download): a Parquet file, a folder of them, or a `save_to_disk` "
           "folder. Images are stored under `uploads/`, labels under the annotator `import:NAME`.")
hf_path = st.text_input("Path on the server", key="data_hf_path")
cols = st.columns(3)
hf_image = cols[0].text_input("Image column", value="image", key="data_hf_image")
hf_label = cols[1].text_input("Label column (empty: none)", value="label", key="data_hf_label")
hf_name = cols[2].text_input("Name (default: the folder's name)", key="data_hf_name")
hf_map = st.text_input("Label values (VALUE=toxic, comma-separated; e.g. `1=toxic, 0=non_toxic`)", key="data_hf_map")
hf_mode = st.radio("When some rows have problems", list(IMPORT_MODES), key="data_hf_mode")
if st.button("Import dataset", key="data_hf_import", disabled=not hf_path.strip() or not admin):
    bar = st.progress(0.0, text="Reading the dataset…")
    try:
        mapping = common.parse_mapping([p for p in hf_map.split(",") if p.strip()])
        if not Path(hf_path.strip()).expanduser().exists():
            raise ValueError(f"{hf_path.strip()} does not exist on this server")
        with ctx.session() as session:
            result = hf_dataset.import_hf_dataset(
                session, ctx.settings.memes_dir, Path(hf_path.strip()).expanduser(), hf_image.strip() or "image",
                hf_label.strip() or None, mapping, name=hf_name.strip() or None,
                all_or_nothing=IMPORT_MODES[hf_mode], actor=ctx.actor,
                progress=lambda n, total: bar.progress(min(1.0, n / max(total, 1)), text=f"{n} / {total} memes"))
    except (PermissionDenied, ValueError) as exc:
        st.error(ui.md_escape(str(exc)))
    else:
        show_import_report(result, result.summary(), "data_hf_report")
    bar.empty()

# ---- demo --------------------------------------------------------------------
st.subheader("Demo set")
st.caption("Generated meme-like images with Russian captions, half toxic, half neutral, written into the label "
           "folders and ingested. Handy for trying the workbench without real data.")
n_demo = st.number_input("How many", min_value=2, max_value=2000, value=40, step=10, key="data_demo_n")
if st.button("Generate demo set", key="data_demo", disabled=not admin):
    with st.spinner("Drawing memes…"):
        with ctx.session() as session:
            users.require(session, ctx.actor, users.ADMIN)  # before any file is written
        seed = demo_memes.next_free_seed(ctx.settings.memes_dir)  # another click adds new memes
        written = demo_memes.write_sample_memes(ctx.settings.memes_dir, n=int(n_demo), seed=seed)
        with ctx.session() as session:
            report = ingest.scan_folder(session, ctx.settings.memes_dir, actor=ctx.actor)
    st.success(ui.md_escape(f"Generated {plural(len(written), 'meme')}. Ingest: {report.summary()}"))

# ---- export ------------------------------------------------------------------
st.subheader("Export annotations.csv")
with ctx.session() as session:
    csv_text = annotations.export_annotations(session)
n_rows = csv_text.count("\n") - 1
st.caption(f"{plural(n_rows, 'labeled meme')}, one row each with the consensus label "
           "(people outrank folder/import labels; majority; a tie goes to the most recent label).")
st.download_button("Download annotations.csv", data=csv_text.encode("utf-8"), file_name="annotations.csv",
                   mime="text/csv", key="data_export", disabled=n_rows == 0)
