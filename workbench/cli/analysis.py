"""Analysis commands: metrics per run with CIs and pairwise tests, the A/B disagreement
table, the suspected-label-issues queue, and annotator agreement (same library calls as
the Dashboard and Disagreements pages)."""

from __future__ import annotations

import argparse
from itertools import combinations
from typing import Any

from workbench.analysis.metrics import DEFAULT_N_BOOT
from workbench.cli import CliError, in_session, print_json
from workbench.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metrics", help="metrics per run vs the human consensus, with 95%% CIs, McNemar and kappa")
    p.add_argument("run_ids", nargs="*", type=int, metavar="RUN_ID", help="runs to evaluate (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--n-boot", type=int, default=DEFAULT_N_BOOT, help="bootstrap resamples for the CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (same seed, same CIs)")
    p.add_argument("--random-only", action="store_true",
                   help="only memes chosen at random (random order, exploration picks, folders, imports): an "
                        "unbiased estimate when most labels were chosen by a model-ranked queue")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("disagreements", help="run A vs run B: 2x2 right/wrong with McNemar p, label-error candidates")
    p.add_argument("run_a", type=int)
    p.add_argument("run_b", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_disagreements)

    p = sub.add_parser("label-issues", help="images whose human label the runs contradict, most confident first "
                       "(cleanlab's ranking where out-of-fold probabilities cover every labeled meme)")
    p.add_argument("run_ids", nargs="*", type=int, metavar="RUN_ID", help="runs to use (default: all)")
    p.add_argument("--min-score", type=float, default=0.5)
    p.add_argument("--top", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_label_issues)

    p = sub.add_parser("agreement", help="people's agreement with the consensus and with each other (kappa, "
                                        "Krippendorff's alpha); folder/import labels apart")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_agreement)


def _load(session, run_ids: list[int], truth=None):  # noqa: ANN001, ANN202
    from workbench.analysis.outcomes import list_runs, load_runs, load_truth

    known = [r.id for r in list_runs(session)]
    if not known:
        raise CliError("no model runs yet (run a predictor first: python -m workbench predict ...)")
    missing = sorted(set(run_ids) - set(known))
    if missing:
        raise CliError(f"no model run with id {', '.join(map(str, missing))} (known: {', '.join(map(str, known))})")
    return load_runs(session, run_ids or sorted(known), truth if truth is not None else load_truth(session))


def metrics_report(session, run_ids: list[int], n_boot: int = DEFAULT_N_BOOT, seed: int = 0,  # noqa: ANN001
                   random_only: bool = False) -> dict[str, Any]:
    """What `metrics --json` prints: one object per run, every pair's McNemar + kappa, and how
    the labels behind them were chosen (`labels_chosen`; `random_only`: random picks only)."""
    from workbench.analysis.outcomes import compare, latency, load_truth
    from workbench.store.label_choice import summarize_ids

    truth = load_truth(session, random_only=random_only)
    datas = _load(session, run_ids, truth)
    choice = summarize_ids(session, truth.image_ids)
    runs = []
    for data in datas:
        ev = data.evaluate(n_boot=n_boot, seed=seed)
        runs.append({"run_id": data.run.id, "kind": data.run.kind, "name": data.run.name,
                     "model_id": data.run.model_id, **ev.to_dict(), "latency": latency(data)})
    pairs = [compare(a, b).to_dict() for a, b in combinations(datas, 2)]
    return {"runs": runs, "pairs": pairs, "n_boot": n_boot, "seed": seed, "random_only": random_only,
            "labels_chosen": choice.to_dict(),
            "notes": "metrics on covered items (human label and a toxic/non_toxic answer); accuracy_strict counts "
                     "unknown/failed/missing as wrong; positive class: toxic"}


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.store.db import session_scope

    with session_scope(settings.db_url) as session:
        report = metrics_report(session, args.run_ids, n_boot=args.n_boot, seed=args.seed,
                                random_only=args.random_only)
    if args.json:
        return print_json(report)
    print(("Labels chosen at random only. " if args.random_only else "") + report["labels_chosen"]["note"])
    for r in report["runs"]:
        print(f"run #{r['run_id']} {r['kind']} · {r['name'] or r['model_id']}")
        print(f"  labeled {r['n_labeled']}, covered {r['n_covered']} (coverage {_fmt(r['coverage'])}), "
              f"unknown {r['n_unknown']}, failed {r['n_failed']}, missing {r['n_missing']}, "
              f"unlabeled predicted {r['n_unlabeled']}")
        for name in ("accuracy", "precision", "recall", "f1", "accuracy_strict"):
            print(f"  {name:16} {_fmt(r[name], r['ci'].get(name))}")
        if "roc_auc" in r:
            print(f"  {'roc_auc':16} {_fmt(r['roc_auc'], r['ci'].get('roc_auc'))}")
            print(f"  {'average_prec':16} {_fmt(r['average_precision'])}")
        m = r["confusion_matrix"]["matrix"]
        print(f"  confusion (rows human toxic/non_toxic, cols run): {m}")
    for p in report["pairs"]:
        mc = p["mcnemar"]
        print(f"#{p['a']} vs #{p['b']}: McNemar exact p={mc['pvalue']:.4g} (table {mc['table']}, "
              f"{mc['n_excluded']} excluded), kappa={_fmt(p['kappa'])} on {p['kappa_n']}")
    return 0


