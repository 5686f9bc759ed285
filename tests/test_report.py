"""The HTML report, predictions.csv and the Export page on a real SQLite DB: every run's
metrics are in the report and equal workbench.analysis.outcomes' numbers, model/user text stays
text, zero predictions is said plainly, and 10,000 images keep the report small."""

from __future__ import annotations

import csv
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tests.support.synthetic_runs import Pred, add_run, generate
from workbench.analysis import outcomes
from workbench.analysis.report import render
from workbench.explain import cam as explain
from workbench.store import predictions_csv
from workbench.store.demo_memes import write_sample_memes
from workbench.store.ingest import scan_folder
from workbench.store.labels import add_label
from workbench.store.ocr_texts import save_correction
from workbench.store.schema import Image

PAGES = Path(__file__).resolve().parent.parent / "pages"
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class ReportParser(HTMLParser):
    """Collects tags, and metric cells per run section (strict enough to catch broken markup)."""

    VOID = {"meta", "img", "br", "hr", "input", "link", "rect", "line", "polyline", "text", "path"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.stack: list[str] = []
        self.run: str | None = None
        self.metric: str | None = None
        self.cells: list[str] = []
        self.metrics: dict[str, dict[str, str]] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "section" and (attrs.get("id") or "").startswith("run-"):
            self.run = attrs["id"][4:]
            self.metrics[self.run] = {}
        if tag == "tr" and attrs.get("data-metric"):
            self.metric, self.cells = attrs["data-metric"], []

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag == "tr" and self.metric:
            self.metrics[self.run][self.metric] = self.cells[1]
            self.metric = None

    def handle_data(self, data):
        self.text.append(data)
        if self.metric is not None and self.stack and self.stack[-1] == "td":
            self.cells.append(data)


def parse(html_text: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(html_text)
    parser.close()
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    return parser


@pytest.fixture
def study(settings, session):
    """6 real generated memes, labels, OCR with a <script>, and two runs whose explanations
    carry HTML and a spreadsheet formula."""
    write_sample_memes(settings.memes_dir, n=6, seed=11, size=(160, 120))
    scan_folder(session, settings.memes_dir)
    images = session.query(Image).order_by(Image.id).all()
    ids = [img.id for img in images]
    add_label(session, ids[0], "non_toxic", "анна")  # a human overrides the folder label
    save_correction(session, ids[0], f"OCR {EVIL}", "анна")
    folder_labels = {img.id: ("toxic" if img.folder == "Негативно" else "non_toxic") for img in images}
    human = {**folder_labels, ids[0]: "non_toxic"}
    wrong = {i: ("non_toxic" if lab == "toxic" else "toxic") for i, lab in human.items()}
    run_a = add_run(session, "clip", "clip test", {
        i: Pred(wrong[i] if i in ids[:3] else human[i], prob=0.95 if (wrong[i] if i in ids[:3] else human[i]) == "toxic"
                else 0.05, explanation=f"=HYPERLINK(\"http://x\") {EVIL}") for i in ids},
        model_id="tiny/clip", params={"prompts": {"toxic": [EVIL]}, "threshold": 0.5})
    run_b = add_run(session, "vlm", "vlm test", {
        i: Pred(human[i] if i != ids[1] else wrong[i], explanation="-bad start") for i in ids[:5]},
        model_id="tiny/vlm", params={"system_prompt": "Ты модератор"})
    session.commit()
    return {"ids": ids, "runs": [run_a, run_b], "images": {img.id: (img.path, img.sha256) for img in images}}


def test_report_contains_every_runs_metrics_and_parses(settings, session, study):
    html_text = render.build_report(session, settings)
    parsed = parse(html_text)
    datas = outcomes.load_runs(session, study["runs"])
    assert set(parsed.metrics) == {str(r) for r in study["runs"]}
    for data in datas:
        ev = data.evaluate()
        shown = parsed.metrics[str(data.run.id)]
        for key in ("accuracy", "precision", "recall", "f1", "coverage"):
            assert shown[key] == f"{getattr(ev, key):.3f}", (data.run.id, key)
    assert "roc_auc" in parsed.metrics[str(study["runs"][0])]  # the run with probabilities has curves
    assert "roc_auc" not in parsed.metrics[str(study["runs"][1])]
    assert html_text.count("<svg") == 2
    assert "McNemar" in html_text and "Ты модератор" in html_text  # pairwise test and exact configs
    assert "анна" in html_text  # annotators section
    assert parsed.tags.count("article") == len([1 for _ in re.finditer(r'<article class="card">', html_text)]) > 0


def test_user_and_model_text_stays_text(settings, session, study):
    html_text = render.build_report(session, settings)
    parsed = parse(html_text)
    assert "script" not in parsed.tags and "<script" not in html_text.lower()
    assert "onerror" not in " ".join(t for t in parsed.tags)  # no injected element at all
    assert not re.search(r"<img[^>]+onerror", html_text)
    text = "".join(parsed.text)
    assert EVIL in text  # shown literally: OCR text, explanation and the run config


def test_report_is_self_contained_with_thumbnails_and_cached_cams(settings, session, study):
    # a cached map for the top disagreement's image is shown as an overlay, without a model
    first_path, first_sha = study["images"][study["ids"][0]]
    request = explain.CamRequest("some/clip", "eigencam", dtype="float32")
    explain.write_cam(explain.cam_path(settings.artefacts_dir, first_sha, request),
                      np.linspace(0, 1, 120 * 160, dtype=np.float32).reshape(120, 160), request)
    html_text = render.build_report(session, settings)
    assert html_text.count('src="data:image/jpeg;base64,') >= 3
    assert "EigenCAM (not class-specific)" in html_text
    assert not re.search(r'(src|href)="(?!data:|#)', html_text)  # no external resource


def test_zero_predictions_says_so(settings, session):
    write_sample_memes(settings.memes_dir, n=2, seed=1, size=(64, 64))
    scan_folder(session, settings.memes_dir)
    session.commit()
    html_text = render.build_report(session, settings)
    parse(html_text)
    assert "No predictions yet" in html_text
    assert "<section class=\"run\"" not in html_text


def test_ten_thousand_images_keep_the_report_small(settings, session):
    generate(session, 10_000, 3, seed=4)
    session.commit()
    html_text = render.build_report(session, settings, render.ReportOptions(top_n=20, n_boot=200))
    parsed = parse(html_text)
    assert len(parsed.metrics) == 3
    assert parsed.tags.count("article") == 20
    assert len(html_text.encode()) < 250_000
    for polyline in re.findall(r'points="([^"]*)"', html_text):
        assert len(polyline.split()) <= 201  # curves are thinned


def test_predictions_csv_is_spreadsheet_safe(settings, session, study):
    text = predictions_csv.export_predictions(session)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(predictions_csv.PREDICTION_COLUMNS)
    assert len(rows) == len(study["ids"]) + 5  # one row per image x run
    assert all(r["explanation"][0] not in "=+-@" for r in rows if r["explanation"])
    assert any(r["explanation"].startswith("'=HYPERLINK") for r in rows)
    assert any(r["explanation"] == "'-bad start" for r in rows)
    first = next(r for r in rows if r["filename"] == study["images"][study["ids"][0]][0] and r["run_id"] == str(study["runs"][0]))
    assert first["human_label"] == "non_toxic" and first["model"] == "tiny/clip"
    only_b = predictions_csv.export_predictions(session, [study["runs"][1]])
    assert only_b.count("\n") == 1 + 5


def test_cli_report_and_export_predictions(settings, study, tmp_path, capsys):
    from workbench.cli import main

    out = tmp_path / "out" / "render.html"
    assert main(["report", str(out), "--n-boot", "100"]) == 0
    parse(out.read_text(encoding="utf-8"))
    csv_path = tmp_path / "predictions.csv"
    assert main(["export-predictions", str(csv_path), "--run", str(study["runs"][1])]) == 0
    assert "wrote 5 rows" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "render.txt")]) == 2


