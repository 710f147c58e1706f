"""The child process each set's current step runs in, tracked so that a deletion can kill it.

Why tracked per set: a fit or a training of a deleted set would go on burning the host's
cores for minutes and then publish artifacts nobody wants; the deletion kills it instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oblivio.adapters.child_process import run_child
from oblivio.adapters.registration.progress import JobProgress
from oblivio.adapters.registry import State

# A progress message -> (fraction of the step done, the text watchers see).
Describe = Callable[[dict[str, Any]], tuple[float, str]]


class StepProcesses:
    """Runs registration steps as child processes (``oblivio.adapters.child_process``) at ``nice``."""

    def __init__(self, progress: JobProgress, *, nice: int) -> None:
        self.progress = progress
        self.nice = nice
        self._running: dict[str, asyncio.subprocess.Process] = {}

    async def run(
        self, name: str, job_id: str, module: str, spec_path: Path, *, threads: int, state: State,
        span: tuple[float, float], what: str, describe: Describe,
    ) -> dict[str, Any]:
        """Run ``python -m module spec_path`` for the set's job and return its report.

        ``describe`` turns each progress message into the job's progress within ``span`` and a
        ``state`` event.
        """
        low, high = span

        def on_progress(message: dict[str, Any]) -> None:
            done, text = describe(message)
            self.progress.report(name, job_id, state, low + (high - low) * min(max(done, 0.0), 1.0), text)

        def on_process(proc: asyncio.subprocess.Process | None) -> None:
            if proc is None:
                self._running.pop(name, None)
            else:
                self._running[name] = proc

        return await run_child(module, spec_path, threads=threads, nice=self.nice, on_progress=on_progress,
                               on_process=on_process, what=what)

    def kill(self, name: str) -> None:
        """Kill the set's running step, if any (its job then fails or is cancelled)."""
        proc = self._running.get(name)
        if proc is not None and proc.returncode is None:
            proc.kill()
