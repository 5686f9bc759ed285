"""Train: cache CLIP / VLM embeddings, train a head or the TF-IDF baseline from the current
labels (stratified k-fold: labeled memes get out-of-fold predictions; the form is built from
the predictor's options), see the training curves, and save / reuse trained heads."""

from workbench import ui

ctx = ui.bootstrap("Train", "🎓")

import altair as alt  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from workbench.features.embeddings import (  # noqa: E402
    EmbedStep,
    embedder_staleness,
    embedding_status,
    lacking_embeddings,
    make_embedders,
)
from workbench.features.head_training import HeadError, describe_grouping, head_text_status, read_head_info  # noqa: E402
from workbench.models.choices import embedder_model  # noqa: E402
from workbench.predictors.base import PredictorStep  # noqa: E402
from workbench.predictors.head import copy_head, predictor_for_saved_head, saved_heads  # noqa: E402
from workbench.predictors.model_defaults import resolved_spec  # noqa: E402
from workbench.predictors.out_of_fold import read_training_report  # noqa: E402
from workbench.predictors.run import build_predictor  # noqa: E402
from workbench.store import catalog  # noqa: E402
from workbench.store.labels import consensus_labels  # noqa: E402


def curves_chart(curves: list[dict]) -> alt.FacetChart | None:
    """Loss and validation F1 per epoch, one line per fold."""
    if not curves:
        return None
    df = pd.DataFrame(curves)
    metrics = [m for m in ("train_loss", "val_loss", "val_f1") if m in df]
    long = df.melt(id_vars=["fold", "epoch"], value_vars=metrics, var_name="metric", value_name="value")
    return (alt.Chart(long).mark_line().encode(
        x=alt.X("epoch:Q"), y=alt.Y("value:Q"), color=alt.Color("fold:N"),
        tooltip=["fold", "epoch", "metric", alt.Tooltip("value:Q", format=".3f")])
        .properties(width=260, height=200).facet(column=alt.Column("metric:N", title=None))
        .resolve_scale(y="independent"))


def show_metrics(metrics: dict) -> None:
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Out-of-fold F1", f"{metrics['f1']:.3f}" if metrics.get("f1") is not None else "–")
    c2.metric("Out-of-fold AUROC", f"{metrics['auroc']:.3f}" if metrics.get("auroc") is not None else "–")
    c3.metric("Labeled memes", metrics.get("n", "–"))
    c4.metric("Folds", metrics.get("folds", "–"))
    st.caption(describe_grouping(metrics.get("grouping")))


def embedder_lines(sets: list[dict], embedders: list, n_memes: int) -> list[tuple[str, int]]:
    """("<kind>: N fresh, M stale, K missing", M + K) per embedder, from `embedding_status` rows."""
    by_set = {(r["kind"], r["fingerprint"]): r for r in sets}
    out = []
    for e in embedders:
        r = by_set.get((e.kind, e.fingerprint()), {"summary": f"0 fresh, 0 stale, {n_memes} missing", "stale": 0,
                                                     "missing": n_memes})
        out.append((f"{e.kind}: {r['summary']}", r["stale"] + r["missing"]))
    return out


st.title("Train")
with ctx.session() as session:
    all_ids = catalog.image_ids(session, "all")
    labels = consensus_labels(session)
n_toxic = sum(1 for v in labels.values() if v == "toxic")
st.caption(f"{len(all_ids)} memes, {len(labels)} labeled ({n_toxic} toxic, {len(labels) - n_toxic} non_toxic). "
           "Training uses the current consensus labels; new labels make a new run.")

tab_embed, tab_train, tab_heads = st.tabs(["1 · Embeddings", "2 · Train", "3 · Saved heads"])

with tab_embed:
    st.write("Heads train on cached embeddings: CLIP image + CLIP text-of-OCR, or the VLM's mean-pooled "
             "hidden state. Extraction skips memes whose embedding is current.")
    # The settings of `python -m workbench embed` (make_embedders has no Option list).
    c1, c2, c3, c4 = st.columns([1, 3, 1, 1])
    source = c1.radio("Source", ["clip", "vlm"], key="train_embed_source", horizontal=True)
    with ctx.session() as session:
        default_model = embedder_model(session, source)  # the project's choice (Models page)
    model = c2.text_input("Model id or local folder", value=default_model, key=f"train_embed_model_{source}",
                          help="Starts from the project's model choice (Models page: embedding / vlm)")
    device = c3.text_input("device", value="auto", key="train_embed_device", help="auto | cpu | cuda | cuda:N | mps")
    dtype = c4.selectbox("dtype", ["auto", "float32", "bfloat16", "float16"], key="train_embed_dtype")
    embedders = make_embedders(source, model.strip() or default_model, device.strip() or "auto", dtype)
    # Fresh / stale (OCR text changed since) / missing per embedder of this model; drawn after any job below.
    status_box = st.container()
    with ctx.session() as session:
        sets = embedding_status(session, all_ids)
    lines = embedder_lines(sets, embedders, len(all_ids))
    to_refresh = sum(n for _, n in lines)
    b1, b2 = st.columns(2)
    extract = b1.button("Extract embeddings", key="train_embed_run", disabled=not all_ids)
    refresh = b2.button(f"Refresh stale + missing ({to_refresh})", key="train_embed_refresh", disabled=not to_refresh,
                        help="Re-embed only the memes whose embedding is stale (its OCR text changed since) or "
                        "missing: `python -m workbench embed SOURCE --model MODEL` does the same")
    if extract or refresh:
        for embedder in embedders:
            with ctx.session() as session:
                ids = all_ids if extract else embedder_staleness(session, embedder, all_ids).todo
            if ids:
                st.write(f"**{embedder.kind}**")
                ui.run_job_widget(ctx, EmbedStep(embedder), ids, key=f"train_embed_{embedder.kind}")
        with ctx.session() as session:
            sets = embedding_status(session, all_ids)
        lines = embedder_lines(sets, embedders, len(all_ids))
    for line, _ in lines:
        status_box.text(line)
    if sets:
        st.caption("Every cached embedding set (`python -m workbench embed --status`):")
        st.dataframe([{k: v for k, v in r.items() if k != "summary"} for r in sets], hide_index=True)
    else:
        st.info("No embeddings cached yet.")

