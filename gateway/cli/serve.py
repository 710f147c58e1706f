"""``oblivio serve``: start gRPC + OpenAI-compatible HTTP on one core, print the addresses."""

from __future__ import annotations

import argparse

from oblivio.gateway.cli.config import add_config_flags, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the gateway (fetches the default model if needed)")
    add_config_flags(serve)
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int)
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--backend", choices=["vllm", "reference"], help="generation backend")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from oblivio.gateway.api.server import run_server

    config = config_from_args(
        args,
        **{
            "server.host": args.host,
            "server.grpc_port": args.grpc_port,
            "server.http_port": args.http_port,
            "engine.backend": args.backend,
        },
    )
    return run_server(config)
