"""Duplicates: find near-duplicate groups (perceptual hashes of the whole meme and its inner crops,
CLIP embeddings as a second signal), review each group side by side with every member's labels
(conflicting groups first), label a whole group with one click (undoable) or mark it "not
duplicates"; and cleanlab's data audit (label issues, near-duplicates, outliers, class balance)."""

from workbench import ui

ctx = ui.bootstrap("Duplicates", "🪞")

import os  # noqa: E402

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from workbench.analysis import data_audit, duplicates, outcomes  # noqa: E402
from workbench.analysis.embedding_map import embedding_sets  # noqa: E402
from workbench.errors import PermissionDenied  # noqa: E402
from workbench.features import near_duplicates as nd  # noqa: E402
from workbench.features.image_hashes import HASH_BATCH, HashStep  # noqa: E402
from workbench.runs.lock import JobBusy, heavy_job_lock  # noqa: E402
from workbench.store import catalog, db  # noqa: E402
from workbench.store.labels import LabelError  # noqa: E402
from workbench.ui import review as rv  # noqa: E402

PAGE_SIZE = 5
state = st.session_state

st.title("Near-duplicates and data audit")
rv.flash()
tab_groups, tab_audit = st.tabs(["Near-duplicate groups", "Data audit (cleanlab)"])


def _group_action(group_id: int, action: str) -> None:
    """Button callback: give the whole group a label (action = the label), undo that, or dismiss the group."""
    try:
        with ctx.session() as session:
            if action == "undo":
                n = len(duplicates.undo_group_label(session, group_id, ctx.annotator))
                message = f"Group #{group_id}: undid {ctx.annotator}'s group label on {n} memes."
            elif action == "dismiss":
                nd.dismiss_group(session, group_id, ctx.annotator, actor=ctx.actor)
                message = f"Group #{group_id} marked not duplicates: these memes are never grouped together again."
            else:
                n = len(duplicates.apply_group_label(session, group_id, action, ctx.annotator))
                message = f"Group #{group_id}: {n} memes labeled {action} by {ctx.annotator}."
        state[rv.FLASH] = message
    except (LabelError, PermissionDenied, nd.GroupingError) as exc:
        state[rv.FLASH] = f"Not saved: {exc}"


def show_group(view: duplicates.GroupView) -> None:
    """One group: its members side by side, then the whole-group actions."""
    with st.container(border=True):
        flag = " · ⚠️ members labeled differently" if view.conflict else ""
        unlabeled = f" · {view.n_unlabeled} unlabeled" if view.n_unlabeled else ""
        st.markdown(f"**Group #{view.id}** · {len(view.members)} memes{flag}{unlabeled}")
        cols = st.columns(min(max(len(view.members), 2), 6))
        for k, member in enumerate(view.members):
            with cols[k % len(cols)]:
                rv.member_tile(ctx, member)
        b = st.columns(4)
        for col, (label, text) in zip(b, rv.LABEL_BUTTONS.items()):
            col.button(f"All {text}", key=f"dup_{view.id}_{label}", on_click=_group_action, args=(view.id, label),
                       disabled=not ctx.annotator, help="Gives every member your label (each one undoable)")
        b[2].button("Undo my group label", key=f"dup_{view.id}_undo", on_click=_group_action, args=(view.id, "undo"),
                    disabled=not ctx.annotator)
        b[3].button("Not duplicates", key=f"dup_{view.id}_dismiss", on_click=_group_action, args=(view.id, "dismiss"),
                    disabled=not ctx.annotator or not ctx.can("adjudicate"),
                    help="Remembered: these memes are never grouped together again (reviewers and admins)")
        params = view.params
        st.caption(f"found with threshold {params.get('threshold')} (fraction of differing hash bits)"
                   + (f", CLIP embeddings {params['embedding']}" if params.get("embedding") else ""))