with tab_train:
    what = st.radio("What to train", ["TF-IDF baseline (OCR text, no weights needed)", "Head on embeddings"],
                    key="train_what")
    kind, prefix = ("text-tfidf", "train_tfidf") if what.startswith("TF-IDF") else ("head", "train_head")
    with ctx.session() as session:
        spec = resolved_spec(session, kind)  # clip_model / vlm_model start from the project's choices
    if not spec.available:
        st.warning(f"The {kind} predictor cannot be used here.")
        st.text(spec.unavailable or "")
    elif kind == "head":
        st.caption("Features read the embeddings cached in tab 1 by clip_model (image / text / both / "
                   "interaction) or vlm_model (vlm). To predict with a saved head, use tab 3.")
    # head_path (predict with a saved head instead of training) belongs to the Saved heads tab.
    values = ui.option_form(spec.options, prefix, overrides={"head_path": ""} if kind == "head" else None,
                            columns=3)
    if kind == "head" and spec.available and all_ids:
        # Before training: the memes without a current embedding for these features, and a way to embed them.
        lacking_box = st.container()
        try:
            head = build_predictor(kind, values)
        except ValueError:
            head = None
        head_embedders = list(head.embedders.values()) if head is not None else []
        with ctx.session() as session:
            lacking = lacking_embeddings(session, head_embedders, all_ids)
        if lacking and st.button(f"Embed these {len(lacking)} memes", key="train_embed_lacking"):
            for embedder in head_embedders:
                ids = [lack.image_id for lack in lacking if embedder.kind in lack.missing + lack.stale]
                if ids:
                    ui.run_job_widget(ctx, EmbedStep(embedder), ids, key=f"train_lacking_{embedder.kind}")
            with ctx.session() as session:
                lacking = lacking_embeddings(session, head_embedders, all_ids)
        if lacking and head is not None:
            with ctx.session() as session:
                notice = head.input_notice(session, all_ids, list_memes=False)
            lacking_box.warning(ui.md_escape(notice))
            lacking_box.dataframe([{"image": lack.image_id, "file": lack.path, "why": lack.reason} for lack in lacking],
                                  hide_index=True)
    if st.button("Train and predict (out-of-fold)", type="primary", key="train_run",
                 disabled=not (all_ids and spec.available)):
        try:
            predictor = build_predictor(kind, values)
        except ValueError as exc:
            st.error(ui.md_escape(str(exc)))
        else:
            summary = ui.run_job_widget(ctx, PredictorStep(predictor), all_ids, key="train_job")
            if summary is not None and summary.status == "done":
                st.session_state["train_fingerprint"] = predictor.fingerprint()
    fp = st.session_state.get("train_fingerprint")
    report = read_training_report(fp) if fp else None
    if report:
        st.subheader(f"Training report · {report['kind']} · run {fp}")
        show_metrics(report["metrics"])
        chart = curves_chart(report.get("curves") or [])
        if chart is not None:
            st.altair_chart(chart)
        st.caption("Per fold: training seconds " + ", ".join(f"{s:.2f}" for s in report.get("fold_seconds", [])))

with tab_heads:
    heads = saved_heads()
    if not heads:
        st.info("No saved heads yet: train one in the Train tab (it is saved automatically).")
    else:
        with ctx.session() as session:  # a head trained on OCR texts that changed since is stale
            heads = [{**h, "texts": head_text_status(session, read_head_info(h["path"]))} for h in heads]
        st.dataframe(heads, hide_index=True)
        name = st.selectbox("Head", [h["name"] for h in heads], key="train_saved_head")
        chosen = next(h for h in heads if h["name"] == name)
        info = read_head_info(chosen["path"])
        st.text(f"features: {info['feature_model'].get('description')}  ·  head: {info['config']['model']}")
        chart = curves_chart(info.get("curves") or [])
        if chart is not None:
            st.altair_chart(chart)
        dest = st.text_input("Copy this head to a folder", key="train_copy_dest", placeholder="/path/to/my_head")
        if st.button("Copy", key="train_copy", disabled=not dest.strip()):
            try:
                st.success(ui.md_escape(f"Copied to {copy_head(chosen['path'], dest.strip())}"))
            except (HeadError, OSError) as exc:
                st.error(ui.md_escape(str(exc)))
    st.subheader("Predict with a saved head")
    path = st.text_input("Head folder (holding head.json + head.safetensors)", key="train_load_path",
                         value=heads[0]["path"] if heads else "")
    if st.button("Predict all memes with this head", key="train_load_run", disabled=not (path.strip() and all_ids)):
        try:
            predictor = predictor_for_saved_head(path.strip())
        except HeadError as exc:
            st.error(ui.md_escape(str(exc)))
        else:
            ui.run_job_widget(ctx, PredictorStep(predictor), all_ids, key="train_load_job")
