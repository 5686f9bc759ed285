"""Dashboard: metrics of chosen runs against the human consensus, with 95% bootstrap CIs,
confusion heatmaps (click a cell for its memes), ROC/PR/calibration curves, a live
threshold slider, per-folder/source breakdown, latency, and pairwise tests."""

from workbench import ui

ctx = ui.bootstrap("Dashboard", "📊")

import altair as alt  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from workbench.analysis import dashboard, learning_progress, outcomes  # noqa: E402
from workbench.analysis.metrics import DEFAULT_N_BOOT  # noqa: E402
from workbench.analysis.review import cards  # noqa: E402
from workbench.store import db  # noqa: E402

MAX_THUMBS = 24
NO_CELL = "(choose a cell)"
state = st.session_state


def _tips(*fields: str) -> list:
    """Tooltip channels as objects: Altair turns shorthand strings into channels through a
    slow schema lookup (~50 ms each), which dominated this page's rerun time."""
    return [alt.Tooltip(f) for f in fields]


@st.cache_resource(show_spinner="Computing metrics…", max_entries=8)
def _dashboard(db_url: str, run_ids: tuple[int, ...], version: tuple[int, ...], n_boot: int,
               seed: int, random_only: bool) -> dashboard.Dashboard:
    """Cached on the data version: a relabel or a new prediction recomputes, a widget change does not."""
    with db.read_scope(db_url) as session:  # reads only: no write lock while the bootstrap runs
        return dashboard.dashboard(session, run_ids, n_boot=n_boot, seed=seed, random_only=random_only)


@st.cache_resource(show_spinner=False, max_entries=4)
def _learning(db_url: str, version: tuple[int, ...]) -> dict:
    """The learning curve, the toxic memes still unlabeled and how labels were chosen."""
    with db.read_scope(db_url) as session:
        return learning_progress.learning_history(session)


@st.cache_resource(show_spinner=False, max_entries=4)
def _agreement(db_url: str, version: tuple[int, ...]) -> dict:
    with db.read_scope(db_url) as session:
        return outcomes.annotator_agreement(session)


def table(rows: list[dict]) -> list[dict]:
    """Every table's numbers alike: 3 decimals (p-values 3 significant digits), '—' where undefined."""
    return dashboard.display_rows(rows)


def _cell_key(run_id: int, human: str, answer: str) -> str:
    return f"{run_id}|{human}|{answer}"


st.title("Dashboard")
with ctx.session() as session:
    runs = outcomes.list_runs(session)
    version = outcomes.data_version(session)
if not runs:
    st.info("No model runs yet. Run a model on the Models page (or `python -m workbench predict ...`).")
    st.stop()

titles = {r.id: r.title for r in runs}
top = st.columns([3.4, 1, 1, 1.4])
chosen = top[0].multiselect("Runs", list(titles), default=dashboard.default_runs(runs), format_func=titles.get,
                            key="dash_runs", help="Opens with the newest run of each kind.")
n_boot = top[1].number_input("Bootstrap resamples", 100, 10_000, DEFAULT_N_BOOT, step=100, key="dash_n_boot")
seed = top[2].number_input("Seed", 0, 2**31 - 1, 0, key="dash_seed")
random_only = top[3].checkbox("Random picks only", key="dash_random_only",
                              help="Metrics over the memes chosen at random only (random order, exploration picks, "
                                   "folders, imports): unbiased when most labels came from model-ranked queues.")
if not chosen:
    st.info("Choose at least one run.")
    st.stop()

dash = _dashboard(ctx.db_url, tuple(chosen), version, int(n_boot), int(seed), bool(random_only))
if not any(d.true.max(initial=-1) >= 0 for d in dash.datas):
    st.warning("No labeled images yet: metrics need human labels (Label page, or folder labels from a scan).")
