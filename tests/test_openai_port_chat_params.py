"""Port of vLLM's chat-completion server tests: structured outputs, response_format, sampling
parameters and their validation, echo and token ids.

See test_openai_port_basic.py for what was ported from where.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import openai
import pydantic
import pytest

from fixtures_openai_port import (
    IP_REGEX,
    SAMPLE_CHOICES,
    SAMPLE_JSON_SCHEMA,
    SQL_GRAMMAR,
    PortServer,
    chat,
    stream_chunks,
    streamed_text,
)

pytestmark = pytest.mark.slow

LANGUAGE_QUESTION = [
    {"role": "system", "content": "you are a helpful assistant"},
    {"role": "user", "content": "The best language for type-safe systems programming is "},
]


# ---- structured outputs ----


async def test_structured_choice(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    messages = list(LANGUAGE_QUESTION)
    first = await chat(port_client, port_server, messages=messages, max_completion_tokens=10, temperature=0.7,
                       extra_body={"structured_outputs": {"choice": SAMPLE_CHOICES}})
    picked = first.choices[0].message.content
    assert picked in SAMPLE_CHOICES
    messages += [{"role": "assistant", "content": picked}, {"role": "user", "content": "I disagree, pick another one"}]
    second = await chat(port_client, port_server, messages=messages, max_completion_tokens=10, temperature=0.7,
                        extra_body={"structured_outputs": {"choice": SAMPLE_CHOICES}})
    assert second.choices[0].message.content in SAMPLE_CHOICES


async def test_structured_json(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    messages = [
        {"role": "system", "content": "you are a helpful assistant"},
        {"role": "user", "content": f"Give an example JSON for an employee profile that fits this schema: {SAMPLE_JSON_SCHEMA}"},
    ]
    completion = await chat(port_client, port_server, messages=messages, max_completion_tokens=300, temperature=0.0,
                            extra_body={"structured_outputs": {"json": SAMPLE_JSON_SCHEMA}})
    jsonschema.validate(instance=json.loads(completion.choices[0].message.content), schema=SAMPLE_JSON_SCHEMA)


async def test_structured_regex(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    messages = [
        {"role": "system", "content": "you are a helpful assistant"},
        {"role": "user", "content": f"Give an example IP address with this regex: {IP_REGEX}"},
    ]
    completion = await chat(port_client, port_server, messages=messages, max_completion_tokens=20,
                            extra_body={"structured_outputs": {"regex": IP_REGEX}})
    address = completion.choices[0].message.content
    assert address is not None and re.fullmatch(IP_REGEX, address)


async def test_structured_regex_of_the_wrong_type_is_400(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    with pytest.raises(openai.BadRequestError):
        await chat(port_client, port_server, messages=LANGUAGE_QUESTION,
                   extra_body={"structured_outputs": {"regex": {1: "Python", 2: "C++"}}})


async def test_structured_choice_with_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """Masked-out tokens report OpenAI's floor logprob (-9999) rather than -inf or NaN."""
    completion = await chat(port_client, port_server, messages=LANGUAGE_QUESTION, max_completion_tokens=10, logprobs=True,
                            top_logprobs=5, extra_body={"structured_outputs": {"choice": SAMPLE_CHOICES}})
    top = completion.choices[0].logprobs.content[0].top_logprobs
    assert top and all(item.logprob >= -9999.0 for item in top)


@pytest.mark.parametrize(
    "constraint",
    [
        pytest.param({"json": {"type": "object", "properties": {"car_type": {"$ref": "#/$defs/Missing"}, "foo": "bar"}}}, id="json"),
        pytest.param({"regex": r"[.*"}, id="regex"),
        pytest.param({"grammar": SQL_GRAMMAR.replace("root ::= select_statement", "root ::= select_statementinvalid")}, id="grammar"),
        pytest.param({"grammar": ""}, id="empty-grammar"),
    ],
)
async def test_invalid_structured_outputs_are_rejected(
    port_client: openai.AsyncOpenAI, port_server: PortServer, constraint: dict[str, Any]
) -> None:
    with pytest.raises((openai.BadRequestError, openai.APIError)):
        await chat(port_client, port_server, messages=[{"role": "user", "content": "Say hello"}], max_completion_tokens=20,
                   extra_body={"structured_outputs": constraint})


