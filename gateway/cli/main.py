"""The ``oblivio`` command: one entry point, one module per subcommand group.

Each subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``handler`` (a callable taking the parsed namespace and returning an exit code). Heavy imports
happen inside handlers so ``oblivio --help`` stays instant.

``eval`` is only named here: its parser lives with the benchmarks (``oblivio.eval.cli``), which
are imported when an eval subcommand runs, so the product does not depend on them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from oblivio.gateway.cli import forget, gate, model, registry, serve
from oblivio.gateway.config import ConfigError

SUBCOMMAND_MODULES = (model, serve, gate, forget, registry)
EVAL_COMMAND = "eval"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oblivio", description="Gated unlearning server for LLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMAND_MODULES:
        module.register(subparsers)
    # No help of its own: `oblivio eval --help` is answered by the benchmarks' parser.
    subparsers.add_parser(EVAL_COMMAND, add_help=False, help="run benchmarks and write reports under eval/reports/")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != EVAL_COMMAND:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == EVAL_COMMAND:
            from oblivio.eval.cli import run

            return run(argv[argv.index(EVAL_COMMAND) + 1 :])
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"oblivio: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
