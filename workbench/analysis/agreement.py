"""Agreement between people: Cohen's kappa per pair, and Krippendorff's alpha (nominal, the
`krippendorff` package) overall, per folder and per week.

Over the current labels of people only: not the system annotators ('folder', 'import'),
not adjudications. Alpha uses every meme that at least two people labeled (any number of
people per meme, missing labels allowed); it is None where it is undefined (fewer than two
such memes, or only one class used). A meme's week is the ISO week (e.g. 2026-W48) of its
latest current label by a person, i.e. when its set of labels was last changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from itertools import combinations
from typing import Any

import krippendorff
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.analysis.metrics import cohen_kappa
from workbench.config import LABELS, SYSTEM_ANNOTATORS
from workbench.store.db import in_batches
from workbench.store.schema import Image, Label

PerImage = Mapping[int, Mapping[str, str]]  # image_id -> {person: label}


def krippendorff_alpha(per_image: PerImage) -> float | None:
    """Nominal alpha over the memes at least two people labeled (None where undefined)."""
    items = [people for people in per_image.values() if len(people) >= 2]
    if len(items) < 2:
        return None
    names = sorted({p for people in items for p in people})
    row = {p: r for r, p in enumerate(names)}
    data = np.full((len(names), len(items)), np.nan)
    for col, people in enumerate(items):
        for person, label in people.items():
            data[row[person], col] = LABELS.index(label)
    try:
        return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    except ValueError:  # one class only: alpha is undefined
        return None


def observed_agreement(per_image: PerImage) -> float | None:
    """The share of agreeing pairs of labels on the same meme (over memes with two or more people)."""
    agree = total = 0
    for people in per_image.values():
        for x, y in combinations(list(people.values()), 2):
            total += 1
            agree += x == y
    return agree / total if total else None


def pair_kappas(per_image: PerImage) -> list[dict[str, Any]]:
    """Cohen's kappa (= sklearn's cohen_kappa_score) and agreement for each pair of people, on the
    memes both labeled; pairs with no common meme are left out."""
    mine: dict[str, dict[int, str]] = {}
    for image_id, people in per_image.items():
        for person, label in people.items():
            mine.setdefault(person, {})[image_id] = label
    out = []
    for a, b in combinations(sorted(mine), 2):
        common = sorted(mine[a].keys() & mine[b].keys())
        if not common:
            continue
        la, lb = [mine[a][i] for i in common], [mine[b][i] for i in common]
        kappa, n = cohen_kappa(la, lb)
        out.append({"a": a, "b": b, "n": n, "agreement": sum(x == y for x, y in zip(la, lb)) / len(common),
                    "kappa": kappa})
    return out


def _summary(per_image: PerImage) -> dict[str, Any]:
    shared = {i: p for i, p in per_image.items() if len(p) >= 2}
    return {"n_memes": len(shared), "n_people": len({p for people in shared.values() for p in people}),
            "alpha": krippendorff_alpha(shared), "agreement": observed_agreement(shared)}


def people_labels(session: Session) -> tuple[dict[int, dict[str, str]], dict[int, datetime]]:
    """Current labels of people: image_id -> {person: label}, and each meme's latest such label time."""
    latest: dict[tuple[int, str], tuple[int, str, datetime]] = {}
    rows = session.execute(select(Label.image_id, Label.annotator, Label.label, Label.id, Label.created_at).where(
        Label.revoked_at.is_(None), Label.annotator.not_in(SYSTEM_ANNOTATORS)))
    for image_id, person, label, label_id, at in rows:
        prev = latest.get((image_id, person))
        if prev is None or label_id > prev[0]:
            latest[(image_id, person)] = (label_id, label, at)
    per_image: dict[int, dict[str, str]] = {}
    when: dict[int, datetime] = {}
    for (image_id, person), (_, label, at) in latest.items():
        per_image.setdefault(image_id, {})[person] = label
        when[image_id] = max(when.get(image_id, at), at)
    return per_image, when


def iso_week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def agreement_report(session: Session) -> dict[str, Any]:
    """Pairwise kappa, and alpha + observed agreement overall, per folder and per week."""
    per_image, when = people_labels(session)
    shared = {i: p for i, p in per_image.items() if len(p) >= 2}
    folders: dict[int, str] = {}
    for chunk in in_batches(list(shared)):
        folders.update(session.execute(select(Image.id, Image.folder).where(Image.id.in_(chunk))).all())
    by_folder: dict[str, dict[int, dict[str, str]]] = {}
    by_week: dict[str, dict[int, dict[str, str]]] = {}
    for image_id, people in shared.items():
        by_folder.setdefault(folders.get(image_id) or "(root)", {})[image_id] = people
        by_week.setdefault(iso_week(when[image_id]), {})[image_id] = people
    return {
        "overall": _summary(shared),
        "by_folder": [{"folder": f, **_summary(group)} for f, group in sorted(by_folder.items())],
        "by_week": [{"week": w, **_summary(group)} for w, group in sorted(by_week.items())],
        "pairs": pair_kappas(per_image),
    }
