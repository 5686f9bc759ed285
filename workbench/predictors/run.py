"""Predictors built from user input and run as jobs: what the Models page and
`python -m workbench predict` share.

- `predictor_spec(kind)`: the factory of a kind with its title and Option list, or why it
  is unavailable (a teammate's module not there yet, a missing package) — never raises.
- `parse_option(option, text)`: one option value from text (CLI `--option name=value`).
- `build_predictor(kind, values)`: the predictor, after checking names and types.
- `run_predictions(settings, predictor, ids, ...)`: the job runner over a selection.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from workbench.config import Settings
from workbench.predictors import REGISTRY
from workbench.predictors.base import Option, Predictor, PredictorStep
from workbench.runs.runner import run_step
from workbench.runs.step import JobSummary, Progress

TRUE_WORDS = {"1", "true", "yes", "y", "on", "да"}
FALSE_WORDS = {"0", "false", "no", "n", "off", "нет"}


@dataclass(frozen=True)
class PredictorSpec:
    """A predictor kind as the UI/CLI see it."""

    kind: str
    title: str
    options: tuple[Option, ...]
    factory: Callable[..., Predictor] | None
    unavailable: str | None = None  # why it cannot be used here, or None

    @property
    def available(self) -> bool:
        return self.factory is not None

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


def predictor_spec(kind: str) -> PredictorSpec:
    """The spec of a registered kind; import problems become `unavailable` (no exception)."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown predictor '{kind}'; choose one of: {', '.join(REGISTRY)}")
    module_name, attr = REGISTRY[kind].split(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # noqa: BLE001 - a kind not built yet or a missing package must not break the rest
        return PredictorSpec(kind, kind, (), None, f"{type(exc).__name__}: {exc}")
    options = tuple(getattr(factory, "options", ()) or ())
    title = getattr(factory, "title", "") or kind
    return PredictorSpec(kind, title, options, factory)


def predictor_specs() -> list[PredictorSpec]:
    """Every registered kind, in registry order (unavailable ones included)."""
    return [predictor_spec(kind) for kind in REGISTRY]


def parse_option(option: Option, text: Any) -> Any:
    """The value of `option` from user text (or an already typed value). ValueError when it
    does not parse or is not one of the choices."""
    if not isinstance(text, str):
        value = text
    elif option.type == "bool":
        word = text.strip().lower()
        if word in TRUE_WORDS:
            value = True
        elif word in FALSE_WORDS:
            value = False
        else:
            raise ValueError(f"option {option.name}: expected true/false, got {text!r}")
    elif option.type == "int":
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"option {option.name}: expected an integer, got {text!r}") from None
    elif option.type == "float":
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"option {option.name}: expected a number, got {text!r}") from None
    elif option.type == "text":
        value = text.replace("\\n", "\n")  # multi-line values on one command line
    else:
        value = text
    if option.type == "choice" and option.choices and value not in option.choices:
        raise ValueError(f"option {option.name}: choose one of {', '.join(map(str, option.choices))} (got {value!r})")
    return value


def build_predictor(kind: str, values: dict[str, Any] | None = None) -> Predictor:
    """The predictor of `kind` with `values` (text or typed) over the defaults. ValueError
    for an unknown/unavailable kind, an unknown option or a bad value (the message says which)."""
    spec = predictor_spec(kind)
    if spec.factory is None:
        raise ValueError(f"predictor '{kind}' is not available here: {spec.unavailable}")
    known = {o.name: o for o in spec.options}
    values = dict(values or {})
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) for {kind}: {', '.join(unknown)}; "
                         f"known: {', '.join(known) or '(none)'}")
    kwargs = {name: parse_option(known[name], value) for name, value in values.items()}
    try:
        predictor = spec.factory(**kwargs)
    except TypeError as exc:  # a factory that rejects an option combination
        raise ValueError(f"{kind}: {exc}") from exc
    with suppress(AttributeError, TypeError):  # what rebuilds it after a restart (PredictorStep.recipe)
        predictor.built_from = {"kind": kind, "options": kwargs}
    return predictor


def run_predictions(
    settings: Settings,
    predictor: Predictor,
    image_ids: Sequence[int],
    *,
    batch_size: int = 8,
    force: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    cluster: str | None = None,
) -> JobSummary:
    """Run `predictor` over `image_ids` through the job runner (skip done, resume, per-item
    errors), on the Dask scheduler `cluster` when given. A model that cannot load ends the job
    `failed` with the ModelUnavailable text."""
    return run_step(
        settings.db_url, PredictorStep(predictor), image_ids, memes_dir=settings.memes_dir,
        lock_dir=settings.artefacts_dir, batch_size=batch_size, force=force, on_progress=on_progress,
        should_stop=should_stop, cluster=cluster,
    )
