"""All configuration in one place: environment variables with defaults.

Every setting is read when `load_settings()` is called, so tests and the CLI can
point the workbench elsewhere by setting env vars before calling it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

LABELS = ("toxic", "non_toxic")
PREDICTION_LABELS = ("toxic", "non_toxic", "unknown")

# Folder name (case-insensitive) -> label, for ingest of memes/<folder>/...
FOLDER_LABELS = {
    "негативно": "toxic",
    "toxic": "toxic",
    "нейтрально": "non_toxic",
    "non_toxic": "non_toxic",
    "neutral": "non_toxic",
}
# Canonical folder a label is written into (upload into a label).
LABEL_FOLDERS = {"toxic": "Негативно", "non_toxic": "Нейтрально"}

# Annotators that are not people: their labels lose to any human label in the consensus.
SYSTEM_ANNOTATORS = ("folder", "import")
# A dataset's labels are stored under "import:<name>" (workbench.store.interop.hf_dataset): no
# signed-in person, so add_label asks no role of it (the importing admin was checked).
DATASET_ANNOTATOR_PREFIX = "import:"

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
# The largest image file read or accepted (uploads, scans, imports): WORKBENCH_MAX_FILE_MB, default 25.
MAX_UPLOAD_BYTES = int(float(os.environ.get("WORKBENCH_MAX_FILE_MB") or 25) * 1024 * 1024)
# Decompression-bomb guard: refuse images with more pixels than this (~ 8k x 8k).
MAX_IMAGE_PIXELS = 64_000_000
THUMBNAIL_SIZE = 256

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_VLM_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_TEXT_TOXICITY_MODEL = "cointegrated/rubert-tiny-toxicity"
TESSDATA_DIRS = (
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
)


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


@dataclass(frozen=True)
class Settings:
    """Resolved settings; build with `load_settings()`."""

    db_url: str
    memes_dir: Path
    artefacts_dir: Path
    hf_cache_dir: str | None = None
    vlm_endpoint: str | None = None
    vlm_endpoint_model: str | None = None
    vlm_api_key: str | None = None
    tessdata_dir: str | None = None
    easyocr_dir: Path = field(default_factory=lambda: Path.home() / ".EasyOCR")
    auth: str = "off"  # off | oidc (WORKBENCH_AUTH): sign-in with roles, see auth_mode()
    auth_max_age_hours: float = 24.0  # a sign-in older than this is signed out (WORKBENCH_AUTH_MAX_AGE_HOURS)
    # A Dask scheduler (tcp://HOST:8786) that heavy jobs run their batches on by default
    # (WORKBENCH_DASK_SCHEDULER; `--cluster` and the pages' Cluster field override it); None: here.
    dask_scheduler: str | None = None

    @property
    def thumbnails_dir(self) -> Path:
        return self.artefacts_dir / "thumbnails"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")


def default_db_url() -> str:
    return f"sqlite:///{REPO_ROOT / 'db' / 'workbench.sqlite3'}"


def load_settings() -> Settings:
    """Read settings from the environment (WORKBENCH_* variables) with defaults."""
    easyocr_root = os.environ.get("EASYOCR_MODULE_PATH")
    return Settings(
        db_url=os.environ.get("WORKBENCH_DB_URL") or default_db_url(),
        memes_dir=_env_path("WORKBENCH_MEMES_DIR", REPO_ROOT / "memes_project" / "memes"),
        artefacts_dir=_env_path("WORKBENCH_ARTEFACTS_DIR", REPO_ROOT / "memes_project" / "artefacts"),
        hf_cache_dir=os.environ.get("WORKBENCH_HF_CACHE") or None,
        vlm_endpoint=os.environ.get("WORKBENCH_VLM_ENDPOINT") or None,
        vlm_endpoint_model=os.environ.get("WORKBENCH_VLM_ENDPOINT_MODEL") or None,
        vlm_api_key=os.environ.get("WORKBENCH_VLM_API_KEY") or os.environ.get("OPENAI_API_KEY") or None,
        tessdata_dir=os.environ.get("WORKBENCH_TESSDATA") or os.environ.get("TESSDATA_PREFIX") or None,
        easyocr_dir=Path(easyocr_root).expanduser() if easyocr_root else Path.home() / ".EasyOCR",
        auth=auth_mode(),
        auth_max_age_hours=float(os.environ.get("WORKBENCH_AUTH_MAX_AGE_HOURS") or 24),
        dask_scheduler=(os.environ.get("WORKBENCH_DASK_SCHEDULER") or "").strip() or None,
    )


AUTH_MODES = ("off", "oidc")


def auth_mode() -> str:
    """WORKBENCH_AUTH: 'off' (default: no sign-in, single-user local use) or 'oidc' (Streamlit's
    native sign-in + workbench roles). Anything else is refused, so a typo never leaves the app open."""
    value = (os.environ.get("WORKBENCH_AUTH") or "off").strip().lower()
    if value not in AUTH_MODES:
        raise ValueError(f"WORKBENCH_AUTH must be one of {', '.join(AUTH_MODES)}, not {value!r}")
    return value


def cli_operator_trusted() -> bool:
    """WORKBENCH_CLI_OPERATOR=trusted: with sign-in on, the command line may act as a user
    (`--as EMAIL`); otherwise it acts only as the operating-system user (os:<login>)."""
    return (os.environ.get("WORKBENCH_CLI_OPERATOR") or "").strip().lower() == "trusted"