with tab_groups:
    with db.read_scope(ctx.settings.db_url) as session:
        views = duplicates.group_views(session)
    with st.expander("Find near-duplicates", expanded=not views):  # open while there is nothing else to show
        lo, hi = nd.THRESHOLD_RANGE
        c = st.columns([2, 2, 1])
        threshold = c[0].slider("Threshold (fraction of differing hash bits)", lo, hi, nd.DEFAULT_THRESHOLD, 0.01,
                                key="dup_threshold", help="Reposts measured at ≤ 0.19, different memes at ≥ 0.30.")
        use_embeddings = c[1].checkbox("Use cached CLIP image embeddings as a second signal", value=True,
                                       key="dup_use_embeddings")
        if c[2].button("Find near-duplicates", type="primary", key="dup_run"):
            with db.read_scope(ctx.settings.db_url) as session:
                ids = catalog.image_ids(session, "all")
            summary = ui.run_job_widget(ctx, HashStep(), ids, batch_size=HASH_BATCH, workers=os.cpu_count() or 1,
                                        key="dup_job")
            if summary is not None and summary.status != "failed":
                try:
                    with heavy_job_lock(ctx.settings.artefacts_dir):  # regroup holds no transaction while it computes
                        result, saved = nd.regroup(ctx.settings.db_url, nd.GroupingParams(threshold, use_embeddings),
                                                   actor=ctx.actor)
                    st.success(f"Grouped {result.n_hashes} memes in {result.seconds:.2f} s: {saved.describe()}.")
                except JobBusy as exc:
                    st.warning(ui.md_escape(str(exc)))
            with db.read_scope(ctx.settings.db_url) as session:
                views = duplicates.group_views(session)  # the groups just found
    only_conflicts = st.checkbox("Only groups whose members are labeled differently", key="dup_only_conflicts")
    shown = [v for v in views if v.conflict] if only_conflicts else views
    if not views:
        st.info("No near-duplicate groups yet: press **Find near-duplicates** in the box above "
                "(or run `python -m workbench duplicates`).")
    n_pages = max(1, -(-len(shown) // PAGE_SIZE))
    page = st.number_input("Page", 1, n_pages, 1, key="dup_page") - 1
    st.caption(f"{len(shown)} groups · {sum(v.conflict for v in views)} with conflicting labels · "
               f"page {page + 1} of {n_pages}")
    for view in shown[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]:
        show_group(view)

with tab_audit:
    st.caption("cleanlab's Datalab over the labeled memes: label issues (on out-of-fold probabilities of the "
               "TF-IDF baseline or a head, when they cover every labeled meme), near-duplicates and outliers (on "
               "cached embeddings) and class imbalance. Lower scores are worse.")
    with db.read_scope(ctx.settings.db_url) as session:
        learned = [r for r in outcomes.list_runs(session) if r.kind in data_audit.OUT_OF_FOLD_KINDS]
        kinds = sorted({s.kind for s in embedding_sets(session)})
    c = st.columns([3, 1, 1])
    runs = c[0].multiselect("Out-of-fold runs (empty: every learned run that covers all labels)",
                            [r.id for r in learned], format_func=lambda i: next(r.title for r in learned if r.id == i),
                            key="audit_runs")
    kind = c[1].selectbox("Embeddings", ["(default)", *kinds], key="audit_kind")
    if c[2].button("Run the audit", key="audit_run"):
        try:
            with st.spinner("cleanlab Datalab…"):  # in its own process; no transaction open here meanwhile
                state["audit"] = data_audit.run_audit_isolated(ctx.settings.db_url, runs or None,
                                                               None if kind == "(default)" else kind).to_dict()
        except data_audit.AuditError as exc:
            state.pop("audit", None)
            st.warning(ui.md_escape(str(exc)))
    audit = state.get("audit")
    if audit:
        used = ", ".join(f"#{r}" for r in audit["prob_runs"]) or "none"
        st.caption(ui.md_escape(f"{audit['n_images']} labeled memes · embeddings: {audit['embedding'] or 'none'} · "
                                f"out-of-fold runs: {used}"))
        for note in audit["notes"]:
            st.info(ui.md_escape(note))
        st.dataframe(pd.DataFrame(audit["summary"]), hide_index=True)
        for issue_type, rows in audit["issues"].items():
            flagged = sum(r["is_issue"] for r in rows)
            with st.expander(f"{issue_type}: {flagged} flagged among the {len(rows)} worst"):
                st.dataframe(pd.DataFrame(rows), hide_index=True)
