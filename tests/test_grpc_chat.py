"""gRPC Chat, health and reflection over a real socket, on the reference backend."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


def _request(question: str = QUESTION, max_tokens: int = 12, **kwargs: object) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=question)],
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        **kwargs,
    )


def _sample(gateway, name: str, labels: dict[str, str]) -> float:
    return gateway.runtime.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_unary_complete_answers_and_reports_decision(grpc_channel) -> None:
    stub = oblivio_pb2_grpc.ChatStub(grpc_channel)
    response = await stub.Complete(_request(), timeout=120)
    assert "Paris" in response.text
    assert response.id.startswith("chatcmpl-")
    assert response.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert response.usage.prompt_tokens > 5
    assert 0 < response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    # No forget sets registered: base model, not refused, under the store's first policy.
    assert response.gate.served == pb.SERVED_BASE and not response.gate.detector_error
    assert response.gate.policy_version >= 1


async def test_stream_matches_unary_and_frames_decision_and_usage(grpc_channel) -> None:
    stub = oblivio_pb2_grpc.ChatStub(grpc_channel)
    unary = await stub.Complete(_request(), timeout=120)
    chunks = [chunk async for chunk in stub.StreamComplete(_request(request_id="stream-1"), timeout=120)]
    assert len(chunks) >= 2
    assert "".join(c.delta for c in chunks) == unary.text  # greedy: same text either way
    assert chunks[0].HasField("gate") and chunks[0].gate.policy_version >= 1
    assert all(not c.HasField("gate") for c in chunks[1:])
    assert all(c.id == "stream-1" for c in chunks)
    assert chunks[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens


async def test_health_reports_serving(grpc_channel) -> None:
    stub = health_pb2_grpc.HealthStub(grpc_channel)
    for service in ("", "oblivio.v1.Chat", "oblivio.v1.Admin"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_services(grpc_channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    replies = [r async for r in stub.ServerReflectionInfo(requests(), timeout=30)]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"oblivio.v1.Chat", "oblivio.v1.Admin", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (pb.ChatRequest(), grpc.StatusCode.INVALID_ARGUMENT, "at least one message"),
        (
            pb.ChatRequest(messages=[pb.ChatMessage(content="hi")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "messages[0].role",
        ),
        (_request(max_tokens=100_000), grpc.StatusCode.INVALID_ARGUMENT, "context length"),
        (
            pb.ChatRequest(
                messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hi")],
                sampling=pb.SamplingParams(top_p=0.0),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_p",
        ),
        (_request(model="gpt-4"), grpc.StatusCode.NOT_FOUND, "not served"),
    ],
    ids=["no-messages", "no-role", "too-many-tokens", "bad-top-p", "unknown-model"],
)
async def test_bad_input_is_rejected_with_a_clear_status(grpc_channel, request_, code, fragment) -> None:
    stub = oblivio_pb2_grpc.ChatStub(grpc_channel)
    for call in (stub.Complete(request_, timeout=30), stub.StreamComplete(request_, timeout=30)):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            result = await call if not hasattr(call, "__aiter__") else [c async for c in call]
            del result
        assert failure.value.code() == code
        assert fragment in failure.value.details()


def _with_undecodable_stop() -> bytes:
    """A ChatRequest whose stop string is not UTF-8 (a client below the generated stubs can
    send it; the stubs cannot): SamplingParams.stop = b"\\xff" appended as field 2."""
    valid = pb.ChatRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER, content=QUESTION)]).SerializeToString()
    return valid + bytes([0x12, 3, 0x22, 1, 0xFF])


@pytest.mark.parametrize("method", ["Complete", "StreamComplete"])
async def test_undecodable_request_is_invalid_argument(grpc_channel, method: str) -> None:
    """gRPC's own answer to an unparseable message is UNKNOWN, which reads as a server fault."""
    call = (grpc_channel.unary_unary if method == "Complete" else grpc_channel.unary_stream)(
        f"/oblivio.v1.Chat/{method}", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        result = call(_with_undecodable_stop(), timeout=60)
        if method == "Complete":
            await result
        else:
            [_ async for _ in result]
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad UTF-8" in failure.value.details()


async def test_int64_seed_bounds_are_served(grpc_channel) -> None:
    stub = oblivio_pb2_grpc.ChatStub(grpc_channel)
    for seed in (2**63 - 1, -(2**63)):
        request = _request(max_tokens=2)
        request.sampling.seed = seed
        response = await stub.Complete(request, timeout=120)
        assert response.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


async def test_cancelling_a_stream_stops_generation(serving_gateway, grpc_channel) -> None:
    stub = oblivio_pb2_grpc.ChatStub(grpc_channel)
    endpoint = {"endpoint": "grpc.StreamComplete"}
    cancelled_before = _sample(serving_gateway, "oblivio_requests_total", {**endpoint, "code": "cancelled"})
    tokens_before = _sample(serving_gateway, "oblivio_tokens_total", {**endpoint, "kind": "completion"})
    call = stub.StreamComplete(_request("Write a very long story about a dragon.", max_tokens=1000), timeout=120)
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            call.cancel()
            break
    # The server sees the cancellation, closes the backend stream and records it.
    deadline = time.monotonic() + 30
    while _sample(serving_gateway, "oblivio_requests_total", {**endpoint, "code": "cancelled"}) == cancelled_before:
        assert time.monotonic() < deadline, "server never recorded the cancelled stream"
        await asyncio.sleep(0.05)
    generated = _sample(serving_gateway, "oblivio_tokens_total", {**endpoint, "kind": "completion"}) - tokens_before
    assert generated < 100, f"backend kept generating after cancel ({generated} tokens)"
    # The reference backend serialises requests: had the cancelled one kept going, this short
    # request would queue behind ~1000 tokens (minutes on this CPU) and miss its deadline.
    response = await oblivio_pb2_grpc.ChatStub(grpc_channel).Complete(_request(max_tokens=4), timeout=120)
    assert response.usage.completion_tokens >= 1


async def test_deadline_exceeded_aborts_the_request(serving_gateway, grpc_channel) -> None:
    stub = oblivio_pb2_grpc.ChatStub(grpc_channel)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.Complete(_request("Write a very long story about a dragon.", max_tokens=1000), timeout=1.0)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    in_flight = {"endpoint": "grpc.Complete"}
    deadline = time.monotonic() + 30
    while _sample(serving_gateway, "oblivio_requests_in_flight", in_flight) > 0:
        assert time.monotonic() < deadline, "request still running after its deadline"
        await asyncio.sleep(0.05)
    response = await stub.Complete(_request(max_tokens=4), timeout=120)
    assert response.usage.completion_tokens >= 1


async def test_concurrent_requests_all_complete(grpc_channel) -> None:
    stub = oblivio_pb2_grpc.ChatStub(grpc_channel)
    questions = [f"Name a colour. ({i})" for i in range(4)]
    results = await asyncio.gather(*(stub.Complete(_request(q, max_tokens=6), timeout=120) for q in questions))
    assert all(r.usage.completion_tokens >= 1 for r in results)
    assert len({r.id for r in results}) == len(questions)


async def test_gateway_over_vllm_streams_over_both_front_doors(vllm_backend, model_path, tmp_path) -> None:
    """The same gateway on the shared vLLM engine: gRPC unary + stream and the OpenAI client agree."""
    from openai import AsyncOpenAI

    from fixtures_serving import serving_config
    from oblivio.gateway.api.server import Gateway

    config = serving_config(model_path, tmp_path, **{"engine.backend": "vllm"})
    gateway = await Gateway.create(config, backend=vllm_backend, detector=None)
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
            stub = oblivio_pb2_grpc.ChatStub(channel)
            unary = await stub.Complete(_request(), timeout=120)
            chunks = [c async for c in stub.StreamComplete(_request(), timeout=120)]
        client = AsyncOpenAI(base_url=f"{gateway.http_url}/v1", api_key="unused", max_retries=0)
        stream = await client.chat.completions.create(
            model=config.model.served_name, messages=[{"role": "user", "content": QUESTION}],
            max_tokens=12, temperature=0, stream=True,
        )
        http_text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
    finally:
        await gateway.stop(grace=5)
    assert "Paris" in unary.text
    assert "".join(c.delta for c in chunks) == unary.text == http_text
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens
    assert await vllm_backend.healthy(), "stopping the gateway must leave the shared engine running"
