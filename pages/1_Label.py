"""Labeling: one meme at a time. Toxic / Neutral / Skip / Back with the keys 1 / 0 / → / ←.

Deep link: `/Label?image=ID` opens that meme (the gallery links here). The queue
(workbench.analysis.queue_orders) is computed once per (annotator, order, runs, folder, k)
and kept in the session, so labeling does not reshuffle it under the annotator's hands.
With sign-in on or k > 1 it is the team queue: only memes that still need this annotator;
the meme on screen is claimed so others get different ones, and a meme that others
finished meanwhile is skipped.
"""

import time

from workbench import ui

ctx = ui.bootstrap("Label", "🏷️")

import streamlit as st  # noqa: E402

from workbench.analysis import learner, outcomes, queue_orders, suggestions  # noqa: E402
from workbench.errors import PermissionDenied  # noqa: E402
from workbench.store import catalog, labels, ocr_texts, overlap  # noqa: E402
from workbench.ui.review import near_copies_panel  # noqa: E402
from workbench.ui.text import plural  # noqa: E402

LABEL_NAMES = {"toxic": "Toxic", "non_toxic": "Neutral"}
ALL_FOLDERS = "(all folders)"
LOOKAHEAD = 50  # ids re-checked at once when moving on in the team queue
state = st.session_state
annotator = ctx.annotator

# ---- sidebar: queue settings -------------------------------------------------
with ctx.session() as session:
    folder_names = catalog.folders(session)
    k = overlap.labels_per_meme(session)
    team = overlap.team_queue(k)
order = st.sidebar.selectbox("Queue order", queue_orders.ORDERS, format_func=queue_orders.ORDER_TITLES.__getitem__,
                             key="lbl_order")
runs: tuple[int, ...] = ()
if order in queue_orders.SCORED_ORDERS:
    with ctx.session() as session:
        run_infos = outcomes.list_runs(session)
        newest_learner = queue_orders.latest_learner_run(session) if order in queue_orders.LEARNER_ORDERS else None
        default = queue_orders.default_runs(session, order, learner=False)
    titles = {r.id: r.title for r in run_infos}
    # The newest learner run is the default pick: when a refresh finishes, the queue moves to it.
    follow = newest_learner is not None and st.sidebar.checkbox(
        "Rank by the newest learner run", value=True, key="lbl_follow_learner",
        help="The learner refreshes every N labels; the meme on screen stays, the rest re-ranks.")
    if follow:
        st.sidebar.caption(f"Learner run #{newest_learner}")
        runs = (newest_learner,)
    elif order == "disagree":
        ids = list(titles)
        pick_a = st.sidebar.selectbox("Run A", ids, format_func=titles.get, key="lbl_run_a",
                                      index=ids.index(default[0]) if default else 0) if ids else None
        pick_b = st.sidebar.selectbox("Run B", ids, format_func=titles.get, key="lbl_run_b",
                                      index=ids.index(default[1]) if default else min(1, len(ids) - 1)) if ids else None
        runs = (pick_a, pick_b) if pick_a is not None and pick_b is not None and pick_a != pick_b else ()
    else:
        runs = tuple(st.sidebar.multiselect("Runs", list(titles), default=default, format_func=titles.get,
                                            key=f"lbl_runs_{order}"))
    if not runs:
        st.sidebar.caption("Choose the model runs this order uses (A and B must differ)." if order != "likely-toxic"
                           else "No learner run yet: it appears after the first refresh (`python -m workbench "
                                "learn`), or choose runs.")
folder_choice = st.sidebar.selectbox(
    "Folder", [ALL_FOLDERS, *folder_names], key="lbl_folder", format_func=lambda f: f or "(memes root)")
auto_advance = st.sidebar.checkbox("Auto-advance after labeling", value=True, key="lbl_auto")
if st.sidebar.button("New random order" if order == "random" else "Refresh queue", key="lbl_refresh"):
    state["lbl_seed"] = state.get("lbl_seed", 0) + 1
    state.pop("lbl_queue_key", None)
st.sidebar.caption("Keys: **1** toxic · **0** neutral · **→** skip · **←** back (undo)")
folder = None if folder_choice == ALL_FOLDERS else folder_choice

