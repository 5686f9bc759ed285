"""`python -m workbench learn`: refresh the project's learner now, or store its settings
(the learner, N): the library calls of workbench.analysis.learner, which the Label page's
automatic refresh uses too."""

from __future__ import annotations

import argparse

from workbench.cli import CliError, in_session, print_json
from workbench.cli.team import actor_of, add_actor_option, authorize_job, run_as
from workbench.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    from workbench.analysis.learner import DEFAULT_EVERY, EMBEDDINGS, LEARNERS

    p = sub.add_parser("learn", help="refresh the learner now (train on the labels, score every meme), or set it up",
                       description="Trains the project's learner on the current consensus labels and stores a "
                                   "learner run: out-of-fold P(toxic) for labeled memes, full-fit P(toxic) for the "
                                   "others. --learner / --embedding store the project's choice (admins) and refresh "
                                   "with it; --every only stores N.")
    p.add_argument("--learner", choices=LEARNERS, default=None,
                   help="text-tfidf (OCR text) or head (cached embeddings); stored as the project's choice. "
                        "Default: the stored choice, else the head on the largest cached embedding set, else TF-IDF")
    p.add_argument("--embedding", choices=EMBEDDINGS, default=None,
                   help="the head's feature set (CLIP image / text / both / interaction, or vlm)")
    p.add_argument("--every", type=int, default=None, metavar="N",
                   help=f"only store the setting: refresh on its own after N new human labels (0 = off; "
                        f"default {DEFAULT_EVERY})")
    p.add_argument("--history", action="store_true",
                   help="refresh nothing: print the learning curve (out-of-fold F1 with its CI per refresh, by "
                        "labels), the estimate of toxic memes still unlabeled, and how the labels were chosen")
    p.add_argument("--json", action="store_true",
                   help='print {"run_id", "labels", "learner", "oof_f1", "oof_f1_ci": [lo, hi], "seconds"} '
                        '(with --history: {"curve": [...], "toxic_estimate": {...}, "labels_chosen": {...}})')
    add_actor_option(p)
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("suggestions", help="show or set the learner's suggestions (pre-labels) on the Label page",
                       description="Off by default. On: the Label page shows the newest learner run's class and "
                                   "P(toxic), and the A key accepts it. With overlap (k > 1) they stay off unless "
                                   "--in-overlap is given too. Admins only; audited.")
    p.add_argument("state", nargs="?", choices=("on", "off"), help="turn them on or off (omit to show)")
    p.add_argument("--in-overlap", action="store_true", help="also show them when k > 1")
    p.add_argument("--json", action="store_true")
    add_actor_option(p)
    p.set_defaults(func=cmd_suggestions)


def cmd_suggestions(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.analysis import suggestions

    if args.state is not None:
        run_as(settings, suggestions.set_suggestions, args.state == "on", args.in_overlap, actor_of(args))
    elif args.in_overlap:
        raise CliError("--in-overlap goes with `suggestions on`")
    setting = in_session(settings, suggestions.suggestion_setting)
    if args.json:
        return print_json(setting)
    print("suggestions: " + ("on" + (", also with overlap (k > 1)" if setting["in_overlap"] else
                                     ", off while k > 1") if setting["on"] else "off"))
    return 0


def cmd_learn(args: argparse.Namespace, settings: Settings) -> int:
    from workbench.analysis import learner

    if args.history:
        from workbench.analysis.learning_progress import learning_history

        history = in_session(settings, learning_history)
        if args.json:
            return print_json(history)
        print(history["labels_chosen"]["note"])
        for row in history["curve"]:
            f1 = "—" if row["oof_f1"] is None else f"{row['oof_f1']:.3f}"
            ci = "" if row["ci_low"] is None else f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
            print(f"run {row['run_id']}: {row['labels']} labels, out-of-fold F1 {f1}{ci} ({row['learner']})")
        if not history["curve"]:
            print("no learner refresh yet (python -m workbench learn)")
        if history["toxic_estimate"]:
            print(history["toxic_estimate"]["note"])
        return 0
    actor = actor_of(args)
    if args.embedding is not None and args.learner is None:
        args.learner = "head"
    if args.learner is not None:
        run_as(settings, learner.set_learner, args.learner, args.embedding, actor)
    if args.every is not None:
        run_as(settings, learner.set_refresh_every, args.every, actor)
        every = in_session(settings, learner.refresh_every)
        if args.json:
            return print_json({"every": every})
        print(f"learner refresh every: {every} human labels" + (" (off)" if every == 0 else ""))
        return 0
    authorize_job(args, settings, "learner", 0)
    try:
        result = learner.refresh(settings)
    except learner.LearnerRefused as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        return print_json(result.to_json())
    ci = f" [{result.oof_f1_ci[0]:.3f}, {result.oof_f1_ci[1]:.3f}]" if result.oof_f1_ci else ""
    f1 = f"{result.oof_f1:.3f}" if result.oof_f1 is not None else "—"
    print(f"learner run {result.run_id}: {result.description or result.learner}, {result.labels} labels, "
          f"out-of-fold F1 {f1}{ci}, {result.seconds:.1f} s")
    if result.lacking:
        print(f"  {result.lacking} memes lack the learner's input (no embedding): they rank after the scored ones")
    return 0
