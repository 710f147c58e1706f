"""No orphans (issue 17): kill -9 of ``oblivio serve`` on the vLLM backend must not leave vLLM's
EngineCore (about 5 GB) running to compete with the restarted server.

A real server process with a real vLLM engine (about a minute to start on CPU), killed with
SIGKILL: every process it had started must be gone shortly after.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from fixtures_backends import VLLM_MEMORY_SHARE
from oblivio.eval.server_client import start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# The EngineCore checks its parent every 0.5 s, then has 5 s to shut down before it is killed.
ORPHAN_BOUND_S = 30


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    survivors = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                survivors.append(process)
        except psutil.NoSuchProcess:
            pass
    return survivors


def test_kill_9_of_the_gateway_leaves_no_vllm_process(model_path: Path, tmp_path: Path) -> None:
    env = {
        "OBLIVIO_HOME": str(tmp_path),
        "OBLIVIO_ENGINE__BACKEND": "vllm",
        "OBLIVIO_ENGINE__MEMORY_SHARE": str(VLLM_MEMORY_SHARE),
        "OBLIVIO_MODEL__MAX_MODEL_LEN": "512",
    }
    server = start_server(model_path, tmp_path / "artifacts", tmp_path / "serve.log", extra_env=env)
    children = psutil.Process(server.process.pid).children(recursive=True)
    try:
        commands = [" ".join(child.cmdline()) for child in children]
        assert any("multiprocessing" in command for command in commands), commands  # the EngineCore
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        killed = time.monotonic()
        while _alive(children) and time.monotonic() < killed + ORPHAN_BOUND_S:
            time.sleep(0.2)
        survivors = _alive(children)
        assert not survivors, [(p.pid, " ".join(p.cmdline())) for p in survivors]
        print(f"all {len(children)} processes of the server gone {time.monotonic() - killed:.1f}s after its SIGKILL")
    finally:
        server.stop()
        for process in _alive(children):  # never leave them behind, even when the test fails
            process.kill()
