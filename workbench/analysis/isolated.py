"""Run one of our modules in a new Python interpreter: for analysis that is slow and CPU-bound
(UMAP, cleanlab's audit) and should not share the Streamlit server's GIL, cores or fate.

A new interpreter, never `multiprocessing`: a fork of the threaded server can hang (a forked
library pool once froze the app), and multiprocessing's spawn re-runs the parent's `__main__`
first, which under Streamlit is the page script that asked for the work.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the workbench package


def module_command(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that run `python -m module args...` on this same code and interpreter."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return [sys.executable, "-m", module, *args], env
