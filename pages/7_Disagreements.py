"""Disagreements: run A vs run B against the human labels (2x2 with the McNemar p-value),
label-error candidates where both runs agree against the human, and a queue of suspected
label issues — each meme as a card with quick relabel buttons."""

from workbench import ui

ctx = ui.bootstrap("Disagreements", "⚖️")

import altair as alt  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from workbench.analysis import outcomes, review  # noqa: E402
from workbench.store import db  # noqa: E402
from workbench.store.labels import LabelError, add_label  # noqa: E402
from workbench.ui.text import plural  # noqa: E402

PAGE_SIZE = 5
LABEL_BUTTONS = {"toxic": "🟥 toxic", "non_toxic": "🟩 non_toxic"}
state = st.session_state


def _tips(*fields: str) -> list:
    """Tooltip channels as objects: Altair turns shorthand strings into channels through a
    slow schema lookup (~50 ms each), which dominated this page's rerun time."""
    return [alt.Tooltip(f) for f in fields]

st.title("Disagreements")
with ctx.session() as session:
    runs = outcomes.list_runs(session)
if len(runs) < 1:
    st.info("No model runs yet. Run a model on the Models page (or `python -m workbench predict ...`).")
    st.stop()

titles = {r.id: r.title for r in runs}
ids = list(titles)
if "dis_a" not in state or "dis_b" not in state:  # the defaults cost a query: only on the first load
    with ctx.session() as session:
        default_a, default_b = review.default_pair(session, runs)
    state.setdefault("dis_a", default_a)
    state.setdefault("dis_b", default_b)
pick = st.columns(2)
run_a = pick[0].selectbox("Run A", ids, format_func=titles.get, key="dis_a")
run_b = pick[1].selectbox("Run B", ids, format_func=titles.get, key="dis_b")
if run_a == run_b:
    st.warning("Pick two different runs to compare (the queue below still works).")


@st.cache_resource(show_spinner=False, max_entries=8)
def _pair_table(db_url: str, a: int, b: int, version: tuple[int, ...]) -> review.PairTable:
    """Cached on the data version: a relabel or a new prediction recomputes, paging and clicks do not."""
    with db.session_scope(db_url) as session:
        data_a, data_b = outcomes.load_runs(session, [a, b])
    return review.pair_table(data_a, data_b)


def _relabel(image_id: int, label: str) -> None:
    try:
        with ctx.session() as s:
            add_label(s, image_id, label, ctx.annotator)
        state["dis_flash"] = f"Meme #{image_id} labeled {label} by {ctx.annotator}."
    except LabelError as exc:
        state["dis_flash"] = f"Not saved: {exc}"


def _cam_slot(card: review.Card) -> None:
    """Cached CAM overlays of the card's meme (computing one takes seconds, so it happens on
    the Explain page, linked here); any problem leaves the card intact."""
    try:
        from workbench.explain.cam import cached_cams, overlay, read_cam
        from workbench.store.images import load_rgb
    except ImportError:
        st.caption("CAM view not available in this install.")
        return
    found = cached_cams(ctx.settings.artefacts_dir, card.sha256)
    ui.page_link("pages/8_Explain.py", label="Open on the Explain page" if found else "Compute on the Explain page",
                 icon=":material/visibility:", query_params={"image": str(card.image_id)})
    if not found:
        st.caption("No CAM cached for this meme yet.")
        return
    try:
        path = ui.meme_file(ctx, card.path)
        if path is None:
            raise FileNotFoundError("its stored path is outside the memes folder")
        image = load_rgb(path)
        for request, path in found[:2]:
            st.image(overlay(image, read_cam(path), 0.5), caption=request.describe(), width="stretch")
    except Exception as exc:  # noqa: BLE001 - a broken cache file must not break the review card
        st.caption(ui.md_escape(f"CAM unreadable: {exc}"))


def _prediction(title: str, p: review.CardPrediction) -> None:
    st.markdown(f"**{ui.md_escape(title)}**")
    if p.label is None:
        st.caption("no prediction")
        return
    prob = f" · p(toxic) {p.prob_toxic:.2f}" if p.prob_toxic is not None else ""
    st.text(f"{p.label}{prob}")
    if p.error:
        st.caption("failed:")
        st.text(p.error[:500])
    if p.explanation:
        st.text(p.explanation[:1500])