# ---- queue (kept in the session; recomputed when its settings change) ---------
with ctx.session() as session:
    n_present = catalog.count_present(session)
    queue_key = (annotator, order, runs, folder, state.get("lbl_seed", 0), n_present, k, team)
    if state.get("lbl_queue_key") != queue_key:
        old_key = state.get("lbl_queue_key") or (annotator,)
        if old_key[0] != annotator:
            state["lbl_trail"] = []  # Back must never undo another annotator's labels
        keep = state.get("lbl_current")
        old_queue, old_pos = state.get("lbl_queue") or [], state.get("lbl_pos", 0)
        # only the runs changed (a refresh finished) and the meme on screen has not been left: it stays
        on_screen = (keep if len(old_key) == len(queue_key) and old_key[:2] == queue_key[:2]
                     and old_key[3:] == queue_key[3:] and 0 <= old_pos < len(old_queue) and old_queue[old_pos] == keep
                     else None)
        try:
            ordering = queue_orders.build_queue(session, annotator, order, run_ids=list(runs) or None, folder=folder,
                                                seed=state.get("lbl_seed", 0), k=k)
        except ValueError as exc:  # e.g. the disagree order without two runs
            st.sidebar.warning(ui.md_escape(str(exc)))
            ordering = queue_orders.Ordering([])
        queue_now = list(ordering.ids)
        if on_screen is not None and on_screen in queue_now and order in queue_orders.SCORED_ORDERS:
            queue_now.remove(on_screen)  # re-ranked: the meme on screen first, then the new ranking
            queue_now.insert(0, on_screen)
        state["lbl_ordering"], state["lbl_queue"], state["lbl_queue_key"] = ordering, queue_now, queue_key
        # the meme on screen stays on screen in the plain orders; the others start at their top
        state["lbl_pos"] = queue_now.index(keep) if keep in queue_now and order in ("random", "filename") else 0
        state.setdefault("lbl_trail", [])
queue: list[int] = state["lbl_queue"]
ordering: queue_orders.Ordering = state["lbl_ordering"]

# Deep link ?image=ID: jump there once (afterwards the URL just follows the current meme).
linked = st.query_params.get("image")
if linked and linked != state.get("lbl_linked"):
    state["lbl_linked"] = linked
    try:
        target = int(linked)
    except ValueError:
        target = None
        st.warning("The link's image id is not a number; showing the queue instead.")
    if target is not None:
        if target in queue:
            state["lbl_pos"] = queue.index(target)
        else:  # outside the queue: show it now without losing the queue position
            queue.insert(state["lbl_pos"], target)
            state["lbl_pinned"] = target


def _current() -> int | None:
    pos = state["lbl_pos"]
    return queue[pos] if 0 <= pos < len(queue) else None


def _skip_finished() -> None:
    """Team queue: move past memes that no longer need this annotator (others labeled or hold them)."""
    if not team or not annotator:
        return
    with ctx.session() as s:
        while state["lbl_pos"] < len(queue):
            window = queue[state["lbl_pos"]:state["lbl_pos"] + LOOKAHEAD]
            needed = overlap.still_needed(s, window, annotator, k)
            if needed:
                state["lbl_pos"] = queue.index(needed[0], state["lbl_pos"])
                return
            state["lbl_pos"] += len(window)


# ---- actions (callbacks run before the page re-renders) ----------------------
def _context(image_id: int) -> labels.LabelContext:
    """How the meme on screen was chosen and what was shown with it (stored with the label)."""
    shown_id, shown_at, hint, hint_shown = state.get("lbl_shown", (None, None, None, False))
    pinned = image_id == state.get("lbl_pinned")
    hint = hint if shown_id == image_id else None
    return labels.LabelContext(
        order="link" if pinned else order, rank=None if pinned else state["lbl_pos"] + 1,
        score=None if pinned else ordering.scores.get(image_id),
        exploration=False if pinned else image_id in ordering.random_picks,
        suggestion=hint.label if hint else None, suggestion_prob=hint.prob_toxic if hint else None,
        suggestion_shown=bool(hint and hint_shown),
        seconds_spent=round(time.monotonic() - shown_at, 3) if shown_id == image_id and shown_at else None)


def _label(label: str) -> None:
    image_id = _current()
    if image_id is None or not annotator:
        return
    note = state.get(f"lbl_note_{image_id}", "").strip() or None
    try:
        with ctx.session() as s:
            labels.add_label(s, image_id, label, annotator, note, context=_context(image_id))
    except PermissionDenied as exc:
        state["lbl_flash"] = str(exc)
        return
    state["lbl_trail"].append((image_id, True))
    state["lbl_flash"] = f"Labeled #{image_id} as {LABEL_NAMES[label]}."
    learner.maybe_refresh(ctx.settings)  # at N new labels: a background refresh; never waits for it
    if auto_advance:
        state["lbl_pos"] += 1
        _skip_finished()


def _skip() -> None:
    image_id = _current()
    if image_id is None:
        return
    if team and annotator:
        with ctx.session() as s:
            overlap.release(s, image_id, annotator)
    state["lbl_trail"].append((image_id, False))
    state["lbl_pos"] += 1
    state["lbl_flash"] = None
    _skip_finished()


