"""OCR with real Tesseract on generated memes (white outlined Cyrillic captions on noisy
backgrounds, known text): accuracy, what is stored, the easyocr-without-weights path,
the CLI and the Run page. Real memes in ../shared: tests/test_ocr_real.py (slow)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from rapidfuzz.distance import Levenshtein
from sqlalchemy import select

from workbench.cli import main
from workbench.errors import ModelUnavailable
from workbench.ocr import Word, make_engine
from workbench.ocr.accurate import AccurateEngine, pick_reading, reading_order
from workbench.ocr.metrics import cer, edit_distance, mean_cer, normalise
from workbench.ocr.preprocess import outlined_text_mask, upscale, white_text_mask
from workbench.ocr.step import OcrStep
from workbench.ocr.tesseract import TesseractEngine, is_text_line
from workbench.runs.runner import run_step
from workbench.store.db import session_scope
from workbench.store.demo_memes import caption_set, render_meme, write_sample_memes
from workbench.store.images import load_rgb
from workbench.store.ingest import scan_folder
from workbench.store.ocr_texts import best_texts, save_correction
from workbench.store.schema import Image, Job, OcrResult

PAGE = Path(__file__).resolve().parent.parent / "pages" / "4_Run.py"


@pytest.fixture(scope="module")
def captions(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[PILImage.Image, str]]:
    """16 generated memes (seed 3: not the set the pipeline was tuned on) with their captions."""
    folder = tmp_path_factory.mktemp("captions")
    return [(load_rgb(m.path), m.caption) for m in write_sample_memes(folder, n=16, seed=3)]


def _ingest(settings, n: int, seed: int = 0) -> list[int]:
    write_sample_memes(settings.memes_dir, n=n, seed=seed)
    with session_scope(settings.db_url) as session:
        scan_folder(session, settings.memes_dir)
        return list(session.scalars(select(Image.id).order_by(Image.id)))


@pytest.mark.parametrize(("hyp", "ref", "expected"), [
    ("кот", "кот", 0.0),
    ("КОТ", "кот", 0.0),  # case does not count
    ("ЁЖ\nспит", "еж спит", 0.0),  # ё as е, line breaks as spaces
    ("кит", "кот", 1 / 3),
    ("", "кот", 1.0),
    ("кот!!", "кот", 2 / 3),  # junk read from the picture counts
])
def test_cer_table(hyp: str, ref: str, expected: float) -> None:
    assert cer(hyp, ref) == pytest.approx(expected)


def test_edit_distance_and_corpus_cer() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert normalise("  Пошёл \n ВОН ") == "пошел вон"
    assert mean_cer([("аб", "аб"), ("", "вгде")]) == pytest.approx(4 / 6)  # weighted by reference length


def test_cer_is_rapidfuzz_levenshtein_per_reference_character() -> None:
    rng = random.Random(0)
    alphabet = "кот кит ёж ЕЖ!.\n"
    for _ in range(300):
        hyp, ref = ("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(2))
        h, r = normalise(hyp), normalise(ref)
        if not r:
            continue
        assert cer(hyp, ref) == Levenshtein.distance(h, r) / len(r)
        if len(h) <= len(r):  # the reference is the longer string: CER is rapidfuzz's normalized distance
            assert cer(hyp, ref) == pytest.approx(Levenshtein.normalized_distance(h, r))


def test_default_pipeline_reads_generated_captions(captions) -> None:
    """Measured on 60 generated memes (bench/ocr.py): raw Tesseract CER 0.35, the
    research two-pass baseline 0.16-0.31, this pipeline 0.014. 0.08 is the issue's goal
    for synthetic captions and leaves room for other Tesseract builds."""
    default, raw = TesseractEngine(), TesseractEngine(passes=("raw",))
    pairs = [(default.read(im).text, caption) for im, caption in captions]
    raw_pairs = [(raw.read(im).text, caption) for im, caption in captions]
    assert mean_cer(pairs) <= 0.08, pairs
    assert mean_cer(pairs) < mean_cer(raw_pairs) / 3


@pytest.mark.parametrize(("line", "kept"), [
    ("СЛОВА НЕ ДАВАЛИ", True),
    ("ТЫ", True),
    ("Я", False),  # one letter: a speck or a letter fragment far more often than a caption
    ("= |", False),
    ("$44 |.", False),
    ("ХОХОЛЕДЕТ!!!", True),  # 9 letters of 12 characters: 75 % >= 60 %
    ("тг: .", False),  # a faint watermark's remains: 2 letters of 4 characters
    ("1 500 Р", False),  # mostly digits: dropped (a price line is not caption text)
])
def test_is_text_line(line: str, kept: bool) -> None:
    words = [Word(t, 90.0, (0, 0, 1, 1)) for t in line.split()]
    assert is_text_line(words, min_letters=2, min_letter_share=0.6) is kept


def test_pick_reading_prefers_what_renderings_agree_on() -> None:
    """A confident misreading from one rendering loses to the text two others agree on;
    readings without letters never win."""
    def words(text: str, conf: float) -> list:
        return [Word(t, conf, (0, 0, 1, 1)) for t in text.split()]

    agreed = words("ХОХОЛ ЕДЕТ", 60)
    picked = pick_reading([words("ХОХОЛ ЕДЕТ!", 55), words("ЮЮ ЕЕТ", 95), agreed, words("|| —", 99)])
    assert " ".join(w.text for w in picked) in ("ХОХОЛ ЕДЕТ", "ХОХОЛ ЕДЕТ!")
    assert pick_reading([words("|| —", 99), []]) == []
    assert pick_reading([words("кот", 40)]) == words("кот", 40)  # a single reading is taken as it is


def test_accurate_engine_reads_generated_captions(captions) -> None:
    """Detector + psm 7 lines in four renderings: measured CER 0.014 on 60 generated memes."""
    engine = AccurateEngine()
    pairs = [(engine.read(im).text, caption) for im, caption in captions[:6]]
    assert mean_cer(pairs) <= 0.12, pairs


def test_accurate_engine_straightens_tilted_captions() -> None:
    """Memes turned by 10 degrees (a tilted photo, a tattoo): the axis-aligned line box alone
    reads them badly (measured CER 0.51 on 8 such memes); adding the warped-flat cut of each
    detected line brings it to 0.02, and the word boxes map back into the image."""
    tilted = [(render_meme(caption, seed=i).rotate(10, resample=PILImage.Resampling.BICUBIC, fillcolor=(128, 128, 128)),
               caption) for i, (caption, _) in enumerate(caption_set(4, 5))]
    box_only, both = AccurateEngine(crops=("box",)), AccurateEngine()
    outputs = [both.read(im) for im, _ in tilted]
    both_cer = mean_cer([(out.text, caption) for out, (_, caption) in zip(outputs, tilted)])
    box_cer = mean_cer([(box_only.read(im).text, caption) for im, caption in tilted])
    assert both_cer <= 0.08 and both_cer < box_cer / 3, (both_cer, box_cer, [o.text for o in outputs])
    for out, (im, _) in zip(outputs, tilted):
        assert out.words
        for word in out.words:
            x, y, w, h = word.box
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= im.width + 1 and y + h <= im.height + 1


def test_reading_order_follows_the_slant_of_tilted_lines() -> None:
    """Two left-aligned caption lines tilted by about 14 degrees, a short one above a long
    one: the long line's box rises past the short line's, so by page coordinates the two
    boxes look like one row whose top-left is the lower line, read first. Measured across
    the slant, the order is right; two words of one row still read left to right."""
    def quad(x: float, y: float, length: float, height: float = 30, angle: float = -0.25) -> np.ndarray:
        along = np.array([np.cos(angle), np.sin(angle)])
        down = np.array([-np.sin(angle), np.cos(angle)])
        p0 = np.array([x, y])
        return np.array([p0, p0 + length * along, p0 + length * along + height * down, p0 + height * down], np.float32)

    upper, lower = quad(40, 150, 80), quad(40, 196, 400)
    assert lower[:, 1].min() < upper[:, 1].min()  # the lower line's box starts higher on the page
    ordered = reading_order([lower, upper])
    assert np.allclose(ordered[0], upper) and np.allclose(ordered[1], lower)
    left, right = quad(40, 300, 100), quad(160, 270, 100)
    assert np.allclose(reading_order([right, left])[0], left)
    assert reading_order([]) == []


def test_outlined_mask_drops_a_light_background_but_keeps_letters() -> None:
    """A pale background blob (bright, unsaturated, no dark rim) is junk for Tesseract in
    the plain white-text mask; the outlined mask keeps only the outlined letters."""
    im = render_meme("кот спит", seed=1)
    arr = np.asarray(im).copy()
    arr[200:330, 100:420] = 235  # a light-grey wall in the middle of the picture, away from the caption
    big, _ = upscale(PILImage.fromarray(arr))
    scale = big.width / im.width
    wall = (slice(int(215 * scale), int(315 * scale)), slice(int(115 * scale), int(405 * scale)))
    plain, outlined = np.asarray(white_text_mask(big)), np.asarray(outlined_text_mask(big))
    assert (plain[wall] == 0).mean() > 0.9  # the plain mask turns the wall into ink
    assert (outlined[wall] == 0).mean() < 0.01  # the outlined mask drops it
    assert (outlined == 0).sum() > 2000  # and still has the letters
    assert "КОТ" in TesseractEngine().read(PILImage.fromarray(arr)).text


def test_ocr_step_stores_text_confidence_boxes_and_manual_correction_wins(settings) -> None:
    ids = _ingest(settings, 3)
    step = OcrStep(make_engine("tesseract", settings))
    summary = run_step(settings.db_url, step, ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir)
    assert (summary.status, summary.done, summary.failed) == ("done", 3, 0)
    with session_scope(settings.db_url) as session:
        rows = list(session.scalars(select(OcrResult).order_by(OcrResult.image_id)))
        assert [r.image_id for r in rows] == ids
        for row in rows:
            assert row.engine == "tesseract" and row.fingerprint == step.fingerprint()
            assert row.error is None and row.text.strip() and row.duration_ms > 0
            assert 0 < row.confidence <= 100
            assert row.config["passes"] == ["raw", "white", "outlined"]
            assert all(set(b) == {"text", "conf", "box"} and len(b["box"]) == 4 for b in row.boxes)
            # boxes are in the original image's pixels, not the upscaled mask's
            assert all(b["box"][0] + b["box"][2] <= 512 + 2 for b in row.boxes)
        assert best_texts(session, ids)[ids[0]] == rows[0].text
        save_correction(session, ids[0], "  исправленный текст ", annotator="ann")
    with session_scope(settings.db_url) as session:
        assert best_texts(session, ids)[ids[0]] == "исправленный текст"
    # a forced re-run rewrites the engine's rows but the correction stays in force
    again = run_step(settings.db_url, step, ids, memes_dir=settings.memes_dir, lock_dir=settings.artefacts_dir,
                     force=True)
    assert again.done == 3
    with session_scope(settings.db_url) as session:
        assert best_texts(session, ids)[ids[0]] == "исправленный текст"
        assert len(list(session.scalars(select(OcrResult).where(OcrResult.engine == "tesseract")))) == 3


def test_fingerprint_depends_on_engine_config(settings) -> None:
    fps = {OcrStep(make_engine(name, settings, lang=lang)).fingerprint()
           for name, lang in [("tesseract", "rus"), ("tesseract", "rus+eng"), ("accurate", "rus")]}
    assert len(fps) == 3
    assert OcrStep(make_engine("tesseract", settings)).fingerprint() == OcrStep(make_engine("tesseract", settings)).fingerprint()
    assert OcrStep(make_engine("tesseract", settings)).parallel_ok
    assert not OcrStep(make_engine("easyocr", settings)).parallel_ok


def test_missing_tessdata_is_a_clear_model_error(tmp_path: Path) -> None:
    engine = TesseractEngine(tessdata_dir=str(tmp_path))
    with pytest.raises(ModelUnavailable, match="rus.traineddata not found") as info:
        engine.load()
    assert "tesseract-ocr-rus" in str(info.value)


@pytest.fixture
def no_easyocr_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty EasyOCR folder (as on this machine, with no network)."""
    monkeypatch.setenv("EASYOCR_MODULE_PATH", str(tmp_path / "easyocr"))
    return tmp_path / "easyocr" / "model"


