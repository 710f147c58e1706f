"""``oblivio eval ...``: benchmarks. Each benchmark adds one sub-subcommand here.

The product's CLI (``oblivio.gateway.cli``) only names ``eval`` and imports this module when an
eval subcommand runs, handing it everything after ``eval``; so the product does not depend on
its benchmarks. Heavy imports happen inside handlers.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

HELP = "run benchmarks and write reports under eval/reports/"


def run(argv: Sequence[str]) -> int:
    """``oblivio eval <argv>``; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


def build_parser() -> argparse.ArgumentParser:
    evaluate = argparse.ArgumentParser(prog="oblivio eval", description=HELP)
    actions = evaluate.add_subparsers(dest="eval_command", required=True)
    detector = actions.add_parser(
        "detector",
        help="detector quality on real TOFU data: catch and false-fire rates at the default threshold, ROC PNGs",
    )
    from oblivio.eval.detector_real import build_parser as build_tofu_parser

    build_tofu_parser(detector)
    detector.set_defaults(handler=_detector)
    generated = actions.add_parser(
        "detector-generated",
        help="secondary detector table on generated people: near/far AUROC vs a baseline, privacy attack, cost",
    )
    from oblivio.eval.bench_detector import build_parser

    build_parser(generated)
    generated.set_defaults(handler=_detector_generated)
    continual = actions.add_parser(
        "continual",
        help="sequential forget requests through a real server: forgetting, utility, TOFU metrics, cost",
    )
    from oblivio.eval.continual import add_arguments

    add_arguments(continual)
    continual.set_defaults(handler=_continual)
    tofu = actions.add_parser(
        "tofu",
        help="TOFU end to end: forget01/05/10 as sequential requests through a real server, "
             "Forget Quality and Model Utility against baselines, PNG plots",
    )
    from oblivio.eval.tofu_unlearning import add_arguments as add_tofu_arguments

    add_tofu_arguments(tofu)
    tofu.set_defaults(handler=_tofu)
    return evaluate


def _detector(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from oblivio.eval.detector_real import main_from_args

    print(main_from_args(args, shlex.join(["oblivio", *sys.argv[1:]])))
    return 0


def _detector_generated(args: argparse.Namespace) -> int:
    import sys

    from oblivio.eval.bench_detector import run

    args.argv = ["oblivio", *sys.argv[1:]]
    print(run(args))
    return 0


def _continual(args: argparse.Namespace) -> int:
    from oblivio.eval.continual import run_from_args

    return run_from_args(args, "oblivio eval continual")


def _tofu(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from oblivio.eval.tofu_unlearning import run_from_args

    return run_from_args(args, shlex.join(["oblivio", *sys.argv[1:]]))
