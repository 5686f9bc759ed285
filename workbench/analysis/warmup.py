"""Fill, once per server process, the in-process caches the pages read at scale, so the first
open of the Dashboard or the Label page after a start does not compute them while someone waits.

At a million memes a new process spends ~10 s on them (the consensus over every label, how each
meme was chosen, each run's prediction arrays, the folders of every meme, the first import of
scikit-learn and SciPy); the app starts this in
a background thread at its first page view (workbench.ui), only for collections of WARM_FROM
memes or more (below that every cache fills in well under a second on first use).
"""

from __future__ import annotations

import time

import numpy as np

from workbench.analysis import dashboard, outcomes
from workbench.analysis.metrics import evaluate_codes
from workbench.store import catalog, db, labels, overlap
from workbench.store.label_choice import chosen_codes, how_chosen

WARM_FROM = 20_000  # present memes


def worth_warming(db_url: str) -> bool:
    """Whether the collection is large enough for the warm-up to matter."""
    with db.read_scope(db_url) as session:
        return catalog.count_present(session) >= WARM_FROM


def warm_caches(db_url: str) -> dict[str, float]:
    """Fill the caches (each is checked against its fingerprint when read, so warming can never
    show stale data); returns the seconds each part took."""
    took: dict[str, float] = {}

    def part(name: str, fill) -> object:  # noqa: ANN001
        t0 = time.perf_counter()
        out = fill()
        took[name] = round(time.perf_counter() - t0, 3)
        return out

    with db.read_scope(db_url) as session:
        part("memes", lambda: (labels.present_array(session), catalog.folders(session), labels.missing_ids(session)))
        part("consensus", lambda: (labels.consensus_labels(session), labels.consensus_codes(session)))
        part("how chosen", lambda: (how_chosen(session), chosen_codes(session)))
        part("people per meme", lambda: overlap.people_counts(session))
        part("folders and sources", lambda: [outcomes.image_groups(session, by) for by in ("folder", "source")])
        runs = part("runs", lambda: dashboard.default_runs(outcomes.list_runs(session)))
        part("predictions", lambda: outcomes.load_runs(session, runs))  # type: ignore[arg-type]
    # The metrics' first use imports scikit-learn and SciPy (~1.4 s): done here, not on a first open.
    part("metrics code", lambda: evaluate_codes(np.array([1, 0, 1, 0], dtype=np.int8), np.array([1, 0, 0, 0], dtype=np.int8),
                                                np.array([0.9, 0.2, 0.4, 0.6]), n_boot=10))
    return took