if dash.choice is not None and dash.choice.total:
    note = ("Metrics over labels chosen at random only. " if dash.random_only else "") + dash.choice.describe()
    (st.warning if dash.choice.mostly_active and not dash.random_only else st.caption)(ui.md_escape(note))

st.subheader("Metrics (95% bootstrap CI)")
st.caption("Toxic is the positive class. Accuracy, precision, recall and F1 are computed on the *covered* images "
           "(human label and a toxic/non_toxic answer); **coverage** says how many labeled images that is, and "
           "**accuracy_strict** counts unknown / failed / missing answers as wrong. Nothing is dropped silently: "
           "the counts are in the table.")
st.dataframe(pd.DataFrame(table(dash.metrics_rows)).set_index("run_id"), width="stretch")

# --- confusion heatmaps --------------------------------------------------------------
st.subheader("Confusion matrices")
st.caption("Rows: human consensus. Columns: the run's answer; “no class” = unknown, failed or not predicted. "
           "Click a cell (or pick it below) to list its memes.")
conf = pd.DataFrame(dash.confusion_rows)
cell = alt.selection_point(fields=["run_id", "human", "answer"], name="cell")
base = alt.Chart().encode(
    x=alt.X("answer:N", title="run says", sort=["toxic", "non_toxic", outcomes.NO_CLASS]),
    y=alt.Y("human:N", title="human", sort=["toxic", "non_toxic"]),
)
rect = base.mark_rect().encode(
    color=alt.Color("count:Q", scale=alt.Scale(scheme="blues"), legend=None),
    opacity=alt.condition(cell, alt.value(1.0), alt.value(0.6)),
    tooltip=_tips("run:N", "human:N", "answer:N", "outcome:N", "count:Q"),
).add_params(cell)
text = base.mark_text(fontSize=16).encode(text=alt.Text("count:Q"))
heatmap = alt.layer(rect, text, data=conf).properties(width=210, height=150).facet(
    column=alt.Column("run:N", title=None))
event = st.altair_chart(heatmap, on_select="rerun", key="dash_confusion")

picked = [p for p in (event.selection.get("cell") or []) if "run_id" in p] if event else []
cell_options = [NO_CELL] + [_cell_key(c["run_id"], c["human"], c["answer"]) for c in dash.confusion_rows]


def _cell_label(key: str) -> str:
    if key == NO_CELL:
        return key
    run_id, human, answer = key.split("|")
    n = next(c["count"] for c in dash.confusion_rows
             if c["run_id"] == int(run_id) and c["human"] == human and c["answer"] == answer)
    return f"{titles[int(run_id)]} · human {human} · run {answer} ({n})"


choice = st.selectbox("Show memes of", cell_options, format_func=_cell_label, key="dash_cell")
if picked:
    choice = _cell_key(int(picked[0]["run_id"]), picked[0]["human"], picked[0]["answer"])
if choice != NO_CELL:
    run_id, human, answer = choice.split("|")
    ids = outcomes.cell_image_ids(dash.data(int(run_id)), human, answer)
    st.caption(ui.md_escape(f"{_cell_label(choice)} — showing {min(len(ids), MAX_THUMBS)} of {len(ids)}"))
    with ctx.session() as session:
        shown = cards(session, ids[:MAX_THUMBS], [int(run_id)])
    cols = st.columns(6)
    for k, c in enumerate(shown):
        with cols[k % 6]:
            thumb = ui.thumbnail(ctx, c.sha256, c.path)
            if thumb is not None:
                st.image(str(thumb), width="stretch")
            else:
                st.caption("⚠️ file missing")
            p = c.predictions[0]
            st.caption(ui.md_escape(f"#{c.image_id} {c.path.rsplit('/', 1)[-1][:40]}"))
            st.caption(ui.md_escape(f"p(toxic)={p.prob_toxic:.2f}" if p.prob_toxic is not None else "no probability"))

