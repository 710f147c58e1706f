"""Fast checks of the vLLM front door's pieces that need no engine: what a request is scored on
(nothing the model conditions on may escape the detector) and how vLLM's responses are stamped."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from oblivio.gateway.gate import decision as gate
from oblivio.gateway.serving.chat_core import GateOutcome
from oblivio.gateway.api.openai_http import RequestFieldError
from oblivio.gateway.api.openai_vllm import DecisionStamp, chat_scored_texts, completion_scored_texts
from oblivio.gateway.api.speculation import BaseSpeculation, SpeculationOdds

FORGOTTEN = "Where was Elena Marwick born?"


class _Tokenizer:
    """Decodes ids as the letters a, b, c, ... (enough to see that ids are decoded, not dropped)."""

    def decode(self, ids: list[int]) -> str:
        if any(i >= 26 for i in ids):
            raise IndexError("id out of range")
        return "".join(chr(ord("a") + i) for i in ids)


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "system", "content": FORGOTTEN}, {"role": "user", "content": "go on"}]},
    {"messages": [{"role": "developer", "content": [{"type": "text", "text": FORGOTTEN}]},
                  {"role": "user", "content": "go on"}]},
    {"messages": [{"role": "user", "content": "look it up"},
                  {"role": "assistant", "content": None,
                   "tool_calls": [{"id": "1", "type": "function",
                                   "function": {"name": "lookup", "arguments": json.dumps({"q": FORGOTTEN})}}]},
                  {"role": "tool", "tool_call_id": "1", "content": "done"}]},
    {"messages": [{"role": "user", "content": "answer the tool's question"}],
     "tools": [{"type": "function", "function": {"name": "ask", "description": FORGOTTEN}}]},
    {"messages": [{"role": "user", "content": "summarise the document"}], "documents": [{"text": FORGOTTEN}]},
], ids=["system", "developer-parts", "tool-call-arguments", "tool-definition", "documents"])
def test_every_text_the_template_can_render_is_scored(body: dict[str, Any]) -> None:
    (text,) = chat_scored_texts(body)
    assert FORGOTTEN in text
    assert "function" not in text.split("\n") and "tool" not in text.split("\n")  # roles and types are not text


def test_a_plain_conversation_is_scored_as_grpc_scores_it() -> None:
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": FORGOTTEN}]}
    assert chat_scored_texts(body) == ["Be brief.\n" + FORGOTTEN]


def test_each_completion_prompt_is_scored_on_its_own_token_ids_decoded() -> None:
    tokenizer = _Tokenizer()
    assert completion_scored_texts({"prompt": FORGOTTEN}, tokenizer) == [FORGOTTEN]
    assert completion_scored_texts({"prompt": ["one", "two"]}, tokenizer) == ["one", "two"]
    assert completion_scored_texts({"prompt": [0, 1, 2]}, tokenizer) == ["abc"]
    assert completion_scored_texts({"prompt": [[0], "x"], "suffix": "end"}, tokenizer) == ["a\nend", "x\nend"]


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": "hi"}, "messages"), ({"messages": [3]}, "messages[0]"), ({}, "messages"),
])
def test_chat_bodies_that_cannot_be_scored_are_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestFieldError) as caught:
        chat_scored_texts(body)
    assert caught.value.param == param


@pytest.mark.parametrize("prompt", [None, [], [[0], 3], [99], True])
def test_completion_prompts_that_cannot_be_scored_are_refused(prompt: Any) -> None:
    with pytest.raises(RequestFieldError):
        completion_scored_texts({"prompt": prompt}, _Tokenizer())


def _outcome(adapters: tuple[tuple[str, float], ...]) -> GateOutcome:
    decision = gate.GateDecision(adapters=adapters, refuse=False, verdicts=(), policy_version=7)
    return GateOutcome(decision=decision, scored_text="")


async def _stamped(messages: list[dict[str, Any]], alias: str | None) -> tuple[list[dict[str, Any]], int]:
    sent: list[dict[str, Any]] = []
    first = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    stamp = DecisionStamp(send, _outcome((("s", 1.0),) if alias else ()), alias, "served", lambda: first.append(1))
    for message in messages:
        await stamp(message)
    return sent, len(first)


async def test_a_json_answer_gets_the_decision_the_served_name_and_a_true_length() -> None:
    body = json.dumps({"model": "oblivio-variant-3-ab", "choices": [{"text": "x"}]}).encode()
    sent, firsts = await _stamped([
        {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]},
        {"type": "http.response.body", "body": body[:10], "more_body": True},
        {"type": "http.response.body", "body": body[10:], "more_body": False},
    ], "oblivio-variant-3-ab")
    start, whole = sent
    payload = json.loads(whole["body"])
    assert payload["model"] == "served" and payload["oblivio"]["decision"] == "adapter"
    headers = dict(start["headers"])
    assert int(headers[b"content-length"]) == len(whole["body"])
    assert headers[b"x-oblivio-decision"] == b"adapter; policy_version=7"
    assert firsts == 0  # time to first token is a streaming measure


async def test_a_stream_gets_the_decision_in_its_first_event_only() -> None:
    events = [b'data: {"model": "served", "choices": [{"delta": {"role": "assistant"}}]}\n\n',
              b'data: {"model": "served", "choices": [{"delta": {"content": "hi"}}]}\n\n', b"data: [DONE]\n\n"]
    sent, firsts = await _stamped(
        [{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}]
        + [{"type": "http.response.body", "body": e, "more_body": True} for e in events], None)
    bodies = [m["body"] for m in sent[1:]]
    assert json.loads(bodies[0][len(b"data: "):])["oblivio"]["decision"] == "base"
    assert bodies[1:] == events[1:]
    assert firsts == 1


def test_speculation_odds_follow_the_recent_decisions():
    odds = SpeculationOdds(window=4, min_base_share=0.5)
    assert odds.worth_it(), "a fresh server speculates: most traffic is base traffic"
    for _ in range(2):
        odds.observe(False)
    assert not odds.worth_it(), "a run of forget traffic stops paying for discarded base prefills"
    odds.observe(True)
    assert not odds.worth_it()
    odds.observe(True)
    assert odds.worth_it(), "half of the last four went to the base model again"
    for _ in range(4):
        odds.observe(False)
    assert not odds.worth_it()
    for _ in range(2):
        odds.observe(True)
    assert odds.worth_it(), "only the window counts: older decisions are forgotten"
    with pytest.raises(ValueError):
        SpeculationOdds(window=0)


async def test_a_discarded_speculation_leaves_the_clients_messages_alone():
    """After discard, vLLM's app sees a disconnect at once and never again reads the client: a
    real disconnect belongs to the answer that replaced the speculative one."""
    reads: list[str] = []
    seen: list[str] = []

    async def client_receive() -> dict[str, Any]:
        reads.append("client")
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def app(scope: Any, receive: Any, send: Any) -> None:  # an ASGI app that waits for its client
        seen.append((await receive())["type"])
        seen.append((await receive())["type"])
        seen.append((await receive())["type"])

    speculation = BaseSpeculation(app, ({"type": "http"}, b"{}"), client_receive)
    await asyncio.sleep(0.01)
    await asyncio.wait_for(speculation.discard(), 1.0)
    assert seen == ["http.request", "http.disconnect", "http.disconnect"]
    assert reads == ["client"], "only the read in flight when it was discarded, which is cancelled"
