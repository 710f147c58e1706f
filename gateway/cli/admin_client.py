"""What every operator command shares: flags to reach a gateway's Admin API, a blocking client
with the right address, credentials and deadline, and one way to report errors.

Address defaults to the configured ``server.host:server.grpc_port``; the admin token to
``$OBLIVIO_ADMIN_TOKEN`` or the first configured admin token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oblivio.gateway.cli.config import add_config_flags, config_from_args
from oblivio.gateway.input_files import InputFileError


class CliInputError(ValueError):
    """A flag or input file is malformed; printed without a traceback."""


def add_admin_flags(parser: argparse.ArgumentParser, *, json_flag: bool) -> None:
    add_config_flags(parser)
    parser.add_argument("--address", help="gateway gRPC address host:port (default from config)")
    parser.add_argument("--token", help="admin bearer token (default $OBLIVIO_ADMIN_TOKEN)")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate to verify a TLS gateway")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per call (default 300)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print the raw response as JSON")


class AdminClient:
    """A blocking Admin stub with the address, credentials and deadline the flags ask for."""

    def __init__(self, args: argparse.Namespace) -> None:
        import grpc

        from oblivio.v1 import oblivio_pb2_grpc

        address, token, tls_ca = args.address, args.token or os.environ.get("OBLIVIO_ADMIN_TOKEN"), args.tls_ca
        if address is None or token is None:
            config = config_from_args(args)
            if address is None:
                host = config.server.host
                address = f"[{host}]:{config.server.grpc_port}" if ":" in host else f"{host}:{config.server.grpc_port}"
            if token is None and config.auth.admin_tokens:
                token = config.auth.admin_tokens[0]
        if tls_ca is not None:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(tls_ca.read_bytes()))
        else:
            self.channel = grpc.insecure_channel(address)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = args.timeout
        self.address = address
        self.stub = oblivio_pb2_grpc.AdminStub(self.channel)

    def call(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, timeout=self.timeout, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()


def run_admin_command(args: argparse.Namespace, body: Callable[[AdminClient], int | None], prog: str) -> int:
    """Run ``body`` with a connected client; print errors as ``prog: ...`` and map exit codes."""
    import grpc

    try:
        admin = AdminClient(args)
    except (OSError, CliInputError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        return int(body(admin) or 0)
    except (CliInputError, InputFileError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            details = f"cannot reach the gateway at {admin.address}: {details}"
        print(f"{prog}: {code.name if code else 'ERROR'}: {details}", file=sys.stderr)
        return 1
    finally:
        admin.close()


def message_to_json(message: Any) -> str:
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2)
