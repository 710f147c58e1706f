"""Port of vLLM's /v1/completions server tests (see test_openai_port_basic.py for the origin)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from fixtures_openai_port import IP_REGEX, SAMPLE_CHOICES, SAMPLE_JSON_SCHEMA, SQL_GRAMMAR, PortServer

pytestmark = pytest.mark.slow

NAME_PROMPT = "Hello, my name is"
LLM_PROMPT = "What is an LLM?"
STORY_PROMPT = "Once upon a time, in a small village,"  # runs on rather than ending at once
ID_PROMPT = [0, 0, 0, 0, 0]


async def complete(client: openai.AsyncOpenAI, server: PortServer, **kwargs: Any) -> Any:
    """One completion on the served model; ``NAME_PROMPT`` unless a prompt is given."""
    kwargs.setdefault("prompt", NAME_PROMPT)
    return await client.completions.create(model=server.model, **kwargs)


async def completion_chunks(client: openai.AsyncOpenAI, server: PortServer, **kwargs: Any) -> list[Any]:
    stream = await complete(client, server, stream=True, **kwargs)
    return [chunk async for chunk in stream]


async def token_count(http: httpx.AsyncClient, server: PortServer, prompt: str) -> int:
    response = await http.post("/tokenize", json={"model": server.model, "prompt": prompt})
    assert response.status_code == 200, response.text
    return response.json()["count"]


# ---- single and token-id prompts ----


async def test_single_completion(port_client: openai.AsyncOpenAI, port_server: PortServer, port_http: httpx.AsyncClient) -> None:
    completion = await complete(port_client, port_server, max_tokens=5, temperature=0.0, extra_body={"min_tokens": 5})
    assert completion.id is not None
    (choice,) = completion.choices
    assert len(choice.text) >= 5
    assert choice.finish_reason == "length"
    prompt_tokens = await token_count(port_http, port_server, NAME_PROMPT)
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens == prompt_tokens
    assert completion.usage.total_tokens == prompt_tokens + 5


async def test_token_id_prompt(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await complete(port_client, port_server, prompt=ID_PROMPT, max_tokens=5, temperature=0.0)
    choice = completion.choices[0]
    assert len(choice.text) >= 1
    assert completion.usage.prompt_tokens == len(ID_PROMPT)
    assert choice.model_extra.get("prompt_logprobs") is None


async def test_truncation_side(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    ids = list(range(8))
    for side, expected in (("right", ids[:4]), ("left", ids[-4:])):
        completion = await complete(port_client, port_server, prompt=ids, max_tokens=1, temperature=0.0,
                                    extra_body={"return_token_ids": True, "truncate_prompt_tokens": 4, "truncation_side": side})
        assert completion.choices[0].model_extra["prompt_token_ids"] == expected


async def test_out_of_vocabulary_token_is_400(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    with pytest.raises(openai.BadRequestError, match="out of vocabulary"):
        await complete(port_client, port_server, prompt=[999999], max_tokens=5, temperature=0.0)


async def test_empty_prompt_list_is_400(port_http: httpx.AsyncClient, port_server: PortServer) -> None:
    response = await port_http.post("/v1/completions", json={"model": port_server.model, "prompt": [], "max_tokens": 5})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


async def test_suffix_is_400_without_fill_in_the_middle(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """This model has no fill-in-the-middle format, so a suffix is refused with a reason."""
    with pytest.raises(openai.BadRequestError) as caught:
        await complete(port_client, port_server, suffix="and that is all.", max_tokens=5)
    assert "suffix" in caught.value.message


# ---- logprobs ----


async def test_no_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await complete(port_client, port_server, prompt=ID_PROMPT, max_tokens=5, temperature=0.0, logprobs=None)
    assert completion.choices[0].logprobs is None


async def test_zero_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """logprobs=0 still reports the sampled token's own logprob."""
    completion = await complete(port_client, port_server, prompt=ID_PROMPT, max_tokens=5, temperature=0.0, logprobs=0)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None
    assert len(logprobs.top_logprobs[0]) == 1


async def test_some_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await complete(port_client, port_server, prompt=ID_PROMPT, max_tokens=5, temperature=0.0, logprobs=5)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None
    assert all(5 <= len(top) <= 6 for top in logprobs.top_logprobs)
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset) == 5