def _back() -> None:
    trail = state["lbl_trail"]
    if not trail:
        state["lbl_pos"] = max(0, state["lbl_pos"] - 1)
        state["lbl_flash"] = None
        return
    image_id, labeled = trail.pop()
    if labeled:
        try:
            with ctx.session() as s:
                undone = labels.undo_last(s, annotator, image_id)
        except PermissionDenied as exc:
            state["lbl_flash"] = str(exc)
            return
        state["lbl_flash"] = f"Undid your label on #{image_id}." if undone else None
    else:
        state["lbl_flash"] = None
    if image_id in queue:
        state["lbl_pos"] = queue.index(image_id)
    else:
        queue.insert(state["lbl_pos"], image_id)


def _restart() -> None:
    state["lbl_pos"] = 0
    state.pop("lbl_queue_key", None)


# ---- page --------------------------------------------------------------------
st.title("Label memes")
with ctx.session() as session:
    mine = labels.labeled_count(session, annotator) if annotator else 0
    anyone = 0 if annotator else labels.labeled_count(session)  # a scan of every label: only when shown
    team_progress = overlap.progress(session, k) if team else None
if n_present == 0:
    st.info("No memes yet. Add some on the Data page (scan the folder, upload, or generate a demo set).")
    ui.page_link("pages/3_Data.py", label="Go to Data", icon=":material/upload_file:")
    st.stop()

if team_progress is not None:
    st.sidebar.markdown(f"**Team progress** — {plural(k, 'label')} per meme")
    st.sidebar.progress(min(1.0, team_progress["labels"] / (n_present * k)),
                        text=f"{team_progress['labels']} of {plural(n_present * k, 'label')} given")
    if team_progress["annotators"]:
        st.sidebar.dataframe([{"annotator": r["annotator"], "labeled": r["labeled"],
                               "share": f"{r['labeled'] / n_present:.0%}"} for r in team_progress["annotators"]],
                             hide_index=True, key="lbl_team_progress")
progress_text = (f"You ({ui.md_escape(annotator)}) labeled {mine} of {n_present}" if annotator
                 else f"{anyone} of {n_present} labeled by anyone")
st.progress(min(1.0, (mine if annotator else anyone) / n_present), text=progress_text)
if not annotator:
    st.warning("Enter your name in the sidebar (Annotator) to label. Labels are stored under that name.")
if state.get("lbl_flash"):
    st.caption(ui.md_escape(state["lbl_flash"]))

image_id = _current()
if image_id is None:
    st.query_params.pop("image", None)
    done_text = "No meme needs your label right now" if team else "End of the queue"
    st.success(f"{done_text} ({plural(len(queue), 'meme')} in this queue). You labeled {mine} of {n_present}.")
    cols = st.columns(2)
    cols[0].button("Back", key="lbl_back", shortcut="Left", on_click=_back, disabled=not state["lbl_trail"])
    cols[1].button("Start over", key="lbl_restart", on_click=_restart)
    st.stop()

with ctx.session() as session:
    meme = catalog.meme_view(session, image_id)
    # The learner's class for this meme is recorded with the label (anchoring is measured
    # against it); the page shows it only when suggestions are on.
    hint = suggestions.suggestion_for(session, image_id, queue_orders.latest_learner_run(session))
    hint_shown = hint is not None and suggestions.suggestions_active(session, k)
    if meme is not None and team and annotator and state.get("lbl_claimed") != image_id:
        overlap.claim(session, image_id, annotator)  # others are given different memes while this one is open
        state["lbl_claimed"] = image_id
if meme is None:
    st.error(f"There is no meme with id {image_id}.")
    st.button("Skip", key="lbl_skip", shortcut="Right", on_click=_skip)
    st.stop()
current, consensus, history, ocr_text, predictions = (meme.current, meme.consensus, meme.history, meme.ocr_text,
                                                     meme.predictions)
st.query_params["image"] = str(image_id)  # the URL always names the meme on screen
if state.get("lbl_shown", (None,))[0] != image_id:  # first shown now: the clock for seconds spent starts
    state["lbl_shown"] = (image_id, time.monotonic(), hint, hint_shown)
else:  # a new learner run meanwhile: record what is shown now
    state["lbl_shown"] = (*state["lbl_shown"][:2], hint, hint_shown)
state["lbl_linked"], state["lbl_current"] = str(image_id), image_id

