"""The child side of ``oblivio.adapters.child_process``: what every step's ``main`` shares.

A step module calls :func:`child_main` with a function from its JSON spec to its report; this
lowers the child's priority, ties its life to the server's, and speaks the stdout protocol.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from oblivio.adapters.child_process import NICE_ENV, PARENT_ENV

_emit_lock = threading.Lock()  # a heartbeat thread and the main thread both emit


def emit(payload: Mapping[str, Any]) -> None:
    """One protocol message on stdout (one JSON object per line, whole lines only)."""
    line = json.dumps(payload) + "\n"
    with _emit_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def detach_safely() -> None:
    """Lower our priority and die with the server that started us (set by ``child_environment``).

    Done here rather than in a preexec hook because the parent is a multi-threaded gRPC
    process, where running Python between fork and exec is unsafe.
    """
    nice = int(os.environ.get(NICE_ENV, "0") or 0)
    if nice > 0:
        os.nice(nice)
    parent = os.environ.get(PARENT_ENV)
    if parent and os.name == "posix":
        if sys.platform.startswith("linux"):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != int(parent):  # the parent died before the signal was armed
            raise SystemExit(3)


def child_main(argv: Sequence[str] | None, run: Callable[[Mapping[str, Any]], Mapping[str, Any]], *, usage: str) -> int:
    """Run ``run(spec)`` for the spec file named on the command line and report the result.

    ``ValueError`` / ``FileNotFoundError`` (bad input, lost files) are reported as the step's
    error message; anything else is a crash whose traceback goes to stderr.
    """
    detach_safely()
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(f"usage: {usage}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    try:
        report = run(json.loads(Path(args[0]).read_text()))
    except (ValueError, FileNotFoundError) as exc:
        emit({"event": "error", "message": str(exc)})
        return 1
    emit({"event": "done", "report": dict(report)})
    return 0
