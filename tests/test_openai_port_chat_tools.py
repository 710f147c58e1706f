"""Port of vLLM's chat tool-calling server tests that need no model-specific tool format:
tool_choice "required" and named functions (decoded as constrained JSON), their validation,
and conversations that carry earlier tool calls and their results.

See test_openai_port_basic.py for what was ported from where. ``tool_choice="auto"`` with an
expected call is left out: SmolLM2-135M has no tool-call format for a parser to find.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from fixtures_openai_port import SAMPLE_JSON_SCHEMA, PortServer, chat, stream_chunks

pytestmark = pytest.mark.slow

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city to find the weather for, e.g. 'Vienna'"},
        "country": {"type": "string", "description": "The country that the city is in, e.g. 'Austria'"},
        "unit": {"type": "string", "description": "The unit to fetch the temperature in", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["country", "unit"],
}
FORECAST_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city to get the forecast for, e.g. 'Vienna'"},
        "country": {"type": "string", "description": "The country that the city is in, e.g. 'Austria'"},
        "days": {"type": "integer", "description": "Number of days to get the forecast for (1-7)"},
        "unit": {"type": "string", "description": "The unit to fetch the temperature in", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["country", "days", "unit"],
}


def function_tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = [
    function_tool("get_current_weather", "Get the current weather in a given location", WEATHER_PARAMETERS),
    function_tool("get_forecast", "Get the weather forecast for a given location", FORECAST_PARAMETERS),
]
PARAMETERS_BY_NAME = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
WEATHER_QUESTION = [
    {"role": "user", "content": "Hi! How are you doing today?"},
    {"role": "assistant", "content": "I'm doing well! How can I help you?"},
    {
        "role": "user",
        "content": "Can you tell me what the current weather is in Berlin and the forecast for the next 5 days, in fahrenheit?",
    },
]
EMPLOYEE_TOOL = function_tool("dummy_function_name", "This is a dummy function", SAMPLE_JSON_SCHEMA)
EMPLOYEE_CHOICE = {"type": "function", "function": {"name": "dummy_function_name"}}
EMPLOYEE_QUESTION = [
    {"role": "system", "content": "you are a helpful assistant"},
    {"role": "user", "content": "Give an example JSON for an employee profile using the specified tool."},
]


def assert_valid_calls(calls: list[Any]) -> None:
    """Every call names a offered tool and its arguments satisfy that tool's schema."""
    assert calls
    for call in calls:
        assert call.type == "function" and call.id
        jsonschema.validate(instance=json.loads(call.function.arguments), schema=PARAMETERS_BY_NAME[call.function.name])


async def test_required_tool_choice(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, messages=WEATHER_QUESTION, tools=TOOLS, tool_choice="required",
                            temperature=0.0, max_completion_tokens=300)
    choice = completion.choices[0]
    assert_valid_calls(choice.message.tool_calls)
    assert choice.finish_reason == "tool_calls"


