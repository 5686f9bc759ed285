"""Map: a 2-D projection (UMAP; PCA for tiny sets) of a cached embedding set, computed once and
cached per set, coloured by consensus label, a run's right/wrong, near-duplicate group or
label-issue score. Drag a rectangle on the map to see those memes as a grid with relabel buttons.
UMAP runs in a background process; until it is done the page shows a PCA projection at once."""

from workbench import ui

ctx = ui.bootstrap("Map", "🗺️")

import time  # noqa: E402

import altair as alt  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from workbench.analysis import embedding_map as em  # noqa: E402
from workbench.analysis import outcomes  # noqa: E402
from workbench.analysis.duplicates import Member  # noqa: E402
from workbench.features.embeddings import stale_note  # noqa: E402
from workbench.store import db  # noqa: E402
from workbench.store.catalog import image_card  # noqa: E402
from workbench.ui import review as rv  # noqa: E402

GRID_MAX = 24
state = st.session_state

st.title("Embedding map")
rv.flash()
url, artefacts = ctx.settings.db_url, ctx.settings.artefacts_dir
with db.read_scope(url) as session:
    sets, runs = em.embedding_sets(session), outcomes.list_runs(session)
if not sets:
    st.info("No cached embeddings yet: extract them on the Train page (or `python -m workbench embed clip`).")
    st.stop()

titles = {f"{s.kind}:{s.fingerprint}": s for s in sets}
c = st.columns([3, 2, 2])
emb_set = titles[c[0].selectbox("Embedding set", list(titles), format_func=lambda k: titles[k].title, key="map_set")]
colour_by = c[1].selectbox("Colour by", em.COLOUR_BY, key="map_colour")
run_titles = {r.id: r.title for r in runs}
run_id = None
if colour_by in ("run right/wrong", "label-issue score") and runs:
    run_id = c[2].selectbox("Run", list(run_titles), format_func=run_titles.get, key="map_run")
with ctx.session() as session:
    if note := stale_note(session, emb_set.kind, emb_set.fingerprint):
        st.warning(ui.md_escape(note))  # some points sit where an older OCR text put them



@st.fragment(run_every=2.0)
def _rerun_when_done(job: em.MapJob) -> None:
    """Polls the background UMAP; the whole page reruns (and shows it) once it is done."""
    if job.done():
        st.rerun()


def _compute() -> em.MapJob | None:
    """PCA of a small set here and now (cached); else UMAP started in the background."""
    if emb_set.images < em.UMAP_MIN_POINTS:
        em.compute_map(url, artefacts, emb_set)
        return None
    return em.start_umap(url, artefacts, emb_set)


with db.read_scope(url) as session:
    data = em.cached_map(session, artefacts, emb_set)
preview = False
if data is None or not data.current:
    job = em.map_job(url, artefacts, emb_set)
    failed = job.error() if job is not None else None
    try:
        if failed:
            st.warning(ui.md_escape(f"UMAP failed: {failed}"))
            job = _compute() if st.button("Compute the map again", key="map_compute", type="primary") else None
        elif data is None and job is None:
            job = _compute()  # no map yet: start it without a click
        elif data is not None and job is None:
            st.warning("This map is older than the embedding set (memes were added or re-embedded since). "
                       "Recompute it to include them.")
            if st.button("Recompute the map", key="map_compute", type="primary",
                         help="UMAP runs in a background process (about a minute for 10,000 memes on two cores); "
                              "the result is cached."):
                job = _compute()
    except em.MapError as exc:
        st.warning(ui.md_escape(str(exc)))
    if job is not None and not job.done():
        st.info(f"UMAP is being computed in a background process ({time.monotonic() - job.started:.0f} s so far; "
                "about a minute for 10,000 memes). " + ("Meanwhile: the older map below. " if data else
                                                        "Meanwhile: a PCA projection. ")
                + "The page shows UMAP as soon as it is ready.")
        _rerun_when_done(job)
        if data is None:
            data, preview = job.preview, True
    else:
        with db.read_scope(url) as session:
            data = em.cached_map(session, artefacts, emb_set)
if data is None:
    st.stop()

with db.read_scope(url) as session:
    if colour_by in ("run right/wrong",) and run_id is None:
        st.info("No model runs yet: colouring by consensus label.")
        colour_by = "consensus label"
    colours = em.colour_values(session, data.image_ids, colour_by, run_id)
frame = pd.DataFrame({"x": data.xy[:, 0], "y": data.xy[:, 1], "image_id": data.image_ids, "value": colours})
if colour_by == "label-issue score":
    color = alt.Color("value:Q", title="score", scale=alt.Scale(scheme="reds", domain=[0, 1]))
elif colour_by == "duplicate group":
    frame["value"] = frame["value"].where(frame["value"] != "", "none")
    color = alt.condition("datum.value == 'none'", alt.value("#cccccc"), alt.Color("value:N", legend=None))
else:
    palette = {"toxic": "#d62728", "non_toxic": "#2ca02c", "unlabeled": "#bbbbbb",
               "right": "#2ca02c", "wrong": "#d62728", "no verdict": "#bbbbbb"}
    present = sorted(set(colours), key=list(palette).index)
    color = alt.Color("value:N", title=colour_by,
                      scale=alt.Scale(domain=present, range=[palette[v] for v in present]))
region = alt.selection_interval(name="region", encodings=["x", "y"])
chart = (alt.Chart(frame).mark_circle(size=28, opacity=0.75)
         .encode(x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None), color=color,
                 tooltip=[alt.Tooltip("image_id:Q"), alt.Tooltip("value", title=colour_by)])
         .add_params(region).properties(height=560))
how = "a preview until UMAP is ready" if preview else f"{data.seconds:.1f} s to compute, cached"
st.caption(f"{len(frame)} memes · {data.method.upper()} ({how}) · drag a rectangle to see those memes")
event = st.altair_chart(chart, on_select="rerun", key="map_chart", width="stretch")

picked = (event.selection.get("region") or {}) if event else {}
if picked.get("x") and picked.get("y"):
    state["map_region"] = {"x": list(picked["x"]), "y": list(picked["y"])}
box = state.get("map_region")
if box:
    ids = em.points_in_box(data, box["x"], box["y"])
    st.subheader(f"{len(ids)} memes in the selected region" + (f" (first {GRID_MAX})" if len(ids) > GRID_MAX else ""))
    with db.read_scope(url) as session:
        cards = [card for i in ids[:GRID_MAX] if (card := image_card(session, i)) is not None]
    members = [Member(card.id, card.path, card.sha256, False, card.label, [], None, None) for card in cards]
    rv.meme_grid(ctx, members, key="map")
