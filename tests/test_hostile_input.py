"""Hostile input: file names that try to escape the memes dir, files that lie about their
type, malformed annotation CSVs, spreadsheet formulas, and markup in OCR text, notes,
annotator names and model explanations. Nothing escapes, nothing half-imports, and every
page shows such text as text."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from workbench.store.annotations import export_annotations, import_annotations
from workbench.store.demo_memes import render_meme
from workbench.store.ingest import scan_folder, store_upload, store_uploads
from workbench.store.labels import add_label, set_setting
from workbench.store.ocr_texts import save_correction
from workbench.store.schema import Image, Label, ModelRun, Prediction

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO_ROOT / "streamlit_app.py", *(REPO_ROOT / "pages").glob("*.py")])


def png_bytes(seed: int = 0, size: tuple[int, int] = (48, 48)) -> bytes:
    buf = io.BytesIO()
    render_meme("тест", seed=seed, size=size).save(buf, "PNG")
    return buf.getvalue()


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


# ---- uploads: names ------------------------------------------------------------------------

HOSTILE_NAMES = [
    ("../../etc/passwd.png", "passwd.png"),
    ("..\\..\\windows\\evil.png", "evil.png"),
    ("/abs/path/meme.png", "meme.png"),
    ("C:\\Users\\x\\meme.png", "meme.png"),
    ("nul\x00byte.png", "nulbyte.png"),
    ("x" * 600 + ".png", None),
    ("мем про кота.png", "мем про кота.png"),
    ("кот 😀🔥.png", "кот 😀🔥.png"),
    ("..png", "meme.png"),
    (".hidden.png", "hidden.png"),
    ("line\nbreak<script>.png", None),
    ("photo.exe", "photo.png"),  # the sniffed format decides the extension
    ("invoice\u202egnp.exe", "invoice_gnp.png"),  # right-to-left override: no spoofed names
    ("👨\u200d👩\u200d👧 семья.png", "👨\u200d👩\u200d👧 семья.png"),
]


@pytest.mark.parametrize(("name", "expected"), HOSTILE_NAMES)
def test_upload_names_are_stored_safely_inside_the_memes_dir(session, settings, name, expected):
    report = store_upload(session, settings.memes_dir, name, png_bytes(hash(name) % 1000))
    session.commit()
    assert report.status == "added", report.reason
    image = session.get(Image, report.image_id)
    stored = settings.memes_dir / image.path
    assert stored.is_file() and stored.resolve().is_relative_to(settings.memes_dir.resolve())
    assert image.path.startswith("uploads/") and ".." not in image.path.split("/")
    assert "\x00" not in image.path and "\n" not in image.path and "\x00" not in image.original_name
    basename = image.path.rsplit("/", 1)[1]
    assert len(basename.encode("utf-8")) <= 120 and not basename.startswith(".")
    if expected is not None:
        assert basename == expected
    # the original name is kept for display (minus NUL)
    assert image.original_name == name.replace("\x00", "")[:1024]
    # nothing else was written anywhere in the memes dir's parent
    assert {p.name for p in settings.memes_dir.parent.iterdir()} <= {"memes", "artefacts", "wb.sqlite3",
                                                                     "wb.sqlite3-wal", "wb.sqlite3-shm"}


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("evil.png", b"<!DOCTYPE html><html><script>alert(1)</script></html>", "HTML"),
    ("evil.png", b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>", "SVG"),
    ("evil.jpg", b"<svg onload=alert(1)>", "SVG"),
    ("evil.gif", b"", "empty"),
    ("evil.webp", b"MZ\x90\x00" + b"\x00" * 200, "not a jpg/png/gif/webp"),
    ("half.png", png_bytes(1)[:200], "png"),
])
def test_content_decides_the_type_and_liars_are_rejected(session, settings, name, data, reason):
    report = store_uploads(session, settings.memes_dir, [(name, data), ("good.png", png_bytes(2))])
    first, second = report.files
    assert first.status == "rejected" and reason.lower() in first.reason.lower(), first.reason
    assert second.status == "added"  # a bad file never stops the batch
    assert count(session, Image) == 1
    assert not list(settings.memes_dir.rglob(name)) and not list(settings.memes_dir.rglob("*.part"))


def test_scan_keeps_unicode_names_and_rejects_liars_on_disk(session, settings):
    folder = settings.memes_dir / "Негативно" / "подпапка 😀"
    folder.mkdir(parents=True)
    (folder / "мем 🔥.png").write_bytes(png_bytes(3))
    (folder / "fake.png").write_bytes(b"<svg onload=alert(1)/>")
    report = scan_folder(session, settings.memes_dir)
    by_name = {f.name: f for f in report.files}
    assert by_name["Негативно/подпапка 😀/мем 🔥.png"].status == "added"
    assert by_name["Негативно/подпапка 😀/fake.png"].status == "rejected"
    assert session.scalar(select(Image.path)) == "Негативно/подпапка 😀/мем 🔥.png"


# ---- annotation CSV imports ----------------------------------------------------------------

@pytest.fixture
def two_memes(session, settings) -> list[str]:
    """Two ingested, unlabeled memes (and one valid file on disk not yet ingested)."""
    folder = settings.memes_dir / "batch"
    folder.mkdir()
    for i, name in enumerate(["a.png", "b.png", "new.png"]):
        (folder / name).write_bytes(png_bytes(10 + i))
    scan_folder(session, settings.memes_dir)
    (folder / "new.png").rename(folder / "later.png")  # on disk, not in the DB
    session.execute(Image.__table__.delete().where(Image.path == "batch/new.png"))
    session.commit()
    return ["batch/a.png", "batch/b.png"]


def _import(session, settings, text: str | bytes, all_or_nothing: bool = True):
    data = text.encode("utf-8") if isinstance(text, str) else text
    return import_annotations(session, settings.memes_dir, data, all_or_nothing=all_or_nothing)


@pytest.mark.parametrize(("csv_text", "imported"), [
    ("filename,label\nbatch/a.png,toxic\nbatch/b.png,non_toxic\n", 2),
    ("\ufefffilename,label\r\nbatch/a.png,toxic\r\nbatch/b.png,non_toxic\r\n", 2),  # BOM + CRLF (Excel)
    ("filename;label\nbatch/a.png;toxic\nbatch/b.png;non_toxic\n", 2),  # semicolons (Russian Excel)
    ("Filename , Label\n batch/a.png , TOXIC \n", 1),  # case and spaces
    ("filename,label\nbatch/a.png,toxic\nbatch/a.png,toxic\n", 1),  # exact duplicate row: harmless
    ("filename,label\n./batch//a.png,toxic\n", 1),  # normalised path
    ("filename,label\nbatch\\a.png,toxic\n", 1),  # Windows separator
    ("filename,label\nbatch/later.png,toxic\n", 1),  # on disk, not yet ingested: ingested now
])
def test_good_csv_variants_import(session, settings, two_memes, csv_text, imported):
    report = _import(session, settings, csv_text)
    assert report.applied and not report.issues, report.issues
    assert report.imported == imported


def test_cp1251_csv_imports(session, settings, two_memes):
    (settings.memes_dir / "batch" / "кот.png").write_bytes(png_bytes(20))
    report = _import(session, settings, "filename,label\nbatch/кот.png,toxic\n".encode("cp1251"))
    assert report.applied and report.imported == 1


BAD_ROWS = [
    ("batch/a.png,evil", "unknown label"),
    ("batch/a.png,", "unknown label"),
    ("../outside.png,toxic", "outside"),
    ("/etc/passwd,toxic", "outside"),
    ("C:\\Windows\\x.png,toxic", "outside"),
    ("batch/../../x.png,toxic", "outside"),
    ("batch/a.png\x00.png,toxic", "outside"),
    ("batch/missing.png,toxic", "no such file"),
    ("=HYPERLINK(\"http://evil\"),toxic", "no such file"),
    ("batch/b.png,toxic\nbatch/b.png,non_toxic", "twice"),
]


@pytest.mark.parametrize(("bad_row", "problem"), BAD_ROWS)
def test_bad_rows_are_reported_per_row_and_nothing_is_half_imported(session, settings, two_memes, bad_row, problem):
    labels_before, images_before = count(session, Label), count(session, Image)
    text = f"filename,label\nbatch/a.png,toxic\n{bad_row}\n"
    report = _import(session, settings, text)
    assert not report.applied and report.imported == 0
    assert any(problem in i.problem for i in report.issues), report.issues
    assert all(i.line >= 3 for i in report.issues)  # the good line 2 is not blamed
    assert (count(session, Label), count(session, Image)) == (labels_before, images_before)
    # the user's other choice: valid rows only
    partial = _import(session, settings, text, all_or_nothing=False)
    assert partial.applied and partial.imported >= 1 and partial.issues
    assert session.scalar(select(Label.label).join(Image).where(Image.path == "batch/a.png")) == "toxic"


@pytest.mark.parametrize("csv_text", ["", "file,lbl\nbatch/a.png,toxic\n", "filename\nbatch/a.png\n",
                                      "\x89PNG\r\n\x1a\n\x00\x00binary"])
def test_missing_columns_or_garbage_reject_the_whole_file(session, settings, two_memes, csv_text):
    report = _import(session, settings, csv_text)
    assert not report.applied and report.issues and count(session, Label) == 0


def test_a_file_that_turns_out_invalid_late_rolls_everything_back(session, settings, two_memes):
    (settings.memes_dir / "batch" / "liar.png").write_bytes(b"<html>not an image</html>")
    report = _import(session, settings, "filename,label\nbatch/a.png,toxic\nbatch/later.png,toxic\n"
                                        "batch/liar.png,toxic\n")
    assert not report.applied and report.imported == 0 and report.ingested == 0
    assert "not a valid image" in report.issues[0].problem
    assert count(session, Label) == 0 and count(session, Image) == 2


def test_symlinks_out_of_the_memes_dir_are_refused(session, settings, two_memes, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(30))
    (settings.memes_dir / "batch" / "link.png").symlink_to(outside)
    (settings.memes_dir / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    for row in ("batch/link.png", "linkdir/outside.png"):
        report = _import(session, settings, f"filename,label\n{row},toxic\n")
        assert not report.applied and "outside" in report.issues[0].problem, report.issues


# ---- exports -------------------------------------------------------------------------------

def test_exports_neutralise_spreadsheet_formulas(session, settings):
    for i, rel in enumerate(["=cmd|' /C calc'!A0.png", "+1+1.png", "-2.png", "@SUM(1).png", "@team/x.png",
                             "plain.png"]):
        target = settings.memes_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png_bytes(40 + i))
    scan_folder(session, settings.memes_dir)
    for image_id in session.scalars(select(Image.id)):
        add_label(session, image_id, "toxic", "anna")
    session.commit()
    lines = export_annotations(session).splitlines()
    assert lines[0] == "filename,label" and len(lines) == 7
    for line in lines[1:]:
        assert not line.lstrip('"').startswith(("=", "+", "-", "@")), line
    assert "plain.png,toxic" in lines


# ---- pages escape stored text --------------------------------------------------------------

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
MD_NOTE = "**bold** [click](http://evil.example) ![t](http://evil.example/t.png)"
RAW_MARKERS = (SCRIPT, IMG, "**bold**", "](http://evil.example")
# Elements that show their strings as plain text (or data), never as markdown/HTML.
TEXT_ELEMENTS = {"text", "code", "text_area", "text_input", "arrow_data_frame", "arrow_table", "json", "selectbox",
                 "multiselect", "deck_gl_json_chart", "vega_lite_chart", "imgs", "empty", "number_input", "toast"}


# Pages known to put the hostile file name / annotator into markdown (escaped): proves the check bites.
SHOWS_HOSTILE_MARKUP = {"1_Label", "2_Gallery"}


@pytest.fixture
def hostile_db(session, settings) -> int:
    """One meme whose name, OCR text, notes, annotator and model outputs are all hostile."""
    folder = settings.memes_dir / "**bold** [click](http://evil.example)"
    folder.mkdir(parents=True)
    (folder / "<img src=x onerror=alert(1)>.png").write_bytes(png_bytes(50, (64, 64)))
    scan_folder(session, settings.memes_dir)
    image_id = session.scalar(select(Image.id))
    who = f"{IMG}**x**"
    add_label(session, image_id, "toxic", who, note=f"{SCRIPT} {MD_NOTE}")
    add_label(session, image_id, "non_toxic", "boris", note=MD_NOTE)
    save_correction(session, image_id, SCRIPT, who)
    run = ModelRun(kind="vlm", model_id=f"{IMG}", name=f"vlm:**bold** {SCRIPT}", params={"prompt": SCRIPT},
                   fingerprint="fp-hostile", status="done")
    session.add(run)
    session.flush()
    session.add(Prediction(run_id=run.id, image_id=image_id, label="toxic", prob_toxic=0.9,
                           explanation=f"{SCRIPT} {MD_NOTE} {IMG}", raw_output=f"{IMG} {MD_NOTE}", extra={}))
    set_setting(session, "last_annotator", who)
    session.commit()
    return image_id


def _strings(message) -> list[str]:  # noqa: ANN001 - a protobuf message
    out: list[str] = []
    for field, value in message.ListFields():
        repeated = getattr(field, "is_repeated", None)
        repeated = repeated if repeated is not None else field.label == field.LABEL_REPEATED
        values = value if repeated else [value]
        for v in values:
            if isinstance(v, str):
                out.append(v)
            elif hasattr(v, "ListFields"):
                out.extend(_strings(v))
    return out


def _rendered_markup(at) -> list[tuple[str, str]]:  # noqa: ANN001
    """(element type, string) for every string that Streamlit renders as markdown/HTML."""
    found = []
    for node in at._tree:
        proto = getattr(node, "proto", None)
        if proto is None or getattr(node, "type", "") in TEXT_ELEMENTS or not hasattr(proto, "ListFields"):
            continue
        found += [(node.type, s) for s in _strings(proto)]
    return found


def run_page(page: Path, image_id: int):
    """AppTest of `page` reached through the entry script (so st.page_link targets resolve)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO_ROOT / "streamlit_app.py"), default_timeout=60)
    at.run()
    if page.name != "streamlit_app.py":
        at.query_params["image"] = str(image_id)
        at.switch_page(page.relative_to(REPO_ROOT).as_posix())
        at.run()
    return at


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_page_shows_hostile_text_as_text(hostile_db, settings, clear_streamlit_cache, page):
    at = run_page(page, hostile_db)
    assert not at.exception, [e.message for e in at.exception]
    rendered = _rendered_markup(at)
    leaks = [(kind, s) for kind, s in rendered if any(m in s for m in RAW_MARKERS)]
    assert not leaks, leaks
    if page.stem in SHOWS_HOSTILE_MARKUP:  # the hostile text did reach markdown, escaped
        assert any("onerror" in s for _, s in rendered), rendered


