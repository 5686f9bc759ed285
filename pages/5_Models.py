"""Models: pick a predictor, set its options (the form is built from Predictor.options),
run it over a selection through the job runner, and see every model run.

Each distinct config is one model run; running the same config again only predicts the
memes still missing (a closed tab or a cancel resumes where it stopped).
"""

from workbench import ui

ctx = ui.bootstrap("Models", "🤖")

import streamlit as st  # noqa: E402

from workbench.analysis import outcomes  # noqa: E402
from workbench.predictors.base import PredictorStep  # noqa: E402
from workbench.predictors.run import build_predictor, predictor_specs  # noqa: E402
from workbench.store import catalog, users  # noqa: E402

st.title("Models")
st.caption("Zero-shot CLIP, the VLM moderator and the other predictors. Models load when a run starts, once "
           "per server process; a model that cannot load says which id, why and how to supply it.")

specs = predictor_specs()
labels = {s.kind: f"{s.title} ({s.kind})" if s.available else f"{s.kind} — unavailable" for s in specs}
kind = st.selectbox("Predictor", [s.kind for s in specs], format_func=labels.__getitem__, key="models_kind")
spec = next(s for s in specs if s.kind == kind)

if not spec.available:
    st.warning(f"The {kind} predictor cannot be used here; the other predictors work.")
    st.text(spec.unavailable or "")
else:
    st.subheader("Options")
    values = ui.option_form(spec.options, f"models_{kind}")

    st.subheader("Memes")
    with ctx.session() as session:
        folders = catalog.folders(session)
    c1, c2, c3, c4 = st.columns(4)
    selection = c1.selectbox("Selection", catalog.SELECTIONS, key="models_selection")
    folder = c2.selectbox("Folder", ["(all)", *folders], key="models_folder")
    limit = int(c3.number_input("Limit (0 = all)", min_value=0, value=0, step=10, key="models_limit"))
    batch_size = int(c4.number_input("Batch (memes per commit)", min_value=1, max_value=256, value=8,
                                     key="models_batch"))
    force = st.checkbox("Predict again memes this config already did", key="models_force")
    with ctx.session() as session:
        ids = catalog.image_ids(session, selection, folder=None if folder == "(all)" else folder,
                                limit=limit or None)
    st.caption(f"{len(ids)} memes selected.")

    admin = ctx.can(users.ADMIN)  # sign-in on: runs are for admins (run_job_widget checks again)
    if not admin:
        st.caption("Running models is for admins; you can see every run below.")
    if st.button("Run", type="primary", key="models_run", disabled=not ids or not admin):
        try:
            predictor = build_predictor(kind, values)
        except ValueError as exc:
            st.error(ui.md_escape(str(exc)))
        else:
            st.text(f"Run config: {predictor.run_name()} · fingerprint {predictor.fingerprint()}")
            ui.run_job_widget(ctx, PredictorStep(predictor), ids, batch_size=batch_size, force=force, key="models_job")

st.subheader("Model runs")
with ctx.session() as session:
    runs = outcomes.list_runs(session)
if not runs:
    st.caption("No model runs yet.")
else:
    st.dataframe(
        [{"run": r.id, "kind": r.kind, "model": r.model_id, "name": r.name, "status": r.status,
          "predictions": r.n_predictions, "unknown": r.n_unknown, "failed": r.n_failed, "created": r.created_at}
         for r in runs],
        hide_index=True, key="models_runs",
    )
    chosen = st.selectbox("Show a run's config", [r.id for r in runs],
                          format_func=lambda i: next(r.title for r in runs if r.id == i), key="models_run_detail")
    with ctx.session() as session:
        params = outcomes.run_params(session, chosen)
    st.json(params, expanded=False)
