"""Port of vLLM's chat-completion server tests: logprobs, sessions, streaming, message shapes, n.

See test_openai_port_basic.py for what was ported from where.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import httpx
import openai
import pytest

from fixtures_openai_port import SYSTEM_AND_QUESTION, PortServer, chat, stream_chunks, streamed_text, tokenized_chat_length

pytestmark = pytest.mark.slow

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Who won the world series in 2020?"},
    {"role": "assistant", "content": "The Los Angeles Dodgers won the World Series in 2020."},
    {"role": "user", "content": "Where was it played?"},
]


# ---- logprobs ----


async def test_no_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, max_completion_tokens=5, temperature=0.0, logprobs=False)
    assert completion.choices[0].logprobs is None


async def test_zero_top_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, max_completion_tokens=5, temperature=0.0, logprobs=True, top_logprobs=0)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content[0].top_logprobs) == 0


async def test_some_top_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, max_completion_tokens=5, temperature=0.0, logprobs=True, top_logprobs=5)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == completion.usage.completion_tokens
    assert all(len(entry.top_logprobs) == 5 for entry in logprobs.content)


async def test_too_many_top_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """Over the server's max_logprobs (20) is a 400, streaming or not, and the server lives on."""
    with pytest.raises((openai.BadRequestError, openai.APIError)):
        stream = await chat(port_client, port_server, max_completion_tokens=10, logprobs=True, top_logprobs=21, stream=True)
        async for _ in stream:
            pass
    with pytest.raises(openai.BadRequestError):
        await chat(port_client, port_server, max_completion_tokens=10, logprobs=True, top_logprobs=30)
    completion = await chat(port_client, port_server, max_completion_tokens=10)
    assert completion.choices[0].message.content is not None


@pytest.mark.parametrize("prompt_logprobs", [1, 0, -1, None])
async def test_prompt_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer, prompt_logprobs: int | None) -> None:
    """-1 asks for the whole vocabulary, over max_logprobs: refused; 0 and 1 are served."""
    extra = {} if prompt_logprobs is None else {"extra_body": {"prompt_logprobs": prompt_logprobs}}
    if prompt_logprobs is not None and prompt_logprobs < 0:
        with pytest.raises(openai.BadRequestError):
            await chat(port_client, port_server, messages=CONVERSATION, max_completion_tokens=5, **extra)
        return
    completion = await chat(port_client, port_server, messages=CONVERSATION, max_completion_tokens=5, **extra)
    prompt_lps = completion.model_extra.get("prompt_logprobs")
    if prompt_logprobs is None:
        assert prompt_lps is None
    else:
        assert prompt_lps is not None and len(prompt_lps) > 0


