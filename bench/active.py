"""How many labels a simulated annotator needs to reach a target out-of-fold F1 when the
memes come in random order vs "models unsure first" — side by side, in one run.

The data: cached-feature-like vectors (sklearn's make_classification: 64 dimensions, 8 of
them informative, one Gaussian cluster per class, 30 % toxic, 2 % of the oracle's labels
flipped) — the setting of a linear head on cached embeddings. The simulated annotator is an
oracle that returns each item's (sometimes wrong) label.

Orders compared (each labels `--batch` items at a time, then the head is refit):
    random           the queue's random order
    unsure (static)  workbench's `unsure` order over one fixed zero-shot-like run (a weak
                     model fit on 200 separate, noisier items), as when no head is refreshed
    unsure (head)    the same score (workbench.analysis.queue_orders.uncertainty) from a
                     logistic-regression head refit on the labels so far, every batch —
                     the "refresh a head every N labels" mode

Out-of-fold F1: 5 folds; for each, the pool is the other four folds and the F1 is measured
on the held-out fold, which is never labeled. The F1 at a budget pools the five held-out
folds' predictions. Target: `--target`, or 95 % of the F1 with every pool item labeled
(per data set).

    .venv/bin/python bench/active.py [--n 3000] [--batch 20] [--seeds 3] [--target 0.8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workbench.analysis.queue_orders import uncertainty  # noqa: E402 - the repo root is on sys.path now

ORDERS = ("random", "unsure (static)", "unsure (head)")
SEED_LABELS = 20  # labeled at random first, so a head can be fit at all


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) to label, and (x0, y0): 200 noisier items a zero-shot-like model is fit on."""
    x, y = make_classification(n_samples=n + 200, n_features=64, n_informative=8, n_redundant=8, n_clusters_per_class=1,
                               class_sep=0.6, weights=[0.7, 0.3], flip_y=0.02, random_state=seed)
    rng = np.random.default_rng(seed)
    y0 = y[n:].copy()
    flip = rng.random(200) < 0.2
    y0[flip] = 1 - y0[flip]
    return x[:n], y[:n], x[n:], y0


def head(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    return LogisticRegression(max_iter=500, class_weight="balanced").fit(x, y)


def simulate(order: str, x: np.ndarray, y: np.ndarray, pool: np.ndarray, test: np.ndarray, budgets: list[int],
             static_prob: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Held-out predictions on `test` at each budget, the pool labeled in `order`."""
    pool = rng.permutation(pool)
    labeled = list(pool[:SEED_LABELS])
    while len(set(y[labeled])) < 2:  # the seed needs both classes
        labeled.append(pool[len(labeled)])
    seeded = set(labeled)
    rest = [i for i in pool if i not in seeded]
    out: dict[int, np.ndarray] = {}
    for budget in budgets:
        while len(labeled) < budget and rest:
            batch = min(budget - len(labeled), len(rest))
            if order == "random":
                take = list(range(batch))
            else:
                prob = static_prob[rest] if order == "unsure (static)" else head(x[labeled], y[labeled]).predict_proba(
                    x[rest])[:, 1]
                take = list(np.argsort(-uncertainty(prob), kind="stable")[:batch])
            chosen = set(take)
            labeled += [rest[t] for t in take]
            rest = [r for t, r in enumerate(rest) if t not in chosen]
        out[budget] = head(x[labeled], y[labeled]).predict(x[test])
    return out


def curves(x: np.ndarray, y: np.ndarray, x0: np.ndarray, y0: np.ndarray, budgets: list[int], seed: int) -> dict:
    """Out-of-fold F1 per order and budget, and with every pool item labeled."""
    static_prob = head(x0, y0).predict_proba(x)[:, 1]  # one zero-shot-like run over everything
    folds = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y))
    result = {}
    for order in ORDERS:
        preds = {b: np.empty(len(y), dtype=int) for b in budgets}
        for f, (pool, test) in enumerate(folds):
            got = simulate(order, x, y, pool, test, budgets, static_prob, np.random.default_rng(seed * 100 + f))
            for b in budgets:
                preds[b][test] = got[b]
        result[order] = {b: f1_score(y, preds[b]) for b in budgets}
    full = np.empty(len(y), dtype=int)
    for pool, test in folds:
        full[test] = head(x[pool], y[pool]).predict(x[test])
    result["all labels"] = f1_score(y, full)
    return result


def labels_to(target: float, curve: dict[int, float]) -> int | None:
    return next((b for b in sorted(curve) if curve[b] >= target), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="items (memes) the annotator could label")
    parser.add_argument("--batch", type=int, default=20, help="labels between head refits (N)")
    parser.add_argument("--max-labels", type=int, default=1600, help="largest budget simulated")
    parser.add_argument("--seeds", type=int, default=3, help="data sets / orders averaged")
    parser.add_argument("--target", type=float, default=None,
                        help="target out-of-fold F1 (default: 95%% of the F1 with all labels, per data set)")
    args = parser.parse_args()
    budgets = list(range(SEED_LABELS + args.batch, args.max_labels + 1, args.batch))
    t0 = time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        x, y, x0, y0 = make_data(args.n, seed)
        runs.append(curves(x, y, x0, y0, budgets, seed))
    targets = [args.target if args.target is not None else round(0.95 * r["all labels"], 3) for r in runs]
    print(f"{args.n} items, {args.seeds} data sets, 5 folds, a head refit every {args.batch} labels "
          f"({time.perf_counter() - t0:.0f} s)")
    print("out-of-fold F1 with every pool item labeled: " + ", ".join(f"{r['all labels']:.3f}" for r in runs)
          + "; targets " + ", ".join(f"{t:.3f}" for t in targets) + "\n")
    shown = [b for b in budgets if b in (60, 100, 200, 300, 400, 600, 800, 1000, 1200, 1600)]
    print(f"{'labels':>7} " + " ".join(f"{o:>16}" for o in ORDERS) + "   (mean out-of-fold F1)")
    for b in shown:
        print(f"{b:7d} " + " ".join(f"{statistics.mean(r[o][b] for r in runs):16.3f}" for o in ORDERS))
    print(f"\nlabels needed to reach the target (per data set; — = not within {args.max_labels})")
    needed = {}
    for order in ORDERS:
        needed[order] = [labels_to(t, r[order]) for t, r in zip(targets, runs)]
        reached = [n for n in needed[order] if n is not None]
        mean = f"mean {statistics.mean(reached):.0f}" if len(reached) == len(runs) else "not always reached"
        print(f"  {order:16} {', '.join('—' if n is None else str(n) for n in needed[order]):24} {mean}")
    for order in ORDERS[1:]:
        pairs = [(r, u) for r, u in zip(needed["random"], needed[order]) if r is not None and u is not None]
        if pairs:
            ratio = statistics.mean(u / r for r, u in pairs)
            print(f"  {order} needs {ratio:.2f}x the labels of the random order (where both reached it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
