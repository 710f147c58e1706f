"""``oblivio model fetch|verify``: provision and check the base model, offline."""

from __future__ import annotations

import argparse

from oblivio.gateway.cli.config import add_config_flags, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="provision the base model")
    actions = model.add_subparsers(dest="model_command", required=True)
    fetch = actions.add_parser("fetch", help="fetch + convert the default model (no-op when present)")
    add_config_flags(fetch)
    fetch.add_argument("--force", action="store_true", help="rebuild even if already present")
    fetch.set_defaults(handler=_fetch)
    verify = actions.add_parser("verify", help="load the configured model and ask it a question")
    add_config_flags(verify)
    verify.set_defaults(handler=_verify)


def _fetch(args: argparse.Namespace) -> int:
    from oblivio.gateway.serving.model_fetch import fetch_default_model

    config = config_from_args(args)
    if config.model.path is not None:
        print(f"model.path is set to {config.model.path}; nothing to fetch (use 'oblivio model verify').")
        return 0
    path = fetch_default_model(config.model_path, force=args.force)
    print(path)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from oblivio.gateway.serving.model_fetch import verify_model

    config = config_from_args(args)
    print(verify_model(config.model_path))
    return 0
