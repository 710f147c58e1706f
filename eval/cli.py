"""``oblivio eval ...``: benchmarks. Each benchmark adds one sub-subcommand here.

Heavy imports happen inside handlers so ``oblivio --help`` stays instant.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser("eval", help="run benchmarks and write reports under eval/reports/")
    actions = evaluate.add_subparsers(dest="eval_command", required=True)
    detector = actions.add_parser(
        "detector",
        help="detector quality (held-out paraphrases, near/far AUROC vs baseline), privacy and cost",
    )
    from oblivio.eval.bench_detector import build_parser

    build_parser(detector)
    detector.set_defaults(handler=_detector)
    continual = actions.add_parser(
        "continual",
        help="sequential forget requests through a real server: forgetting, utility, TOFU metrics, cost",
    )
    from oblivio.eval.continual import add_arguments

    add_arguments(continual)
    continual.set_defaults(handler=_continual)


def _detector(args: argparse.Namespace) -> int:
    import sys

    from oblivio.eval.bench_detector import run

    args.argv = ["oblivio", *sys.argv[1:]]
    print(run(args))
    return 0


def _continual(args: argparse.Namespace) -> int:
    from oblivio.eval.continual import run_from_args

    return run_from_args(args, "oblivio eval continual")