def test_easyocr_without_weights_names_the_files_and_the_app_keeps_working(
        settings, no_easyocr_weights, capsys: pytest.CaptureFixture) -> None:
    from workbench.config import load_settings

    ids = _ingest(settings, 2)
    engine = make_engine("easyocr", load_settings())
    with pytest.raises(ModelUnavailable) as info:
        engine.load()
    message = str(info.value)
    assert "craft_mlt_25k.pth" in message and "cyrillic_g2.pth" in message
    assert str(no_easyocr_weights) in message and "EASYOCR_MODULE_PATH" in message
    # the CLI reports it as a failed job, stores nothing, and other engines still run
    assert main(["ocr", "--engine", "easyocr", "-q"]) == 1
    out = capsys.readouterr().out
    assert "cyrillic_g2.pth" in out and "failed" in out
    with session_scope(settings.db_url) as session:
        assert not list(session.scalars(select(OcrResult)))
        job = session.scalars(select(Job).order_by(Job.id.desc())).first()
        assert job.status == "failed" and "craft_mlt_25k.pth" in job.error
    assert main(["ocr", "--engine", "tesseract", "--workers", "1", "-q"]) == 0
    with session_scope(settings.db_url) as session:
        assert len(best_texts(session, ids)) == 2


def test_cli_ocr_selection_limit_and_summary(settings, capsys: pytest.CaptureFixture) -> None:
    _ingest(settings, 4)
    assert main(["ocr", "--selection", "toxic", "--limit", "1", "--workers", "1", "-q"]) == 0
    assert "1 done, 0 skipped, 0 failed of 1" in capsys.readouterr().out
    with session_scope(settings.db_url) as session:  # no --engine: the default, accurate
        assert list(session.scalars(select(OcrResult.engine))) == ["accurate"]
    assert main(["ocr", "--selection", "toxic", "--workers", "1", "-q"]) == 0
    assert "1 done, 1 skipped, 0 failed of 2" in capsys.readouterr().out
    assert main(["ocr", "--selection", "nonsense"]) == 2
    assert main(["ocr", "--workers", "0"]) == 2


def test_run_page_runs_ocr_and_lists_every_job(settings, clear_streamlit_cache, no_easyocr_weights) -> None:
    from streamlit.testing.v1 import AppTest

    ids = _ingest(settings, 2)
    at = AppTest.from_file(str(PAGE), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    assert "2 memes selected." in [c.value for c in at.caption]
    at.number_input(key="run_workers").set_value(1)
    at.button(key="run_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("2 done" in s.value for s in at.success), [s.value for s in at.success]
    with session_scope(settings.db_url) as session:
        assert set(best_texts(session, ids)) == set(ids)
    # easyocr: the missing files are named before starting; starting fails the job visibly
    at.selectbox(key="run_engine").set_value("easyocr").run()
    assert any("cyrillic_g2.pth" in w.value for w in at.warning)
    at.button(key="run_start").click().run()
    assert not at.exception
    assert any("craft_mlt_25k.pth" in e.value.replace("\\", "") for e in at.error)  # shown markdown-escaped
    table = at.dataframe[0].value
    assert list(table["status"]) == ["failed", "done"] and list(table["name"]) == ["ocr:easyocr", "ocr:accurate"]