async def test_required_tool_choice_streaming(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    chunks = await stream_chunks(port_client, port_server, messages=WEATHER_QUESTION, tools=TOOLS, tool_choice="required",
                                 temperature=0.0, max_completion_tokens=300)
    deltas = [call for chunk in chunks for c in chunk.choices for call in (c.delta.tool_calls or [])]
    assert deltas
    names = {call.function.name for call in deltas if call.function and call.function.name}
    assert names and names <= set(PARAMETERS_BY_NAME)


async def test_required_tool_choice_without_parallel_calls(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, messages=WEATHER_QUESTION, tools=TOOLS, tool_choice="required",
                            parallel_tool_calls=False, temperature=0.0, max_completion_tokens=300)
    calls = completion.choices[0].message.tool_calls
    assert_valid_calls(calls)
    assert len(calls) == 1


async def test_named_tool_choice(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """A named function is always called, with arguments that fit its parameters."""
    completion = await chat(port_client, port_server, messages=EMPLOYEE_QUESTION, tools=[EMPLOYEE_TOOL], tool_choice=EMPLOYEE_CHOICE,
                            temperature=0.0, max_completion_tokens=300)
    message = completion.choices[0].message
    assert not message.content
    (call,) = message.tool_calls
    assert call.function.name == "dummy_function_name"
    jsonschema.validate(instance=json.loads(call.function.arguments), schema=SAMPLE_JSON_SCHEMA)


async def test_named_tool_choice_streaming(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    chunks = await stream_chunks(port_client, port_server, messages=EMPLOYEE_QUESTION, tools=[EMPLOYEE_TOOL], tool_choice=EMPLOYEE_CHOICE,
                                 temperature=0.0, max_completion_tokens=300)
    arguments: list[str] = []
    finishes = 0
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.delta.role:
                assert choice.delta.role == "assistant"
            assert not choice.delta.content
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.arguments:
                    arguments.append(call.function.arguments)
            finishes += choice.finish_reason is not None
    assert finishes == 1
    jsonschema.validate(instance=json.loads("".join(arguments)), schema=SAMPLE_JSON_SCHEMA)


@pytest.mark.parametrize(
    "tools, tool_choice",
    [
        pytest.param(None, EMPLOYEE_CHOICE, id="named-without-tools"),
        pytest.param([EMPLOYEE_TOOL], {"type": "function", "function": {"name": "nondefined_function_name"}}, id="unknown-name"),
        pytest.param([EMPLOYEE_TOOL], {}, id="empty-choice"),
    ],
)
async def test_inconsistent_tool_choice_is_400(
    port_client: openai.AsyncOpenAI, port_server: PortServer, tools: Any, tool_choice: Any
) -> None:
    kwargs: dict[str, Any] = {"tool_choice": tool_choice}
    if tools is not None:
        kwargs["tools"] = tools
    with pytest.raises(openai.BadRequestError):
        await chat(port_client, port_server, messages=EMPLOYEE_QUESTION, max_completion_tokens=100, **kwargs)


async def test_required_tool_choice_with_one_token(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """A call cut off by max_tokens is no call: no tool_calls, finish_reason length (as OpenAI)."""
    completion = await chat(port_client, port_server, messages=WEATHER_QUESTION, tools=TOOLS, tool_choice="required",
                            temperature=0, max_completion_tokens=1)
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert not choice.message.tool_calls


async def test_tool_choice_none_answers_in_text(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await chat(port_client, port_server, messages=WEATHER_QUESTION, tools=TOOLS, tool_choice="none",
                            temperature=0, max_completion_tokens=10)
    message = completion.choices[0].message
    assert message.content
    assert not message.tool_calls


async def test_auto_tool_choice_with_token_ids(port_client: openai.AsyncOpenAI, port_server: PortServer, port_tokenizer: Any) -> None:
    """return_token_ids works beside tools: the prompt ids decode to the conversation."""
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What's the weather like in Berlin?"},
    ]
    completion = await chat(port_client, port_server, messages=messages, tools=TOOLS, tool_choice="auto", max_tokens=30,
                            temperature=0, logprobs=True, extra_body={"return_token_ids": True})
    prompt = port_tokenizer.decode(completion.model_extra["prompt_token_ids"])
    assert "You are a helpful assistant" in prompt and "What's the weather like in Berlin?" in prompt
    choice = completion.choices[0]
    assert choice.token_ids
    for call in choice.message.tool_calls or []:
        assert call.function.name in PARAMETERS_BY_NAME
    without = await chat(port_client, port_server, messages=messages, tools=TOOLS, tool_choice="auto", max_tokens=5,
                         temperature=0, extra_body={"return_token_ids": False})
    assert without.choices[0].model_extra.get("token_ids") is None
    assert without.model_extra.get("prompt_token_ids") is None


def tool_round_trip(arguments: str) -> list[dict[str, Any]]:
    """A conversation in which the assistant called a tool (no text) and the tool answered."""
    return [
        {"role": "system", "content": "You are a helpful assistant. Reply with a short sentence after a tool result."},
        {"role": "user", "content": "What time is it now?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_time_1", "type": "function", "function": {"name": "get_current_time", "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": "call_time_1", "content": "2025-01-01T12:00:00"},
    ]


@pytest.mark.parametrize("arguments", ["{}", ""], ids=["empty-object", "empty-string"])
async def test_conversation_with_a_tool_result(port_client: openai.AsyncOpenAI, port_server: PortServer, arguments: str) -> None:
    """An assistant turn with tool_calls and null content, then a tool message, is answered."""
    completion = await chat(port_client, port_server, messages=tool_round_trip(arguments),
                            temperature=0.0, seed=42, max_completion_tokens=32)
    content = completion.choices[0].message.content
    assert content is not None and content.strip()
