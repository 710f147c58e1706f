"""oblivio's own port of vLLM's OpenAI-server tests: server basics, models, tokenizer endpoints.

What this port covers, and where each part comes from (vLLM's ``tests/entrypoints/openai``,
Apache-2.0, Copyright contributors to the vLLM project; the tests here are written anew for
oblivio, sending the same requests and checking the same API behaviour, not copied):

* this file: ``basic/test_basic.py`` (version, health, wrong content type, request
  cancellation), the models listing, ``serve/tokenize/test_tokenization.py`` (/tokenize,
  /detokenize), the ``X-Request-Id`` middleware, and the error shape of unknown models, too
  long prompts and malformed bodies (``chat_completion/test_non_object_body_validation.py``,
  ``completion/test_prompt_validation.py``);
* ``test_openai_port_chat.py``: ``chat_completion/test_chat.py`` (logprobs, prompt logprobs,
  sessions, streaming, stream_options, message shapes, seeds, n), ``basic/test_chat_echo.py``
  (prompt logprobs);
* ``test_openai_port_chat_params.py``: ``chat_completion/test_chat.py`` (structured outputs,
  response_format), ``chat_completion/test_chat_completion.py`` (invalid structured outputs,
  truncation side), ``basic/test_chat_echo.py`` (echo with continue_final_message),
  ``basic/test_chat_logit_bias_validation.py``,
  ``chat_completion/test_chat_stop_token_ids_validation.py``,
  ``chat_completion/test_logprob_token_ids.py``, ``basic/test_return_token_ids.py`` (chat part),
  plus the client's ``chat.completions.parse()`` and sampling-parameter range checks;
* ``test_openai_port_chat_tools.py``: ``chat_completion/test_completion_with_function_calling.py``
  and the older ``test_chat.py`` tool tests (tool_choice "required" and named functions), plus
  conversations carrying tool calls and their results;
* ``test_openai_port_completions.py``: ``completion/test_completion.py`` (also its older
  logit-bias, allowed-token and structured-output tests), ``basic/test_return_token_ids.py``
  (completion part), ``completion/test_prompt_validation.py``,
  ``completion/test_empty_prompt_list.py``, ``completion/test_completion_text_offset.py``.

Left out as not applicable to oblivio's text-only front door on SmolLM2-135M-Instruct:
multimodal, embeddings/pooling, audio, reasoning parsers, harmony, LoRA resolvers and runtime
LoRA loading, sleep/dev/load endpoints, CLI-argument and shutdown tests, tests that drive vLLM
internals with mocks, the batch chat endpoint and SageMaker's /invocations. Assertions that
lean on a large model's judgement are left out too (a second structured choice or JSON profile
differing from the first, a JSON answer equal to {"result": 2}, tool_choice "auto" producing a
call), as is a named tool choice cut to one token (vLLM 0.32 returns the partial call there).

Every test is async: against oblivio the server runs in-process on the tests' event loop.
By default the port runs against oblivio (the gated gateway over the shared vLLM engine, one
forget set registered). To compare with vLLM's own server on the same model::

    OBLIVIO_OPENAI_PORT_TARGET=vllm .venv/bin/python -m pytest tests/test_openai_port_*.py -q

(``fixtures_openai_port.VLLM_SERVE_FLAGS`` lists the extra flags it is started with.)
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import openai
import pytest

from fixtures_openai_port import MAX_MODEL_LEN, SYSTEM_AND_QUESTION, PortServer

pytestmark = pytest.mark.slow

TOKENIZE_PROMPT = "vllm1 This is a test prompt."
CHAT_FOR_TOKENIZE = [
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Nice to meet you!"},
    {"role": "user", "content": "Can I ask a question? vllm1"},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """An error in the OpenAI shape: the status, and ``{"error": {"message": ..., ...}}``."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    return error


# ---- version, health, models ----


async def test_version_reports_vllms_version(port_http: httpx.AsyncClient) -> None:
    """The front door runs vLLM's serving layer, so /version names the vLLM it runs."""
    from vllm.version import __version__ as vllm_version

    response = await port_http.get("/version")
    assert response.status_code == 200
    assert response.json() == {"version": vllm_version}


async def test_health_is_ok(port_http: httpx.AsyncClient) -> None:
    response = await port_http.get("/health")
    assert response.status_code == 200


