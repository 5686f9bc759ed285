"""Driving the real app in a real browser: `streamlit run` on 127.0.0.1 and a free port, and
Debian's Chromium through Playwright (never `playwright install`), with the waits Streamlit's
own e2e suite uses. Shared by every browser test."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

def chromium_path() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("no chromium binary (Debian package `chromium`; `bash .ci/install --test` installs it)")


@contextmanager
def streamlit_server(env: dict[str, str], log: Path, port: int | None = None, args: Sequence[str] = ()) -> Iterator[str]:
    """`streamlit run streamlit_app.py` on 127.0.0.1:<port, default a free one> with extra `args`;
    yields its base URL; always stopped."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
           "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", *args]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}: {log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200 and resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not become healthy: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def settle(page) -> None:  # noqa: ANN001
    """Wait until the script run has finished (Streamlit's own e2e idiom)."""
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=TIMEOUT_MS)


def quiet(page) -> None:  # noqa: ANN001
    """Before a screenshot: images and lazily loaded widget code fetched."""
    page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
    page.wait_for_timeout(300)


def no_exceptions(page) -> None:  # noqa: ANN001
    errors = page.locator("[data-testid='stException']")
    assert errors.count() == 0, errors.all_inner_texts()


def button(page, key: str):  # noqa: ANN001, ANN201
    """A widget by its Streamlit key (the pages' stable selectors), e.g. 'lbl_toxic'."""
    return page.locator(f".st-key-{key} button")


def current_image(page) -> int | None:  # noqa: ANN001
    values = parse_qs(urlparse(page.url).query).get("image")
    return int(values[0]) if values else None


def wait_for_image_change(page, before: int) -> int:  # noqa: ANN001
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while (now := current_image(page)) == before:
        assert time.monotonic() < deadline, f"the Label page stayed on image {before}"
        page.wait_for_timeout(100)
    settle(page)
    return now


def open_from_sidebar(page, label: str, title: str) -> None:  # noqa: ANN001
    """Click the sidebar link named `label` (workbench.ui.NAV) and wait for the page whose
    title is `title` (its ui.bootstrap title) to finish its run without an exception."""
    link = page.locator("[data-testid='stSidebar'] [data-testid='stPageLink'] a").filter(
        has=page.get_by_text(label, exact=True))
    link.click()
    page.wait_for_function("t => document.title === t", arg=f"{title} · VLMemes Workbench", timeout=TIMEOUT_MS)
    settle(page)
    no_exceptions(page)
