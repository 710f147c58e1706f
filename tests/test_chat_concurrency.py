"""The control plane never starves under chat load (issue 17).

Before, one server-wide ``maximum_concurrent_rpcs`` was shared by Chat, Admin and health: with
the server full of chat streams, ``Admin.ListForgetSets`` and the gRPC health check got
RESOURCE_EXHAUSTED, and a Kubernetes probe restarted a replica for being busy. Now the limit
(``server.max_concurrent_requests``) counts Chat calls only. Over a real socket: a gateway with
a limit of 3 holds 3 chat streams; a 4th chat call is refused, while health, reflection and
Admin still answer; once the streams end, chat is admitted again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fixtures_reliability import user_request
from fixtures_serving import serving_config, started_gateway
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc

pytestmark = pytest.mark.slow

LIMIT = 3


async def _until(condition: Any, timeout: float = 60) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def test_health_and_admin_answer_while_chat_is_at_its_limit(model_path, reference_backend, tmp_path):
    config = serving_config(model_path, tmp_path, **{"server.max_concurrent_requests": LIMIT})
    async with started_gateway(config, reference_backend) as gateway, \
            grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        chat, limit = oblivio_pb2_grpc.ChatStub(channel), gateway.grpc.chat_limit
        # Long generations behind the reference backend's one-at-a-time lock: all stay in progress.
        held = [chat.StreamComplete(user_request("Tell me a long story about the sea.", max_tokens=1500), timeout=600)
                for _ in range(LIMIT)]
        try:
            await _until(lambda: limit.active == LIMIT)

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await chat.Complete(user_request("Say hi.", max_tokens=2), timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
            assert f"limit of {LIMIT} concurrent chat calls" in refused.value.details(), refused.value.details()

            # The control plane answers at once, several calls side by side.
            health = health_pb2_grpc.HealthStub(channel)
            admin = oblivio_pb2_grpc.AdminStub(channel)
            replies = await asyncio.gather(
                *(health.Check(health_pb2.HealthCheckRequest(service=s), timeout=10)
                  for s in ("", "oblivio.v1.Chat", "oblivio.v1.Admin")),
                *(admin.ListForgetSets(pb.ListForgetSetsRequest(), timeout=10) for _ in range(2 * LIMIT)),
                admin.GetGatePolicy(pb.GetGatePolicyRequest(), timeout=10),
            )
            assert [r.status for r in replies[:3]] == [health_pb2.HealthCheckResponse.SERVING] * 3
            assert all(list(r.forget_sets) == [] for r in replies[3:-1])
            assert limit.active == LIMIT  # none of that took a chat slot
        finally:
            for call in held:
                call.cancel()
        await _until(lambda: limit.active == 0)
        answer = await chat.Complete(user_request("Say hi.", max_tokens=2), timeout=120)
        assert answer.usage.completion_tokens >= 1
