"""Labeling that learns, through the real code: random vs unsure vs likely-toxic, side by side.

A simulated annotator labels generated memes whose captions carry their class (noisily; the
caption is the meme's OCR text, tests/support/class_captions.py) on a real SQLite database:
it takes the next meme of the real queue (workbench.analysis.queue_orders.build_queue, with the
project's exploration share), stores the label with add_label and its context as the Label page
does, and after every `--every` labels the real learner refresh runs (workbench.analysis.learner
.refresh: TF-IDF on OCR text, out-of-fold and full-fit P(toxic) as a learner run, through the
one job runner). The queues then rank by the newest learner run, as on the Label page.

Every order starts from the same `--seed-labels` memes labelled in random order (a learner needs
both classes). A held-out set (`--test` memes) is never labelled; the F1 at a budget is the
learner run's F1 on it. The target is 95 % of the F1 of a refresh on every pool meme labelled.
Reported, per order (median over seeds): labels needed to reach the target, toxic memes found
at fixed budgets, and the time per refresh.

    .venv/bin/python bench/active.py [--n 2000] [--test 400] [--budget 400] [--every 20] [--seeds 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sklearn.metrics import f1_score  # noqa: E402
from sqlalchemy import select  # noqa: E402

from tests.support.class_captions import add_captioned_memes  # noqa: E402
from tests.support.synthetic_runs import add_labels  # noqa: E402
from workbench.analysis import learner, queue_orders  # noqa: E402
from workbench.config import load_settings  # noqa: E402
from workbench.store import db  # noqa: E402
from workbench.store.labels import LabelContext, add_label  # noqa: E402
from workbench.store.schema import Prediction  # noqa: E402

ORDERS = ("random", "unsure", "likely-toxic")
ANNOTATOR = "sim"


def fresh_settings(root: Path):  # noqa: ANN201
    os.environ["WORKBENCH_DB_URL"] = f"sqlite:///{root / 'wb.sqlite3'}"
    os.environ["WORKBENCH_MEMES_DIR"] = str(root / "memes")
    os.environ["WORKBENCH_ARTEFACTS_DIR"] = str(root / "artefacts")
    (root / "memes").mkdir(parents=True)
    settings = load_settings()
    db.upgrade(settings.db_url)
    return settings


def held_out_f1(settings, run_id: int, test: dict[int, str]) -> float:  # noqa: ANN001
    with db.read_scope(settings.db_url) as session:
        said = dict(session.execute(select(Prediction.image_id, Prediction.label)
                                    .where(Prediction.run_id == run_id, Prediction.image_id.in_(list(test)))).all())
    ids = sorted(test)
    return float(f1_score([test[i] == "toxic" for i in ids], [said.get(i) == "toxic" for i in ids]))


def build(root: Path, n: int, n_test: int, seed: int):  # noqa: ANN201
    settings = fresh_settings(root)
    with db.session_scope(settings.db_url) as session:
        truth = add_captioned_memes(session, n, seed=seed)
    ids = sorted(truth)
    random.Random(seed).shuffle(ids)
    test = {i: truth[i] for i in ids[:n_test]}
    return settings, truth, test


def simulate(root: Path, order: str, args: argparse.Namespace, seed: int) -> dict:
    settings, truth, test = build(root, args.n, args.test, seed)
    rng = random.Random(seed + 1)
    labelled: list[int] = []
    curve: list[tuple[int, float]] = []
    refresh_s: list[float] = []
    pool_order = [i for i in sorted(truth) if i not in test]
    random.Random(seed).shuffle(pool_order)

    def label(i: int, ctx: LabelContext) -> None:
        said = truth[i] if rng.random() >= args.noise else ("toxic" if truth[i] == "non_toxic" else "non_toxic")
        with db.session_scope(settings.db_url) as session:
            add_label(session, i, said, ANNOTATOR, context=ctx)
        labelled.append(i)

    for i in pool_order[:args.seed_labels]:  # the same random start for every order
        label(i, LabelContext("random"))
    while len(labelled) < args.budget:
        t0 = time.perf_counter()
        result = learner.refresh(settings)
        refresh_s.append(time.perf_counter() - t0)
        curve.append((len(labelled), held_out_f1(settings, result.run_id, test)))
        with db.session_scope(settings.db_url) as session:
            ordering = queue_orders.build_queue(session, ANNOTATOR, order, seed=seed)
        # one person with k = 1: random / filename walk every meme (as on the Label page, which moves on
        # from the position); the annotator takes the next ones not labelled yet
        done = set(labelled)
        batch = [i for i in ordering.ids if i not in test and i not in done][:args.every]
        if not batch:
            break
        for rank, i in enumerate(batch, start=1):
            label(i, LabelContext(order, rank, ordering.scores.get(i), i in ordering.random_picks))
    result = learner.refresh(settings)
    curve.append((len(labelled), held_out_f1(settings, result.run_id, test)))
    found = {b: sum(truth[i] == "toxic" for i in labelled[:b]) for b in args.budgets if b <= len(labelled)}
    return {"curve": curve, "found": found, "refresh_s": statistics.median(refresh_s) if refresh_s else 0.0}


def full_f1(root: Path, args: argparse.Namespace, seed: int) -> float:
    settings, truth, test = build(root, args.n, args.test, seed)
    with db.session_scope(settings.db_url) as session:
        add_labels(session, {i: lab for i, lab in truth.items() if i not in test}, ANNOTATOR)
    return held_out_f1(settings, learner.refresh(settings).run_id, test)


def labels_to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, f1 in curve if f1 >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="memes (pool + held-out)")
    ap.add_argument("--test", type=int, default=400, help="held-out memes, never labelled")
    ap.add_argument("--budget", type=int, default=400, help="labels per order")
    ap.add_argument("--every", type=int, default=20, help="refresh the learner every N labels")
    ap.add_argument("--seed-labels", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.02, help="share of the annotator's labels that are wrong")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    args.budgets = [b for b in (50, 100, 200, 400) if b <= args.budget]
    rows: dict[str, list[dict]] = {o: [] for o in ORDERS}
    targets = []
    with tempfile.TemporaryDirectory(prefix="bench-active-") as tmp:
        for seed in range(args.seeds):
            full = full_f1(Path(tmp) / f"full-{seed}", args, seed)
            targets.append(0.95 * full)
            for order in ORDERS:
                t0 = time.perf_counter()
                out = simulate(Path(tmp) / f"{order}-{seed}", order, args, seed)
                out["to_target"] = labels_to_target(out["curve"], 0.95 * full)
                out["final_f1"] = out["curve"][-1][1]
                rows[order].append(out)
                print(f"seed {seed} {order:12} F1 all labels {full:.3f}; to 95 %: {out['to_target']}; "
                      f"final F1 {out['final_f1']:.3f}; found {out['found']}; refresh {out['refresh_s']:.2f} s "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            db.dispose_all()

    def med(values: list) -> str:
        reached = [v for v in values if v is not None]
        if not reached:
            return f"not reached in {args.budget}"
        text = f"{statistics.median(reached):.0f}"
        return text if len(reached) == len(values) else f"{text} ({len(reached)} of {len(values)} seeds; the rest > {args.budget})"

    print(f"\n{args.n} memes ({args.test} held out), TF-IDF learner refreshed every {args.every} labels, "
          f"{args.seeds} seeds, exploration share {queue_orders.DEFAULT_EXPLORATION}, noise {args.noise}; "
          f"target = 95 % of the all-labels F1 (median {statistics.median(targets) / 0.95:.3f})")
    header = "| order | labels to target | " + " | ".join(f"toxic in first {b}" for b in args.budgets) + \
             " | F1 at budget | refresh (median s) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    base = {b: statistics.median([r["found"].get(b, 0) for r in rows["random"]]) for b in args.budgets}
    for order in ORDERS:
        found = [statistics.median([r["found"].get(b, 0) for r in rows[order]]) for b in args.budgets]
        cells = [f"{f:.0f} ({f / base[b]:.2f}×)" if base[b] else f"{f:.0f}" for f, b in zip(found, args.budgets)]
        print(f"| {order} | {med([r['to_target'] for r in rows[order]])} | " + " | ".join(cells) +
              f" | {statistics.median([r['final_f1'] for r in rows[order]]):.3f} | "
              f"{statistics.median([r['refresh_s'] for r in rows[order]]):.2f} |")


if __name__ == "__main__":
    main()
