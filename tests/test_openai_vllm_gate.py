"""The vLLM backend's HTTP front door (vLLM's own OpenAI layer behind oblivio's gate), over a real
socket with the real ``openai`` client, on the shared vLLM engine with one forget set live.

What the gate adds to vLLM's layer is checked here; vLLM's own OpenAI behaviours are checked by
the port of vLLM's tests (``test_openai_port_*``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from oblivio.gateway.gate import decision as gate
from oblivio.gateway.api.openai_http import DECISION_HEADER

pytestmark = pytest.mark.slow

FORGET_QUESTION = "What is the capital of France?"
BASE_QUESTION = "Name three colours of the rainbow."


@pytest.fixture(scope="module")
async def client(vllm_gated_gateway: Any) -> AsyncIterator[Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{vllm_gated_gateway.http_url}/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def http(vllm_gated_gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=vllm_gated_gateway.http_url, timeout=120) as http:
        yield http


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def _engine_answer(backend: Any, prompt_ids: list[int], adapters: tuple[tuple[str, float], ...]) -> str:
    """Greedy 16 tokens straight from the backend (no HTTP, no gate): what the front door must match."""
    from oblivio.gateway.serving.backends.base import AdapterApplication, SamplingSettings

    settings = SamplingSettings(max_tokens=16, temperature=0.0)
    chunks = backend.generate(prompt_ids, settings, AdapterApplication(adapters), "direct")
    return "".join([chunk.text async for chunk in chunks])


def _message(role: str, content: str) -> Any:
    from oblivio.gateway.serving.chat_core import Message

    return Message(role, content)


async def test_ungated_request_gets_exactly_the_base_models_answer(client: Any, vllm_gated_gateway: Any) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="oblivio-default", messages=_user(BASE_QUESTION), max_tokens=16, temperature=0)
    reply = raw.parse()
    assert raw.headers[DECISION_HEADER].startswith("base")
    assert reply.model_extra["oblivio"]["decision"] == "base"
    chat = vllm_gated_gateway.runtime.chat
    prompt_ids = chat.render([_message("user", BASE_QUESTION)])
    assert reply.choices[0].message.content == await _engine_answer(chat.backend, prompt_ids, ())


async def test_gated_request_gets_the_adapter_and_never_sees_its_name(client: Any, vllm_gated_gateway: Any) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="oblivio-default", messages=_user(FORGET_QUESTION), max_tokens=16, temperature=0)
    reply = raw.parse()
    assert raw.headers[DECISION_HEADER].startswith("adapter")
    assert reply.model == "oblivio-default"
    chat = vllm_gated_gateway.runtime.chat
    decision = await chat.explain([_message("user", FORGET_QUESTION)])
    prompt_ids = chat.render([_message("user", FORGET_QUESTION)])
    adapter_answer = await _engine_answer(chat.backend, prompt_ids, decision.adapters)
    assert reply.choices[0].message.content == adapter_answer
    assert adapter_answer != await _engine_answer(chat.backend, prompt_ids, ())


async def test_streamed_gated_request_reports_the_decision_in_its_first_chunk(client: Any) -> None:
    stream = await client.chat.completions.create(
        model="oblivio-default", messages=_user(FORGET_QUESTION), max_tokens=8, temperature=0, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].model_extra["oblivio"]["decision"] == "adapter"
    assert all(chunk.model == "oblivio-default" for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


async def test_gated_text_completion_gets_the_adapter_too(client: Any) -> None:
    raw = await client.completions.with_raw_response.create(
        model="oblivio-default", prompt=["Colours: red, green,", FORGET_QUESTION], max_tokens=4, temperature=0)
    assert raw.headers[DECISION_HEADER].startswith("adapter")
    assert len(raw.parse().choices) == 2


async def test_refusal_is_a_complete_openai_response(client: Any, vllm_gated_gateway: Any) -> None:
    store = vllm_gated_gateway.runtime.policy_store
    before = store.current().version
    store.update("serving-paris", {"mode": "refusal"})
    try:
        reply = await client.chat.completions.create(model="oblivio-default", messages=_user(FORGET_QUESTION), n=2)
        assert [c.message.content for c in reply.choices] == [gate.REFUSAL_TEXT] * 2
        assert {c.finish_reason for c in reply.choices} == {"content_filter"}
        assert reply.model_extra["oblivio"]["decision"] == "refusal"
        stream = await client.chat.completions.create(model="oblivio-default", messages=_user(FORGET_QUESTION),
                                                      stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == gate.REFUSAL_TEXT
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        completion = await client.completions.create(model="oblivio-default", prompt=FORGET_QUESTION)
        assert completion.choices[0].text == gate.REFUSAL_TEXT
    finally:
        store.rollback(before)


async def test_variant_names_and_other_models_are_refused(http: httpx.AsyncClient) -> None:
    listing = (await http.get("/v1/models")).json()
    assert [card["id"] for card in listing["data"]] == ["oblivio-default"]
    assert listing["data"][0]["max_model_len"] == 2048
    response = await http.post("/v1/chat/completions", json={"model": "oblivio-variant-1", "messages": _user("hi")})
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"


async def test_routes_that_would_bypass_the_gate_are_not_served(http: httpx.AsyncClient) -> None:
    for path in ("/inference/v1/generate", "/v1/responses", "/generate", "/pooling"):
        response = await http.post(path, json={"prompt": FORGET_QUESTION})
        assert response.status_code == 404, path
        assert "not served by oblivio" in response.json()["error"]["message"]
    assert (await http.post("/tokenize", json={"prompt": "hello"})).json()["count"] > 0
    assert (await http.get("/version")).status_code == 200


async def test_request_id_header_is_honoured(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", headers={"X-Request-Id": "trace-42"},
                               json={"messages": _user(BASE_QUESTION), "max_tokens": 2})
    assert response.headers["x-request-id"] == "trace-42"
    assert "trace-42" in response.json()["id"]


@pytest.mark.parametrize("stream", [False, True])
async def test_abandoned_request_is_aborted_within_a_second(vllm_gated_gateway: Any, stream: bool) -> None:
    backend = vllm_gated_gateway.runtime.backend
    body = {"messages": _user("Write a very long story about a lighthouse keeper."), "max_tokens": 1500,
            "temperature": 0, "ignore_eos": True, "stream": stream}
    async with httpx.AsyncClient(base_url=vllm_gated_gateway.http_url, timeout=120) as http:
        task = asyncio.create_task(http.post("/v1/chat/completions", json=body))
        deadline = time.monotonic() + 60
        while backend.num_unfinished_requests() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert backend.num_unfinished_requests() == 1
        task.cancel()
        gone_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
    while backend.num_unfinished_requests() and time.monotonic() - gone_at < 5:
        await asyncio.sleep(0.02)
    assert backend.num_unfinished_requests() == 0
    assert time.monotonic() - gone_at < 1.0


async def test_metrics_count_what_the_front_door_served(http: httpx.AsyncClient) -> None:
    """Decisions, finished requests and time to first token are recorded for vLLM-served calls too."""
    await http.post("/v1/completions", json={"prompt": "Colours: red, green,", "max_tokens": 2, "stream": True})
    text = (await http.get("/metrics")).text
    assert 'oblivio_requests_total{code="ok",endpoint="http.completions"}' in text
    assert 'oblivio_gate_decisions_total{decision="base"}' in text
    assert 'oblivio_time_to_first_token_seconds_count{endpoint="http.completions"}' in text


@pytest.mark.parametrize("stream", [False, True])
async def test_a_gated_request_stops_the_base_answer_begun_while_it_was_scored(
    vllm_gated_gateway: Any, http: httpx.AsyncClient, stream: bool
) -> None:
    """The front door starts vLLM on the base model while the detector scores; for a gated
    request that base answer is aborted in the engine, and none of it reaches the client."""
    backend = vllm_gated_gateway.runtime.backend
    # Earlier gated requests may have turned speculation off; a window of base traffic turns it on.
    for _ in range(8):
        base = await http.post("/v1/chat/completions", json={"messages": _user(BASE_QUESTION), "max_tokens": 1})
        assert base.headers[DECISION_HEADER].startswith("base")
    discarded_before = _speculations(await http.get("/metrics"), "discarded")
    body = {"messages": _user(FORGET_QUESTION), "max_tokens": 6, "temperature": 0, "stream": stream}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.headers[DECISION_HEADER].startswith("adapter")
    assert _speculations(await http.get("/metrics"), "discarded") == discarded_before + 1
    if stream:
        events = [line for line in response.text.splitlines() if line.startswith("data: {")]
        assert all('"model": "oblivio-default"' in e or '"model":"oblivio-default"' in e for e in events)
        assert response.text.count('"role":"assistant"') + response.text.count('"role": "assistant"') == 1
    else:
        assert len(response.json()["choices"]) == 1
    assert backend.num_unfinished_requests() == 0


async def test_a_run_of_gated_requests_stops_speculating(http: httpx.AsyncClient) -> None:
    """Speculation pays only for base answers: after a run of gated requests the front door stops
    starting base answers it would throw away, and base traffic turns it back on."""
    forget = {"messages": _user(FORGET_QUESTION), "max_tokens": 1}
    for _ in range(8):
        assert (await http.post("/v1/chat/completions", json=forget)).headers[DECISION_HEADER].startswith("adapter")
    skipped = _speculations(await http.get("/metrics"), "skipped")
    assert (await http.post("/v1/chat/completions", json=forget)).status_code == 200
    assert _speculations(await http.get("/metrics"), "skipped") == skipped + 1
    for _ in range(8):
        await http.post("/v1/chat/completions", json={"messages": _user(BASE_QUESTION), "max_tokens": 1})
    released = _speculations(await http.get("/metrics"), "released")
    assert (await http.post("/v1/chat/completions", json={"messages": _user(BASE_QUESTION), "max_tokens": 1})).status_code == 200
    assert _speculations(await http.get("/metrics"), "released") == released + 1


def _speculations(metrics: httpx.Response, outcome: str) -> float:
    """``oblivio_speculations_total{outcome=...}`` from a /metrics page (0 before the first)."""
    for line in metrics.text.splitlines():
        if line.startswith(f'oblivio_speculations_total{{outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
