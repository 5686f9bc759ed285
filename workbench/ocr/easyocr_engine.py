"""EasyOCR (`['ru', 'en']`, the research notebook's engine). It needs two weight files
that it would download on first use; here it never downloads: when they are absent the
engine fails at once with a message naming them and how to supply them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from workbench.errors import ModelUnavailable
from workbench.ocr.base import OcrOutput, Word

WEIGHT_FILES = {
    "craft_mlt_25k.pth": "https://github.com/JaidedAI/EasyOCR/releases/download/pre-v1.1.6/craft_mlt_25k.zip",
    "cyrillic_g2.pth": "https://github.com/JaidedAI/EasyOCR/releases/download/v1.6.1/cyrillic_g2.zip",
}
MODEL_ID = "easyocr:ru+en"
_readers: dict[tuple[Any, ...], Any] = {}


def missing_weights(model_dir: Path) -> list[str]:
    """Weight files EasyOCR needs that are not in `model_dir`."""
    return [name for name in WEIGHT_FILES if not (model_dir / name).is_file()]


def how_to_supply(model_dir: Path) -> str:
    urls = "; ".join(f"{name} from {url} (unzip)" for name, url in WEIGHT_FILES.items())
    return (f"Put the files into {model_dir} (or set EASYOCR_MODULE_PATH to a folder whose model/ holds them): "
            f"on a machine with internet run `python -c \"import easyocr; easyocr.Reader(['ru','en'])\"` and copy "
            f"~/.EasyOCR/model, or download {urls}.")


@dataclass
class EasyOcrEngine:
    """EasyOCR reader over `langs`, on CUDA when available, built once per process."""

    easyocr_dir: Path
    langs: tuple[str, ...] = ("ru", "en")
    name: str = "easyocr"

    @property
    def model_dir(self) -> Path:
        return self.easyocr_dir / "model"

    def config(self) -> dict[str, Any]:
        import importlib.metadata

        try:
            version = importlib.metadata.version("easyocr")
        except importlib.metadata.PackageNotFoundError:
            version = None
        return {"engine": self.name, "langs": list(self.langs), "version": version}

    def load(self) -> None:
        self._reader()

    def _reader(self):  # noqa: ANN202 - easyocr.Reader
        key = (str(self.model_dir), self.langs)
        if key in _readers:
            return _readers[key]
        missing = missing_weights(self.model_dir)
        if missing:
            raise ModelUnavailable(MODEL_ID, f"weights {', '.join(missing)} not found in {self.model_dir}",
                                   how_to_supply(self.model_dir))
        try:
            import easyocr
            import torch
        except ImportError as exc:
            raise ModelUnavailable(MODEL_ID, f"the easyocr package is not installed ({exc})",
                                   "Install it: `pip install easyocr`.") from exc
        _readers[key] = easyocr.Reader(list(self.langs), gpu=torch.cuda.is_available(),
                                       model_storage_directory=str(self.model_dir), download_enabled=False,
                                       verbose=False)
        return _readers[key]

    def read(self, image: Image.Image) -> OcrOutput:
        results = self._reader().readtext(np.asarray(image), detail=1, paragraph=False)
        words = []
        for quad, text, prob in results:
            xs, ys = [int(p[0]) for p in quad], [int(p[1]) for p in quad]
            words.append(Word(str(text), float(prob) * 100.0, (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))))
        words.sort(key=lambda w: (w.box[1], w.box[0]))
        return OcrOutput("\n".join(w.text for w in words), words, {})