def cmd_disagreements(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.analysis.review import pair_table
    from workbench.store.db import session_scope

    with session_scope(settings.db_url) as session:
        a, b = _load(session, [args.run_a, args.run_b])
        table = pair_table(a, b)
    if args.json:
        return print_json(table.to_dict())
    for name, n in table.counts.items():
        print(f"{name:40} {n}")
    print(f"McNemar exact p = {table.mcnemar.pvalue:.4g}")
    return 0


def cmd_label_issues(args: argparse.Namespace, settings: Settings) -> int:
    import sys

    from sqlalchemy import select

    from workbench.analysis.review import label_issue_queue
    from workbench.store.db import read_scope
    from workbench.store.schema import Image

    with read_scope(settings.db_url) as session:  # cleanlab computes inside: a read_scope holds no write lock
        known = [d.run.id for d in _load(session, args.run_ids)]
        queue = label_issue_queue(session, known, min_score=args.min_score, limit=args.top)
        paths = dict(session.execute(select(Image.id, Image.path).where(Image.id.in_([x.image_id for x in queue.issues]))).all())
    rows = [{**x.to_dict(), "path": paths.get(x.image_id)} for x in queue.issues]
    print(queue.describe(), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        return print_json(rows)
    for r in rows:
        print(f"{r['score']:.3f}  {r['n_contradicting']}/{r['n_runs']} runs  human={r['human']:9}  {r['path']}")
    return 0


def cmd_agreement(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.analysis.outcomes import annotator_agreement
    from workbench.analysis.suggestions import anchoring

    report = in_session(settings, annotator_agreement)
    report["anchoring"] = in_session(settings, anchoring)
    if args.json:
        return print_json(report)
    for title, part in (("people", report), ("system annotators (folder names, annotations.csv)", report["system"])):
        if not part["annotators"]:
            continue
        print(f"{title}:")
        for r in part["annotators"]:
            print(f"  {r['annotator']:20} n={r['n_labels']:5}  vs consensus {_fmt(r['agreement_consensus'])} "
                  f"(kappa {_fmt(r['kappa_consensus'])})  vs others {_fmt(r['agreement_others'])} "
                  f"(kappa {_fmt(r['kappa_others'])}, n={r['n_with_others']})")
        for p in part["pairs"]:
            print(f"  {p['a']} × {p['b']}: n={p['n']} agreement {_fmt(p['agreement'])} kappa {_fmt(p['kappa'])}")
    overall = report["alpha"]["overall"]
    print(f"Krippendorff's alpha (people, memes labeled by 2+: {overall['n_memes']}): {_fmt(overall['alpha'])}")
    anchor = report["anchoring"]
    if anchor["shown"]["n"] or anchor["not_shown"]["n"]:
        print("anchoring: labels equal to the learner's class")
        for side, title in (("shown", "suggestion shown"), ("not_shown", "not shown")):
            part = anchor[side]
            print(f"  {title:17} {_fmt(part['rate'], part['ci'])} of {part['n']}")
    return 0
