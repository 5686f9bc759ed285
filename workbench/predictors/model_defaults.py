"""The project's model choices (workbench.models.choices) as the defaults of the predictors'
model options: one place that the Models and Train pages' forms and `python -m workbench
predict` (its `-o` flags and `--list-options`) share.

A value the user gives (a form field, `--model`, `-o clip_model=...`) still wins for that run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy.orm import Session

from workbench.models.choices import get_choice
from workbench.predictors.run import PredictorSpec, predictor_spec, predictor_specs

# predictor kind -> {option naming a model: the model choice it defaults to}
MODEL_OPTIONS: dict[str, dict[str, str]] = {
    "clip": {"model": "clip"},
    "vlm": {"model": "vlm", "endpoint": "vlm-endpoint"},
    "text-toxicity": {"model": "text"},
    "head": {"clip_model": "embedding", "vlm_model": "vlm"},
}


def model_defaults(session: Session, kind: str) -> dict[str, str]:
    """{option name: the model choice in use} for the model options of `kind` ({} for none)."""
    return {option: get_choice(session, name) for option, name in MODEL_OPTIONS.get(kind, {}).items()}


def with_model_defaults(spec: PredictorSpec, defaults: dict[str, str]) -> PredictorSpec:
    """`spec` with the options named in `defaults` defaulting to those values."""
    options = tuple(replace(o, default=defaults[o.name]) if o.name in defaults else o for o in spec.options)
    return replace(spec, options=options)


def resolved_spec(session: Session, kind: str) -> PredictorSpec:
    """The spec of `kind` whose model options default to the project's model choices."""
    return with_model_defaults(predictor_spec(kind), model_defaults(session, kind))


def resolved_specs(session: Session) -> list[PredictorSpec]:
    """Every registered kind (unavailable ones included) as resolved_spec gives it."""
    return [with_model_defaults(s, model_defaults(session, s.kind)) for s in predictor_specs()]


def resolved_values(session: Session, kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """`values` (what the user gave) plus the model choices for the model options it leaves out."""
    return {**model_defaults(session, kind), **values}
