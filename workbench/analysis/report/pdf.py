"""The report as PDF, through weasyprint or a headless Chromium when one is installed."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


class PdfUnavailable(RuntimeError):
    """No HTML-to-PDF converter here; the message says what to install."""


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def pdf_converter() -> str | None:
    """'weasyprint' or the path of a headless Chromium, whichever is available; None if neither."""
    try:
        import weasyprint  # noqa: F401

        return "weasyprint"
    except Exception:  # noqa: BLE001 - missing or broken (native libs): try Chromium
        pass
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def html_to_pdf(html_text: str, out: Path, timeout_s: float = 120.0) -> Path:
    """Render the report HTML to a PDF at `out` with weasyprint or headless Chromium.

    Raises PdfUnavailable when neither is installed or the conversion fails."""
    converter = pdf_converter()
    if converter is None:
        raise PdfUnavailable("no PDF converter found: install Chromium (apt-get install chromium) or "
                             "`pip install weasyprint`; the HTML report works without it")
    out.parent.mkdir(parents=True, exist_ok=True)
    if converter == "weasyprint":
        import weasyprint

        weasyprint.HTML(string=html_text).write_pdf(str(out))
        return out
    with tempfile.TemporaryDirectory(prefix="workbench-pdf-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(html_text, encoding="utf-8")
        target = Path(tmp) / "report.pdf"
        cmd = [converter, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={Path(tmp) / 'profile'}", "--no-pdf-header-footer",
               f"--print-to-pdf={target}", page.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PdfUnavailable(f"Chromium did not finish the PDF within {timeout_s:.0f} s") from exc
        if not target.exists() or target.stat().st_size == 0:
            raise PdfUnavailable(f"Chromium could not print the PDF (exit {proc.returncode}): {proc.stderr[-500:]}")
        shutil.move(str(target), out)
    return out
