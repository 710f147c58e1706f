"""Drive a real oblivio server the way an operator and an application would: a subprocess
started with ``oblivio serve``, then gRPC over a socket. The evaluation must measure the product,
not internals, so every registration, policy change and chat goes through the public API.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from oblivio.gateway.api.proto_convert import METHOD_TO_PROTO
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc as pb_grpc

_GRPC_LINE = re.compile(r"gRPC listening on (\S+)")
REGISTRATION_CHUNK = 32
EXPLAIN_CHUNK = 500  # conversations per ExplainBatch call (the server takes at most 1000)

GATE_MODES = {
    "adapter": pb.GATE_MODE_ADAPTER,
    "refusal": pb.GATE_MODE_REFUSAL,
    "adapter_then_refusal": pb.GATE_MODE_ADAPTER_THEN_REFUSAL,
}


class ServerStartError(RuntimeError):
    """The server process exited or printed no address in time; carries its output tail."""


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    grpc_target: str
    log_path: Path

    def stop(self, timeout: float = 60.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the harness dies, even by SIGKILL, where no
    cleanup of ours runs (a stopped evaluation left its server and trainer running)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def start_server(model: Path, artifacts_dir: Path, log_path: Path, extra_env: Mapping[str, str] | None = None,
                 timeout_s: float = 600.0) -> ServerProcess:
    """``oblivio serve`` on ephemeral ports; returns once it printed its gRPC address."""
    env = {**os.environ, **(extra_env or {})}
    command = [sys.executable, "-m", "oblivio.gateway.cli", "serve", "--model", str(model),
               "--artifacts-dir", str(artifacts_dir), "--grpc-port", "0", "--http-port", "0"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
                                   preexec_fn=die_with_parent)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        match = _GRPC_LINE.search(log_path.read_text())
        if match:
            return ServerProcess(process, match.group(1), log_path)
        time.sleep(0.5)
    process.kill()
    raise ServerStartError(f"server did not start; see {log_path}:\n" + log_path.read_text()[-3000:])


@asynccontextmanager
async def connect(target: str) -> AsyncIterator[tuple[pb_grpc.ChatStub, pb_grpc.AdminStub]]:
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 120)
        yield pb_grpc.ChatStub(channel), pb_grpc.AdminStub(channel)


def _register_stream(name: str, pairs: Sequence[tuple[str, str]], subjects: Sequence[str],
                     description: str, method: str = "refusal") -> Iterable[pb.RegisterForgetSetRequest]:
    yield pb.RegisterForgetSetRequest(header=pb.ForgetSetHeader(
        name=name, description=description, subjects=list(subjects), method=METHOD_TO_PROTO[method]))
    for start in range(0, len(pairs), REGISTRATION_CHUNK):
        chunk = [pb.Example(qa=pb.QAPair(question=q, answer=a)) for q, a in pairs[start:start + REGISTRATION_CHUNK]]
        yield pb.RegisterForgetSetRequest(chunk=pb.ExampleChunk(examples=chunk))


async def register_and_wait(admin: pb_grpc.AdminStub, name: str, pairs: Sequence[tuple[str, str]],
                            subjects: Sequence[str], description: str = "", method: str = "refusal",
                            on_event=print) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Register a forget set and follow it to LIVE; returns seconds to ENFORCING and to LIVE."""
    started = time.monotonic()
    await admin.RegisterForgetSet(_register_stream(name, pairs, subjects, description, method))
    timings: dict[str, float] = {}
    async for event in admin.WatchRegistration(pb.WatchRegistrationRequest(name=name)):
        state = pb.RegistrationState.Name(event.state).removeprefix("REGISTRATION_STATE_").lower()
        timings.setdefault(state, time.monotonic() - started)
        on_event(f"  [{name}] {state} {event.fraction:.0%} {event.message}")
        if event.terminal:
            if event.state != pb.REGISTRATION_STATE_LIVE:
                raise RuntimeError(f"registration of {name} ended in {state}: {event.message}")
            break
    return timings


async def set_default_policy(admin: pb_grpc.AdminStub, **changes: float | str) -> int:
    """Apply changes to the default gate policy; returns the new policy version."""
    fields: dict[str, Any] = {k: v for k, v in changes.items() if k != "mode"}
    if "mode" in changes:
        fields["mode"] = GATE_MODES[str(changes["mode"])]
    policy = await admin.UpdateGatePolicy(pb.UpdateGatePolicyRequest(changes=pb.SetPolicyChanges(**fields)))
    return policy.version


async def default_policy_version(admin: pb_grpc.AdminStub) -> int:
    """The live gate policy's version, to come back to with :func:`rollback_policy`."""
    return (await admin.GetGatePolicy(pb.GetGatePolicyRequest())).version


async def rollback_policy(admin: pb_grpc.AdminStub, version: int) -> int:
    """Make ``version``'s policy live again (as a new version); returns the new version."""
    return (await admin.RollbackGatePolicy(pb.RollbackGatePolicyRequest(version=version))).version


@dataclass(frozen=True)
class Answer:
    """A chat reply's text with the gate's per-set decision for the same prompt.

    Chat replies say only base / adapter / refusal (per-set names and scores would leak what
    is forgotten), so the evaluation asks Admin.Explain, as an operator would, for the
    adapters, scales and scores; the policy does not change while one batch is measured.
    """

    text: str
    decision: pb.GateDecision


def _user(question: str, system: str | None = None) -> list[pb.ChatMessage]:
    """One user turn, after an application's system prompt when it has one."""
    turn = [pb.ChatMessage(role=pb.ROLE_USER, content=question)]
    return [pb.ChatMessage(role=pb.ROLE_SYSTEM, content=system), *turn] if system else turn


async def complete(chat: pb_grpc.ChatStub, question: str, max_tokens: int, system: str | None = None) -> pb.ChatResponse:
    request = pb.ChatRequest(messages=_user(question, system),
                             sampling=pb.SamplingParams(temperature=0.0, max_tokens=max_tokens))
    return await chat.Complete(request, timeout=600)


async def explain_all(admin: pb_grpc.AdminStub, questions: Sequence[str], system: str | None = None) -> list[pb.GateDecision]:
    """The per-set gate decision for each question, in order (Admin.ExplainBatch)."""
    decisions: list[pb.GateDecision] = []
    for start in range(0, len(questions), EXPLAIN_CHUNK):
        conversations = [pb.Conversation(messages=_user(q, system)) for q in questions[start:start + EXPLAIN_CHUNK]]
        reply = await admin.ExplainBatch(pb.ExplainBatchRequest(conversations=conversations), timeout=600)
        decisions += [result.decision for result in reply.results]
    return decisions


async def answer_all(chat: pb_grpc.ChatStub, admin: pb_grpc.AdminStub, questions: Sequence[str], max_tokens: int,
                     concurrency: int = 16, system: str | None = None) -> list[Answer]:
    """Chat answers to ``questions`` (``concurrency`` at a time, each after the ``system``
    prompt when given) with their explained decisions."""
    gate = asyncio.Semaphore(concurrency)

    async def one(question: str) -> pb.ChatResponse:
        async with gate:
            return await complete(chat, question, max_tokens, system)

    replies = await asyncio.gather(*(one(q) for q in questions))
    decisions = await explain_all(admin, questions, system)
    return [Answer(reply.text, decision) for reply, decision in zip(replies, decisions)]
