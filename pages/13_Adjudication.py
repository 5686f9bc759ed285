"""Adjudication: memes whose people disagree, one at a time, for a reviewer to decide; the
team's agreement (Cohen's kappa per pair, Krippendorff's alpha overall, per folder, per week);
and, for admins, labels per meme (k) and the users.

A decision is an adjudicated label: it outranks every label in the consensus, so exports,
metrics and the report follow it (workbench.store.adjudication). Reviewers and admins only
when sign-in is on; the library refuses anyone else as well.
"""

from workbench import ui

ctx = ui.bootstrap("Adjudication", "⚖️")

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from workbench.analysis import suggestions  # noqa: E402
from workbench.analysis.agreement import agreement_report  # noqa: E402
from workbench.analysis.dashboard import display_rows  # noqa: E402
from workbench.errors import PermissionDenied  # noqa: E402
from workbench.store import adjudication, catalog, db, labels, overlap, users  # noqa: E402
from workbench.ui.auth import page_requires  # noqa: E402
from workbench.ui.text import plural  # noqa: E402

LABEL_NAMES = {"toxic": "Toxic", "non_toxic": "Neutral"}
state = st.session_state
page_requires(ctx, users.ADJUDICATE)
reviewer = ctx.annotator

st.title("Adjudication")
st.caption("Memes whose labels disagree, once they have their k labels. Your decision outranks every label in "
           "the consensus (export, metrics and report follow it); Undo restores the plain consensus.")
if state.get("adj_flash"):
    st.caption(ui.md_escape(state.pop("adj_flash")))


def _decide(image_id: int, label: str) -> None:
    note = state.get(f"adj_note_{image_id}", "").strip() or None
    try:
        with ctx.session() as s:
            adjudication.adjudicate(s, image_id, label, reviewer, note)
    except (PermissionDenied, ValueError) as exc:
        state["adj_flash"] = str(exc)
        return
    state.setdefault("adj_trail", []).append(image_id)
    state["adj_flash"] = f"Decided #{image_id}: {LABEL_NAMES[label]}."


def _undo() -> None:
    trail = state.get("adj_trail") or []
    if not trail:
        return
    image_id = trail.pop()
    try:
        with ctx.session() as s:
            adjudication.undo_adjudication(s, image_id, reviewer)
    except PermissionDenied as exc:
        state["adj_flash"] = str(exc)
        return
    state["adj_flash"] = f"Undid the decision on #{image_id}; it is back in the queue."


def _skip(image_id: int) -> None:
    state.setdefault("adj_skipped", set()).add(image_id)


@st.cache_resource(show_spinner=False, max_entries=4)
def _disputed(db_url: str, k: int, version: tuple[int, ...]) -> list[adjudication.Conflict]:
    """Memes whose people disagree, cached on the labels' version: deciding, undoing and skipping
    only filter it (a decision or an undo used to rescan every label: 3 s at 20,000 memes)."""
    with db.session_scope(db_url) as session:
        return adjudication.disputed(session, k)


@st.cache_resource(show_spinner=False, max_entries=4)
def _agreement(db_url: str, version: tuple[int, ...]) -> dict:
    """Agreement over people's labels, cached on the labels' version (decisions never change it)."""
    with db.session_scope(db_url) as session:
        return agreement_report(session)


@st.cache_resource(show_spinner=False, max_entries=4)
def _anchoring(db_url: str, version: tuple[int, ...]) -> dict:
    """Anchoring over people's labels, cached on the labels' version like the agreement."""
    with db.read_scope(db_url) as session:
        return suggestions.anchoring(session)


with ctx.session() as session:
    k = overlap.labels_per_meme(session)
    # people's labels and the memes' paths; decisions never change what is cached on it (left out below)
    labels_version = (*labels.label_rows_version(session), *labels.images_fingerprint(session))
    leave_out = adjudication.decided_ids(session) | state.get("adj_skipped", set())
    progress = overlap.progress(session, k, complete=True)
    n_present = catalog.count_present(session)
