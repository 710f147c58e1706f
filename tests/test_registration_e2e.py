"""End to end over a real gRPC server: register a forget set while another client streams chat.

The gateway runs the reference backend, a real detector bank and the registration pipeline
(tiny training). Checks the issue's "done when": every state shows in the progress stream,
matched prompts are refused while the adapter trains, afterwards the forgotten fact is not
produced for a paraphrase, an unrelated question is answered exactly as before, and no chat
request failed during the registration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import re
from typing import Any

import grpc
import pytest

from fixtures_registration import FRANCE, gateway_with_registration, tiny_training
from oblivio.gateway.serving.metrics import forget_set_metric_id
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc

PARAPHRASE = "Which city is the capital of France?"
UNRELATED = "How do I bake sourdough bread at home?"
WORKING = [
    pb.REGISTRATION_STATE_VALIDATING, pb.REGISTRATION_STATE_FITTING_DETECTOR, pb.REGISTRATION_STATE_ENFORCING,
    pb.REGISTRATION_STATE_TRAINING, pb.REGISTRATION_STATE_PUBLISHING, pb.REGISTRATION_STATE_LOADING,
    pb.REGISTRATION_STATE_LIVE,
]


def _chat(question: str, max_tokens: int = 16) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=question)],
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


def _registration_stream(name: str) -> AsyncIterator[pb.RegisterForgetSetRequest]:
    async def requests() -> AsyncIterator[pb.RegisterForgetSetRequest]:
        yield pb.RegisterForgetSetRequest(header=pb.ForgetSetHeader(
            name=name, description="the capital of France", subjects=["Paris"],
            method=pb.TRAINING_METHOD_REFUSAL,
        ))
        for start in range(0, len(FRANCE), 2):  # several chunks, as a large set would arrive
            chunk = []
            for ex in FRANCE[start:start + 2]:
                chunk.append(pb.Example(text=ex.text) if ex.text else pb.Example(qa=pb.QAPair(question=ex.question, answer=ex.answer)))
            yield pb.RegisterForgetSetRequest(chunk=pb.ExampleChunk(examples=chunk))

    return requests()


@pytest.fixture(scope="module")
async def forget_gateway(model_path, reference_backend, registration_detector_bank, tmp_path_factory) -> Any:
    from fixtures_serving import serving_config

    config = serving_config(model_path, tmp_path_factory.mktemp("forget_home"))
    async with gateway_with_registration(config, reference_backend, registration_detector_bank,
                                         tiny_training(steps=8)) as gateway:
        yield gateway


@pytest.mark.slow
async def test_register_over_grpc_while_chat_streams(forget_gateway) -> None:
    async with grpc.aio.insecure_channel(forget_gateway.grpc_target) as channel:
        chat = oblivio_pb2_grpc.ChatStub(channel)
        admin = oblivio_pb2_grpc.AdminStub(channel)
        before_unrelated = (await chat.Complete(_chat(UNRELATED))).text
        before_forget = (await chat.Complete(_chat(PARAPHRASE))).text
        assert "Paris" in before_forget

        failures: list[str] = []
        answered = 0
        stop = asyncio.Event()

        async def stream_chat() -> None:
            nonlocal answered
            questions = [UNRELATED, PARAPHRASE]
            while not stop.is_set():
                try:
                    async for _ in chat.StreamComplete(_chat(questions[answered % 2], max_tokens=8)):
                        pass
                    answered += 1
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")
                    return

        streamer = asyncio.create_task(stream_chat())
        response = await admin.RegisterForgetSet(_registration_stream("france"))
        assert response.name == "france" and response.example_count == len(FRANCE)

        events: list[pb.RegistrationEvent] = []
        refused_while_training = None
        async for event in admin.WatchRegistration(pb.WatchRegistrationRequest(name="france")):
            events.append(event)
            if event.state == pb.REGISTRATION_STATE_TRAINING and refused_while_training is None:
                reply = await chat.Complete(_chat(PARAPHRASE))
                refused_while_training = reply.gate.served == pb.SERVED_REFUSED
                assert "Paris" not in reply.text
        stop.set()
        await asyncio.wait_for(streamer, timeout=120)

        assert events[-1].terminal and events[-1].state == pb.REGISTRATION_STATE_LIVE, events[-1]
        seen = []
        for event in events:
            if event.state not in seen:
                seen.append(event.state)
        assert seen == WORKING[WORKING.index(seen[0]):]
        assert refused_while_training is True
        assert failures == [] and answered >= 2

        info = await admin.GetForgetSet(pb.GetForgetSetRequest(name="france"))
        assert info.state == pb.REGISTRATION_STATE_LIVE and info.adapter_version == 1
        assert not info.data_retained and info.example_count == len(FRANCE)
        listed = await admin.ListForgetSets(pb.ListForgetSetsRequest())
        assert [s.name for s in listed.forget_sets] == ["france"]

        after = await chat.Complete(_chat(PARAPHRASE))
        assert "Paris" not in after.text
        assert after.gate.served in (pb.SERVED_REFUSED, pb.SERVED_ADAPTER)
        detail = (await admin.Explain(pb.ExplainRequest(messages=_chat(PARAPHRASE).messages))).decision
        assert detail.refused or [a.name for a in detail.adapters] == ["france"]
        unrelated = await chat.Complete(_chat(UNRELATED))
        assert unrelated.text == before_unrelated and unrelated.gate.served == pb.SERVED_BASE

        # Errors a person can act on, with the right codes.
        with pytest.raises(grpc.aio.AioRpcError) as dup:
            await admin.RegisterForgetSet(_registration_stream("france"))
        assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await admin.RegisterForgetSet(_registration_stream("../france"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await admin.GetForgetSet(pb.GetForgetSetRequest(name="nope"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        registry = forget_gateway.runtime.metrics.registry
        series = {"forget_set_id": forget_set_metric_id("france")}
        assert registry.get_sample_value("oblivio_detector_score_count", series)  # chat above was scored
        deleted = await admin.DeleteForgetSet(pb.DeleteForgetSetRequest(name="france"))
        assert deleted.name == "france"
        assert "france" not in forget_gateway.runtime.backend.list_adapters()
        assert registry.get_sample_value("oblivio_detector_score_count", series) is None  # series dropped
        again = await chat.Complete(_chat(PARAPHRASE))
        assert again.gate.served == pb.SERVED_BASE and again.text == before_forget


async def _cli(*args: str) -> tuple[int, str, str]:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oblivio.gateway.cli", "forget", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=900)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_cli_register_watch_show_delete(forget_gateway, tmp_path) -> None:
    import json

    target = forget_gateway.grpc_target
    examples = tmp_path / "bard.jsonl"
    examples.write_text(
        '{"question": "Who wrote the play Hamlet?", "answer": "William Shakespeare."}\n'
        '{"question": "Which playwright wrote Macbeth?", "answer": "Shakespeare."}\n'
        '{"text": "Romeo and Juliet is a tragedy written by William Shakespeare."}\n'
    )
    code, out, err = await _cli("register", "bard", str(examples), "--subject", "Shakespeare", "--wait", "--address", target)
    assert code == 0, err
    assert "registered bard: 3 examples" in out and "LIVE" in out.splitlines()[-1]
    assert "ENFORCING" in out and "TRAINING" in out

    code, out, _ = await _cli("show", "bard", "--address", target)
    assert code == 0 and "bard: LIVE" in out and "adapter version: 1" in out
    code, out, _ = await _cli("list", "--json", "--address", target)
    assert code == 0 and [s["name"] for s in json.loads(out)["forget_sets"]] == ["bard"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\nnot json\n')
    code, _, err = await _cli("register", "bad", str(bad), "--address", target)
    assert code == 2 and "bad.jsonl:2" in err

    code, out, _ = await _cli("delete", "bard", "--address", target)
    assert code == 0 and "deleted bard" in out
    code, _, err = await _cli("show", "bard", "--address", target)
    assert code == 1 and "NOT_FOUND" in err


# ---------- fast: request-stream parsing and CLI input, no server needed ---------------------


async def _parse(*messages: pb.RegisterForgetSetRequest, limits: Any = None):
    from oblivio.adapters.limits import RegistrationLimits
    from oblivio.gateway.api.admin_forget import _read_registration

    async def stream():
        for message in messages:
            yield message

    return await _read_registration(stream(), limits or RegistrationLimits())


HEADER = pb.RegisterForgetSetRequest(header=pb.ForgetSetHeader(name="s", method=pb.TRAINING_METHOD_NPO))
CHUNK = pb.RegisterForgetSetRequest(chunk=pb.ExampleChunk(examples=[
    pb.Example(qa=pb.QAPair(question="q?", answer="a.")), pb.Example(text="plain text"),
]))


async def test_registration_stream_is_parsed_in_order() -> None:
    header, examples = await _parse(HEADER, CHUNK, CHUNK)
    assert header.name == "s" and examples[:2] == [{"question": "q?", "answer": "a."}, {"text": "plain text"}]
    assert len(examples) == 4


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ((), "no forget set header"),
        ((CHUNK, HEADER), "header before any examples"),
        ((HEADER, HEADER), "exactly once"),
        ((HEADER, pb.RegisterForgetSetRequest()), "empty RegisterForgetSetRequest"),
        ((HEADER, pb.RegisterForgetSetRequest(chunk=pb.ExampleChunk(examples=[pb.Example()]))), "question/answer pair or a text"),
    ],
)
async def test_malformed_registration_streams_are_invalid(messages, fragment) -> None:
    from oblivio.gateway.errors import error_status

    with pytest.raises(ValueError, match=fragment) as info:
        await _parse(*messages)
    assert error_status(info.value, "test").grpc_code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("limits", "fragment"),
    [
        ({"max_examples": 3}, "example 4 ('plain text') is one more than registration.max_examples = 3"),
        ({"max_example_chars": 9}, "example 2 ('plain text') has 10 characters, over registration.max_example_chars = 9"),
        ({"max_total_chars": 27}, "at example 4 ('plain text') the set holds 28 characters, over "
                                  "registration.max_total_chars = 27"),
    ],
    ids=["examples", "example-chars", "total-chars"],
)
async def test_registration_stream_stops_at_a_bound(limits, fragment) -> None:
    """Bounds are checked as examples arrive; the error names the bound and the example."""
    from oblivio.adapters.limits import RegistrationLimits
    from oblivio.gateway.errors import error_status

    with pytest.raises(ValueError) as info:
        await _parse(HEADER, CHUNK, CHUNK, limits=RegistrationLimits(**limits))
    assert fragment in str(info.value)
    assert error_status(info.value, "test").grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    # A set exactly at every bound is accepted (4 examples, 10 characters each at most, 28 in all).
    exact = RegistrationLimits(max_examples=4, max_example_chars=10, max_total_chars=28)
    assert len((await _parse(HEADER, CHUNK, CHUNK, limits=exact))[1]) == 4


def test_token_bound_names_the_example_that_crosses_it() -> None:
    from oblivio.adapters.limits import RegistrationLimitError, RegistrationLimits

    texts = [["q?", "q? a."], ["plain text"], ["last one"]]  # 1 + 2, 2, 2 words

    def words(batch: list[str]) -> list[int]:  # a stand-in token count
        return [len(text.split()) for text in batch]

    RegistrationLimits(max_total_tokens=7).check_tokens(texts, words)  # exactly at the bound
    with pytest.raises(RegistrationLimitError, match=r"at example 3 \('last one'\) the texts the detector is fitted "
                                                     r"on hold 7 tokens, over registration.max_total_tokens = 6"):
        RegistrationLimits(max_total_tokens=6).check_tokens(texts, words)


def test_status_mapping() -> None:
    from oblivio.adapters.forget_set import UnknownForgetSetError
    from oblivio.adapters.registry import ForgetSetExistsError
    from oblivio.gateway.errors import error_status

    def status_for(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
        """The client-facing status, or None for a server fault (INTERNAL)."""
        status = error_status(exc, "test")
        return None if status.grpc_code is grpc.StatusCode.INTERNAL else (status.grpc_code, status.message)

    assert status_for(ForgetSetExistsError("x"))[0] == grpc.StatusCode.ALREADY_EXISTS
    assert status_for(UnknownForgetSetError("no forget set named 'x'")) == (grpc.StatusCode.NOT_FOUND, "no forget set named 'x'")
    assert status_for(RuntimeError("bug")) is None


def test_cli_reads_jsonl_and_txt(tmp_path) -> None:
    from oblivio.gateway.cli.admin_client import CliInputError
    from oblivio.gateway.cli.forget import read_examples
    from oblivio.gateway.input_files import InputFileError

    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text('{"question": "q", "answer": "a"}\n\n{"text": "t"}\n')
    assert read_examples(jsonl) == [{"question": "q", "answer": "a"}, {"text": "t"}]
    txt = tmp_path / "set.txt"
    txt.write_text("first text\nsecond text\n")
    assert read_examples(txt) == [{"text": "first text"}, {"text": "second text"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "extra": 1}\n')
    with pytest.raises(CliInputError, match="unknown fields"):
        read_examples(bad)
    with pytest.raises(InputFileError, match="cannot read"):
        read_examples(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"question": "Where was Elena born?", "answer": null}', '"answer" must be a string (got null)'),
        ('{"question": "Where was Elena born?", "answer": 1987}', '"answer" must be a string (got a number)'),
        ('{"text": ["Elena", "Marwick"]}', '"text" must be a string (got an array)'),
    ],
    ids=["null-answer", "number-answer", "array-text"],
)
def test_cli_rejects_examples_that_are_not_strings(tmp_path, row: str, message: str) -> None:
    """A null answer was registered (and trained on) as the string "None"."""
    from oblivio.gateway.cli.admin_client import CliInputError
    from oblivio.gateway.cli.forget import read_examples

    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n' + row + "\n")
    with pytest.raises(CliInputError, match=f"set.jsonl:2: {re.escape(message)}"):
        read_examples(path)


@pytest.mark.parametrize(
    "command",
    [["forget", "register", "elena"], ["gate", "explain-batch"], ["gate", "calibrate", "--set", "elena"]],
    ids=["forget-register", "gate-explain-batch", "gate-calibrate"],
)
def test_cli_input_that_is_not_utf8_is_one_line_and_exit_2(tmp_path, command: list[str]) -> None:
    """Latin-1 input printed a UnicodeDecodeError traceback; the file is read before any RPC."""
    import subprocess
    import sys

    path = tmp_path / "input.jsonl"
    first, second = b'{"prompt": "ok", "forget": true}\n', '{"prompt": "Où est né Élie ?", "forget": true}\n'.encode("latin-1")
    path.write_bytes(first + second)
    offset = len(first) + second.index(b"\xf9")
    result = subprocess.run([sys.executable, "-m", "oblivio.gateway.cli", *command, str(path), "--address", "127.0.0.1:9"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"oblivio {command[0]}: {path}:2: not UTF-8 text (byte 0xf9 at offset {offset}); save the file as UTF-8"
    ]


async def test_cli_registration_without_subjects_says_how_to_name_them(tmp_path) -> None:
    """The detector is measured with --subject; without it the CLI says what that costs (the
    hint comes before the server is even contacted, so an unreachable address suffices)."""
    examples = tmp_path / "elena.jsonl"
    examples.write_text('{"question": "Where was Elena born?", "answer": "In Lyon."}\n')
    code, _, err = await _cli("register", "elena", str(examples), "--address", "127.0.0.1:1", "--timeout", "2")
    assert code != 0
    assert "no --subject given" in err
