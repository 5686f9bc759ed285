"""The layer contracts in pyproject.toml hold for the real tree, and each kind of contract
can fail: a scratch copy of the package with one deliberate bad import is caught by
import-linter (the same `lint-imports` that .ci/run runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def _scratch_copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO_ROOT / "workbench", root / "workbench", ignore=ignore)
    shutil.copytree(REPO_ROOT / "pages", root / "pages", ignore=ignore)
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_contracts_hold_for_the_real_tree(tmp_path: Path) -> None:
    result = _lint(_scratch_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "bad_import", "contract"), [
    # store is the bottom layer: it must not reach up into analysis
    ("workbench/store/labels.py", "from workbench.analysis import metrics", "Layers"),
    # runs sits below the model layers
    ("workbench/runs/runner.py", "from workbench.predictors import clip", "Layers"),
    # streamlit belongs to workbench.ui alone
    ("workbench/analysis/metrics.py", "import streamlit", "Only workbench.ui imports streamlit"),
    # the product package never needs the test builders
    ("workbench/store/demo_memes.py", "from tests.support import tiny_models", "test support package"),
    # pages go through library functions, not the ORM
    ("pages/2_Gallery.py", "from workbench.store.schema import Image", "Pages use workbench.ui"),
])
def test_a_deliberate_bad_import_is_caught(tmp_path: Path, module: str, bad_import: str, contract: str) -> None:
    root = _scratch_copy(tmp_path)
    target = root / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{bad_import}  # deliberate\n", encoding="utf-8")
    result = _lint(root)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and contract in result.stdout.split("Broken contracts")[-1], result.stdout