def test_label_page_shows_the_text_exactly(hostile_db, settings, clear_streamlit_cache):
    """Escaped for markup, but the person still sees the exact text."""
    at = run_page(REPO_ROOT / "pages" / "1_Label.py", hostile_db)
    assert not at.exception
    assert [t.value for t in at.text_area] == [SCRIPT]  # OCR text (the manual correction) verbatim
    assert "<img src=x onerror=alert(1)>.png" in at.text[0].value  # the file path, as text
    frames = [df.value for df in at.dataframe]
    history = next(f for f in frames if "note" in f.columns)
    assert set(history["note"]) == {f"{SCRIPT} {MD_NOTE}", MD_NOTE}
    models = next(f for f in frames if "explanation" in f.columns)
    assert models["explanation"].iloc[0] == f"{SCRIPT} {MD_NOTE} {IMG}"


def test_html_report_and_predictions_export_stay_inert(hostile_db, session, settings):
    """The HTML report escapes every stored text; predictions.csv neutralises formulas."""
    from workbench.analysis.report.render import ReportOptions, build_report
    from workbench.store.predictions_csv import export_predictions

    pred = session.scalar(select(Prediction))
    pred.explanation = "=HYPERLINK(\"http://evil.example\",\"click\") " + SCRIPT
    session.commit()
    html_text = build_report(session, settings, ReportOptions(n_boot=50, n_cam=0))
    assert "<script" not in html_text.lower() and "<img src=x" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text  # present, as text
    rows = export_predictions(session).splitlines()
    assert len(rows) == 2
    assert ",'=HYPERLINK(" in rows[1] or ",\"'=HYPERLINK(" in rows[1], rows[1]


def test_the_app_binds_to_localhost_by_default():
    import tomllib

    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False