queue = [c for c in _disputed(ctx.db_url, k, labels_version) if c.image_id not in leave_out]
st.subheader(f"Queue: {plural(len(queue), 'meme')} to decide ({plural(k, 'label')} per meme)")
st.caption(f"{progress['complete']} of {plural(n_present, 'meme')} have their {plural(k, 'label')} from people · "
           + " · ".join(f"{ui.md_escape(r['annotator'])}: {r['labeled']}" for r in progress["annotators"]))
if not reviewer:
    st.warning("Enter your name in the sidebar (Annotator): decisions are stored under it.")
top = st.columns(2)
top[0].button("Undo my last decision", key="adj_undo", on_click=_undo, disabled=not state.get("adj_trail"))
top[1].button("Show skipped again", key="adj_unskip", on_click=lambda: state.pop("adj_skipped", None),
              disabled=not state.get("adj_skipped"))

if queue:
    conflict = queue[0]
    with ctx.session() as session:
        meme = catalog.meme_view(session, conflict.image_id)
        past = adjudication.decisions(session, conflict.image_id)
    votes = " · ".join(f"{LABEL_NAMES[label]} {n}" for label, n in sorted(conflict.votes.items()))
    st.markdown(f"**#{conflict.image_id}** · {ui.md_escape(conflict.path)} · votes: {votes}"
                + (" · **tie**" if conflict.tie else ""))
    b = st.columns(3)
    b[0].button("Toxic", key="adj_toxic", shortcut="1", icon=":material/report:", on_click=_decide,
                args=(conflict.image_id, "toxic"), disabled=not reviewer, width="stretch")
    b[1].button("Neutral", key="adj_neutral", shortcut="0", icon=":material/sentiment_satisfied:", on_click=_decide,
                args=(conflict.image_id, "non_toxic"), disabled=not reviewer, width="stretch")
    b[2].button("Skip", key="adj_skip", shortcut="Right", on_click=_skip, args=(conflict.image_id,), width="stretch")
    left, right = st.columns([3, 2], gap="large")
    with left:
        path = ui.meme_file(ctx, conflict.path)
        if meme is None or meme.missing or path is None or not path.is_file():
            st.error("The file is missing from the memes folder.")
        else:
            st.image(str(path), width=560)
    with right:
        st.text_input("Note (saved with your decision)", key=f"adj_note_{conflict.image_id}", max_chars=2000)
        st.dataframe([{"annotator": a, "label": lab} for a, lab in conflict.labels], hide_index=True,
                     key="adj_labels")
        if meme is not None:
            st.caption("Text on the meme")
            st.text(meme.ocr_text or "—")
            if meme.predictions:
                st.dataframe([{"run": p.run_name, "label": p.label, "P(toxic)": p.prob_toxic,
                               "explanation": p.explanation or ""} for p in meme.predictions], hide_index=True,
                             key="adj_models")
        if past:
            st.caption("Earlier decisions on this meme")
            st.dataframe([{"label": d.label, "reviewer": d.reviewer, "note": d.note or "",
                           "undone": bool(d.revoked_at)} for d in past], hide_index=True, key="adj_past")
else:
    st.success("Nothing to adjudicate: every meme with its k labels has labels that agree, or a decision.")

# ---- agreement -------------------------------------------------------------------------------
st.subheader("Agreement between people")
st.caption("Over people's current labels (not folder/import labels, not decisions). Krippendorff's alpha (nominal) "
           "uses memes that two or more people labeled; a meme's week is the week of its latest label.")
report = _agreement(ctx.db_url, labels_version)
overall = report["overall"]
m = st.columns(3)
m[0].metric("Krippendorff's alpha", "—" if overall["alpha"] is None else f"{overall['alpha']:.3f}")
m[1].metric("Observed agreement", "—" if overall["agreement"] is None else f"{overall['agreement']:.1%}")
m[2].metric("Memes labeled by 2+ people", overall["n_memes"])
if report["pairs"]:
    st.markdown("**Cohen's kappa per pair** (on the memes both labeled)")
    st.dataframe(pd.DataFrame(display_rows(report["pairs"])), hide_index=True, key="adj_pairs")