# --- curves --------------------------------------------------------------------------
prob_runs = [d.run.title for d in dash.datas if dash.evaluations[d.run.id].has_prob]
if prob_runs:
    st.subheader("ROC and precision-recall")
    left, right = st.columns(2)
    diag = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(strokeDash=[4, 4], color="gray").encode(
        x=alt.X("x:Q"), y=alt.Y("y:Q"))
    roc = alt.Chart(pd.DataFrame(dash.roc_rows)).mark_line().encode(
        x=alt.X("fpr:Q", title="false positive rate"), y=alt.Y("tpr:Q", title="true positive rate"),
        color=alt.Color("run:N", legend=alt.Legend(orient="bottom")), tooltip=_tips("run:N", "fpr:Q", "tpr:Q", "threshold:Q"))
    left.altair_chart((diag + roc).properties(title="ROC", height=320), width="stretch")
    pr = alt.Chart(pd.DataFrame(dash.pr_rows)).mark_line(interpolate="step-after").encode(
        x=alt.X("recall:Q"), y=alt.Y("precision:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("run:N", legend=alt.Legend(orient="bottom")),
        tooltip=_tips("run:N", "recall:Q", "precision:Q", "threshold:Q"))
    right.altair_chart(pr.properties(title="Precision-recall", height=320), width="stretch")

    st.subheader("Calibration (reliability)")
    calib = alt.Chart(pd.DataFrame(dash.calibration_rows)).mark_line(point=True).encode(
        x=alt.X("mean_prob:Q", title="mean predicted p(toxic)", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("frac_toxic:Q", title="fraction toxic (human)", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("run:N"), tooltip=_tips("run:N", "bin_low:Q", "bin_high:Q", "mean_prob:Q", "frac_toxic:Q", "count:Q"))
    st.altair_chart((diag + calib).properties(height=320), width="stretch")

    st.subheader("Threshold")
    threshold = st.slider("Call toxic when p(toxic) ≥", 0.0, 1.0, 0.5, 0.01, key="dash_threshold")
    st.caption("Metrics of the probabilistic runs at this threshold, on labeled images that have a probability.")
    st.dataframe(pd.DataFrame(table(dash.threshold_rows(threshold))), hide_index=True, width="stretch")
    sweep = alt.Chart(pd.DataFrame(dash.sweep_rows())).mark_line().encode(
        x=alt.X("threshold:Q"), y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1])), color=alt.Color("metric:N"),
        strokeDash=alt.StrokeDash("run:N"), tooltip=_tips("run:N", "metric:N", "threshold:Q", "value:Q"))
    rule = alt.Chart(pd.DataFrame({"threshold": [threshold]})).mark_rule(color="black").encode(x=alt.X("threshold:Q"))
    st.altair_chart((sweep + rule).properties(title="Threshold sweep", height=260), width="stretch")
else:
    st.caption("None of these runs stores probabilities: no ROC / PR / calibration / threshold view.")

# --- breakdowns, latency, pairs ------------------------------------------------------
st.subheader("By folder and source")
by = st.radio("Break down by", ["folder", "source"], horizontal=True, key="dash_by")
rows = dash.folder_rows if by == "folder" else dash.source_rows
if rows:
    shown = [{**{k: v for k, v in r.items() if k != "run_id"}, "accuracy_ci": dashboard.fmt_ci(r["accuracy"], r["accuracy_ci"])}
             for r in rows]
    st.dataframe(pd.DataFrame(table(shown)), hide_index=True, width="stretch")

st.subheader("Latency and failures")
failures = {r["run"]: {"unknown": r["unknown"], "failed": r["failed"], "missing": r["missing"]} for r in dash.metrics_rows}
st.dataframe(pd.DataFrame(table([{**r, **failures[r["run"]]} for r in dash.latency_rows])), hide_index=True,
             width="stretch")
