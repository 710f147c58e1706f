"""Running one registration step (LoRA training, detector fit) in a child process.

Why a child: its torch threads, memory and GIL are its own, so the serving process keeps its
cores, its detector lock and its memory while the step runs, and stopping the step (a deleted
set, a server shutdown) is one kill instead of a thread that cannot be interrupted.

Protocol (the child side is ``oblivio.adapters.child_entry``): ``python -m MODULE SPEC.json``;
stdout carries one JSON object per line: any number of ``{"event": "progress", ...}``, then
``{"event": "done", "report": {...}}`` or ``{"event": "error", "message": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Read by oblivio.adapters.child_entry in the child.
NICE_ENV = "OBLIVIO_CHILD_NICE"
PARENT_ENV = "OBLIVIO_CHILD_PARENT"
THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

ProgressHandler = Callable[[dict[str, Any]], None]
ProcessHandler = Callable[["asyncio.subprocess.Process | None"], None]


class ChildFailed(RuntimeError):
    """The child exited without a report; the message is its error or last stderr line."""


def child_environment(threads: int, nice: int) -> dict[str, str]:
    """The child's environment: ``threads`` BLAS/OpenMP threads, its priority and our pid."""
    env = dict(os.environ)
    for var in THREAD_ENVS:
        env[var] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # No preexec_fn: running Python between fork and exec in a process with gRPC threads can
    # crash the child. The child lowers its own priority and arms its death signal.
    env[NICE_ENV] = str(nice)
    env[PARENT_ENV] = str(os.getpid())
    return env


async def run_child(
    module: str,
    spec_path: Path,
    *,
    threads: int,
    nice: int,
    on_progress: ProgressHandler,
    on_process: ProcessHandler,
    what: str,
) -> dict[str, Any]:
    """Run ``python -m module spec_path`` and return its report.

    ``on_progress`` gets every progress message; ``on_process`` gets the running process (so
    a deletion can kill it) and ``None`` once it is gone. Cancelling the awaiting task kills
    the child. Raises :class:`ChildFailed` ("``what`` failed: ...") when it reports no result.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, str(spec_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_environment(threads, nice),
    )
    on_process(proc)
    report: dict[str, Any] | None = None
    error = ""
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.ensure_future(proc.stderr.read())  # drain so the child never blocks
    try:
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("{"):
                continue
            message = json.loads(line)
            if message.get("event") == "progress":
                on_progress(message)
            elif message.get("event") == "done":
                report = message["report"]
            elif message.get("event") == "error":
                error = message["message"]
        await proc.wait()
    except BaseException:
        stderr_task.cancel()
        raise
    finally:
        if proc.returncode is None:  # cancelled (deleted, shutting down) or the protocol broke
            proc.kill()
            await proc.wait()
        on_process(None)
    stderr = (await stderr_task).decode(errors="replace")
    if proc.returncode != 0 or report is None:
        tail = error or next(iter(stderr.strip().splitlines()[-1:]), f"exit code {proc.returncode}")
        raise ChildFailed(f"{what} failed: {tail}")
    return report
