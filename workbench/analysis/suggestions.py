"""Suggestions (pre-labels) from the learner, off by default, and anchoring, measured.

When suggestions are on, the Label page shows the newest learner run's class and P(toxic) for
the meme on screen, and one key accepts it. With overlap (k > 1) they stay off unless an admin
also turns them on for overlap: independent labels are the point of asking k people.

Every label the Label page stores records the learner's class at that moment and whether it
was shown (workbench.store.labels.LabelContext). Anchoring compares how often people's labels
equal the suggestion when it was shown with how often they equal the learner's class when it
was not: a clearly higher rate when shown means people follow the suggestion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from statsmodels.stats.proportion import proportion_confint

from workbench.config import SYSTEM_ANNOTATORS
from workbench.store import users
from workbench.store.labels import get_setting, set_setting
from workbench.store.schema import Label, Prediction

SETTING = "suggestions"


@dataclass(frozen=True)
class Suggestion:
    """The learner's class and P(toxic) for one meme, from one learner run."""

    label: str
    prob_toxic: float | None
    run_id: int


def suggestion_setting(session: Session) -> dict[str, bool]:
    """{"on": bool, "in_overlap": bool}; both False unless an admin turned them on."""
    value = get_setting(session, SETTING, None)
    value = value if isinstance(value, dict) else {}
    return {"on": bool(value.get("on", False)), "in_overlap": bool(value.get("in_overlap", False))}


def set_suggestions(session: Session, on: bool, in_overlap: bool = False, actor: str | None = None) -> None:
    """Turn suggestions on or off, and allow them with overlap (k > 1) or not (admins only, audited)."""
    value = {"on": bool(on), "in_overlap": bool(on and in_overlap)}
    users.authorize(session, actor, users.ADMIN, "suggestions", value)
    set_setting(session, SETTING, value)


def suggestions_active(session: Session, k: int) -> bool:
    """Whether the Label page shows suggestions now: on, and with k > 1 also allowed for overlap."""
    setting = suggestion_setting(session)
    return setting["on"] and (k <= 1 or setting["in_overlap"])


def suggestion_for(session: Session, image_id: int, run_id: int | None) -> Suggestion | None:
    """The learner run's class and P(toxic) for a meme (None without a run or a usable answer)."""
    if run_id is None:
        return None
    row = session.execute(select(Prediction.label, Prediction.prob_toxic).where(
        Prediction.run_id == run_id, Prediction.image_id == image_id, Prediction.error.is_(None))).first()
    if row is None or row[0] not in ("toxic", "non_toxic"):
        return None
    return Suggestion(str(row[0]), None if row[1] is None else float(row[1]), run_id)


def anchoring(session: Session) -> dict[str, Any]:
    """People's labels against the learner's class, when it was shown and when it was not.

    Over label rows by people (not undone, not folder/import) that recorded the learner's
    class. Each side: n labels, the share equal to the learner's class, and its Wilson 95% CI;
    `difference` = shown − not shown (None unless both sides have labels)."""
    rows = session.execute(select(Label.label, Label.suggestion, Label.suggestion_shown).where(
        Label.revoked_at.is_(None), Label.suggestion.is_not(None), Label.annotator.not_in(SYSTEM_ANNOTATORS))).all()
    sides: dict[str, dict[str, Any]] = {}
    for name, shown in (("shown", True), ("not_shown", False)):
        picked = [label == suggestion for label, suggestion, was_shown in rows if bool(was_shown) == shown]
        n, agree = len(picked), sum(picked)
        sides[name] = {"n": n, "equal": agree, "rate": agree / n if n else None,
                       "ci": tuple(float(x) for x in proportion_confint(agree, n, method="wilson")) if n else None}
    a, b = sides["shown"]["rate"], sides["not_shown"]["rate"]
    return {**sides, "difference": (a - b) if a is not None and b is not None else None}
