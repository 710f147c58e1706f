"""Load test of a running gateway: N concurrent chat streams (gRPC StreamComplete and OpenAI
HTTP streaming, alternating), checked for lost and wrong responses, with latency percentiles.

Correctness is checked, not assumed: every prompt is first answered alone (unary, greedy), and
every streamed answer under load must equal that answer token for token. A response is *lost*
when its stream ends without a finish reason or fails; *wrong* when its text differs; *refused
by the queue* when the server's bounded concurrency answers RESOURCE_EXHAUSTED / HTTP 503 (a
deliberate refusal, counted separately and never silently).

The full size also registers a forget set (an invented person's 30 QA pairs, through the Admin
API) as the streams start, so detector fitting and LoRA training compete with serving; its
prompts are unrelated to the load's, whose answers must therefore not change. Run it (starts its
own gateway over the reference backend, or vLLM with --backend)::

    python -m oblivio.eval.bench_load                         # 64 streams, 32 tokens
    python -m oblivio.eval.bench_load --streams 128 --max-tokens 64 --backend vllm

It writes ``eval/reports/load_<backend>.md`` and ``.json``. tests/test_load.py runs the same code at CI
size against the test gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from oblivio.eval.machine import describe_machine
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc

LOG = logging.getLogger("bench_load")
REPORT_DIR = Path(__file__).resolve().parent / "reports"
PROMPTS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "Who wrote Romeo and Juliet?",
    "Why is the sky blue?",
    "What is 12 times 12?",
    "Describe a cat in a few words.",
)


@dataclass
class StreamResult:
    index: int
    protocol: str
    prompt: str
    ok: bool
    text: str = ""
    error: str = ""
    queue_refused: bool = False
    first_token_s: float | None = None
    total_s: float = 0.0


@dataclass
class LoadReport:
    streams: int
    max_tokens: int
    completed: int
    lost: int
    wrong: int
    queue_refused: int
    wall_s: float
    latency_s: dict[str, float]
    first_token_s: dict[str, float]
    failures: list[str] = field(default_factory=list)
    # Seconds from registering the in-flight forget set to each state it reached (empty: none).
    registration_s: dict[str, float] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.wrong == 0


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1], "mean": statistics.fmean(ordered)}


def _request(prompt: str, max_tokens: int) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=prompt)],
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


async def reference_answers(channel: grpc.aio.Channel, prompts: tuple[str, ...], max_tokens: int) -> dict[str, str]:
    """Each prompt answered alone (greedy): what every answer under load must equal."""
    stub = oblivio_pb2_grpc.ChatStub(channel)
    return {p: (await stub.Complete(_request(p, max_tokens), timeout=300)).text for p in prompts}


async def _grpc_stream(channel: grpc.aio.Channel, index: int, prompt: str, max_tokens: int) -> StreamResult:
    result = StreamResult(index, "grpc", prompt, ok=False)
    started = time.perf_counter()
    pieces: list[str] = []
    finished = False
    try:
        async for chunk in oblivio_pb2_grpc.ChatStub(channel).StreamComplete(_request(prompt, max_tokens), timeout=600):
            if result.first_token_s is None and chunk.delta:
                result.first_token_s = time.perf_counter() - started
            pieces.append(chunk.delta)
            finished = finished or chunk.finish_reason != pb.FINISH_REASON_UNSPECIFIED
        result.ok = finished
        result.error = "" if finished else "stream ended without a finish reason"
    except grpc.aio.AioRpcError as err:
        result.queue_refused = err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        result.error = f"{err.code().name}: {err.details()}"
    result.text = "".join(pieces)
    result.total_s = time.perf_counter() - started
    return result


async def _http_stream(http: Any, index: int, prompt: str, max_tokens: int) -> StreamResult:
    result = StreamResult(index, "http", prompt, ok=False)
    started = time.perf_counter()
    pieces: list[str] = []
    finished = False
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0, "stream": True}
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                result.queue_refused = response.status_code == 503
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        result.error = str(event["error"])
                        break
                    for choice in event.get("choices", []):
                        delta = choice.get("delta", {}).get("content") or ""
                        if delta and result.first_token_s is None:
                            result.first_token_s = time.perf_counter() - started
                        pieces.append(delta)
                        finished = finished or choice.get("finish_reason") is not None
                result.ok = finished and not result.error
                if not finished and not result.error:
                    result.error = "stream ended without a finish reason"
    except Exception as exc:  # noqa: BLE001 - a transport failure is a lost response
        result.error = f"{type(exc).__name__}: {exc}"
    result.text = "".join(pieces)
    result.total_s = time.perf_counter() - started
    return result


async def run_load(
    grpc_target: str,
    http_url: str,
    *,
    streams: int,
    max_tokens: int,
    prompts: tuple[str, ...] = PROMPTS,
    expected: dict[str, str] | None = None,
) -> tuple[LoadReport, list[StreamResult]]:
    """Fire ``streams`` concurrent streams (even: gRPC, odd: HTTP) and check every answer."""
    import httpx

    async with grpc.aio.insecure_channel(grpc_target) as channel, httpx.AsyncClient(
        base_url=http_url, timeout=600, limits=httpx.Limits(max_connections=streams + 4)
    ) as http:
        expected = expected or await reference_answers(channel, prompts, max_tokens)
        started = time.perf_counter()
        tasks = [
            _grpc_stream(channel, i, prompts[i % len(prompts)], max_tokens)
            if i % 2 == 0
            else _http_stream(http, i, prompts[i % len(prompts)], max_tokens)
            for i in range(streams)
        ]
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
    failures = []
    lost = wrong = refused = 0
    for r in results:
        if r.queue_refused:
            refused += 1
        elif not r.ok:
            lost += 1
            failures.append(f"#{r.index} {r.protocol} lost: {r.error}")
        elif r.text != expected[r.prompt]:
            wrong += 1
            failures.append(f"#{r.index} {r.protocol} wrong: {r.text!r} != {expected[r.prompt]!r}")
    done = [r for r in results if r.ok]
    report = LoadReport(
        streams=streams,
        max_tokens=max_tokens,
        completed=len(done),
        lost=lost,
        wrong=wrong,
        queue_refused=refused,
        wall_s=wall,
        latency_s=percentiles([r.total_s for r in done]),
        first_token_s=percentiles([r.first_token_s for r in done if r.first_token_s is not None]),
        failures=failures,
    )
    return report, results


def render_markdown(report: LoadReport, backend: str, command: str = "") -> str:
    def row(name: str, stats: dict[str, float]) -> str:
        return f"| {name} | " + " | ".join(f"{stats.get(k, float('nan')):.3f}" for k in ("p50", "p90", "p99", "max", "mean")) + " |"

    return "\n".join([
        "# Gateway load test",
        "",
        f"Backend: {backend}; {report.streams} concurrent streams (half gRPC, half OpenAI HTTP), "
        f"{report.max_tokens} tokens each, greedy; machine: {describe_machine()}.",
        *([f"Command: `{command}`"] if command else []),
        "",
        f"- completed: {report.completed}, lost: {report.lost}, wrong: {report.wrong}, "
        f"refused by the bounded queue: {report.queue_refused}",
        f"- wall time: {report.wall_s:.2f} s; throughput {report.completed * report.max_tokens / max(report.wall_s, 1e-9):.1f} tokens/s (upper bound: counts max_tokens)",
        "",
        "| seconds | p50 | p90 | p99 | max | mean |",
        "|---|---|---|---|---|---|",
        row("end-to-end latency", report.latency_s),
        row("time to first token", report.first_token_s),
        "",
        *_registration_lines(report),
        *(f"- {f}" for f in report.failures[:20]),
    ]) + "\n"


def _registration_lines(report: LoadReport) -> list[str]:
    if not report.registration_s:
        return []
    timing = report.registration_s
    live = timing.get("live", float("nan"))
    during = "during" if live <= report.wall_s else "after"
    return [f"Registration in flight: started with the streams, enforcing (detector live) after "
            f"{timing.get('enforcing', float('nan')):.1f} s, adapter live after {live:.1f} s ({during} the "
            f"{report.wall_s:.1f} s of load).", ""]


async def load_with_registration(grpc_target: str, http_url: str, *, streams: int, max_tokens: int,
                                 seed: int = 0) -> tuple[LoadReport, list[StreamResult]]:
    """:func:`run_load` while one invented person is registered through the Admin API."""
    from oblivio.eval.entity_data import build_dataset
    from oblivio.eval.server_client import register_and_wait

    dataset = build_dataset(seed=seed, n_people=4)
    person = [dataset.people[0].pid]
    pairs = [(q.question, q.answer) for q in dataset.items(person, paraphrase=False)]
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        admin = oblivio_pb2_grpc.AdminStub(channel)
        async with asyncio.TaskGroup() as group:  # either failing cancels the other
            registration = group.create_task(register_and_wait(
                admin, "load-test-person", pairs, dataset.names(person), on_event=LOG.info))
            load = group.create_task(run_load(grpc_target, http_url, streams=streams, max_tokens=max_tokens))
    report, results = load.result()
    report.registration_s = registration.result()
    return report, results


async def _main(args: argparse.Namespace) -> int:
    from oblivio.gateway.config import default_model_path, load_config
    from oblivio.gateway.api.server import Gateway

    with tempfile.TemporaryDirectory(prefix="oblivio-load-") as home:
        config = load_config(overrides={
            "home": home,
            "model.path": str(args.model or default_model_path()),
            "server.grpc_port": 0,
            "server.http_port": 0,
            "server.max_concurrent_requests": max(args.streams, 1),
            "engine.backend": args.backend,
        }, environ={})
        gateway = await Gateway.create(config)
        await gateway.start()
        try:
            report, _ = await load_with_registration(gateway.grpc_target, gateway.http_url, streams=args.streams,
                                                     max_tokens=args.max_tokens)
        finally:
            await gateway.stop(grace=1)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / f"load_{args.backend}.json").write_text(json.dumps(asdict(report), indent=2))
    markdown = render_markdown(report, args.backend, " ".join(["python -m oblivio.eval.bench_load", *args.argv]))
    (REPORT_DIR / f"load_{args.backend}.md").write_text(markdown)
    print(markdown)
    return 0 if report.clean else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--backend", choices=("reference", "vllm"), default="reference")
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    LOG.setLevel(logging.INFO)  # the registration's progress
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
