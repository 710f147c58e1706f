"""The ``oblivio`` command: one entry point, one module per subcommand group.

Each subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``handler`` (a callable taking the parsed namespace and returning an exit code). Heavy imports
happen inside handlers so ``oblivio --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from oblivio.gateway import cli_forget, cli_gate, cli_model, cli_registry, cli_serve
from oblivio.gateway.config import ConfigError
from oblivio.eval import cli as eval_cli

SUBCOMMAND_MODULES = (cli_model, cli_serve, cli_gate, cli_forget, cli_registry, eval_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oblivio", description="Gated unlearning server for LLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"oblivio: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
