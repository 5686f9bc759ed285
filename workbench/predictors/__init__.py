"""Predictors: one interface (base.Predictor), looked up by kind.

Imports are lazy so that opening the app never imports torch or loads a model.
"""

from __future__ import annotations

import importlib
from typing import Any

from workbench.predictors.base import Predictor

# kind -> "module:factory"; the factory takes keyword options from the UI/CLI.
REGISTRY: dict[str, str] = {
    "clip": "workbench.predictors.clip:ClipPredictor",
    "vlm": "workbench.predictors.vlm:make_vlm_predictor",
    "nudenet": "workbench.predictors.nudenet:NudeNetPredictor",
    "text-toxicity": "workbench.predictors.text_toxicity:TextToxicityPredictor",
    "text-tfidf": "workbench.predictors.tfidf:TfidfPredictor",
    "head": "workbench.predictors.head:HeadPredictor",
}


def make_predictor(kind: str, **options: Any) -> Predictor:
    """Build the predictor of `kind` with `options` (unknown kind -> ValueError)."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown predictor '{kind}'; choose one of: {', '.join(REGISTRY)}")
    module_name, factory = REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module_name), factory)(**options)
