"""``oblivio registry copy``: move the forget-set registry from the embedded SQLite file into
the configured PostgreSQL database (the step before pointing replicas on several nodes at it).

Why a command: a gateway pointed at an empty database while the artifact store holds sets
refuses to start (it cannot tell a lost registry from a new one), so the rows must be there
first. Stop the gateways, copy, then start them with ``registry.url`` set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from oblivio.gateway.cli.config import add_config_flags, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    registry = subparsers.add_parser("registry", help="manage the forget-set registry")
    actions = registry.add_subparsers(dest="registry_command", required=True)
    copy = actions.add_parser(
        "copy", help="copy a SQLite registry into the configured (empty) PostgreSQL registry (gateways stopped)"
    )
    add_config_flags(copy)
    copy.add_argument("--from", dest="source", type=Path,
                      help="the SQLite registry file (default: registry.db in the artifact directory)")
    copy.set_defaults(handler=_copy)


def _copy(args: argparse.Namespace) -> int:
    from oblivio.adapters.registry import RegistryStateError
    from oblivio.adapters.registry_factory import REGISTRY_FILE, open_registry
    from oblivio.adapters.registry_sqlite import SqliteRegistry

    config = config_from_args(args)
    if not config.registry.url:
        print("oblivio: registry.url names no PostgreSQL database to copy into (set it, e.g. OBLIVIO_REGISTRY__URL)",
              file=sys.stderr)
        return 2
    source_path = args.source or config.artifacts_path / REGISTRY_FILE
    if not source_path.is_file():
        print(f"oblivio: no SQLite registry at {source_path}", file=sys.stderr)
        return 2
    try:
        source = SqliteRegistry(source_path)
        try:
            target = open_registry(config.artifacts_path, config.registry)
            try:
                sets, jobs = target.copy_from(source)
            finally:
                target.close()
        finally:
            source.close()
    except RegistryStateError as exc:
        print(f"oblivio: {exc}", file=sys.stderr)
        return 1
    print(f"copied {sets} forget sets and {jobs} registration jobs from {source.location} to {target.location}")
    return 0