# ---- response_format and parse() ----


async def test_response_format_json_object(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    question = [{"role": "user", "content": 'what is 1+1? please respond with a JSON object, the format is {"result": 2}'}]
    completion = await chat(port_client, port_server, messages=question, temperature=0.0, max_completion_tokens=50,
                            response_format={"type": "json_object"})
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


async def test_response_format_json_schema(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    schema = {"type": "object", "properties": {"result": {"type": "integer"}}, "required": ["result"]}
    completion = await chat(
        port_client, port_server, messages=[{"role": "user", "content": 'what is 1+1? The format is "result": 2'}],
        temperature=0.0, max_completion_tokens=50,
        response_format={"type": "json_schema", "json_schema": {"name": "foo_test", "schema": schema}},
    )
    loaded = json.loads(completion.choices[0].message.content)
    jsonschema.validate(instance=loaded, schema=schema)


async def test_response_format_text(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, messages=[{"role": "user", "content": "what is 1+1?"}],
                            max_completion_tokens=10, response_format={"type": "text"})
    assert completion.choices[0].message.content is not None


class Employee(pydantic.BaseModel):
    name: str
    age: int


async def test_parse_into_a_pydantic_model(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """The client's parse() sends a strict json_schema and reads the answer back as the model."""
    completion = await port_client.chat.completions.parse(
        model=port_server.model,
        messages=[{"role": "user", "content": "Give an example employee as JSON with a name and an age."}],
        response_format=Employee,
        temperature=0.0,
        max_completion_tokens=60,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Employee)
    assert Employee.model_validate_json(completion.choices[0].message.content or "") == parsed


# ---- sampling parameters and their validation ----


async def test_logit_bias_in_vocabulary(port_client: openai.AsyncOpenAI, port_server: PortServer, port_vocab_size: int) -> None:
    completion = await chat(port_client, port_server, messages=[{"role": "user", "content": "Testing valid logit bias"}],
                            max_tokens=5, logit_bias={str(port_vocab_size - 1): 1.0})
    assert completion.choices[0].message.content is not None


async def test_logit_bias_outside_vocabulary_is_400(port_client: openai.AsyncOpenAI, port_server: PortServer, port_vocab_size: int) -> None:
    """The message names the bad token id and the vocabulary size."""
    size = port_vocab_size
    with pytest.raises(openai.BadRequestError) as caught:
        await chat(port_client, port_server, messages=[{"role": "user", "content": "Testing invalid logit bias"}],
                   max_tokens=5, logit_bias={str(size + 1): 1.0})
    assert caught.value.status_code == 400
    assert str(size + 1) in str(caught.value) and str(size) in str(caught.value)


async def test_logit_bias_forces_and_bans_tokens(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """+100 makes one token the only choice; -100 on the greedy first token moves it away."""
    with_ids = {"return_token_ids": True}
    forced = await chat(port_client, port_server, max_tokens=5, temperature=0.0, logit_bias={"1000": 100}, extra_body=with_ids)
    assert forced.choices[0].token_ids == [1000] * 5
    greedy = await chat(port_client, port_server, max_tokens=5, temperature=0.0, extra_body=with_ids)
    first = greedy.choices[0].token_ids[0]
    banned = await chat(port_client, port_server, max_tokens=5, temperature=0.0, logit_bias={str(first): -100}, extra_body=with_ids)
    assert banned.choices[0].token_ids[0] != first


async def test_stop_token_ids_in_vocabulary(port_client: openai.AsyncOpenAI, port_server: PortServer, port_vocab_size: int) -> None:
    completion = await chat(port_client, port_server, messages=[{"role": "user", "content": "Testing valid stop token ids"}],
                            max_tokens=5, extra_body={"stop_token_ids": [port_vocab_size - 1]})
    assert completion.choices[0].message.content is not None


async def test_stop_token_ids_outside_vocabulary_are_400(
    port_client: openai.AsyncOpenAI, port_server: PortServer, port_vocab_size: int
) -> None:
    size = port_vocab_size
    with pytest.raises(openai.BadRequestError) as caught:
        await chat(port_client, port_server, messages=[{"role": "user", "content": "Testing stop token ids"}],
                   max_tokens=5, extra_body={"stop_token_ids": [size + 1]})
    assert str(size + 1) in str(caught.value) and str(size) in str(caught.value)


async def test_negative_stop_token_ids_are_400(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    with pytest.raises(openai.BadRequestError):
        await chat(port_client, port_server, messages=[{"role": "user", "content": "Testing stop token ids"}],
                   max_tokens=5, extra_body={"stop_token_ids": [-1]})


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize("value", [-2.5, 3.0])
async def test_penalties_out_of_range_are_400(port_client: openai.AsyncOpenAI, port_server: PortServer, penalty: str, value: float) -> None:
    """OpenAI's range is [-2, 2]; the message names the parameter."""
    with pytest.raises(openai.BadRequestError) as caught:
        await chat(port_client, port_server, max_tokens=5, **{penalty: value})
    assert penalty in caught.value.message


async def test_penalties_in_range_are_served(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, max_tokens=8, presence_penalty=1.5, frequency_penalty=-1.0, temperature=0.0)
    assert completion.choices[0].message.content


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_token_limit_is_honoured(port_client: openai.AsyncOpenAI, port_server: PortServer, field: str) -> None:
    completion = await chat(port_client, port_server, temperature=0.0, extra_body={"min_tokens": 7}, **{field: 7})
    assert completion.usage.completion_tokens == 7
    assert completion.choices[0].finish_reason == "length"


async def test_min_tokens_holds_back_the_end(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """Without min_tokens this one-word answer ends early; with it, it runs to the minimum."""
    messages = [{"role": "user", "content": "Reply with one word: yes or no. Is water wet?"}]
    free = await chat(port_client, port_server, messages=messages, max_tokens=40, temperature=0.0)
    held = await chat(port_client, port_server, messages=messages, max_tokens=40, temperature=0.0, extra_body={"min_tokens": 30})
    assert held.usage.completion_tokens >= 30
    assert held.usage.completion_tokens > free.usage.completion_tokens or free.usage.completion_tokens >= 30


async def test_stop_string(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """Generation ends at the stop string, which is cut from the text and named as stop_reason."""
    base = await chat(port_client, port_server, max_tokens=20, temperature=0.0, extra_body={"min_tokens": 20})
    text = base.choices[0].message.content
    words = text.split()
    assert len(words) >= 2
    stop = words[1]
    stopped = await chat(port_client, port_server, max_tokens=20, temperature=0.0, stop=[stop])
    choice = stopped.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.model_extra["stop_reason"] == stop
    assert stop not in choice.message.content
    assert text.startswith(choice.message.content)


# ---- echo, token ids ----


@pytest.mark.parametrize("echo", [True, False])
async def test_echo_with_continue_final_message(port_client: openai.AsyncOpenAI, port_server: PortServer, echo: bool) -> None:
    saying = "Here is a common saying about apple. An apple a day, keeps"
    completion = await chat(
        port_client, port_server, max_tokens=10,
        messages=[{"role": "user", "content": "tell me a common saying"}, {"role": "assistant", "content": saying}],
        extra_body={"echo": echo, "continue_final_message": True, "add_generation_prompt": False},
    )
    choice = completion.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.role == "assistant"
    assert (saying in choice.message.content) is echo


async def test_return_token_ids(port_client: openai.AsyncOpenAI, port_server: PortServer, port_tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "You like to use emojis in your responses."},
        {"role": "user", "content": "Repeat after me: I love cats 🐱"},
    ]
    completion = await chat(port_client, port_server, messages=messages, max_tokens=20, temperature=0, logprobs=True,
                            extra_body={"return_token_ids": True})
    prompt = port_tokenizer.decode(completion.model_extra["prompt_token_ids"])
    assert "You like to use emojis in your responses." in prompt and "I love cats 🐱" in prompt
    token_ids = completion.choices[0].token_ids
    assert token_ids and len(token_ids) == completion.usage.completion_tokens
    assert port_tokenizer.decode(token_ids, skip_special_tokens=True) == completion.choices[0].message.content
    without = await chat(port_client, port_server, messages=messages, max_tokens=5, temperature=0, extra_body={"return_token_ids": False})
    assert without.choices[0].model_extra.get("token_ids") is None
    assert without.model_extra.get("prompt_token_ids") is None


async def test_return_token_ids_streaming(port_client: openai.AsyncOpenAI, port_server: PortServer, port_tokenizer: Any) -> None:
    """The first chunk carries the prompt's ids, later chunks only the new tokens' ids."""
    messages = [{"role": "user", "content": "Repeat after me: I love cats 🐱"}]
    full = await chat(port_client, port_server, messages=messages, max_tokens=20, temperature=0, extra_body={"return_token_ids": True})
    chunks = await stream_chunks(port_client, port_server, messages=messages, max_tokens=20, temperature=0,
                                 extra_body={"return_token_ids": True})
    assert chunks[0].model_extra["prompt_token_ids"] == full.model_extra["prompt_token_ids"]
    assert all(chunk.model_extra.get("prompt_token_ids") is None for chunk in chunks[1:])
    streamed_ids = [i for chunk in chunks for c in chunk.choices for i in (c.model_extra.get("token_ids") or [])]
    assert streamed_ids == full.choices[0].token_ids
    assert streamed_text(chunks) == full.choices[0].message.content


async def test_logprob_token_ids(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """Pinned vocabulary ids appear among the top logprobs wherever they would rank."""
    requested = [100, 1000, 5000]
    completion = await chat(port_client, port_server, messages=[{"role": "user", "content": "Hello"}], max_tokens=1, temperature=0,
                            logprobs=True, top_logprobs=len(requested),
                            extra_body={"logprob_token_ids": requested, "return_tokens_as_token_ids": True})
    entries = completion.choices[0].logprobs.content[0].top_logprobs
    assert all(entry.token.startswith("token_id:") for entry in entries)
    returned = {int(entry.token.removeprefix("token_id:")) for entry in entries}
    assert len(returned & set(requested)) >= len(requested) - 1
    assert all(entry.logprob <= 0.0 and entry.logprob == entry.logprob for entry in entries)


async def test_top_logprobs_are_sorted_log_probabilities(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, messages=[{"role": "user", "content": "Hello"}], max_tokens=1, temperature=0,
                            logprobs=True, top_logprobs=5)
    entry = completion.choices[0].logprobs.content[0]
    values = [item.logprob for item in entry.top_logprobs]
    assert len(values) == 5 and all(value <= 0.0 for value in values)
    assert values == sorted(values, reverse=True)
    assert entry.token == entry.top_logprobs[0].token  # greedy picks the most likely token


async def test_truncation_side(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """truncate_prompt_tokens keeps the first or the last k prompt tokens."""
    messages = [{"role": "user", "content": "Summarize how prompt truncation works in one sentence."}]
    full = await chat(port_client, port_server, messages=messages, max_tokens=1, temperature=0, extra_body={"return_token_ids": True})
    ids = full.model_extra["prompt_token_ids"]
    assert len(ids) > 4
    for side, expected in (("right", ids[:4]), ("left", ids[-4:])):
        cut = await chat(port_client, port_server, messages=messages, max_tokens=1, temperature=0,
                         extra_body={"return_token_ids": True, "truncate_prompt_tokens": 4, "truncation_side": side})
        assert cut.model_extra["prompt_token_ids"] == expected
