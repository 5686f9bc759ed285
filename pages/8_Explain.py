"""Explain: where CLIP looks. The original meme beside its EigenCAM map (not class-specific)
and a class-specific map (Grad-CAM / LayerCAM on the chosen class prompt), with an opacity
slider. Maps are computed on demand and cached; a batch for a selection runs through the
job runner. Deep link: `/Explain?image=ID`.
"""

from workbench import ui

ctx = ui.bootstrap("Explain", "🔥")

import streamlit as st  # noqa: E402

from workbench.errors import ModelUnavailable  # noqa: E402
from workbench.explain import cam as explain  # noqa: E402
from workbench.models.choices import get_choice  # noqa: E402
from workbench.store import catalog  # noqa: E402

CLASS_NAMES = {"toxic": "toxic", "non_toxic": "neutral"}
MAX_CHOICES = 500
state = st.session_state

st.title("Explain")
st.caption("EigenCAM shows the main pattern CLIP's vision tower reacts to — the same map for every class. "
           "The class map follows the gradient of the image's similarity to the chosen class prompt "
           "(against the other class), so it shows what pushes the meme towards that class.")

# ---- which meme ------------------------------------------------------------------
linked = st.query_params.get("image")
search = st.text_input("Find a meme by file name or text", key="exp_search", max_chars=200).strip()
with ctx.session() as session:
    cards, total = catalog.gallery_page(session, text=search or None, page_size=MAX_CHOICES)
    linked_card = None
    if linked and linked.isdigit():
        linked_card = catalog.image_card(session, int(linked))
if linked_card is not None and all(c.id != linked_card.id for c in cards):
    cards = [linked_card, *cards]
if not cards:
    st.info("No memes match." if search else "No memes yet. Add some on the Data page.")
    st.stop()
ids = [c.id for c in cards]
by_id = {c.id: c for c in cards}
default = ids.index(linked_card.id) if linked_card is not None else 0
image_id = st.selectbox("Meme", ids, index=default, key="exp_image", format_func=lambda i: by_id[i].path,
                        help=f"{total} memes match; the first {MAX_CHOICES} are listed")
card = by_id[image_id]
st.query_params["image"] = str(image_id)

# ---- how to explain --------------------------------------------------------------
c = st.columns([2, 1, 1, 1])
with ctx.session() as session:
    clip_choice = get_choice(session, "clip")  # the project's CLIP (Models page / `models set clip`)
model_id = c[0].text_input("CLIP model (hub id or local folder)", value=clip_choice, key="exp_model",
                           help="Starts from the project's CLIP choice (Models page); another model here is "
                                "for this page only").strip()
dtype = c[1].selectbox("dtype", ("auto", "float32", "bfloat16"), key="exp_dtype",
                       help="auto = bfloat16 on CPUs with native bf16 (much faster), else float32")
method = c[2].selectbox("Class map method", explain.CLASS_METHODS, key="exp_method",
                        format_func=lambda m: explain.METHOD_TITLES[m])
label = c[3].radio("Explain class", list(CLASS_NAMES), key="exp_class", format_func=CLASS_NAMES.get,
                   horizontal=True)
defaults = explain.class_prompts()
with st.expander("Class prompts (one per line; the lines of a class are averaged)"):
    p = st.columns(2)
    prompts = {
        "toxic": p[0].text_area("Toxic", value=defaults["toxic"], key="exp_prompt_toxic", height=160),
        "non_toxic": p[1].text_area("Neutral", value=defaults["non_toxic"], key="exp_prompt_neutral", height=160),
    }
opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="exp_opacity")

try:
    eigen_request = explain.CamRequest.for_class(model_id or clip_choice, "eigencam", dtype=dtype)
    class_request = explain.CamRequest.for_class(model_id or clip_choice, method, label, prompts, dtype=dtype)
except ValueError as exc:
    st.error(ui.md_escape(str(exc)))
    st.stop()

# ---- the maps --------------------------------------------------------------------
path = ui.meme_file(ctx, card.path)
try:
    from workbench.store.images import load_rgb

    if path is None:
        raise FileNotFoundError("its stored path is outside the memes folder")
    image = load_rgb(path)
except Exception as exc:  # noqa: BLE001 - a broken file is shown as such
    st.error(f"Cannot read this meme: {type(exc).__name__}")
    st.stop()

maps = {r: explain.cached_cam(ctx.settings.artefacts_dir, card.sha256, r) for r in (eigen_request, class_request)}
missing = [r for r, m in maps.items() if m is None]
if missing and st.button("Compute explanation", type="primary", key="exp_compute",
                         disabled=not ctx.can("admin"),  # sign-in on: running models is for admins
                         help="Loads the model on first use; the maps are cached for next time"):
    try:
        with st.spinner("Computing…"):
            for r in missing:
                maps[r] = explain.explain(ctx.settings.artefacts_dir, path, r, sha256=card.sha256).cam
    except ModelUnavailable as exc:
        st.error(ui.md_escape(str(exc)))
    except Exception as exc:  # noqa: BLE001 - show the failure, keep the page
        st.error(ui.md_escape(f"Could not compute the map: {type(exc).__name__}: {exc}"))

cols = st.columns(3)
cols[0].image(image, caption="Original", width="stretch")
for col, request in zip(cols[1:], (eigen_request, class_request)):
    cam = maps.get(request)
    title = "EigenCAM" if request.method == "eigencam" else f"{explain.METHOD_TITLES[request.method]} · {CLASS_NAMES[label]}"
    if cam is None:
        col.info(f"{title}: not computed yet.")
    else:
        col.image(explain.overlay(image, cam, opacity), caption=title, width="stretch")
st.caption(f"Model: {ui.md_escape(eigen_request.model)} · {eigen_request.dtype}")

with ctx.session() as session:
    verdicts = catalog.image_predictions(session, image_id)
if verdicts:
    st.subheader("What the runs said")
    st.dataframe([{"run": v.run_id, "model": v.run_name, "label": v.label, "P(toxic)": v.prob_toxic,
                   "explanation": v.explanation or v.error or ""} for v in verdicts], hide_index=True)

# ---- batch -----------------------------------------------------------------------
with st.expander("Batch: cache maps for a selection (job runner)"):
    b = st.columns(3)
    selection = b[0].selectbox("Images", catalog.SELECTIONS, key="exp_batch_sel")
    which = b[1].radio("Map", ("EigenCAM", "class map"), key="exp_batch_which", horizontal=True)
    limit = b[2].number_input("At most", min_value=1, value=100, step=10, key="exp_batch_limit")
    if st.button("Run batch", key="exp_batch_run"):
        with ctx.session() as session:
            batch_ids = catalog.image_ids(session, selection, limit=int(limit))
        step = explain.CamStep(eigen_request if which == "EigenCAM" else class_request, ctx.settings.artefacts_dir)
        ui.run_job_widget(ctx, step, batch_ids, key="exp_batch_job")
