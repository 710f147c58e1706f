"""Input limits over the real gRPC and HTTP sockets: each bad input gets a clear status and
message, and nothing stored (artifact files, registry, gate policy, loaded adapters) changes.

Runs on the shared ``serving_gateway`` (reference backend, registration pipeline, no detector);
every request here is refused before any generation or training starts, so it is cheap.
"""

from __future__ import annotations

import grpc
import httpx
import pytest

from fixtures_reliability import registration_messages, stored_state, stream_of, user_request
from oblivio.adapters.limits import (
    DEFAULT_MAX_EXAMPLE_CHARS,
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_MAX_TOTAL_CHARS,
)
from oblivio.gateway.serving.chat_core import MAX_CHARS_PER_TOKEN, MAX_MESSAGES, MAX_STOP_SEQUENCES
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc

pytestmark = pytest.mark.slow

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def _chat_status(channel, request: pb.ChatRequest) -> tuple[grpc.StatusCode, str]:
    """Both Chat RPCs must refuse the same way; returns the (shared) code and message."""
    stub = oblivio_pb2_grpc.ChatStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await stub.Complete(request, timeout=60)
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in stub.StreamComplete(request, timeout=60):
            pass
    assert unary.value.code() == streamed.value.code()
    return unary.value.code(), unary.value.details() or ""


def _many_messages(count: int) -> pb.ChatRequest:
    roles = [pb.ROLE_USER, pb.ROLE_ASSISTANT]
    return pb.ChatRequest(
        messages=[pb.ChatMessage(role=roles[i % 2], content="hi") for i in range(count)],
        sampling=pb.SamplingParams(max_tokens=2),
    )


@pytest.mark.parametrize(
    ("request_factory", "expected"),
    [
        (lambda: _many_messages(MAX_MESSAGES + 1), f"at most {MAX_MESSAGES} messages"),
        (lambda: user_request("x" * (2048 * MAX_CHARS_PER_TOKEN + 1)), "characters"),
        (lambda: user_request("hello " * 3000), "prompt tokens"),
        (lambda: pb.ChatRequest(sampling=pb.SamplingParams(max_tokens=2)), "at least one message"),
        (lambda: pb.ChatRequest(messages=[pb.ChatMessage(content="no role")]), "role"),
        (lambda: user_request("   "), "non-empty user message"),
        (lambda: user_request("hi", temperature=5.0), "temperature"),
        (lambda: user_request("hi", temperature=float("nan")), "temperature"),
        (lambda: user_request("hi", top_p=0.0), "top_p"),
        (lambda: user_request("hi", top_p=1.5), "top_p"),
        (lambda: user_request("hi", max_tokens=0), "max_tokens"),
        (lambda: user_request("hi", max_tokens=100_000), "context length"),
        (lambda: user_request("hi", stop=["."] * (MAX_STOP_SEQUENCES + 1)), "stop"),
        (lambda: user_request("hi", stop=[""]), "stop"),
    ],
    ids=[
        "too-many-messages", "too-many-chars", "too-many-tokens", "no-messages", "no-role", "blank-user",
        "temperature-high", "temperature-nan", "top-p-zero", "top-p-high", "max-tokens-zero",
        "max-tokens-beyond-context", "too-many-stops", "empty-stop",
    ],
)
async def test_chat_refuses_bad_input_with_invalid_argument(serving_gateway, grpc_channel, request_factory, expected):
    before = stored_state(serving_gateway)
    code, details = await _chat_status(grpc_channel, request_factory())
    assert code == INVALID, (code, details)
    assert expected in details, details
    assert stored_state(serving_gateway) == before


