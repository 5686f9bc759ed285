"""A real Label Studio server for the round-trip test, kept out of our own environment.

Label Studio pins its own Django stack, so it lives in a separate virtualenv,
`.venv-label-studio/` (git-ignored), never in `.venv` or our lock files. `prepare()` (run by
`bash .ci/install --test` as `python -m tests.support.label_studio prepare`) installs it
there and initialises a pristine data folder with two users whose API tokens the test
knows; a test copies that folder and starts the server on it in seconds instead of running
Label Studio's migrations (about a minute) every time. Both steps are skipped when done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = REPO_ROOT / ".venv-label-studio"
REQUIREMENT = "label-studio==1.23.2"
BIN = VENV / "bin" / "label-studio"
PRISTINE = VENV / "pristine-data"
PASSWORD = "round-trip-pass-1"
# (email, API token): the first starts the server; both annotate.
USERS = (("ann@example.org", "annToken0000000001"), ("bob@example.org", "bobToken0000000002"))


def _env(data_dir: Path, document_root: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), LOCAL_FILES_SERVING_ENABLED="true",
               LOCAL_FILES_DOCUMENT_ROOT=str(document_root or data_dir), LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
               SENTRY_DSN="", FRONTEND_SENTRY_DSN="", COLLECT_ANALYTICS="false")
    return env


def install() -> str | None:
    """Install Label Studio into VENV (skipped when there); None, or why it could not be installed."""
    if BIN.is_file():
        return None
    uv = shutil.which("uv") or str(REPO_ROOT / ".venv" / "bin" / "uv")
    try:
        if Path(uv).is_file():
            subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(VENV)], check=True)
            subprocess.run([uv, "pip", "install", "-q", "--python", str(VENV / "bin" / "python"), REQUIREMENT],
                           check=True)
        else:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", REQUIREMENT], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"pip install {REQUIREMENT} into {VENV} failed: {exc}"
    return None if BIN.is_file() else f"{BIN} is missing after installing {REQUIREMENT}"


def init_data(data_dir: Path) -> None:
    """Run Label Studio's migrations in `data_dir` and create USERS (legacy API tokens on)."""
    for email, token in USERS:
        subprocess.run([str(BIN), "init", "-q", "--username", email, "--password", PASSWORD, "--user-token", token,
                        "--enable-legacy-api-token"], env=_env(data_dir), check=True, capture_output=True,
                       timeout=600)


def prepare() -> str | None:
    """install() and a pristine data folder; None, or why Label Studio is not available."""
    problem = install()
    if problem:
        return problem
    if not (PRISTINE / "label_studio.sqlite3").is_file():
        scratch = PRISTINE.with_name("pristine-data.tmp")
        shutil.rmtree(scratch, ignore_errors=True)
        init_data(scratch)
        scratch.rename(PRISTINE)
    return None


class LabelStudio:
    """`label-studio start` on a free port with a scratch copy of the pristine data."""

    def __init__(self, work: Path, document_root: Path, port: int) -> None:
        self.work, self.document_root, self.port = work, document_root, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.log = work / "label-studio.log"

    def start(self, timeout: float = 180) -> LabelStudio:
        data = self.work / "data"
        shutil.copytree(PRISTINE, data)
        email, token = USERS[0]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(self.port),
                 "--username", email, "--password", PASSWORD, "--user-token", token],
                env=_env(data, self.document_root), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"label-studio did not answer within {timeout} s:\n{self.log_tail()}")

    def client(self, user: int = 0) -> httpx.Client:
        """An API client authenticated as USERS[user]."""
        return httpx.Client(base_url=self.url, timeout=60,
                            headers={"Authorization": f"Token {USERS[user][1]}"})

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    if sys.argv[1:] != ["prepare"]:
        sys.exit("usage: python -m tests.support.label_studio prepare")
    why = prepare()
    print(f"[label-studio] {why}" if why else f"[label-studio] ready: {VENV}")
    sys.exit(1 if why else 0)