async def test_models_list_the_served_model(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    models = await port_client.models.list()
    assert [model.id for model in models.data] == [port_server.model]
    assert models.data[0].object == "model"


async def test_models_report_max_model_len(port_http: httpx.AsyncClient, port_server: PortServer) -> None:
    """vLLM's extension to the model card: the context length clients may plan with."""
    response = await port_http.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == port_server.model
    assert card["max_model_len"] == MAX_MODEL_LEN


async def test_wrong_content_type_is_rejected(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    with pytest.raises(openai.APIStatusError):
        await port_client.chat.completions.create(
            model=port_server.model,
            messages=[{"role": "user", "content": "Write a long story"}],
            max_tokens=10,
            extra_headers={"Content-Type": "application/x-www-form-urlencoded"},
        )


async def test_cancelled_requests_stop_using_the_engine(port_server: PortServer) -> None:
    """Clients that time out abort their requests: a fresh request is served promptly after."""
    messages: list[Any] = [{"role": "user", "content": "Write a long story"}]
    impatient = openai.AsyncOpenAI(base_url=port_server.base_url, api_key=port_server.api_key, max_retries=0, timeout=1.0)
    try:
        results = await asyncio.gather(
            *(
                impatient.chat.completions.create(
                    model=port_server.model, messages=messages, max_tokens=1500, extra_body={"min_tokens": 1500}
                )
                for _ in range(16)
            ),
            return_exceptions=True,
        )
    finally:
        await impatient.close()
    assert all(isinstance(result, openai.APITimeoutError) for result in results), results
    # 16 x 1500 tokens would keep this CPU busy for minutes if they were still running.
    patient = openai.AsyncOpenAI(base_url=port_server.base_url, api_key=port_server.api_key, max_retries=0, timeout=60)
    try:
        response = await patient.chat.completions.create(model=port_server.model, messages=messages, max_tokens=10)
    finally:
        await patient.close()
    assert len(response.choices) == 1


# ---- /tokenize and /detokenize ----


@pytest.mark.parametrize("add_special", [False, True])
async def test_tokenize_a_completion_prompt(
    port_http: httpx.AsyncClient, port_server: PortServer, port_tokenizer: Any, add_special: bool
) -> None:
    expected = port_tokenizer.encode(TOKENIZE_PROMPT, add_special_tokens=add_special)
    response = await port_http.post(
        "/tokenize", json={"model": port_server.model, "prompt": TOKENIZE_PROMPT, "add_special_tokens": add_special}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["tokens"] == expected
    assert result["count"] == len(expected)
    assert result["max_model_len"] == MAX_MODEL_LEN
    assert result["token_strs"] is None


@pytest.mark.parametrize("add_generation", [False, True])
@pytest.mark.parametrize("add_special", [False, True])
async def test_tokenize_a_chat(
    port_http: httpx.AsyncClient, port_server: PortServer, port_tokenizer: Any, add_generation: bool, add_special: bool
) -> None:
    """Chat tokenization renders the model's chat template exactly as generation would."""
    rendered = port_tokenizer.apply_chat_template(CHAT_FOR_TOKENIZE, add_generation_prompt=add_generation, tokenize=False)
    expected = port_tokenizer.encode(rendered, add_special_tokens=add_special)
    response = await port_http.post(
        "/tokenize",
        json={
            "model": port_server.model,
            "messages": CHAT_FOR_TOKENIZE,
            "add_generation_prompt": add_generation,
            "add_special_tokens": add_special,
        },
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["tokens"] == expected
    assert result["count"] == len(expected)
    assert result["max_model_len"] == MAX_MODEL_LEN


async def test_tokenize_a_chat_with_tools(port_http: httpx.AsyncClient, port_server: PortServer, port_tokenizer: Any) -> None:
    """Tools go through the chat template too (this model's template does not render them)."""
    conversation = [{"role": "user", "content": "What's the weather like in Berlin today?"}]
    rendered = port_tokenizer.apply_chat_template(
        conversation, tools=[WEATHER_TOOL["function"]], add_generation_prompt=True, tokenize=False
    )
    expected = port_tokenizer.encode(rendered, add_special_tokens=False)
    response = await port_http.post(
        "/tokenize",
        json={
            "model": port_server.model,
            "messages": conversation,
            "tools": [WEATHER_TOOL],
            "add_generation_prompt": True,
            "add_special_tokens": False,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["tokens"] == expected


async def test_tokenize_returns_token_strings(port_http: httpx.AsyncClient, port_server: PortServer, port_tokenizer: Any) -> None:
    prompt = "This is a token_strs test prompt! vllm1"
    tokens = port_tokenizer.encode(prompt, add_special_tokens=True)
    response = await port_http.post(
        "/tokenize", json={"model": port_server.model, "prompt": prompt, "return_token_strs": True}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["tokens"] == tokens
    assert result["token_strs"] == port_tokenizer.convert_ids_to_tokens(tokens)


async def test_detokenize(port_http: httpx.AsyncClient, port_server: PortServer, port_tokenizer: Any) -> None:
    prompt = "This is a test prompt. vllm1"
    tokens = port_tokenizer.encode(prompt, add_special_tokens=False)
    response = await port_http.post("/detokenize", json={"model": port_server.model, "tokens": tokens})
    assert response.status_code == 200, response.text
    assert response.json() == {"prompt": prompt}


async def test_tokenize_with_an_unknown_model_is_404(port_http: httpx.AsyncClient) -> None:
    response = await port_http.post("/tokenize", json={"model": "no-such-model", "prompt": "hello"})
    assert_openai_error(response, 404)


# ---- X-Request-Id ----


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_request_id_header_is_echoed(port_http: httpx.AsyncClient, port_server: PortServer, path: str) -> None:
    """A caller's X-Request-Id comes back unchanged, so it can correlate its own logs."""
    request_id = f"port-{uuid.uuid4().hex}"
    body: dict[str, Any] = {"model": port_server.model, "max_tokens": 3}
    if path.endswith("chat/completions"):
        body["messages"] = SYSTEM_AND_QUESTION
    else:
        body["prompt"] = "Hello, my name is"
    response = await port_http.post(path, json=body, headers={"X-Request-Id": request_id})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id


async def test_request_id_header_is_minted_when_absent(port_http: httpx.AsyncClient, port_server: PortServer) -> None:
    first = await port_http.get("/v1/models")
    second = await port_http.get("/v1/models")
    assert first.headers.get("x-request-id") and second.headers.get("x-request-id")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_request_id_header_on_a_stream(port_http: httpx.AsyncClient, port_server: PortServer) -> None:
    request_id = f"port-{uuid.uuid4().hex}"
    body = {"model": port_server.model, "messages": SYSTEM_AND_QUESTION, "max_tokens": 3, "stream": True}
    async with port_http.stream("POST", "/v1/chat/completions", json=body, headers={"X-Request-Id": request_id}) as response:
        assert response.status_code == 200
        assert response.headers["x-request-id"] == request_id
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"


# ---- errors: unknown model, too long prompts, malformed bodies ----


@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_unknown_model_is_404(port_client: openai.AsyncOpenAI, kind: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        if kind == "chat":
            await port_client.chat.completions.create(model="no-such-model", messages=SYSTEM_AND_QUESTION, max_tokens=3)
        else:
            await port_client.completions.create(model="no-such-model", prompt="Hello", max_tokens=3)
    assert caught.value.status_code == 404
    assert "no-such-model" in caught.value.message


@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_too_long_prompt_is_400(port_client: openai.AsyncOpenAI, port_server: PortServer, kind: str) -> None:
    """A prompt over the context length is the caller's error, and the message says why."""
    long_text = "hello " * (MAX_MODEL_LEN + 100)
    with pytest.raises(openai.BadRequestError) as caught:
        if kind == "chat":
            await port_client.chat.completions.create(
                model=port_server.model, messages=[{"role": "user", "content": long_text}], max_tokens=3
            )
        else:
            await port_client.completions.create(model=port_server.model, prompt=long_text, max_tokens=3)
    assert str(MAX_MODEL_LEN) in caught.value.message
    assert "context length" in caught.value.message


@pytest.mark.parametrize("body", [b"[\"not\", \"an\", \"object\"]", b"42", b"\"a string\"", b"{not json"])
async def test_malformed_chat_bodies_are_400(port_http: httpx.AsyncClient, body: bytes) -> None:
    """Bodies that are not a JSON object fail validation cleanly (4xx), never with a 500."""
    response = await port_http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert_openai_error(response, 400)


async def test_missing_messages_is_400(port_http: httpx.AsyncClient, port_server: PortServer) -> None:
    response = await port_http.post("/v1/chat/completions", json={"model": port_server.model})
    error = assert_openai_error(response, 400)
    assert "messages" in error["message"]