@pytest.mark.slow
def test_pdf_when_a_converter_exists(settings, study, tmp_path):
    if render.pdf_converter() is None:
        pytest.skip("no weasyprint or Chromium here")
    pdf = render.report_pdf(settings, render.ReportOptions(n_boot=100))
    assert pdf.startswith(b"%PDF") and len(pdf) > 5_000


def test_export_page(settings, study, clear_streamlit_cache):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGES / "9_Export.py"), default_timeout=60).run()
    assert not at.exception
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download annotations.csv" in labels and "Download predictions.csv" in labels
    assert "Download report (HTML)" in labels


def test_cli_report_computes_cams_for_the_top_disagreements(settings, study, tmp_path):
    from tests.support.tiny_models import tiny_model_dir
    from workbench.cli import main

    # a model that cannot load: the report is still written, without overlays
    out = tmp_path / "no_cams.html"
    assert main(["report", str(out), "--cams", "2", "--model", str(tmp_path / "no-model"), "--n-boot", "50"]) == 0
    assert "No CAM overlay is cached" in out.read_text(encoding="utf-8")
    out = tmp_path / "render.html"
    assert main(["report", str(out), "--n-boot", "50", "--cams", "2", "--model", str(tiny_model_dir("clip"))]) == 0
    html_text = out.read_text(encoding="utf-8")
    parse(html_text)
    assert html_text.count("<figcaption>EigenCAM (not class-specific)") == 2
    assert html_text.count("<figcaption>Grad-CAM on the class prompt") == 2


