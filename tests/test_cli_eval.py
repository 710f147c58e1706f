"""The product's CLI finds the eval subcommands without importing the benchmarks."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_does_not_import_eval_until_an_eval_command_runs() -> None:
    code = (
        "import sys\n"
        "from oblivio.gateway.cli.main import build_parser\n"
        "assert 'eval' in build_parser().format_help()\n"
        "assert not [m for m in sys.modules if m.startswith('oblivio.eval')], 'eval imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_eval_help_comes_from_the_benchmarks_parser() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "oblivio.gateway.cli", "eval", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert out.startswith("usage: oblivio eval") and "detector-generated" in out
