"""The gate in the serving path: real detector bank + real gate + reference backend, over sockets.

A prompt about the forget set must get the adapter (and the output the backend produces with
exactly that adapter), an unrelated prompt the base model; refusal mode answers with the
refusal text; a failing detector falls back per on_detector_error; concurrent requests share
one detector forward.
"""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from fixtures_serving import GATED_SET
from oblivio.gateway.gate import decision as gate
from oblivio.gateway.serving.backends.base import AdapterApplication, SamplingSettings
from oblivio.gateway.serving.chat_core import Message
from oblivio.gateway.serving.metrics import forget_set_metric_id
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc

pytestmark = pytest.mark.slow

ON_TOPIC = "What is the capital of France?"
OFF_TOPIC = "How do I bake sourdough bread at home?"
MAX_TOKENS = 8


def _request(text: str) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=text)],
        sampling=pb.SamplingParams(max_tokens=MAX_TOKENS),
    )


async def _direct_text(gateway, text: str, adapters: tuple[tuple[str, float], ...]) -> str:
    """What the backend itself says for this prompt with these adapters (no gateway)."""
    chat = gateway.runtime.chat
    ids = chat.render([Message("user", text)])
    stream = chat.backend.generate(ids, SamplingSettings(max_tokens=MAX_TOKENS), AdapterApplication(adapters), "direct")
    return "".join([chunk.text async for chunk in stream])


async def _explain(channel: grpc.aio.Channel, text: str) -> pb.GateDecision:
    """The per-set decision for ``text``, as operators see it (chat responses carry no detail)."""
    admin = oblivio_pb2_grpc.AdminStub(channel)
    return (await admin.Explain(pb.ExplainRequest(messages=_request(text).messages), timeout=120)).decision


async def test_matching_prompt_gets_the_adapter_and_its_output(gated_gateway) -> None:
    async with grpc.aio.insecure_channel(gated_gateway.grpc_target) as channel:
        stub = oblivio_pb2_grpc.ChatStub(channel)
        on = await stub.Complete(_request(ON_TOPIC), timeout=120)
        off = await stub.Complete(_request(OFF_TOPIC), timeout=120)
        on_detail, off_detail = await _explain(channel, ON_TOPIC), await _explain(channel, OFF_TOPIC)
    assert on.gate.served == pb.SERVED_ADAPTER and off.gate.served == pb.SERVED_BASE
    (verdict,) = on_detail.verdicts
    assert verdict.forget_set == GATED_SET and verdict.matched and verdict.score >= 0.5
    assert [(a.name, a.scale) for a in on_detail.adapters] == [(GATED_SET, verdict.scale)]
    assert verdict.scale > 0 and "adapter at scale" in verdict.reason
    assert on.text == await _direct_text(gated_gateway, ON_TOPIC, ((GATED_SET, verdict.scale),))
    assert on.text != await _direct_text(gated_gateway, ON_TOPIC, ()), "the adapter must change the answer"
    (off_verdict,) = off_detail.verdicts
    assert not off_verdict.matched and not off_detail.adapters
    assert off.text == await _direct_text(gated_gateway, OFF_TOPIC, ())


async def test_chat_responses_name_no_forget_set_and_no_score(gated_gateway) -> None:
    """A chat key must not confirm a forgotten fact by its score nor list the forget sets: the
    decision reaches chat clients only as base / adapter / refusal, on both doors."""
    async with grpc.aio.insecure_channel(gated_gateway.grpc_target) as channel:
        stub = oblivio_pb2_grpc.ChatStub(channel)
        unary = await stub.Complete(_request(ON_TOPIC), timeout=120)
        chunks = [c async for c in stub.StreamComplete(_request(ON_TOPIC), timeout=120)]
    assert unary.gate.served == chunks[0].gate.served == pb.SERVED_ADAPTER
    assert unary.gate.policy_version == chunks[0].gate.policy_version >= 1
    body = {"messages": [{"role": "user", "content": ON_TOPIC}], "max_tokens": MAX_TOKENS}
    async with httpx.AsyncClient(base_url=gated_gateway.http_url, timeout=120) as http:
        plain = await http.post("/v1/chat/completions", json=body)
        streamed = await http.post("/v1/chat/completions", json={**body, "stream": True})
    assert plain.json()["oblivio"] == {
        "decision": "adapter", "refused": False, "policy_version": unary.gate.policy_version, "detector_error": False,
    }
    assert plain.headers["x-oblivio-decision"] == f"adapter; policy_version={unary.gate.policy_version}"
    wire = [unary.SerializeToString(), *(c.SerializeToString() for c in chunks),
            plain.content, streamed.content, str(plain.headers).encode(), str(streamed.headers).encode()]
    for payload in wire:
        assert GATED_SET.encode() not in payload and b"score" not in payload