def show_card(card: review.Card, run_ids: list[int], key: str) -> None:
    """One meme: image, human labels, each run's answer, OCR text, relabel buttons."""
    with st.container(border=True):
        cols = st.columns([1, 1] + [1] * len(run_ids))
        with cols[0]:
            thumb = ui.thumbnail(ctx, card.sha256, card.path)
            if thumb is not None:
                st.image(str(thumb), width="stretch")
            else:
                st.caption("⚠️ file missing or unreadable")
            st.caption(ui.md_escape(f"#{card.image_id} {card.path}"))
        with cols[1]:
            st.markdown(f"**Human: {ui.md_escape(card.consensus or 'unlabeled')}**")
            for annotator, label in card.human_labels:
                st.text(f"{annotator}: {label}")
            b = st.columns(2)
            for col, (label, text) in zip(b, LABEL_BUTTONS.items()):
                col.button(text, key=f"{key}_{card.image_id}_{label}", on_click=_relabel, args=(card.image_id, label),
                           disabled=not ctx.annotator, help="Adds your label (history is kept)")
            if not ctx.annotator:
                st.caption("Enter your name in the sidebar to relabel.")
        for col, run_id, p in zip(cols[2:], run_ids, card.predictions):
            with col:
                _prediction(titles.get(run_id, f"#{run_id}"), p)
        if card.ocr_text:
            st.caption("OCR text")
            st.code(card.ocr_text, language=None)
        with st.expander("Where the model looked (CAM)"):
            _cam_slot(card)


if state.get("dis_flash"):
    st.success(ui.md_escape(state.pop("dis_flash")))  # holds the annotator's name: user text

# Only the open tab runs (the queue may load cleanlab and every learned run's predictions).
tab_pair, tab_queue = st.tabs(["A vs B", "Suspected label issues"], key="dis_view", on_change="rerun")