async def test_prompt_logprobs_count_follows_the_request(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """Each prompt position has the k requested entries, plus the actual token when outside them."""
    one = await chat(port_client, port_server, messages=CONVERSATION, max_completion_tokens=5, extra_body={"prompt_logprobs": 1})
    two = await chat(port_client, port_server, messages=CONVERSATION, max_completion_tokens=5, extra_body={"prompt_logprobs": 2})
    first, second = one.model_extra["prompt_logprobs"], two.model_extra["prompt_logprobs"]
    assert first[0] is None and second[0] is None
    assert len(first) == len(second) == one.usage.prompt_tokens
    assert all(1 <= len(position) <= 2 for position in first[1:])
    assert all(2 <= len(position) <= 3 for position in second[1:])


# ---- sessions and streaming ----


async def test_single_chat_session(port_client: openai.AsyncOpenAI, port_server: PortServer, port_http: httpx.AsyncClient) -> None:
    messages = list(SYSTEM_AND_QUESTION)
    completion = await chat(port_client, port_server, messages=messages, max_completion_tokens=5, logprobs=True, top_logprobs=5)
    assert completion.id is not None
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    prompt_tokens = await tokenized_chat_length(port_http, port_server, messages)
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens == prompt_tokens
    assert completion.usage.total_tokens == prompt_tokens + 5
    assert choice.message.role == "assistant"
    assert choice.message.content
    # the conversation goes on with the answer in it
    messages += [{"role": "assistant", "content": choice.message.content}, {"role": "user", "content": "express your result in json"}]
    follow_up = await chat(port_client, port_server, messages=messages, max_completion_tokens=5)
    assert follow_up.choices[0].message.content is not None
    assert follow_up.usage.prompt_tokens > completion.usage.prompt_tokens


async def test_chat_streaming_matches_non_streaming(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    full = await chat(port_client, port_server, max_completion_tokens=10, temperature=0.0)
    chunks = await stream_chunks(port_client, port_server, max_completion_tokens=10, temperature=0.0)
    finishes = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason is not None]
    roles = {c.delta.role for chunk in chunks for c in chunk.choices if c.delta.role}
    assert finishes == [full.choices[0].finish_reason]  # only in the last chunk
    assert chunks[-1].choices[0].finish_reason is not None
    assert roles == {"assistant"}
    assert streamed_text(chunks) == full.choices[0].message.content


async def test_stream_without_usage(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    chunks = await stream_chunks(
        port_client, port_server, max_completion_tokens=10, temperature=0.0, stream_options={"include_usage": False}
    )
    assert chunks and all(chunk.usage is None for chunk in chunks)


async def test_stream_with_final_usage(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """include_usage adds one last chunk with the usage and no choices; the others carry none."""
    chunks = await stream_chunks(
        port_client, port_server, max_completion_tokens=10, temperature=0.0,
        stream_options={"include_usage": True, "continuous_usage_stats": False},
    )
    *content, final = chunks
    assert all(chunk.usage is None for chunk in content)
    assert content[-1].choices[0].finish_reason is not None
    assert final.choices == []
    assert final.usage.prompt_tokens > 0 and final.usage.completion_tokens > 0
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens


@pytest.mark.parametrize("options", [{"include_usage": None}, {"include_usage": True}])
async def test_stream_options_need_a_stream(port_client: openai.AsyncOpenAI, port_server: PortServer, options: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError):
        await chat(port_client, port_server, max_completion_tokens=10, temperature=0.0, stream=False, stream_options=options)


async def test_continuous_usage_stats(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """Every chunk carries the running usage; min_tokens makes all ten tokens come."""
    chunks = await stream_chunks(
        port_client, port_server, max_completion_tokens=10, temperature=0.0, extra_body={"min_tokens": 10},
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    last = 0
    for chunk in chunks:
        usage = chunk.usage
        assert usage is not None and usage.prompt_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert last == 0 or usage.completion_tokens > last or (not chunk.choices and usage.completion_tokens == last)
        last = usage.completion_tokens
    assert last == 10


# ---- message shapes and request validation ----


async def test_extra_fields_in_messages_are_allowed(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, messages=[{"role": "user", "content": "what is 1+1?", "extra_field": "0"}],
                            temperature=0, seed=0, max_completion_tokens=10)
    assert completion.choices[0].message.content is not None


async def test_text_parts_read_like_a_string(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """Content as a list of text parts renders the same prompt as the plain string."""
    text = "what is 1+1? please provide the result without any other text."
    as_parts = await chat(port_client, port_server, messages=[{"role": "user", "content": [{"type": "text", "text": text}]}],
                          temperature=0, seed=0, max_completion_tokens=10)
    as_string = await chat(port_client, port_server, messages=[{"role": "user", "content": text}],
                           temperature=0, seed=0, max_completion_tokens=10)
    assert as_parts.usage.prompt_tokens == as_string.usage.prompt_tokens
    assert as_parts.choices[0].message.content == as_string.choices[0].message.content


async def test_custom_role(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    plain = await chat(port_client, port_server, messages=[{"role": "my-custom-role", "content": "what is 1+1?"}],
                       temperature=0, seed=0, max_completion_tokens=10)
    as_parts = [{"type": "text", "text": "what is 1+1?"}]
    parts = await chat(port_client, port_server, messages=[{"role": "my-custom-role", "content": as_parts}],
                       temperature=0, seed=0, max_completion_tokens=10)
    assert plain.choices[0].message.content == parts.choices[0].message.content


async def test_developer_role(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """OpenAI's newer name for system instructions is accepted."""
    completion = await chat(port_client, port_server, max_completion_tokens=5,
                            messages=[{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": "what is 1+1?"}])
    assert completion.choices[0].message.content


@pytest.mark.parametrize("seed", [INT64_MIN - 1, INT64_MAX + 1])
async def test_seed_outside_int64_is_400(port_client: openai.AsyncOpenAI, port_server: PortServer, seed: int) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await chat(port_client, port_server, messages=[{"role": "system", "content": "You are a helpful assistant."}],
                   temperature=0, seed=seed)
    assert "greater_than_equal" in caught.value.message or "less_than_equal" in caught.value.message


async def test_same_seed_same_sample(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    runs = [await chat(port_client, port_server, temperature=1.0, seed=1234, max_completion_tokens=12) for _ in range(2)]
    assert runs[0].choices[0].message.content == runs[1].choices[0].message.content


# ---- n ----


async def test_n_without_streaming(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, n=3, temperature=0.7, max_completion_tokens=20,
                            messages=[{"role": "system", "content": "You are a helpful assistant."},
                                      {"role": "user", "content": "What is the opposite of big?"}])
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    contents = [choice.message.content for choice in completion.choices]
    assert all(contents)
    assert len(set(contents)) > 1


async def test_n_streaming(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    chunks = await stream_chunks(port_client, port_server, n=2, temperature=0.7, max_completion_tokens=15,
                                 messages=[{"role": "user", "content": "Name a colour of the rainbow."}])
    parts: dict[int, list[str]] = defaultdict(list)
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.delta.content:
                parts[choice.index].append(choice.delta.content)
    assert sorted(parts) == [0, 1]
    assert all("".join(pieces) for pieces in parts.values())


async def test_n_with_seed(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, n=2, seed=42, temperature=0.8, max_completion_tokens=10,
                            messages=[{"role": "user", "content": "Say hello."}])
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert all(choice.message.content for choice in completion.choices)


async def test_n_equals_one(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, n=1, temperature=0.7, max_completion_tokens=10,
                            messages=[{"role": "user", "content": "Hello!"}])
    assert len(completion.choices) == 1 and completion.choices[0].index == 0
    assert completion.choices[0].message.content is not None
