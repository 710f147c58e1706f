"""The OpenAI-compatible endpoint, driven by the real ``openai`` client over a socket."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


async def test_models_lists_the_served_model(openai_client, serving_gateway) -> None:
    models = await openai_client.models.list()
    assert [m.id for m in models.data] == [serving_gateway.runtime.config.model.served_name]


async def test_non_streaming_completion(openai_client, serving_gateway) -> None:
    model = serving_gateway.runtime.config.model.served_name
    raw = await openai_client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=12, temperature=0
    )
    completion = raw.parse()
    assert "Paris" in completion.choices[0].message.content
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 12
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    extension = completion.model_extra["oblivio"]
    assert extension["decision"] == "base" and extension["refused"] is False
    assert extension["policy_version"] >= 1
    assert raw.headers["x-oblivio-decision"].startswith("base;")
    assert raw.headers["x-oblivio-policy-version"] == str(extension["policy_version"])


async def test_streaming_completion_matches_non_streaming(openai_client, serving_gateway) -> None:
    model = serving_gateway.runtime.config.model.served_name
    full = await openai_client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=12)
    stream = await openai_client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].model_extra["oblivio"]["decision"] == "base"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


async def test_sse_wire_format(serving_gateway) -> None:
    """Plain HTTP clients see ``data:`` events ending in ``[DONE]`` and the decision header."""
    body = {"model": serving_gateway.runtime.config.model.served_name, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    async with httpx.AsyncClient(base_url=serving_gateway.http_url, timeout=60) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "x-oblivio-decision" in response.headers
            lines = [line async for line in response.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"messages": []}, openai.BadRequestError, "messages"),
        ({"messages": MESSAGES, "max_tokens": 100_000}, openai.BadRequestError, "context length"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, openai.BadRequestError, "role"),
        ({"messages": MESSAGES, "temperature": -1}, openai.BadRequestError, "temperature"),
        ({"messages": MESSAGES, "n": 2}, openai.BadRequestError, "n must be 1"),
        ({"messages": MESSAGES, "model": "gpt-4"}, openai.NotFoundError, "not served"),
        ({"messages": MESSAGES, "seed": 2**70}, openai.BadRequestError, "seed: must fit in a signed 64-bit integer"),
    ],
    ids=["empty", "too-long", "bad-role", "bad-temperature", "n", "unknown-model", "huge-seed"],
)
async def test_bad_requests_get_openai_errors(openai_client, serving_gateway, kwargs, error, fragment) -> None:
    kwargs = {"model": serving_gateway.runtime.config.model.served_name, **kwargs}
    with pytest.raises(error) as failure:
        await openai_client.chat.completions.create(**kwargs)
    assert fragment in failure.value.body["message"]
    assert failure.value.body["type"] == "invalid_request_error"


async def test_metrics_and_health_endpoints(serving_gateway, openai_client) -> None:
    await openai_client.chat.completions.create(
        model=serving_gateway.runtime.config.model.served_name, messages=MESSAGES, max_tokens=2
    )
    async with httpx.AsyncClient(base_url=serving_gateway.http_url, timeout=30) as client:
        health = await client.get("/health")
        metrics = await client.get("/metrics")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert metrics.status_code == 200
    assert 'oblivio_gate_decisions_total{decision="base"}' in metrics.text
    assert 'oblivio_requests_total{code="ok",endpoint="http.chat_completions"}' in metrics.text


def _json(body: dict) -> bytes:
    """JSON as clients send it: a lone surrogate goes out as its ``\\uD800`` escape."""
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("raw", "param", "fragment"),
    [
        (_json({"messages": [{"role": "user", "content": "Hi \ud800"}]}), "messages[0].content", "must be valid Unicode text"),
        (_json({"model": "\udfff", "messages": MESSAGES}), "model", "must be valid Unicode text"),
        (_json({"messages": MESSAGES, "stop": "\ud800"}), "stop", "must be valid Unicode text"),
        (_json({"messages": MESSAGES, "stop": ["ok", "\ud800"]}), "stop[1]", "must be valid Unicode text"),
        (_json({"messages": MESSAGES, "seed": -(2**63) - 1}), "seed", "must fit in a signed 64-bit integer"),
        (_json({"messages": MESSAGES, "stream": "yes"}), "stream", "valid boolean"),
        (_json({"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": "true"}}),
         "stream_options.include_usage", "valid boolean"),
        (b"\xff\xfe not json", None, "JSON object in UTF-8"),
        (b"[1, 2]", None, "must be a JSON object"),
    ],
    ids=["surrogate-content", "surrogate-model", "surrogate-stop", "surrogate-stop-list", "small-seed", "stream-string",
         "include-usage-string", "not-utf8", "not-object"],
)
async def test_malformed_bodies_get_400_naming_the_field(serving_gateway, raw: bytes, param: str | None, fragment: str) -> None:
    """Each once got a 500 (TypeError, or a plain-text 500), a retryable 503, or was accepted."""
    async with httpx.AsyncClient(base_url=serving_gateway.http_url, timeout=60) as client:
        response = await client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert fragment in error["message"]


async def test_int64_seed_bounds_are_served(openai_client, serving_gateway) -> None:
    model = serving_gateway.runtime.config.model.served_name
    for seed in (2**63 - 1, -(2**63)):
        completion = await openai_client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, seed=seed)
        assert completion.choices[0].finish_reason in ("stop", "length")