def pair_view() -> None:
    """Run A vs run B: the 2x2 with McNemar's p, and the memes of one cell as review cards."""
    with ctx.session() as session:
        version = outcomes.data_version(session)
    table = _pair_table(ctx.db_url, run_a, run_b, version)
    counts = table.counts
    mc = table.mcnemar
    event = None
    if mc.n == 0:
        st.info(f"Run A and run B have no labeled meme that both gave a class, so there is nothing to compare "
                f"({counts[review.EXCLUDED]} labeled memes have an answer from one of them only). Pick two runs "
                "that judged the same labeled memes.")
    else:
        st.caption("Right/wrong against the human consensus, on labeled memes both runs answered. "
                   f"{plural(counts[review.EXCLUDED], 'labeled meme')} left out because A or B gave no class.")
        grid = pd.DataFrame([
            {"A": "A right", "B": "B right", "cell": review.CELLS[0], "count": counts[review.CELLS[0]]},
            {"A": "A right", "B": "B wrong", "cell": review.CELLS[1], "count": counts[review.CELLS[1]]},
            {"A": "A wrong", "B": "B right", "cell": review.CELLS[2], "count": counts[review.CELLS[2]]},
            {"A": "A wrong", "B": "B wrong", "cell": review.CELLS[3], "count": counts[review.CELLS[3]]},
        ])
        left, right = st.columns([2, 1])
        with left:
            sel = alt.selection_point(fields=["cell"], name="pair_cell")
            base = alt.Chart(grid).encode(x=alt.X("B:N", title=None), y=alt.Y("A:N", title=None))
            chart = alt.layer(
                base.mark_rect().encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="oranges"), legend=None),
                                        opacity=alt.condition(sel, alt.value(1.0), alt.value(0.6)),
                                        tooltip=_tips("cell:N", "count:Q")).add_params(sel),
                base.mark_text(fontSize=18).encode(text=alt.Text("count:Q")),
            ).properties(height=220)
            event = st.altair_chart(chart, on_select="rerun", key=f"dis_chart_{run_a}_{run_b}", width="stretch")
        with right:
            st.metric("McNemar exact p", f"{mc.pvalue:.4g}")
            st.caption(f"A right & B wrong: {mc.table[0][1]}, A wrong & B right: {mc.table[1][0]} "
                       f"(n = {mc.n}). A small p means the two runs' accuracies really differ.")
            st.dataframe(pd.DataFrame({"cell": list(counts), "memes": list(counts.values())}), hide_index=True)

    options = [*review.CELLS, review.AGREE_WRONG, review.EXCLUDED]
    # keyed per pair: another pair opens on its own default cell
    cell = st.radio("Show", options, index=options.index(review.default_cell(counts)), key=f"dis_cell_{run_a}_{run_b}",
                    format_func=lambda c: f"{c} ({counts[c]})",
                    help="“A and B agree, both differ from human”: candidates for label errors. The page opens "
                         "on them, or on the cell with the most memes when there are none.")
    picked = (event.selection.get("pair_cell") or []) if event else []
    if picked and picked[0].get("cell") in counts:
        cell = picked[0]["cell"]
        st.caption(f"Selected on the chart: {cell}")
    cell_ids = table.cells[cell]
    if not cell_ids:
        st.caption(f"No memes in “{cell}”.")
        return
    n_pages = max(1, -(-len(cell_ids) // PAGE_SIZE))
    page = st.number_input("Page", 1, n_pages, 1, key=f"dis_page_{cell}") - 1
    st.caption(f"{plural(len(cell_ids), 'meme')} · page {page + 1} of {n_pages}")
    with ctx.session() as session:
        shown = review.cards(session, cell_ids[page * PAGE_SIZE:(page + 1) * PAGE_SIZE], [run_a, run_b])
    for c in shown:
        show_card(c, [run_a, run_b], key="pair")


def queue_view() -> None:
    """The suspected-label-issue queue, one meme at a time."""
    st.caption("Memes ranked by how confidently the runs contradict the human label: by cleanlab where a chosen "
               "run has out-of-fold probabilities for every labeled meme (TF-IDF baseline, heads), else by the mean "
               "over runs of their confidence in the other class (p(toxic) when stored, else 1/0 from the label). "
               "Review them one by one: relabel, or keep the human label (adds your confirming label).")
    if "dis_queue_runs" not in state:  # learned runs with complete out-of-fold probabilities first: cleanlab ranks
        with ctx.session() as session:
            state["dis_queue_runs"] = review.default_issue_runs(session, [run_a, run_b])
    q = st.columns([3, 1, 1])
    queue_runs = q[0].multiselect("Runs to use", ids, format_func=titles.get, key="dis_queue_runs")
    min_score = q[1].slider("Minimum score", 0.0, 1.0, 0.5, 0.05, key="dis_min_score")
    hide_mine = q[2].checkbox("Hide memes I labeled", value=True, key="dis_hide_mine",
                              help="Skip memes that already carry your label (reviewed).", disabled=not ctx.annotator)
    with db.read_scope(ctx.settings.db_url) as session:  # cleanlab computes here: no write lock held
        queue = review.label_issue_queue(session, queue_runs, min_score=min_score)
        issues = queue.issues
        if hide_mine and ctx.annotator:
            issues = review.without_reviewed(session, issues, ctx.annotator)
    st.caption(f"Ranking: {queue.method}. {queue.describe()}")
    if not issues:
        st.info("No suspected label issues for these runs at this score.")
        return
    pos = min(state.get("dis_queue_pos", 0), len(issues) - 1)

    def _move(delta: int) -> None:
        state["dis_queue_pos"] = max(0, min(len(issues) - 1, pos + delta))

    nav = st.columns([1, 1, 4])
    nav[0].button("← Previous", key="dis_queue_prev", on_click=_move, args=(-1,), disabled=pos == 0)
    nav[1].button("Next →", key="dis_queue_next", on_click=_move, args=(1,), disabled=pos >= len(issues) - 1)
    issue = issues[pos]
    nav[2].caption(f"Suspect {pos + 1} of {len(issues)} · score {issue.score:.3f} · "
                   f"{issue.n_contradicting} of {issue.n_runs} runs disagree with the human label")
    with ctx.session() as session:
        (card,) = review.cards(session, [issue.image_id], queue_runs)
    st.button(f"Keep human label ({issue.human})", key=f"dis_keep_{issue.image_id}", on_click=_relabel,
              args=(issue.image_id, issue.human), disabled=not ctx.annotator,
              help="Adds your label equal to the human one; the meme then leaves your queue.")
    show_card(card, queue_runs, key="queue")
    with st.expander("Whole queue"):
        st.dataframe(pd.DataFrame([x.to_dict() for x in issues]), hide_index=True)


if tab_pair.open:
    with tab_pair:
        pair_view()
if tab_queue.open:
    with tab_queue:
        queue_view()