async def test_oversized_grpc_message_is_resource_exhausted(serving_gateway, grpc_channel):
    """gRPC's own 4 MiB receive limit bounds memory before any handler runs."""
    code, details = await _chat_status(grpc_channel, user_request("y" * (5 * 1024 * 1024)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    health = await oblivio_pb2_grpc.ChatStub(grpc_channel).Complete(user_request("Say hi.", max_tokens=2), timeout=60)
    assert health.usage.completion_tokens >= 1


BAD_NAMES = ["../x", "a/b", "/etc/passwd", "..", ".", "", "A", "x" * 64, "-lead", "sp ace", "nul\x00", "é"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
async def test_register_refuses_bad_names_without_touching_storage(serving_gateway, grpc_channel, name):
    admin = oblivio_pb2_grpc.AdminStub(grpc_channel)
    examples = [{"question": "What is X?", "answer": "Y."}, {"text": "X is Y and Z is W."}]
    before = stored_state(serving_gateway)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.RegisterForgetSet(stream_of(registration_messages(name, examples)), timeout=30)
    assert err.value.code() == INVALID, err.value.details()
    assert "invalid forget set name" in err.value.details()
    assert stored_state(serving_gateway) == before


@pytest.mark.parametrize("name", ["../gate", "../../", "/tmp", "a/../b"])
async def test_get_and_delete_never_reach_outside_the_artifact_dir(serving_gateway, grpc_channel, name):
    """A traversal name in Get/Delete must not resolve to (and delete) any folder."""
    admin = oblivio_pb2_grpc.AdminStub(grpc_channel)
    gate_dir = serving_gateway.runtime.config.artifacts_path / "gate"
    assert gate_dir.is_dir()
    before = stored_state(serving_gateway)
    for call in (admin.GetForgetSet(pb.GetForgetSetRequest(name=name), timeout=30),
                 admin.DeleteForgetSet(pb.DeleteForgetSetRequest(name=name), timeout=30)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() in (INVALID, grpc.StatusCode.NOT_FOUND), err.value
    assert gate_dir.is_dir()
    assert stored_state(serving_gateway) == before


@pytest.mark.parametrize(
    ("examples", "expected"),
    [
        ([], "at least one example"),
        ([{"text": "same text here"}] * 3, "at least 2 distinct examples"),
        ([{"text": "z" * (DEFAULT_MAX_EXAMPLE_CHARS + 1)}, {"text": "fine"}],
         f"example 1 ('{'z' * 40}...') has {DEFAULT_MAX_EXAMPLE_CHARS + 1} characters, over "
         f"registration.max_example_chars = {DEFAULT_MAX_EXAMPLE_CHARS}"),
        ([{"text": "fine"}, {"question": "q?", "answer": "a" * DEFAULT_MAX_EXAMPLE_CHARS}],
         f"example 2 ('q? {'a' * 37}...') has {DEFAULT_MAX_EXAMPLE_CHARS + 2} characters, over "
         "registration.max_example_chars"),
        ([{"question": "", "answer": "an answer alone"}, {"text": "fine"}], "either a question"),
        ([{"text": f"example {i}"} for i in range(DEFAULT_MAX_EXAMPLES + 1)],
         f"example {DEFAULT_MAX_EXAMPLES + 1} ('example {DEFAULT_MAX_EXAMPLES}') is one more than "
         f"registration.max_examples = {DEFAULT_MAX_EXAMPLES}"),
        ([{"text": f"{i:04d} " + "w" * 1990} for i in range(DEFAULT_MAX_TOTAL_CHARS // 1995 + 1)],
         f"over registration.max_total_chars = {DEFAULT_MAX_TOTAL_CHARS}"),
    ],
    ids=["empty", "duplicates", "long-text", "long-answer", "answer-only", "too-many", "too-large"],
)
async def test_register_refuses_bad_forget_sets(serving_gateway, grpc_channel, examples, expected):
    admin = oblivio_pb2_grpc.AdminStub(grpc_channel)
    before = stored_state(serving_gateway)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.RegisterForgetSet(stream_of(registration_messages("limits-set", examples)), timeout=60)
    assert err.value.code() == INVALID, err.value.details()
    assert expected in err.value.details()
    assert stored_state(serving_gateway) == before


async def test_an_endless_upload_is_refused_at_the_bound(serving_gateway, grpc_channel):
    """The Admin API counts examples as they arrive: a client that never stops sending is
    refused at registration.max_examples, without the server buffering the rest."""
    admin = oblivio_pb2_grpc.AdminStub(grpc_channel)
    sent = 0

    async def endless():
        nonlocal sent
        yield pb.RegisterForgetSetRequest(header=pb.ForgetSetHeader(name="endless"))
        while True:
            sent += 100
            yield pb.RegisterForgetSetRequest(chunk=pb.ExampleChunk(
                examples=[pb.Example(text=f"endless example {sent + i}") for i in range(100)]))

    before = stored_state(serving_gateway)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.RegisterForgetSet(endless(), timeout=60)
    assert err.value.code() == INVALID, err.value.details()
    assert f"registration.max_examples = {DEFAULT_MAX_EXAMPLES}" in err.value.details()
    assert sent < 3 * DEFAULT_MAX_EXAMPLES  # stopped reading near the bound
    assert stored_state(serving_gateway) == before


async def test_an_oversized_set_leaves_registered_sets_intact(serving_gateway, grpc_channel):
    """A refusal over a bound changes nothing stored: a registered set, its artifacts, its
    registry row and the gate policy are exactly as before, and the set still serves."""
    admin = oblivio_pb2_grpc.AdminStub(grpc_channel)
    kept = [{"question": "Who painted the Hay Wain?", "answer": "John Constable."},
            {"text": "John Constable painted The Hay Wain in 1821."}]
    await admin.RegisterForgetSet(stream_of(registration_messages("kept-set", kept)), timeout=60)
    try:
        async for event in admin.WatchRegistration(pb.WatchRegistrationRequest(name="kept-set"), timeout=600):
            if event.terminal:
                assert event.state == pb.REGISTRATION_STATE_LIVE, event
        before = stored_state(serving_gateway)
        oversized = [{"text": f"{i:04d} " + "w" * 1990} for i in range(DEFAULT_MAX_TOTAL_CHARS // 1995 + 1)]
        for name in ("kept-set", "oversized-set"):  # its own name again, and a new one
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.RegisterForgetSet(stream_of(registration_messages(name, oversized)), timeout=60)
            assert err.value.code() == INVALID, err.value.details()
            assert "registration.max_total_chars" in err.value.details()
        assert stored_state(serving_gateway) == before
        info = await admin.GetForgetSet(pb.GetForgetSetRequest(name="kept-set"), timeout=30)
        assert info.state == pb.REGISTRATION_STATE_LIVE and info.adapter_version == 1
    finally:
        await admin.DeleteForgetSet(pb.DeleteForgetSetRequest(name="kept-set"), timeout=60)


async def test_register_refuses_malformed_streams(serving_gateway, grpc_channel):
    admin = oblivio_pb2_grpc.AdminStub(grpc_channel)
    header = pb.RegisterForgetSetRequest(header=pb.ForgetSetHeader(name="limits-set"))
    chunk = pb.RegisterForgetSetRequest(chunk=pb.ExampleChunk(examples=[pb.Example(text="a b c d")]))
    cases = {
        "examples before header": [chunk, header],
        "two headers": [header, header, chunk],
        "empty message": [header, pb.RegisterForgetSetRequest()],
        "example with no kind": [header, pb.RegisterForgetSetRequest(chunk=pb.ExampleChunk(examples=[pb.Example()]))],
        "no header": [],
        "unknown method": [pb.RegisterForgetSetRequest(header=pb.ForgetSetHeader(name="limits-set", method=99)), chunk],
        "long description": [pb.RegisterForgetSetRequest(header=pb.ForgetSetHeader(name="limits-set", description="d" * 5000)), chunk],
        "too many subjects": [pb.RegisterForgetSetRequest(header=pb.ForgetSetHeader(name="limits-set", subjects=[f"s{i}" for i in range(65)])), chunk],
    }
    before = stored_state(serving_gateway)
    for label, messages in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.RegisterForgetSet(stream_of(messages), timeout=30)
        assert err.value.code() == INVALID, (label, err.value.details())
        assert err.value.details(), label
    assert stored_state(serving_gateway) == before


# ----- HTTP --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def http(serving_gateway):
    async with httpx.AsyncClient(base_url=serving_gateway.http_url, timeout=60) as client:
        yield client


def _chat_body(content: str = "hi", **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 2} | extra


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xff\xfe{not json", ""),
        (b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}', ""),  # invalid UTF-8 inside a string
        (b"[1, 2, 3]", ""),
        (b"{}", "messages"),
        (b'{"messages": []}', "messages"),
    ],
    ids=["garbage", "invalid-utf8", "not-an-object", "no-messages", "empty-messages"],
)
async def test_http_malformed_bodies_are_400(serving_gateway, http, body, expected):
    before = stored_state(serving_gateway)
    response = await http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert expected in error["message"]
    assert stored_state(serving_gateway) == before


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)}, "messages"),
        (_chat_body("x" * (2048 * MAX_CHARS_PER_TOKEN + 1)), "characters"),
        (_chat_body("hello " * 3000), "prompt tokens"),
        (_chat_body(temperature=3), "temperature"),
        (_chat_body(top_p=-1), "top_p"),
        (_chat_body(max_tokens=-5), "max_tokens"),
        (_chat_body(n=2), "n must be 1"),
        (_chat_body(stop=["a"] * 9), "stop"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text parts"),
    ],
    ids=["too-many-messages", "too-many-chars", "too-many-tokens", "temperature", "top-p", "max-tokens",
         "n", "stops", "role", "non-text-part"],
)
async def test_http_bad_requests_are_400_with_message(serving_gateway, http, body, expected):
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]["message"]


async def test_http_unknown_model_is_404(http):
    response = await http.post("/v1/chat/completions", json=_chat_body(model="gpt-4"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
