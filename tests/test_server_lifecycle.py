"""Start, drain and stop: graceful shutdown finishes in-flight calls; ``oblivio serve`` runs the
whole gateway from one command and exits cleanly on SIGTERM, within its grace period even while
a registration's detector fit runs (issue 17: it took 128 s, or a SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fixtures_registration import fit_processes, tofu_examples, until_fitting
from fixtures_reliability import registration_messages, stream_of
from fixtures_serving import serving_config
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc

pytestmark = pytest.mark.slow


def _request(max_tokens: int) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content="Tell me about the sea.")],
        sampling=pb.SamplingParams(max_tokens=max_tokens),
    )


async def test_graceful_shutdown_finishes_in_flight_requests(model_path, reference_backend, tmp_path) -> None:
    from oblivio.gateway.api.server import Gateway

    gateway = await Gateway.create(serving_config(model_path, tmp_path), backend=reference_backend, detector=None)
    await gateway.start()
    target, http_url = gateway.grpc_target, gateway.http_url
    async with grpc.aio.insecure_channel(target) as channel, httpx.AsyncClient(base_url=http_url, timeout=120) as http:
        stream = oblivio_pb2_grpc.ChatStub(channel).StreamComplete(_request(10), timeout=120)
        first = await stream.read()
        assert first.HasField("gate")
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}
        http_call = asyncio.create_task(http.post("/v1/chat/completions", json=body))
        # Drain only once the HTTP request is being served (it waits behind the gRPC stream).
        registry = gateway.runtime.metrics.registry
        for _ in range(600):
            if registry.get_sample_value("oblivio_requests_in_flight", {"endpoint": "http.chat_completions"}):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the HTTP request never reached the server")
        stopping = asyncio.create_task(gateway.stop(grace=60))
        await asyncio.sleep(0.2)
        status = await gateway.grpc.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # In-flight calls complete normally while the server drains.
        rest = []
        while (chunk := await stream.read()) is not grpc.aio.EOF:
            rest.append(chunk)
        assert rest and rest[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
        http_response = await http_call
        assert http_response.status_code == 200
        assert http_response.json()["choices"][0]["finish_reason"] in ("stop", "length")
        await asyncio.wait_for(stopping, timeout=60)
        # New calls are refused once stopped.
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await oblivio_pb2_grpc.ChatStub(channel).Complete(_request(2), timeout=5)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=http_url, timeout=5) as http:
            await http.get("/health")
    assert await reference_backend.healthy(), "the gateway must not close a backend it does not own"


GRACE_S = 10


async def test_oblivio_serve_prints_addresses_serves_and_stops_on_sigterm(model_path, tmp_path: Path) -> None:
    """... and stops within its grace period while a registration's detector fit is running,
    taking the fit process with it."""
    env = {**os.environ, "OBLIVIO_HOME": str(tmp_path), "OBLIVIO_SERVER__SHUTDOWN_GRACE_S": str(GRACE_S)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oblivio.gateway.cli", "serve", "--backend", "reference",
        "--model", str(model_path), "--grpc-port", "0", "--http-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    output: list[str] = []
    try:
        grpc_target = http_url = None
        while grpc_target is None or http_url is None:
            line = (await asyncio.wait_for(process.stdout.readline(), timeout=240)).decode()
            assert line, "oblivio serve exited early:\n" + "".join(output)
            output.append(line)
            if match := re.search(r"gRPC listening on (\S+)", line):
                grpc_target = match.group(1)
            if match := re.search(r"HTTP on (http://\S+?)/v1", line):
                http_url = match.group(1)
        async with grpc.aio.insecure_channel(grpc_target) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            answer = await oblivio_pb2_grpc.ChatStub(channel).Complete(_request(3), timeout=120)
            assert answer.usage.completion_tokens >= 1
            admin = oblivio_pb2_grpc.AdminStub(channel)
            await admin.RegisterForgetSet(stream_of(registration_messages("tofu-fit", tofu_examples(60))), timeout=60)
            await until_fitting(admin, "tofu-fit")
        async with httpx.AsyncClient(base_url=http_url, timeout=30) as http:
            assert (await http.get("/v1/models")).status_code == 200
        [fit] = fit_processes(process.pid)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stdout.read(), timeout=60)
        output.append(rest.decode())
        assert await process.wait() == 0, "".join(output)
        stopped_in = time.monotonic() - started
        print(f"stopped {stopped_in:.1f} s after SIGTERM during a detector fit (grace {GRACE_S} s)")
        assert stopped_in < GRACE_S, f"stopped {stopped_in:.1f} s after SIGTERM"
        assert not fit.is_running(), "the detector fit outlived the server"
        assert "shutting down" in "".join(output)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
