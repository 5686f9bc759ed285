"""OCR of meme captions: engines (accurate default, tesseract, easyocr), the OcrStep the
job runner drives, and CER scoring. Both Tesseract-based engines run offline from
packages; `accurate` is the default because it reads real memes best (bench/ocr.py).

    engine = make_engine(DEFAULT_ENGINE, settings)      # or "tesseract", "easyocr"
    run_step(settings.db_url, OcrStep(engine), ids, ...)
"""

from __future__ import annotations

from typing import Any

from workbench.config import Settings
from workbench.ocr.base import OcrEngine, OcrOutput, Word

ENGINES = ("accurate", "tesseract", "easyocr")
DEFAULT_ENGINE = "accurate"
ENGINE_HELP = {
    "accurate": "default: PP-OCRv5 line detector + Tesseract per line, straight and de-rotated, "
                "in 4 renderings; best on real memes (~0.9 CPU-s/image)",
    "tesseract": "Tesseract over the whole image and two caption masks; no line detector (~0.65 CPU-s/image)",
    "easyocr": "EasyOCR ru+en (needs its weight files; uses CUDA when present)",
}
LANGS = ("rus", "rus+eng")


def make_engine(name: str, settings: Settings, lang: str = "rus", **options: Any) -> OcrEngine:
    """An engine by name, configured from settings (tessdata / EasyOCR folders).
    `lang` applies to the Tesseract-based engines ('rus+eng' turns some Cyrillic into Latin)."""
    if name == "tesseract":
        from workbench.ocr.tesseract import TesseractEngine

        return TesseractEngine(lang=lang, tessdata_dir=settings.tessdata_dir, **options)
    if name == "accurate":
        from workbench.ocr.accurate import AccurateEngine

        return AccurateEngine(lang=lang, tessdata_dir=settings.tessdata_dir, **options)
    if name == "easyocr":
        from workbench.ocr.easyocr_engine import EasyOcrEngine

        return EasyOcrEngine(easyocr_dir=settings.easyocr_dir, **options)
    raise ValueError(f"unknown OCR engine {name!r}; choose one of {', '.join(ENGINES)}")


def __getattr__(name: str) -> Any:
    if name == "OcrStep":  # lazy: keeps `import workbench.ocr` free of SQLAlchemy models for workers
        from workbench.ocr.step import OcrStep

        return OcrStep
    raise AttributeError(name)


__all__ = ["DEFAULT_ENGINE", "ENGINES", "ENGINE_HELP", "LANGS", "OcrEngine", "OcrOutput", "OcrStep", "Word",
           "make_engine"]
