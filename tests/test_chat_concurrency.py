"""The control plane never starves under chat load (issue 17).

Before, one server-wide ``maximum_concurrent_rpcs`` was shared by Chat, Admin and health: with
the server full of chat streams, ``Admin.ListForgetSets`` and the gRPC health check got
RESOURCE_EXHAUSTED, and a Kubernetes probe restarted a replica for being busy (HTTP likewise:
uvicorn's limit of twice as many connections refused ``/health``). Now the limit
(``server.max_concurrent_requests``) counts chat calls only. Over real sockets: a gateway with
a limit of 3 holds 3 chat streams; more chat calls are refused, while health and Admin still
answer; once the streams end, chat is admitted again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import httpx
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


@pytest.fixture
async def small_gateway(model_path, reference_backend, tmp_path):
    """A gateway over the reference backend that admits ``LIMIT`` chat calls at once."""
    config = serving_config(model_path, tmp_path, **{"server.max_concurrent_requests": LIMIT})
    async with started_gateway(config, reference_backend) as gateway:
        yield gateway


async def test_health_and_admin_answer_while_chat_is_at_its_limit(small_gateway):
    gateway = small_gateway
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
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


async def _hold_stream(http: httpx.AsyncClient, stack: contextlib.AsyncExitStack) -> int:
    """Open one streamed chat completion and keep it open (until ``stack`` closes); its status."""
    body = {"messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
            "max_tokens": 1500, "stream": True}
    response = await stack.enter_async_context(http.stream("POST", "/v1/chat/completions", json=body))
    if response.status_code == 200:
        await anext(response.aiter_lines())  # the first event: the server is streaming it
    else:
        await response.aread()
    return response.status_code


async def test_http_health_answers_while_chat_is_at_its_limit(small_gateway):
    """Twice the limit of HTTP chat streams (what uvicorn's old limit admitted, then it refused
    /health too): the limit's worth stream, the rest are refused, /health and /v1/models answer."""
    limits = httpx.Limits(max_connections=4 * LIMIT)
    async with httpx.AsyncClient(base_url=small_gateway.http_url, timeout=120, limits=limits) as http, \
            contextlib.AsyncExitStack() as held:
        statuses = await asyncio.gather(*(_hold_stream(http, held) for _ in range(2 * LIMIT)))
        assert sorted(statuses) == [200] * LIMIT + [503] * LIMIT, statuses
        refused = await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503, refused.text
        assert f"limit of {LIMIT} concurrent chat calls" in refused.json()["error"]["message"], refused.text
        probes = await asyncio.gather(*(http.get("/health") for _ in range(2 * LIMIT)), http.get("/v1/models"))
        assert [r.status_code for r in probes] == [200] * (2 * LIMIT + 1), [r.text for r in probes]
    async with httpx.AsyncClient(base_url=small_gateway.http_url, timeout=120) as http:
        async def admitted() -> bool:
            body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}
            return (await http.post("/v1/chat/completions", json=body)).status_code == 200

        for _ in range(100):  # the closed streams release their slots as the server notices
            if await admitted():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("chat was not admitted again after the held streams closed")