# ------------------------------------------------------------------ training of learned predictors


def _section(html_text: str, element_id: str) -> str:
    """The markup of the <div>/<section> with this id (up to its matching close)."""
    start = html_text.index(f'id="{element_id}"')
    tag = html_text.rindex("<", 0, start)
    name = html_text[tag + 1 : html_text.index(" ", tag)]
    depth, pos = 0, tag
    for m in re.finditer(rf"<(/?){name}\b", html_text[tag:]):
        depth += -1 if m.group(1) else 1
        if depth == 0:
            pos = tag + m.end()
            break
    return html_text[tag : html_text.index(">", pos) + 1]


def _train_metrics(block: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-train-metric="([^"]+)"><td>[^<]*</td><td>([^<]*)</td>', block))


def test_report_shows_training_metrics_and_per_fold_curves(settings, session):
    import torch
    from sqlalchemy import select

    from tests.support.tiny_models import tiny_model_dir
    from workbench.features.embeddings import EmbedStep, make_embedders
    from workbench.predictors.out_of_fold import read_training_report
    from workbench.predictors.run import build_predictor, run_predictions
    from workbench.runs.runner import run_step
    from workbench.store.db import session_scope

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        samples = write_sample_memes(settings.memes_dir, n=10, size=(96, 96))
        with session_scope(settings.db_url) as s:
            scan_folder(s, settings.memes_dir)
            by_name = {im.original_name: im.id for im in s.scalars(select(Image))}
            for sample in samples:  # OCR text as manual corrections: no OCR engine needed
                save_correction(s, by_name[sample.path.name], sample.caption, "tester")
        ids = sorted(by_name.values())
        clip = str(tiny_model_dir("clip"))
        (image_embedder,) = [e for e in make_embedders("clip", clip, dtype="float32") if e.kind == "clip-image"]
        embedded = run_step(settings.db_url, EmbedStep(image_embedder), ids, memes_dir=settings.memes_dir,
                            lock_dir=settings.artefacts_dir, batch_size=5)
        assert (embedded.status, embedded.failed) == ("done", 0)
        head = build_predictor("head", {"features": "image", "clip_model": clip, "head": "logreg",
                                        "epochs": 7, "folds": 3})
        head_run = run_predictions(settings, head, ids)
        tfidf = build_predictor("text-tfidf", {"folds": 3})
        tfidf_run = run_predictions(settings, tfidf, ids)
    finally:
        torch.set_num_threads(threads)
    assert head_run.status == tfidf_run.status == "done"
    # a head run without a training report (e.g. from another machine) is skipped silently
    orphan = add_run(session, "head", "orphan head", {i: Pred("toxic", prob=0.9) for i in ids}, model_id="x")
    session.commit()

    html_text = render.build_report(session, settings, render.ReportOptions(n_boot=50))
    parse(html_text)
    assert "Training of learned predictors" in html_text
    assert f'id="training-{orphan}"' not in html_text

    head_report = read_training_report(head.fingerprint())
    folds = head_report["metrics"]["folds"]
    assert folds == 3 and len(head_report["curves"]) == 3 * 7
    block = _section(html_text, f"training-{head_run.run_id}")
    svgs = re.findall(r"<svg.*?</svg>", block)
    assert len(svgs) == 3  # train loss, validation loss, validation F1
    for svg in svgs:
        polylines = re.findall(r'<polyline[^>]*points="([^"]*)"', svg)
        assert len(polylines) == folds  # one line per fold ...
        assert all(len(p.split()) == 7 for p in polylines)  # ... one point per epoch
    assert block.count("■ fold") == folds
    shown = _train_metrics(block)
    assert shown["f1"] == f"{head_report['metrics']['f1']:.3f}"
    assert shown["auroc"] == f"{head_report['metrics']['auroc']:.3f}"
    assert shown["accuracy"] == f"{head_report['metrics']['accuracy']:.3f}"
    assert (shown["n"], shown["folds"]) == ("10", "3")
    assert shown["grouping"].startswith("Folds")  # how the folds were split (by near-duplicate group or not)

    tfidf_report = read_training_report(tfidf.fingerprint())
    block = _section(html_text, f"training-{tfidf_run.run_id}")
    assert "<svg" not in block and "no epochs" in block  # TF-IDF: metrics only
    shown = _train_metrics(block)
    assert shown["f1"] == f"{tfidf_report['metrics']['f1']:.3f}"
    assert shown["auroc"] == f"{tfidf_report['metrics']['auroc']:.3f}"
    assert shown["folds"] == str(tfidf_report["metrics"]["folds"])