mine_now = meme.label_of(annotator)
reason = "" if image_id == state.get("lbl_pinned") else ordering.reason(image_id)  # a deep link is outside the order
st.caption(f"Meme {state['lbl_pos'] + 1} of {len(queue)} in this queue · id {image_id}"
           + (f" · {ui.md_escape(reason)}" if reason else ""))
if ordering.unscored:
    st.caption(f"No score from the chosen runs (e.g. no embedding for the learner): "
               f"{plural(ordering.unscored, 'meme')} in this queue, after the scored ones.")
st.text(meme.path)
b = st.columns(4)
b[0].button("Toxic", key="lbl_toxic", shortcut="1", icon=":material/report:", type="primary" if mine_now == "toxic" else "secondary",
            on_click=_label, args=("toxic",), disabled=not annotator, width="stretch")
b[1].button("Neutral", key="lbl_neutral", shortcut="0", icon=":material/sentiment_satisfied:",
            type="primary" if mine_now == "non_toxic" else "secondary",
            on_click=_label, args=("non_toxic",), disabled=not annotator, width="stretch")
b[2].button("Skip", key="lbl_skip", shortcut="Right", on_click=_skip, width="stretch")
b[3].button("Back (undo)", key="lbl_back", shortcut="Left", on_click=_back, width="stretch",
            help="Go back; if you labeled the previous meme, that label is undone.")
if hint_shown:
    prob = "" if hint.prob_toxic is None else f", P(toxic) {hint.prob_toxic:.2f}"
    s_cols = st.columns([3, 1])
    s_cols[0].info(f"Suggestion (learner run #{hint.run_id}): **{LABEL_NAMES[hint.label]}**{prob}. "
                   "Press **A** to accept it, or decide with the usual keys.")
    s_cols[1].button(f"Accept: {LABEL_NAMES[hint.label]}", key="lbl_accept", shortcut="a", on_click=_label,
                     args=(hint.label,), disabled=not annotator, width="stretch")

left, right = st.columns([3, 2], gap="large")
with left:
    path = ui.meme_file(ctx, meme.path)
    if meme.missing or path is None or not path.is_file():
        st.error("The file is missing from the memes folder (moved or deleted since the last scan).")
    else:
        st.image(str(path), width=640)  # large, but capped so a whole meme fits on a laptop screen

with right:
    st.text_input("Note (optional, saved with your next label)", key=f"lbl_note_{image_id}", max_chars=2000)

    st.subheader("Labels")
    if current:
        st.markdown(f"Consensus: **{LABEL_NAMES.get(consensus, consensus)}**")
        st.dataframe([{"annotator": c.annotator, "label": c.label, "since": c.created_at.strftime("%Y-%m-%d %H:%M")}
                      for c in current], hide_index=True)
    else:
        st.caption("Not labeled yet.")
    with st.expander(f"History ({plural(len(history), 'label row')})"):
        st.dataframe([{"annotator": h.annotator, "label": h.label, "note": h.note or "",
                       "at": h.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                       "undone": h.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if h.revoked_at else ""}
                      for h in history], hide_index=True)
    near_copies_panel(ctx, image_id)

    st.subheader("Text on the meme")
    edited = st.text_area("OCR text (edit and save to correct it)", value=ocr_text, key=f"lbl_ocr_{image_id}",
                          height=100, placeholder="No OCR text yet — run OCR on the Run page, or type it here.")
    # Never disabled by "unchanged": the browser commits the typed text together with this click.
    if st.button("Save text", key="lbl_save_text", disabled=not annotator):
        if edited.strip() == ocr_text.strip():
            st.toast("The text is unchanged.")
        else:
            with ctx.session() as session:
                ocr_texts.save_correction(session, image_id, edited, annotator)
            st.toast("Text correction saved.")

# Full width under the meme, verdict first: in the narrow right column the label, P(toxic) and the
# explanation sat behind a horizontal scroll bar.
st.subheader("Models")
if not hint_shown:  # the learner's answer is a suggestion: shown only when suggestions are on
    predictions = [p for p in predictions if p.kind != learner.RUN_KIND]
if predictions:
    failed = any(p.error for p in predictions)
    st.dataframe([{"label": p.label, "P(toxic)": p.prob_toxic, "explanation": p.explanation or "",
                   "run": f"{p.run_name} ({p.kind})", **({"error": p.error or ""} if failed else {})}
                  for p in predictions],
                 hide_index=True, width="stretch", key="lbl_models",
                 column_config={"label": st.column_config.TextColumn(width="small"),
                                "P(toxic)": st.column_config.NumberColumn(format="%.3f", width="small"),
                                "explanation": st.column_config.TextColumn(width="large"),
                                "run": st.column_config.TextColumn(width="medium")})
else:
    st.caption("No model has judged this meme yet.")
