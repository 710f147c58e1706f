"""Benchmark: time from "register this forget set" to enforced (detector fallback) and to adapter live.

Runs the real RegistrationPipeline in-process over the reference backend, a real detector bank
and a policy store in a scratch folder, registering forget sets of 10, 40 and 200 question /
answer examples about invented people (``oblivio.eval.entity_data``), one after another (so
later adapters are regularised against earlier ones and the overlap is reported). While each
set registers, a client keeps generating short answers on the backend, to show what training
costs serving (latency idle vs during registration).

    python -m oblivio.eval.bench_registration            # full recipe (5 epochs, batch 8)
    python -m oblivio.eval.bench_registration --quick    # CI-sized: 3 steps, tiny batches
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from oblivio.adapters.registry import State
from oblivio.adapters.forget_set import ForgetExample
from oblivio.adapters.training_settings import TrainingSettings

PROBE = "Give me one tip for staying focused while studying."


def forget_examples(n: int, seed: int = 0, skip_people: int = 0) -> list[ForgetExample]:
    """``n`` fit-template QA pairs about invented people, whole people at a time."""
    from oblivio.eval.entity_data import build_dataset

    dataset = build_dataset(seed)
    order = dataset.forget_split(99)[skip_people:]
    examples: list[ForgetExample] = []
    for pid in order:
        for item in dataset.items([pid], paraphrase=False):
            examples.append(ForgetExample(question=item.question, answer=item.answer))
            if len(examples) == n:
                return examples
    raise ValueError(f"the generated data set has fewer than {n} examples")


async def _probe_latency(backend: Any, prompt_ids: list[int], stop: asyncio.Event, out: list[float]) -> None:
    from oblivio.gateway.serving.backends.base import AdapterApplication, SamplingSettings

    i = 0
    while not stop.is_set():
        start = time.perf_counter()
        async for _ in backend.generate(prompt_ids, SamplingSettings(max_tokens=8), AdapterApplication(), f"probe-{i}"):
            pass
        out.append(time.perf_counter() - start)
        i += 1
        await asyncio.sleep(0.05)


async def run(
    sizes: list[int], quick: bool, threads: int, model_path: Path, workdir: Path, epochs: float | None = None
) -> dict[str, Any]:
    from transformers import AutoTokenizer, BatchEncoding

    from oblivio.adapters.registration.pipeline import RegistrationPipeline
    from oblivio.adapters.registration.ports import Collaborators
    from oblivio.adapters.registration.settings import RegistrationSettings
    from oblivio.detector import DetectorBank, FeatureExtractor
    from oblivio.gateway.serving.backends.reference import ReferenceBackend
    from oblivio.gateway.config import DetectorConfig, GateConfig
    from oblivio.gateway.gate.policy_store import PolicyStore

    training = (
        TrainingSettings(steps=3, batch_size=2, max_length=48, learning_rate=3e-3, threads=threads)
        if quick else TrainingSettings(epochs=epochs, threads=threads) if epochs else TrainingSettings(threads=threads)
    )
    backend = ReferenceBackend(model_path)
    await backend.start()
    cfg = DetectorConfig()
    bank = DetectorBank(FeatureExtractor.from_pretrained(model_path, layers=cfg.layers, max_prompt_tokens=cfg.max_prompt_tokens))
    pipeline = RegistrationPipeline(
        Collaborators(backend=backend, policy_store=PolicyStore(workdir / "gate", GateConfig()), detector=bank),
        RegistrationSettings(model_path=model_path, root=workdir, training=training),
    )
    await pipeline.start()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROBE}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert isinstance(encoded, BatchEncoding)  # what return_dict=True returns; typed as every possible result
    prompt_ids = list(encoded["input_ids"])

    idle: list[float] = []
    stop = asyncio.Event()
    prober = asyncio.create_task(_probe_latency(backend, prompt_ids, stop, idle))
    await asyncio.sleep(10 if not quick else 3)
    stop.set()
    await prober

    results = []
    skip = 0
    for n in sizes:
        examples = forget_examples(n, skip_people=skip)
        skip += 20  # different people per set
        name = f"bench-{n}"
        busy: list[float] = []
        stop = asyncio.Event()
        prober = asyncio.create_task(_probe_latency(backend, prompt_ids, stop, busy))
        t0 = time.perf_counter()
        await pipeline.register(name, examples, description=f"{n} invented-person QA pairs")
        marks: dict[str, float] = {}
        steps = 0
        async for event in pipeline.watch(name):
            marks.setdefault(event.state.value, time.perf_counter() - t0)
            if event.state is State.TRAINING and "step" in event.message:
                steps += 1
            if event.terminal:
                break
        stop.set()
        await prober
        record = pipeline.get(name)
        report = pipeline.registry.job(record.job_id).report
        results.append({
            "examples": n,
            "state": record.state.value,
            "error": record.error,
            "to_enforced_s": round(marks.get("ENFORCING", float("nan")), 2),
            "to_live_s": round(marks.get("LIVE", float("nan")), 2),
            "training_steps": report.get("steps", steps),
            "training_s": round(report.get("seconds", float("nan")), 1),
            "final_loss": round(report.get("final_loss", float("nan")), 4),
            "overlap": {k: round(v, 5) for k, v in record.overlaps.items()},
            "probe_latency_p50_s": round(statistics.median(busy), 3) if busy else None,
            "probes": len(busy),
        })
        print(json.dumps(results[-1]), flush=True)

    for record in pipeline.list():
        await pipeline.delete(record.name)
    await pipeline.close()
    await backend.close()
    return {
        "quick": quick,
        "threads": threads,
        "training": {k: v for k, v in vars(training).items()},
        "idle_probe_latency_p50_s": round(statistics.median(idle), 3) if idle else None,
        "results": results,
    }


def to_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Registration benchmark",
        "",
        f"Recipe: {'quick (CI)' if summary['quick'] else 'full'}; training threads {summary['threads']}; "
        f"settings {json.dumps(summary['training'])}",
        f"Serving probe (8 tokens, reference backend) p50 idle: {summary['idle_probe_latency_p50_s']} s",
        "",
        "| examples | state | to enforced (s) | to live (s) | steps | training (s) | final loss | max overlap | probe p50 during (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["results"]:
        overlap = max(r["overlap"].values()) if r["overlap"] else "-"
        lines.append(
            f"| {r['examples']} | {r['state']} | {r['to_enforced_s']} | {r['to_live_s']} | {r['training_steps']} | "
            f"{r['training_s']} | {r['final_loss']} | {overlap} | {r['probe_latency_p50_s']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from oblivio.gateway.config import default_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 200])
    parser.add_argument("--quick", action="store_true", help="CI-sized training (3 steps)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--epochs", type=float, default=None, help="override the recipe's epochs (default 5)")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here (and .json beside it)")
    args = parser.parse_args(argv)
    model = args.model or default_model_path()
    with tempfile.TemporaryDirectory(prefix="oblivio-bench-reg-") as workdir:
        summary = asyncio.run(run(args.sizes, args.quick, args.threads, model, Path(workdir), args.epochs))
    markdown = to_markdown(summary)
    print(markdown)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown)
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