def test_training_section_is_bounded_escaped_and_absent_without_reports(settings, session, study):
    import json

    from workbench.store.schema import ModelRun

    html_text = render.build_report(session, settings, render.ReportOptions(n_boot=50))
    assert "Training of learned predictors" not in html_text  # no head / TF-IDF run here

    # 7 head runs, each with a long, hostile training report: 12 folds x 2,000 epochs
    directory = settings.artefacts_dir / "training"
    directory.mkdir(parents=True)
    curves = [{"fold": f, "epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0 / e, "val_f1": min(1.0, e / 2000)}
              for f in range(12) for e in range(1, 2001)]
    run_ids = []
    for k in range(7):
        run_id = add_run(session, "head", f"head {k} {EVIL}", {study["ids"][0]: Pred("toxic", prob=0.8)})
        fp = session.get(ModelRun, run_id).fingerprint
        metrics = {"f1": 0.5 + k / 100, "folds": 12, EVIL: EVIL, "nested": {"x": 1}}
        (directory / f"{fp}.json").write_text(json.dumps({"kind": "head", "metrics": metrics, "curves": curves}))
        run_ids.append(run_id)
    session.commit()
    options = render.ReportOptions(n_boot=50, max_training_runs=5, training_points=300)
    html_text = render.build_report(session, settings, options)
    parsed = parse(html_text)
    assert "script" not in parsed.tags and EVIL in "".join(parsed.text)
    section = _section(html_text, "training")
    assert section.count('<div class="training"') == 5 and "2 more trained runs not shown" in section
    assert "2 more folds not drawn" in section  # 10 colours, 10 folds drawn
    for svg in re.findall(r"<svg.*?</svg>", section):
        polylines = re.findall(r'points="([^"]*)"', svg)
        assert len(polylines) == 10
        assert sum(len(p.split()) for p in polylines) <= 300
    assert _train_metrics(_section(html_text, f"training-{run_ids[0]}"))["f1"] == "0.500"
    assert len(section.encode()) < 200_000


# ------------------------------------------------------------------ templates and escaping


HOSTILE = "<script>alert(1)</script>"
TEMPLATES = Path(render.__file__).resolve().parent / "templates"


def test_hostile_text_everywhere_appears_only_escaped(settings, session, study):
    """Annotator names, label notes, run names, model ids, errors, prompts, OCR text and training
    metric names carrying markup are all shown as text: the raw markup never reaches the HTML."""
    import json

    from workbench.store.schema import ModelRun

    ids = study["ids"]
    add_label(session, ids[1], "toxic", f"eve {HOSTILE}", note=f"note {HOSTILE}")
    save_correction(session, ids[1], f"OCR two {HOSTILE}", f"eve {HOSTILE}")
    run_id = add_run(session, "head", f"name {HOSTILE}", {
        ids[0]: Pred("toxic", prob=0.9, explanation=f"why {HOSTILE}"),
        ids[1]: Pred("toxic", error=f"error {HOSTILE}")},
        model_id=f"model {HOSTILE}", params={"system_prompt": f"prompt {HOSTILE}", HOSTILE: [HOSTILE]})
    fingerprint = session.get(ModelRun, run_id).fingerprint
    directory = settings.artefacts_dir / "training"
    directory.mkdir(parents=True)
    (directory / f"{fingerprint}.json").write_text(json.dumps({"metrics": {HOSTILE: HOSTILE, "f1": 0.5}}))
    session.commit()

    html_text = render.build_report(session, settings, render.ReportOptions(n_boot=50))
    parsed = parse(html_text)
    assert "script" not in parsed.tags
    assert HOSTILE not in html_text and "<script" not in html_text.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for shown in (f"eve {escaped}", f"name {escaped}", f"model {escaped}", f"prompt {escaped}", f"error {escaped}",
                  f"OCR two {escaped}", f'data-train-metric="{escaped}"'):
        assert shown in html_text, shown
    text = "".join(parsed.text)
    for shown in (f"eve {HOSTILE}", f"name {HOSTILE}", f"model {HOSTILE}", f"prompt {HOSTILE}", f"error {HOSTILE}"):
        assert shown in text, shown  # the reader still sees the exact text


def test_templates_are_strict_autoescaped_package_data():
    import jinja2

    env = render.environment()
    assert env.autoescape is True and env.undefined is jinja2.StrictUndefined
    assert {"report.html.j2", "macros.html.j2", "report.css"} <= set(env.list_templates())
    for path in TEMPLATES.iterdir():  # nothing opts out of escaping
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"\|\s*safe\b|autoescape\s+false|Markup", source), path.name