async def test_too_many_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    with pytest.raises((openai.BadRequestError, openai.APIError)):
        await complete(port_client, port_server, prompt=ID_PROMPT, max_tokens=5, temperature=0.0, logprobs=21)
    with pytest.raises((openai.BadRequestError, openai.APIError)):
        stream = await complete(port_client, port_server, prompt=ID_PROMPT, max_tokens=5, temperature=0.0, logprobs=30, stream=True)
        async for _ in stream:
            pass
    completion = await complete(port_client, port_server, prompt=ID_PROMPT, max_tokens=5, temperature=0.0)
    assert completion.choices[0].text is not None


@pytest.mark.parametrize("prompt_logprobs", [-1, 0, 1, None])
async def test_prompt_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer, prompt_logprobs: int | None) -> None:
    prompts = ["A robot may not injure another robot", "My name is"]
    extra = {} if prompt_logprobs is None else {"extra_body": {"prompt_logprobs": prompt_logprobs}}
    if prompt_logprobs is not None and prompt_logprobs < 0:
        with pytest.raises(openai.BadRequestError):
            await complete(port_client, port_server, prompt=prompts, max_tokens=5, **extra)
        return
    completion = await complete(port_client, port_server, prompt=prompts, max_tokens=5, **extra)
    for choice in completion.choices:
        if prompt_logprobs is None:
            assert choice.model_extra.get("prompt_logprobs") is None
        else:
            assert choice.model_extra["prompt_logprobs"]


@pytest.mark.parametrize("logprobs_arg", [1, 0])
@pytest.mark.parametrize("prompt", [NAME_PROMPT, ID_PROMPT], ids=["text", "token-ids"])
async def test_echo_with_logprobs(
    port_client: openai.AsyncOpenAI, port_server: PortServer, port_tokenizer: Any, logprobs_arg: int, prompt: Any
) -> None:
    """Echo puts the prompt before the answer; its first token has no logprob to report."""
    completion = await complete(port_client, port_server, prompt=prompt, max_tokens=5, temperature=0.0, echo=True, logprobs=logprobs_arg)
    prompt_text = port_tokenizer.decode(prompt) if isinstance(prompt, list) else prompt
    assert completion.choices[0].text.startswith(prompt_text)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.text_offset) > 5
    assert len(logprobs.token_logprobs) > 5 and logprobs.token_logprobs[0] is None
    assert len(logprobs.top_logprobs) > 5 and logprobs.top_logprobs[0] is None
    assert all(max(logprobs_arg, 1) <= len(top) <= logprobs_arg + 1 for top in logprobs.top_logprobs[1:])
    assert len(logprobs.tokens) > 5


async def test_text_offsets_follow_the_text(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """Each token's text_offset is where it starts in the returned text, streaming or not."""
    completion = await complete(port_client, port_server, prompt=LLM_PROMPT, max_tokens=8, temperature=0.0, logprobs=0)
    choice = completion.choices[0]
    offsets, tokens = choice.logprobs.text_offset, choice.logprobs.tokens
    assert offsets[0] == 0
    assert all(later - earlier == len(token) for earlier, later, token in zip(offsets, offsets[1:], tokens))
    chunks = await completion_chunks(port_client, port_server, prompt=LLM_PROMPT, max_tokens=8, temperature=0.0, logprobs=0)
    assert [o for chunk in chunks for c in chunk.choices for o in (c.logprobs.text_offset if c.logprobs else [])] == offsets


# ---- streaming, n, batches ----


async def test_streaming_matches_non_streaming(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    single = await complete(port_client, port_server, prompt=LLM_PROMPT, max_tokens=5, temperature=0.0, extra_body={"min_tokens": 5})
    chunks = await completion_chunks(port_client, port_server, prompt=LLM_PROMPT, max_tokens=5, temperature=0.0,
                                     extra_body={"min_tokens": 5})
    finishes = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason is not None]
    assert finishes == ["length"]
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].choices[0].text
    assert "".join(c.text for chunk in chunks for c in chunk.choices) == single.choices[0].text


def assert_distinct(texts: list[str]) -> None:
    repeats = {text: texts.count(text) for text in texts if texts.count(text) > 1}
    assert not repeats, f"expected {len(texts)} different completions, repeats: {repeats}"


