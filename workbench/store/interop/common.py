"""What the format modules share: a meme named by path, sha256 or id; class words; checks."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.store.annotations import FORMULA_PREFIXES, ImportReport, RowIssue  # noqa: F401 - re-exported
from workbench.store.schema import Image

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Words meaning a class: ours, and the VLM prompt's class words (workbench.predictors.vlm_prompt
# defaults; tests/test_interop_predictions.py checks they match).
CLASS_WORDS = {
    "toxic": "toxic", "non_toxic": "non_toxic", "non-toxic": "non_toxic", "neutral": "non_toxic",
    "токсичный": "toxic", "нейтральный": "non_toxic",
}


def class_of(word: object, mapping: dict[str, str] | None = None) -> str | None:
    """toxic | non_toxic for a class word (case and spaces ignored; `mapping` first), else None."""
    key = str(word).strip().lower() if word is not None else ""
    if mapping:
        lowered = {str(k).strip().lower(): v for k, v in mapping.items()}
        if key in lowered:
            return lowered[key]
    return CLASS_WORDS.get(key)


def parse_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """`--map VALUE=toxic` options as {value: toxic|non_toxic}; ValueError on a bad one."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        value, sep, label = str(pair).rpartition("=")
        label = CLASS_WORDS.get(label.strip().lower(), "")
        if not sep or not value.strip() or not label:
            raise ValueError(f"bad mapping {pair!r}: write VALUE=toxic or VALUE=non_toxic")
        out[value.strip()] = label
    return out


def looks_like_formula(text: object) -> bool:
    """Whether text would run as a spreadsheet formula (starts with = + - @, a tab or CR)."""
    return isinstance(text, str) and text.startswith(FORMULA_PREFIXES)


def bad_probability(value: object) -> str | None:
    """Why `value` is no P(toxic) (None when it is one, or empty)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        prob = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"prob_toxic {str(value)[:40]!r} is not a number"
    if math.isnan(prob) or not 0.0 <= prob <= 1.0:
        return f"prob_toxic {prob} is outside [0, 1]"
    return None


@dataclass
class MemeIndex:
    """Every meme by path, sha256 and id, loaded once for an import."""

    by_path: dict[str, int]
    by_sha: dict[str, int]
    by_name: dict[str, list[int]]
    ids: set[int]

    def find(self, ref: object) -> int | None:
        """The image id `ref` names: a path relative to the memes dir, a sha256, or an id."""
        text = str(ref).strip().replace("\\", "/") if ref is not None else ""
        if not text:
            return None
        if text in self.by_path:
            return self.by_path[text]
        if _SHA256.match(text.lower()):
            return self.by_sha.get(text.lower())
        if text.isdigit() and int(text) in self.ids:
            return int(text)
        return None

    def by_file_name(self, name: str) -> int | None:
        """The one meme whose file name is `name` (None when none or several)."""
        found = self.by_name.get(name, [])
        return found[0] if len(found) == 1 else None


def meme_index(session: Session) -> MemeIndex:
    """Load the MemeIndex of every present meme."""
    by_path, by_sha, by_name, ids = {}, {}, {}, set()
    for image_id, path, sha in session.execute(select(Image.id, Image.path, Image.sha256)
                                               .where(Image.missing.is_(False))):
        by_path[path], by_sha[sha] = image_id, image_id
        by_name.setdefault(path.rsplit("/", 1)[-1], []).append(image_id)
        ids.add(image_id)
    return MemeIndex(by_path, by_sha, by_name, ids)


def run_title(run_id: int, kind: str, name: str, model_id: str) -> str:
    """A run as people see it (the same words as workbench.analysis.outcomes.RunInfo.title)."""
    return f"#{run_id} {kind} · {name or model_id}"