lat = pd.DataFrame(dash.latency_rows)
if lat["mean_ms"].notna().any():
    st.altair_chart(alt.Chart(lat.dropna(subset=["mean_ms"])).mark_bar().encode(
        x=alt.X("mean_ms:Q", title="mean latency (ms)"), y=alt.Y("run:N", title=None),
        tooltip=_tips("run:N", "mean_ms:Q", "p95_ms:Q", "n:Q")), width="stretch")

if dash.pair_rows:
    st.subheader("Run vs run")
    st.caption("Exact McNemar test on the labeled images both runs answered (small p: their accuracies really "
               "differ); Cohen's kappa on every image both answered (agreement beyond chance).")
    st.dataframe(pd.DataFrame(table(dash.pair_rows)), hide_index=True, width="stretch")

st.subheader("Annotators")
if st.toggle("Show annotator agreement", key="dash_agreement",
             help="Agreement and Cohen's kappa of each annotator with the consensus and with each other."):
    agreement = _agreement(ctx.db_url, version)
    if agreement["annotators"]:
        st.caption("People. “vs others” compares each annotator with the consensus of everyone else on the same "
                   "images.")
        st.dataframe(pd.DataFrame(table(agreement["annotators"])), hide_index=True, width="stretch")
    if agreement["pairs"]:
        st.dataframe(pd.DataFrame(table(agreement["pairs"])), hide_index=True, width="stretch")
    system = agreement["system"]
    if system["annotators"]:
        st.caption("System annotators, apart from the people: `folder` (labels from folder names) and `import` "
                   "(annotations.csv), against the consensus and each person.")
        st.dataframe(pd.DataFrame(table(system["annotators"])), hide_index=True, width="stretch")
        if system["pairs"]:
            st.dataframe(pd.DataFrame(table(system["pairs"])), hide_index=True, width="stretch")
    alpha = agreement.get("alpha")  # people only: Krippendorff's alpha overall, per folder, per week
    if alpha and alpha["overall"]["n_memes"]:
        st.caption("Krippendorff's alpha (people only, memes two or more labeled): overall, per folder, per week.")
        st.dataframe(pd.DataFrame(table([{"group": "overall", **alpha["overall"]}]
                                        + [{"group": r.pop("folder"), **r} for r in map(dict, alpha["by_folder"])]
                                        + [{"group": r.pop("week"), **r} for r in map(dict, alpha["by_week"])])),
                     hide_index=True, width="stretch")
    if not agreement["annotators"] and not system["annotators"]:
        st.caption("No labels yet.")

# --- labeling that learns -------------------------------------------------------------
history = _learning(ctx.db_url, version)
if history["curve"] or history["toxic_estimate"]:
    st.subheader("Learner: learning curve and toxic memes still unlabeled")
    estimate = history["toxic_estimate"]
    if estimate:
        st.metric("Toxic memes still unlabeled (estimate)", f"{estimate['expected']:.0f}",
                  help="The sum of the newest learner run's calibrated P(toxic) over the unlabeled memes.")
        st.caption(ui.md_escape(estimate["note"]))
    if history["curve"]:
        curve = pd.DataFrame(history["curve"])
        line = alt.Chart(curve).mark_line(point=True).encode(
            x=alt.X("labels:Q", title="labels the refresh trained on"),
            y=alt.Y("oof_f1:Q", title="out-of-fold F1", scale=alt.Scale(domain=[0, 1])),
            tooltip=_tips("run_id:Q", "labels:Q", "oof_f1:Q", "ci_low:Q", "ci_high:Q", "learner:N"))
        band = alt.Chart(curve).mark_area(opacity=0.2).encode(x="labels:Q", y="ci_low:Q", y2="ci_high:Q")
        st.altair_chart(band + line, width="stretch", key="dash_learning_curve")
        st.caption("Out-of-fold F1 with its 95% bootstrap CI at each learner refresh. The memes behind it were "
                   "mostly chosen by the learner's own queues, so read it as a trend, not as the F1 on the collection.")