cols = st.columns(2)
if report["by_folder"]:
    cols[0].markdown("**Per folder**")
    cols[0].dataframe(pd.DataFrame(display_rows(report["by_folder"])), hide_index=True, key="adj_by_folder")
if report["by_week"]:
    cols[1].markdown("**Per week**")
    cols[1].dataframe(pd.DataFrame(display_rows(report["by_week"])), hide_index=True, key="adj_by_week")

st.markdown("**Anchoring: do people follow the learner's suggestion?**")
anchor = _anchoring(ctx.db_url, labels_version)
if anchor["shown"]["n"] or anchor["not_shown"]["n"]:
    st.dataframe(pd.DataFrame(display_rows([
        {"labels": title, "n": anchor[side]["n"], "equal to the learner's class": anchor[side]["rate"],
         "95% CI": "—" if not anchor[side]["ci"] else f"{anchor[side]['ci'][0]:.3f}–{anchor[side]['ci'][1]:.3f}"}
        for side, title in (("shown", "suggestion shown"), ("not_shown", "suggestion not shown"))])),
        hide_index=True, key="adj_anchoring")
    st.caption("A clearly higher share when the suggestion was shown means people follow it (anchoring).")
else:
    st.caption("No labels with the learner's class recorded yet (it is recorded once a learner run exists).")

# ---- team settings (admins) -------------------------------------------------------------------
if ctx.can(users.ADMIN):
    st.subheader("Team")
    new_k = st.number_input("Labels per meme (k): how many different people label each meme", min_value=1,
                            max_value=overlap.MAX_K, value=k, step=1, key="adj_k")
    if st.button("Save labels per meme", key="adj_save_k", disabled=int(new_k) == k):
        with ctx.session() as session:
            overlap.set_labels_per_meme(session, int(new_k), actor=ctx.actor)
        st.rerun()
    with ctx.session() as session:
        hint_setting = suggestions.suggestion_setting(session)
    hint_cols = st.columns(2)
    hint_on = hint_cols[0].toggle("Suggestions on the Label page", value=hint_setting["on"], key="adj_hints",
                                  help="The learner's class and P(toxic); the A key accepts it. Off by default.")
    hint_overlap = hint_cols[1].toggle("Also with overlap (k > 1)", value=hint_setting["in_overlap"],
                                       key="adj_hints_overlap", disabled=not hint_on,
                                       help="With k > 1 people label independently; suggestions stay off unless "
                                            "this is on.")
    if (hint_on, hint_on and hint_overlap) != (hint_setting["on"], hint_setting["in_overlap"]):
        with ctx.session() as session:
            suggestions.set_suggestions(session, hint_on, hint_overlap, actor=ctx.actor)
        st.rerun()
    if ctx.user is not None:
        with ctx.session() as session:
            people = users.list_users(session)
        st.dataframe(people, hide_index=True, key="adj_users")
        with st.form("adj_user_form", clear_on_submit=True):
            c = st.columns([3, 2, 1, 1])
            email = c[0].text_input("Email", key="adj_user_email")
            role = c[1].selectbox("Role", users.ROLES, key="adj_user_role")
            add = c[2].form_submit_button("Add / change")
            remove = c[3].form_submit_button("Remove")
        if add or remove:
            try:
                with ctx.session() as session:
                    if add:
                        users.add_user(session, email, role, actor=ctx.actor)
                    elif not users.remove_user(session, email, actor=ctx.actor):
                        raise ValueError(f"no user {email}")
            except (PermissionDenied, ValueError) as exc:
                st.error(ui.md_escape(str(exc)))
            else:
                st.rerun()
    else:
        st.caption("Users and roles apply when sign-in is on (WORKBENCH_AUTH=oidc); see README, Team labeling.")
