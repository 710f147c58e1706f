"""Regenerate (or verify) the committed Python stubs of ``oblivio.proto``.

Usage::

    python -m oblivio.v1.codegen           # rewrite oblivio_pb2.py, oblivio_pb2.pyi, oblivio_pb2_grpc.py
    python -m oblivio.v1.codegen --check   # exit 1 if the committed stubs differ from a fresh run

The stubs are committed so that installing the package needs no protoc step; the ``--check``
mode (run by tests/test_proto.py) keeps them from silently drifting from the ``.proto``.
Generation uses ``grpc_tools.protoc`` from the environment, so it is reproducible for a given
grpcio-tools version.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# protoc must see the file as ``oblivio/v1/oblivio.proto`` so that the generated grpc module
# imports ``oblivio.v1.oblivio_pb2`` (the installed import name of this folder).
PROTO_ROOT = PACKAGE_DIR.parent.parent
PROTO_FILE = "oblivio/v1/oblivio.proto"
GENERATED = ("oblivio_pb2.py", "oblivio_pb2.pyi", "oblivio_pb2_grpc.py")


class CodegenError(RuntimeError):
    """protoc failed; the message carries its exit status."""


def generate(out_root: Path) -> dict[str, bytes]:
    """Run protoc into ``out_root`` and return the generated files' contents by name."""
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(PROTO_ROOT / PROTO_FILE),
    ]
    status = protoc.main(args)
    if status != 0:
        raise CodegenError(f"protoc exited with status {status} for {PROTO_ROOT / PROTO_FILE}")
    out_dir = out_root / "oblivio" / "v1"
    return {name: (out_dir / name).read_bytes() for name in GENERATED}


def stale_files() -> list[str]:
    """Names of committed stubs that differ from (or are missing versus) a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    stale = []
    for name, content in fresh.items():
        committed = PACKAGE_DIR / name
        if not committed.exists() or committed.read_bytes() != content:
            stale.append(name)
    return stale


def write_stubs() -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    written = []
    for name, content in fresh.items():
        target = PACKAGE_DIR / name
        target.write_bytes(content)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oblivio.v1.codegen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the committed stubs are current")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(
                f"stale generated stubs: {', '.join(stale)}; run `python -m oblivio.v1.codegen`",
                file=sys.stderr,
            )
            return 1
        print("generated stubs are current")
        return 0
    for path in write_stubs():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