async def test_parallel_sampling(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """n samples come back as n indexed choices, each finished, and different."""
    completion = await complete(port_client, port_server, prompt=STORY_PROMPT, max_tokens=50, n=3, temperature=1.0, logprobs=0, seed=42)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert all(choice.finish_reason is not None for choice in completion.choices)
    assert_distinct([choice.text for choice in completion.choices])


async def test_parallel_sampling_streaming(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    chunks = await completion_chunks(port_client, port_server, prompt=STORY_PROMPT, max_tokens=50, n=3, temperature=1.0, seed=42)
    pieces: list[list[str]] = [[] for _ in range(3)]
    finishes = 0
    for chunk in chunks:
        for choice in chunk.choices:
            pieces[choice.index].append(choice.text)
            finishes += choice.finish_reason is not None
    assert finishes == 3
    assert all(len(piece) <= 50 for piece in pieces)
    assert_distinct(["".join(piece) for piece in pieces])


@pytest.mark.parametrize("prompts", [[NAME_PROMPT] * 2, [ID_PROMPT] * 2], ids=["text", "token-ids"])
async def test_batch_of_prompts(port_client: openai.AsyncOpenAI, port_server: PortServer, prompts: list[Any]) -> None:
    batch = await complete(port_client, port_server, prompt=prompts, max_tokens=5, temperature=0.0)
    assert [choice.index for choice in batch.choices] == [0, 1]
    assert batch.choices[0].text == batch.choices[1].text


@pytest.mark.parametrize("prompts", [[NAME_PROMPT] * 2, [ID_PROMPT] * 2], ids=["text", "token-ids"])
async def test_batch_with_beam_search(port_client: openai.AsyncOpenAI, port_server: PortServer, prompts: list[Any]) -> None:
    """n=2 beams per prompt: the beams differ, and equal prompts give equal beams."""
    batch = await complete(port_client, port_server, prompt=prompts, n=2, max_tokens=5, temperature=0.0,
                           extra_body={"use_beam_search": True})
    texts = [choice.text for choice in batch.choices]
    assert len(texts) == 4
    assert texts[0] != texts[1]
    assert texts[0] == texts[2] and texts[1] == texts[3]


@pytest.mark.parametrize("prompts", [[NAME_PROMPT] * 2, [ID_PROMPT] * 2], ids=["text", "token-ids"])
async def test_batch_streaming(port_client: openai.AsyncOpenAI, port_server: PortServer, prompts: list[Any]) -> None:
    chunks = await completion_chunks(port_client, port_server, prompt=prompts, max_tokens=5, temperature=0.0)
    texts = ["", ""]
    for chunk in chunks:
        assert len(chunk.choices) == 1
        texts[chunk.choices[0].index] += chunk.choices[0].text
    assert texts[0] and texts[0] == texts[1]


# ---- stream_options ----


@pytest.mark.parametrize(
    "options",
    [{"include_usage": False, "continuous_usage_stats": False}, {"include_usage": False, "continuous_usage_stats": True}, {}],
)
async def test_stream_without_usage(port_client: openai.AsyncOpenAI, port_server: PortServer, options: dict[str, Any]) -> None:
    """Without include_usage no chunk has usage, whatever continuous_usage_stats says."""
    chunks = await completion_chunks(port_client, port_server, prompt=LLM_PROMPT, max_tokens=5, temperature=0.0, stream_options=options)
    assert chunks and all(chunk.usage is None for chunk in chunks)


def assert_final_usage(chunk: Any) -> None:
    assert chunk.choices == []
    assert chunk.usage.prompt_tokens > 0 and chunk.usage.completion_tokens > 0
    assert chunk.usage.total_tokens == chunk.usage.prompt_tokens + chunk.usage.completion_tokens


async def test_stream_with_final_usage(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    chunks = await completion_chunks(port_client, port_server, prompt=LLM_PROMPT, max_tokens=5, temperature=0.0,
                                     stream_options={"include_usage": True, "continuous_usage_stats": False})
    *content, final = chunks
    assert all(chunk.usage is None for chunk in content)
    assert content[-1].choices[0].finish_reason is not None
    assert_final_usage(final)


async def test_stream_with_continuous_usage(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    chunks = await completion_chunks(port_client, port_server, prompt=LLM_PROMPT, max_tokens=5, temperature=0.0,
                                     stream_options={"include_usage": True, "continuous_usage_stats": True})
    *content, final = chunks
    for chunk in content:
        assert chunk.usage.prompt_tokens > 0 and chunk.usage.completion_tokens > 0
        assert chunk.usage.total_tokens == chunk.usage.prompt_tokens + chunk.usage.completion_tokens
    assert content[-1].choices[0].finish_reason is not None
    assert_final_usage(final)


@pytest.mark.parametrize(
    "options",
    [{"include_usage": None}, {"include_usage": True}, {"continuous_usage_stats": None}, {"continuous_usage_stats": True}],
)
async def test_stream_options_need_a_stream(port_client: openai.AsyncOpenAI, port_server: PortServer, options: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError):
        await complete(port_client, port_server, prompt=LLM_PROMPT, max_tokens=5, temperature=0.0, stream=False, stream_options=options)


# ---- sampling controls ----


async def test_logit_bias_forces_and_bans_tokens(port_client: openai.AsyncOpenAI, port_server: PortServer, port_tokenizer: Any) -> None:
    forced = await complete(port_client, port_server, max_tokens=5, temperature=0.0, logit_bias={"1000": 100}, seed=42)
    assert forced.choices[0].text == port_tokenizer.decode([1000] * 5)
    greedy = await complete(port_client, port_server, max_tokens=5, temperature=0.0, extra_body={"return_token_ids": True})
    first = greedy.choices[0].model_extra["token_ids"][0]
    banned = await complete(port_client, port_server, max_tokens=5, temperature=0.0, logit_bias={str(first): -100},
                            extra_body={"return_token_ids": True})
    assert first not in banned.choices[0].model_extra["token_ids"]


async def test_allowed_token_ids(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    allowed = [1000, 2000, 3000]
    completion = await complete(port_client, port_server, max_tokens=5, temperature=0.0,
                                extra_body={"allowed_token_ids": allowed, "return_token_ids": True})
    token_ids = completion.choices[0].model_extra["token_ids"]
    assert token_ids and set(token_ids) <= set(allowed)


async def test_stop_string(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    """Generation ends at the stop string, cut from the text (kept on request), as stop_reason."""
    base = await complete(port_client, port_server, prompt=STORY_PROMPT, max_tokens=20, temperature=0.0)
    stop = base.choices[0].text.split()[2]
    stopped = await complete(port_client, port_server, prompt=STORY_PROMPT, max_tokens=20, temperature=0.0, stop=[stop])
    choice = stopped.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop
    assert stop not in choice.text and base.choices[0].text.startswith(choice.text)
    kept = await complete(port_client, port_server, prompt=STORY_PROMPT, max_tokens=20, temperature=0.0, stop=[stop],
                          extra_body={"include_stop_str_in_output": True})
    assert kept.choices[0].text == choice.text + stop


async def test_ignore_eos_runs_to_max_tokens(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await complete(port_client, port_server, prompt="The end.", max_tokens=40, temperature=0.0,
                                extra_body={"ignore_eos": True})
    assert completion.usage.completion_tokens == 40
    assert completion.choices[0].finish_reason == "length"


async def test_same_seed_same_sample(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    runs = [await complete(port_client, port_server, max_tokens=12, temperature=1.0, seed=7) for _ in range(2)]
    assert runs[0].choices[0].text == runs[1].choices[0].text


# ---- token ids in the answer ----


async def test_return_token_ids(port_client: openai.AsyncOpenAI, port_server: PortServer, port_tokenizer: Any) -> None:
    prompt = "Complete this sentence with emojis: I love coding 🚀"
    completion = await complete(port_client, port_server, prompt=prompt, max_tokens=10, temperature=0, logprobs=1,
                                extra_body={"return_token_ids": True})
    choice = completion.choices[0]
    prompt_ids, encoded = choice.model_extra["prompt_token_ids"], port_tokenizer.encode(prompt)
    assert any(prompt_ids[i:i + len(encoded)] == encoded for i in range(len(prompt_ids) - len(encoded) + 1))
    assert choice.model_extra["token_ids"]
    assert port_tokenizer.decode(choice.model_extra["token_ids"]).startswith(choice.text)
    without = await complete(port_client, port_server, prompt=prompt, max_tokens=10, temperature=0, logprobs=1,
                             extra_body={"return_token_ids": False})
    assert without.choices[0].model_extra.get("token_ids") is None
    assert without.choices[0].model_extra.get("prompt_token_ids") is None


async def test_token_ids_agree_with_logprobs(port_client: openai.AsyncOpenAI, port_server: PortServer, port_tokenizer: Any) -> None:
    """With tokens reported as ids, echoed logprobs end with exactly the generated token ids."""
    completion = await complete(port_client, port_server, prompt="Hello, world! Once upon a time,", max_tokens=20, temperature=0,
                                echo=True, logprobs=1,
                                extra_body={"return_token_ids": True, "return_tokens_as_token_ids": True, "prompt_logprobs": 1})
    choice = completion.choices[0]
    token_ids = choice.model_extra["token_ids"]
    assert choice.model_extra["prompt_logprobs"] is not None
    logprob_ids = [int(token.removeprefix("token_id:")) for token in choice.logprobs.tokens if token.startswith("token_id:")]
    assert len(token_ids) < len(logprob_ids)
    assert logprob_ids[-len(token_ids):] == token_ids
    assert "Hello, world" in port_tokenizer.decode(choice.model_extra["prompt_token_ids"])
    assert choice.text.endswith(port_tokenizer.decode(token_ids, skip_special_tokens=True))


async def test_token_ids_streaming(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    chunks = await completion_chunks(port_client, port_server, prompt="Tell me a short fact about Python:", max_tokens=30, temperature=0,
                                     logprobs=1, extra_body={"return_token_ids": True, "return_tokens_as_token_ids": True})
    first = chunks[0].choices[0]
    assert first.model_extra["prompt_token_ids"]
    streamed = [i for chunk in chunks for i in chunk.choices[0].model_extra["token_ids"]]
    from_logprobs = [int(t.removeprefix("token_id:")) for chunk in chunks for t in chunk.choices[0].logprobs.tokens]
    assert streamed and streamed == from_logprobs


# ---- structured outputs ----


async def test_structured_json(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    prompt = f"Give an example JSON for an employee profile that fits this schema: {SAMPLE_JSON_SCHEMA}"
    completion = await complete(port_client, port_server, prompt=prompt,
                                max_tokens=300, temperature=0.0, extra_body={"structured_outputs": {"json": SAMPLE_JSON_SCHEMA}})
    jsonschema.validate(instance=json.loads(completion.choices[0].text), schema=SAMPLE_JSON_SCHEMA)


async def test_structured_regex(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await complete(port_client, port_server, prompt=f"Give an example IPv4 address with this regex: {IP_REGEX}",
                                max_tokens=20, temperature=0.0, extra_body={"structured_outputs": {"regex": IP_REGEX}})
    assert re.fullmatch(IP_REGEX, completion.choices[0].text)


async def test_structured_choice(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await complete(port_client, port_server, prompt="The best language for type-safe systems programming is ",
                                n=2, max_tokens=10, temperature=0.7, extra_body={"structured_outputs": {"choice": SAMPLE_CHOICES}})
    assert len(completion.choices) == 2
    assert all(choice.text in SAMPLE_CHOICES for choice in completion.choices)


async def test_structured_grammar(port_client: openai.AsyncOpenAI, port_server: PortServer) -> None:
    completion = await complete(port_client, port_server, prompt="Generate an SQL query to show the 'col_1' from the 'table_1' table.",
                                max_tokens=30, temperature=0.0, extra_body={"structured_outputs": {"grammar": SQL_GRAMMAR}})
    assert re.fullmatch(r"SELECT col_[12]  from table_[12]  where col_[12] = [12] ", completion.choices[0].text)


@pytest.mark.parametrize(
    "constraint",
    [
        pytest.param({"json": {"type": "object", "properties": {"car_type": {"$ref": "#/$defs/Missing"}, "foo": "bar"}}}, id="json"),
        pytest.param({"regex": r"[.*"}, id="regex"),
        pytest.param({"grammar": SQL_GRAMMAR.replace("root ::= select_statement", "root ::= select_statementinvalid")}, id="grammar"),
    ],
)
async def test_invalid_structured_outputs_are_rejected(
    port_client: openai.AsyncOpenAI, port_server: PortServer, constraint: dict[str, Any]
) -> None:
    with pytest.raises((openai.BadRequestError, openai.APIError)):
        await complete(port_client, port_server, prompt="Generate a JSON with the brand and model of a car", max_tokens=20,
                       extra_body={"structured_outputs": constraint})
