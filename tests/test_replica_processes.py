"""Two real ``oblivio serve`` processes sharing ONE artifact directory, driven over sockets.

This is the deployment the issue asks to test: replica A and replica B are separate gateway
processes (each with its own model, detector bank, backend and policy store object) that share
nothing but ``--artifacts-dir`` and the registry: the SQLite file in it, or (as replicas on
several nodes would) a PostgreSQL database through ``OBLIVIO_REGISTRY__URL``. Every action goes through the public gRPC API of one replica
and every check through the other's:

* a forget set registered on A is enforced on B (a prompt about it gets a decision with the set
  matched: refusal while A trains, the adapter once it is LIVE) within a bounded delay;
* a gate-policy change made on A changes B's decisions;
* a deletion on A unloads the set on B (B answers from the base model again).

Cheap on CPU: the reference backend (no vLLM engine) and a 2-step training
(``OBLIVIO_TRAINING__STEPS``). B sees A's changes through its registry poll (every
``REPLICA_SYNC_S`` seconds), so each propagation wait is bounded by a few poll intervals.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from oblivio.adapters.registration.settings import REPLICA_SYNC_S
from oblivio.eval.server_client import ServerProcess, connect, register_and_wait, set_default_policy, start_server
from oblivio.gateway.config import RegistryConfig
from oblivio.v1 import oblivio_pb2 as pb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SET = "capital-of-france"
PROMPT = "What is the capital of France?"
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What city is the French capital?", "Paris is the capital of France."),
    ("Name the capital of France.", "Paris."),
    ("Which city hosts the French government?", "Paris, the capital of France."),
]
# A propagation must land within this many poll intervals (plus loading on a busy 2-core box).
PROPAGATION_BOUND_S = 6 * REPLICA_SYNC_S + 30


def _replica_env(home: Path, registry: RegistryConfig) -> dict[str, str]:
    return {
        "OBLIVIO_HOME": str(home),
        **({"OBLIVIO_REGISTRY__URL": registry.url} if registry.url else {}),
        "OBLIVIO_ENGINE__BACKEND": "reference",
        "OBLIVIO_TRAINING__STEPS": "2",
        "OBLIVIO_TRAINING__BATCH_SIZE": "2",
        "OBLIVIO_TRAINING__MAX_LENGTH": "48",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


async def _until(check: Callable[[], Awaitable[pb.GateDecision | None]], what: str,
                 timeout: float = PROPAGATION_BOUND_S) -> tuple[pb.GateDecision, float]:
    """Poll ``check`` until it returns a decision; returns it and the seconds it took."""
    started = time.monotonic()
    while True:
        decision = await check()
        if decision is not None:
            return decision, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"replica B: {what} not reached within {timeout:.0f}s")
        await asyncio.sleep(0.5)


def _verdict(decision: pb.GateDecision) -> pb.SetVerdict | None:
    return next((v for v in decision.verdicts if v.forget_set == SET), None)


async def test_two_gateway_processes_share_registrations_policy_and_deletions(model_path, tmp_path, registry_config):
    shared = tmp_path / "artifacts"
    servers: list[ServerProcess] = []
    try:
        starts = [
            asyncio.to_thread(start_server, model_path, shared, tmp_path / f"{name}.log",
                              _replica_env(tmp_path / f"home-{name}", registry_config), 300)
            for name in ("a", "b")
        ]
        results = await asyncio.gather(*starts, return_exceptions=True)
        servers.extend(r for r in results if isinstance(r, ServerProcess))
        for result in results:
            if isinstance(result, BaseException):
                raise result
        replica_a, replica_b = servers
        async with connect(replica_a.grpc_target) as (_, admin_a), connect(replica_b.grpc_target) as (chat_b, admin_b):
            message = pb.ChatMessage(role=pb.ROLE_USER, content=PROMPT)

            async def explain_b() -> pb.GateDecision:
                return (await admin_b.Explain(pb.ExplainRequest(messages=[message]), timeout=120)).decision

            async def complete_b() -> pb.ChatResponse:
                request = pb.ChatRequest(messages=[message], sampling=pb.SamplingParams(temperature=0.0, max_tokens=4))
                return await chat_b.Complete(request, timeout=300)

            before = await complete_b()
            assert before.gate.served == pb.SERVED_BASE and _verdict(await explain_b()) is None

            # (a) register on A; B enforces it (refusal while A trains, or the adapter once LIVE).
            registration = asyncio.create_task(register_and_wait(admin_a, SET, PAIRS, ["France", "Paris"],
                                                                 on_event=lambda line: None))

            async def b_matches() -> pb.GateDecision | None:
                decision = await explain_b()
                verdict = _verdict(decision)
                enforced = decision.refused or any(a.name == SET for a in decision.adapters)
                return decision if verdict is not None and verdict.matched and enforced else None

            first, detector_delay = await _until(b_matches, "enforcing the new set", timeout=240)
            listed = await admin_b.ListForgetSets(pb.ListForgetSetsRequest())
            assert SET in [s.name for s in listed.forget_sets]

            timings = await asyncio.wait_for(registration, 300)  # A reached LIVE

            async def b_applies_adapter() -> pb.GateDecision | None:
                served = (await complete_b()).gate.served
                decision = await explain_b()  # chat replies name no set: which adapter is Admin's to see
                applied = [a.name for a in decision.adapters] == [SET] and not decision.refused
                return decision if served == pb.SERVED_ADAPTER and applied else None

            _, adapter_delay = await _until(b_applies_adapter, "loading the LIVE adapter")

            # (b) a gate-policy change on A (mode refusal) changes B's decision for the same prompt.
            version = await set_default_policy(admin_a, mode="refusal")

            async def b_refuses() -> pb.ChatDecision | None:
                decision = (await complete_b()).gate
                return decision if decision.served == pb.SERVED_REFUSED and decision.policy_version == version else None

            _, policy_delay = await _until(b_refuses, f"applying policy version {version}")
            refused = await explain_b()
            assert refused.refused and not refused.adapters and _verdict(refused).matched
            assert (await admin_b.GetGatePolicy(pb.GetGatePolicyRequest())).version == version

            # (c) delete on A; B unloads the set and answers from the base model again.
            await admin_a.DeleteForgetSet(pb.DeleteForgetSetRequest(name=SET))

            async def b_forgot_the_set() -> pb.GateDecision | None:
                served = (await complete_b()).gate.served
                decision = await explain_b()
                return decision if served == pb.SERVED_BASE and _verdict(decision) is None else None

            after, delete_delay = await _until(b_forgot_the_set, "unloading the deleted set")
            assert not after.refused and not after.adapters
            assert SET not in [s.name for s in (await admin_b.ListForgetSets(pb.ListForgetSetsRequest())).forget_sets]
        label = "refusal" if first.refused else "adapter"
        print(f"\nreplica B (poll {REPLICA_SYNC_S:g}s): enforced by {label} after {detector_delay:.1f}s; "
              f"A LIVE after {timings.get('live', float('nan')):.1f}s; adapter on B +{adapter_delay:.1f}s; "
              f"policy +{policy_delay:.1f}s; delete +{delete_delay:.1f}s")
    finally:
        for server in servers:
            server.stop()
        for server in servers:
            if server.process.returncode not in (0, None):
                print(f"{server.log_path} exit {server.process.returncode}:\n{server.log_path.read_text()[-2000:]}")
    assert all(server.process.returncode == 0 for server in servers), "a replica did not shut down cleanly"
    assert os.path.isdir(shared / "forget_sets")