async def test_metrics_label_sets_by_opaque_id_not_name(gated_gateway) -> None:
    async with httpx.AsyncClient(base_url=gated_gateway.http_url, timeout=120) as http:
        await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": ON_TOPIC}], "max_tokens": 1})
        scraped = (await http.get("/metrics")).text
    assert GATED_SET not in scraped
    assert f'oblivio_detector_score_count{{forget_set_id="{forget_set_metric_id(GATED_SET)}"}}' in scraped


async def test_refusal_mode_answers_with_the_refusal_text(gated_gateway) -> None:
    store = gated_gateway.runtime.policy_store
    before = store.current().version
    store.update(GATED_SET, {"mode": "refusal"})
    try:
        async with grpc.aio.insecure_channel(gated_gateway.grpc_target) as channel:
            stub = oblivio_pb2_grpc.ChatStub(channel)
            refused = await stub.Complete(_request(ON_TOPIC), timeout=60)
            chunks = [c async for c in stub.StreamComplete(_request(ON_TOPIC), timeout=60)]
            allowed = await stub.Complete(_request(OFF_TOPIC), timeout=120)
        async with httpx.AsyncClient(base_url=gated_gateway.http_url, timeout=60) as http:
            response = await http.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": ON_TOPIC}], "max_tokens": 8}
            )
    finally:
        store.rollback(before)
    assert refused.text == gate.REFUSAL_TEXT
    assert refused.finish_reason == pb.FINISH_REASON_REFUSED and refused.gate.served == pb.SERVED_REFUSED
    assert refused.usage.completion_tokens == 0
    assert refused.gate.policy_version > before
    assert "".join(c.delta for c in chunks) == gate.REFUSAL_TEXT
    assert chunks[-1].finish_reason == pb.FINISH_REASON_REFUSED
    assert allowed.gate.served == pb.SERVED_BASE and allowed.text != gate.REFUSAL_TEXT
    body = response.json()
    assert body["choices"][0]["message"]["content"] == gate.REFUSAL_TEXT
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["oblivio"]["refused"] is True
    assert response.headers["x-oblivio-decision"].startswith("refusal;")


async def test_detector_failure_fails_closed(gated_gateway, monkeypatch) -> None:
    """A detector fault (injected: it cannot be caused from outside) must not serve the base model."""
    bank = gated_gateway.runtime.detector

    def broken(prompts):
        raise RuntimeError("feature model crashed")

    monkeypatch.setattr(bank, "score", broken)
    async with grpc.aio.insecure_channel(gated_gateway.grpc_target) as channel:
        response = await oblivio_pb2_grpc.ChatStub(channel).Complete(_request(OFF_TOPIC), timeout=120)
        detail = await _explain(channel, OFF_TOPIC)
    assert response.gate.detector_error and response.gate.served == pb.SERVED_ADAPTER
    policy = gated_gateway.runtime.policy_store.current()
    assert policy.on_detector_error == "fail_closed"
    assert detail.detector_error
    assert [(a.name, a.scale) for a in detail.adapters] == [(GATED_SET, max(policy.scale_grid))]


async def test_concurrent_requests_share_one_detector_forward(gated_gateway, monkeypatch) -> None:
    bank = gated_gateway.runtime.detector
    real_score = bank.score
    batches: list[int] = []

    def counting(prompts):
        batches.append(len(prompts))
        return real_score(prompts)

    monkeypatch.setattr(bank, "score", counting)
    prompts = [ON_TOPIC, OFF_TOPIC, "Tell me about Paris.", "What is a good name for a dog?", "Name a French city."]
    chat = gated_gateway.runtime.chat
    outcomes = await asyncio.gather(*(chat.evaluate([Message("user", p)]) for p in prompts))
    assert sum(batches) == len(prompts)
    assert len(batches) <= 2, f"expected batched detector calls, got batch sizes {batches}"
    alone = await chat.evaluate([Message("user", OFF_TOPIC)])
    assert outcomes[1].decision.verdicts[0].score == pytest.approx(alone.decision.verdicts[0].score, abs=1e-4)
