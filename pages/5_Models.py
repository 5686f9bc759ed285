"""Models: pick a predictor, set its options (the form is built from Predictor.options),
run it over a selection through the job runner, and see every model run.

Each distinct config is one model run; running the same config again only predicts the
memes still missing (a closed tab or a cancel resumes where it stopped).
"""

from workbench import ui

ctx = ui.bootstrap("Models", "🤖")

import streamlit as st  # noqa: E402

from workbench.analysis import outcomes  # noqa: E402
from workbench.errors import PermissionDenied  # noqa: E402
from workbench.models import choices as model_choices  # noqa: E402
from workbench.predictors.base import PredictorStep  # noqa: E402
from workbench.predictors.model_defaults import MODEL_OPTIONS, resolved_specs  # noqa: E402
from workbench.predictors.run import build_predictor  # noqa: E402
from workbench.store import catalog, users  # noqa: E402

state = st.session_state


def _save_choices() -> None:
    """Store the typed model choices (empty = the default); the forms below then start from them."""
    typed = {c.name: state[f"models_choice_{c.name}"] for c in model_choices.CHOICES}
    try:
        with ctx.session() as session:
            changed = model_choices.update_choices(session, typed, actor=ctx.actor)
            stored = {c.name: model_choices.stored_choice(session, c.name) or "" for c in model_choices.CHOICES}
            specs = {s.kind: s for s in resolved_specs(session)}
    except (PermissionDenied, ValueError) as exc:
        state["models_choice_flash"] = ("error", str(exc))
        return
    for name, value in stored.items():  # as stored: a folder made absolute
        state[f"models_choice_{name}"] = value
    # The option widgets take the new defaults: set, not dropped (the browser would send its old value back).
    for kind, options in MODEL_OPTIONS.items():
        defaults = {o.name: o.default for o in specs[kind].options} if kind in specs else {}
        for option in options:
            if option in defaults:
                state[f"models_{kind}_{option}"] = str(defaults[option])
    state["models_choice_flash"] = ("success", f"Saved: {', '.join(changed)}." if changed else "Nothing changed.")


st.title("Models")
st.caption("Zero-shot CLIP, the VLM moderator and the other predictors. Models load when a run starts, once "
           "per server process; a model that cannot load says which id, why and how to supply it.")

admin = ctx.can(users.ADMIN)  # sign-in on: choosing models and running them is for admins (the library checks again)
with ctx.session() as session:
    current = {c["name"]: c for c in model_choices.list_choices(session)}
with st.expander("Project model choices: the model every page and command starts from", expanded=False):
    st.caption("A hub id (org/name) or a local folder (it must exist). Empty = the default. Every page and "
               "`python -m workbench` start from these; a run can still name another model. Saved in the "
               "database (kept across reloads and restarts) and recorded in the audit log; admins only. "
               "Same as `python -m workbench models set NAME VALUE`.")
    cols = st.columns(2)
    for i, c in enumerate(model_choices.CHOICES):
        cols[i % 2].text_input(c.name, value=current[c.name]["stored"] or "", key=f"models_choice_{c.name}",
                               placeholder=current[c.name]["value"] or "unset", help=c.help, disabled=not admin)
    st.button("Save model choices", key="models_choice_save", on_click=_save_choices, disabled=not admin)
    flash = state.pop("models_choice_flash", None)
    if flash:
        getattr(st, flash[0])(ui.md_escape(flash[1]))

with ctx.session() as session:
    specs = resolved_specs(session)  # model options default to the project's choices
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
    cluster = ui.cluster_field(ctx, key="models_cluster")
    with ctx.session() as session:
        ids = catalog.image_ids(session, selection, folder=None if folder == "(all)" else folder,
                                limit=limit or None)
    st.caption(f"{len(ids)} memes selected.")

    if not admin:
        st.caption("Running models is for admins; you can see every run below.")
    if st.button("Run", type="primary", key="models_run", disabled=not ids or not admin):
        try:
            predictor = build_predictor(kind, values)
        except ValueError as exc:
            st.error(ui.md_escape(str(exc)))
        else:
            st.text(f"Run config: {predictor.run_name()} · fingerprint {predictor.fingerprint()}")
            ui.run_job_widget(ctx, PredictorStep(predictor), ids, batch_size=batch_size, force=force, key="models_job",
                                cluster=cluster)

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