def test_a_missing_value_fails_instead_of_rendering_blank(settings, session, study):
    import jinja2

    data = render.report_data(session, settings, render.ReportOptions(n_boot=50))
    template = render.environment().get_template("report.html.j2")
    parse(template.render(data))
    del data["run_sections"][0]["eval"]["n_covered"]
    with pytest.raises(jinja2.UndefinedError):
        template.render(data)


def test_line_chart_macro_escapes_labels_and_stays_on_one_line():
    from workbench.analysis.report.svg import line_chart

    chart = line_chart([([0.0, 0.5, 1.0], [0.0, 0.25, 1.0]), ([], [])], HOSTILE, f"x {HOSTILE}", "y",
                       y_range=(0.0, 2.0), diagonal=True)
    macros = render.environment().get_template("macros.html.j2").module
    svg = str(macros.line_chart(chart))
    assert "\n" not in svg and svg.startswith("<svg") and svg.endswith("</svg>")
    assert HOSTILE not in svg and svg.count("&lt;script&gt;") == 3  # aria-label, title, x label
    assert re.findall(r'points="([^"]*)"', svg) == ["32.0,188.0 110.0,168.5 188.0,110.0"]
    assert svg.count("<polyline") == 1 and "<line " in svg  # the empty series is skipped
    empty = str(macros.line_chart(line_chart([], "t", "x", "y")))
    assert "no data" in empty and "<polyline" not in empty
