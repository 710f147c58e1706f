"""Continual unlearning through the real server: does it forget, does it keep, how fast.

Sequence (``oblivio eval continual``):
  1. generate the fictitious-people data set and its disjoint sequential forget requests;
  2. fine-tune the default model on everybody (the target) and on everybody but the first
     request's people (the retain model, reference for Forget Quality) -- cached;
  3. start ``oblivio serve`` on the target, measure the baseline (no unlearning);
  4. register the requests one after another through the Admin API; after each, measure every
     gate configuration (switched live with UpdateGatePolicy): LoRA always on, an O3-style
     sigmoid gate without threshold, and oblivio's default gate;
  5. write a markdown report with tables and PNG plots.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from oblivio.eval.entity_data import EntityDataset, QAItem, build_dataset
from oblivio.eval.facts import item_key_values
from oblivio.eval.metrics import contains_fact, rouge_l_recall
from oblivio.eval.server_client import complete_all, connect, register_and_wait, set_default_policy, start_server
from oblivio.eval.target_model import FinetuneSettings, cached_finetune

LOG = logging.getLogger(__name__)

# Gate configurations compared after every request, as changes to the default policy.
GATE_CONFIGS: dict[str, dict[str, float | str]] = {
    "lora_always_on": {"threshold": 0.0, "min_scale": 1.0, "max_scale": 1.0, "mode": "adapter"},
    # O3's w = sigmoid(10 c - 2) applies at every score; the closest policy: no threshold,
    # softness 10, scale from the grid's smallest point up to 1 (no piecewise table).
    "o3_sigmoid": {"threshold": 0.0, "softness": 10.0, "min_scale": 0.25, "max_scale": 1.0, "mode": "adapter"},
    "oblivio_gate": {"threshold": 0.5, "softness": 10.0, "min_scale": 0.25, "max_scale": 1.0, "mode": "adapter"},
}


@dataclass(frozen=True)
class RunSettings:
    seed: int = 0
    n_people: int = 20
    n_requests: int = 3
    percent: float = 5.0
    probes_per_split: int = 40
    max_tokens: int = 32
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    @classmethod
    def quick(cls) -> "RunSettings":
        return cls(n_people=10, n_requests=3, percent=10.0, probes_per_split=16, max_tokens=24,
                   finetune=FinetuneSettings(epochs=4))


@dataclass
class Measurement:
    """One configuration measured at one point of the sequence."""

    request: int
    config: str
    forget_accuracy: float
    forget_rouge_l: float
    retain_accuracy: float
    retain_rouge_l: float
    general_accuracy: float
    forget_matched: float  # share of forget probes where the gate applied something
    retain_matched: float
    general_matched: float
    seconds: float


def _sample(items: Sequence, n: int, seed: int) -> list:  # type: ignore[type-arg]
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n]


def _applied(response) -> bool:  # type: ignore[no-untyped-def]
    return bool(response.decision.adapters) or response.decision.refused


async def _measure(chat, dataset: EntityDataset, forget: list[QAItem], retain: list[QAItem],  # type: ignore[no-untyped-def]
                   request: int, config: str, settings: RunSettings) -> Measurement:
    started = time.monotonic()
    general = [g for g in dataset.general if g.answer][: settings.probes_per_split]
    questions = [q.question for q in forget] + [q.question for q in retain] + [g.prompt for g in general]
    responses = await complete_all(chat, questions, settings.max_tokens)
    forget_r, retain_r, general_r = (responses[: len(forget)], responses[len(forget): len(forget) + len(retain)],
                                     responses[len(forget) + len(retain):])

    def accuracy(items: Sequence[QAItem], answers) -> float:  # type: ignore[no-untyped-def]
        return sum(contains_fact(r.text, item_key_values(dataset, q)) for q, r in zip(items, answers)) / max(1, len(items))

    def rouge(items: Sequence[QAItem], answers) -> float:  # type: ignore[no-untyped-def]
        return sum(rouge_l_recall(r.text, q.answer) for q, r in zip(items, answers)) / max(1, len(items))

    def matched(answers) -> float:  # type: ignore[no-untyped-def]
        return sum(_applied(r) for r in answers) / max(1, len(answers))

    return Measurement(
        request=request,
        config=config,
        forget_accuracy=accuracy(forget, forget_r),
        forget_rouge_l=rouge(forget, forget_r),
        retain_accuracy=accuracy(retain, retain_r),
        retain_rouge_l=rouge(retain, retain_r),
        general_accuracy=sum(contains_fact(r.text, [g.answer]) for g, r in zip(general, general_r)) / max(1, len(general)),
        forget_matched=matched(forget_r),
        retain_matched=matched(retain_r),
        general_matched=matched(general_r),
        seconds=time.monotonic() - started,
    )


async def _run_sequence(target_model: Path, dataset: EntityDataset, requests: list[list[int]], out_dir: Path,
                        settings: RunSettings) -> tuple[list[Measurement], list[dict[str, float]]]:
    server = start_server(target_model, out_dir / "artifacts", out_dir / "server.log")
    measurements: list[Measurement] = []
    timings: list[dict[str, float]] = []
    forgotten: list[int] = []
    all_forget = {pid for request in requests for pid in request}
    retain_probe = _sample(dataset.items(dataset.retain_ids(all_forget), paraphrase=True), settings.probes_per_split, 1)
    try:
        async with connect(server.grpc_target) as (chat, admin):
            print("measuring the target model before any request (no unlearning)", flush=True)
            forget_probe = _sample(dataset.items(requests[0], paraphrase=True), settings.probes_per_split, 2)
            measurements.append(await _measure(chat, dataset, forget_probe, retain_probe, 0, "no_unlearning", settings))
            for number, people in enumerate(requests, start=1):
                name = f"request-{number}"
                pairs = [(q.question, q.answer) for q in dataset.items(people, paraphrase=False)]
                print(f"registering {name}: {len(people)} people, {len(pairs)} examples", flush=True)
                timings.append(await register_and_wait(admin, name, pairs, dataset.names(people)))
                forgotten.extend(people)
                forget_probe = _sample(dataset.items(forgotten, paraphrase=True), settings.probes_per_split, 2 + number)
                for config, changes in GATE_CONFIGS.items():
                    await set_default_policy(admin, **changes)
                    measurement = await _measure(chat, dataset, forget_probe, retain_probe, number, config, settings)
                    print(f"  {config}: {asdict(measurement)}", flush=True)
                    measurements.append(measurement)
    finally:
        server.stop()
    return measurements, timings


def _plot(measurements: list[Measurement], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    baseline = next(m for m in measurements if m.config == "no_unlearning")
    for metric in ("forget_accuracy", "retain_accuracy", "general_accuracy"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for config in GATE_CONFIGS:
            points = [(0, getattr(baseline, metric))] + [(m.request, getattr(m, metric)) for m in measurements if m.config == config]
            ax.plot(*zip(*points), marker="o", label=config)
        ax.set_xlabel("forget request number")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_ylim(-0.02, 1.02)
        ax.legend()
        ax.grid(alpha=0.3)
        path = out_dir / f"{metric}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _report(measurements: list[Measurement], timings: list[dict[str, float]], out_dir: Path, command: str,
            settings: RunSettings, target_summary: str, seconds: float) -> Path:
    rows = ["| request | gate | forget acc | forget ROUGE-L | retain acc | retain ROUGE-L | general acc | gate fired: forget / retain / general |",
            "|---|---|---|---|---|---|---|---|"]
    for m in measurements:
        rows.append(f"| {m.request} | {m.config} | {m.forget_accuracy:.2f} | {m.forget_rouge_l:.2f} | {m.retain_accuracy:.2f} | "
                    f"{m.retain_rouge_l:.2f} | {m.general_accuracy:.2f} | {m.forget_matched:.2f} / {m.retain_matched:.2f} / {m.general_matched:.2f} |")
    timing_rows = ["| request | to enforced (s) | to live (s) |", "|---|---|---|"]
    for number, timing in enumerate(timings, start=1):
        timing_rows.append(f"| {number} | {timing.get('enforcing', float('nan')):.1f} | {timing.get('live', float('nan')):.1f} |")
    plots = "\n".join(f"![{p.stem}]({p.name})" for p in _plot(measurements, out_dir))
    text = f"""# Continual unlearning through the oblivio server

Command: `{command}`
Machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}; total {seconds/60:.1f} min.
Settings: `{json.dumps(asdict(settings))}`
Target model: {target_summary}

Accuracy = the generated answer (greedy, {settings.max_tokens} tokens) contains the fact's key value; probes are
held-out paraphrase questions never sent in a forget request. "gate fired" = share of prompts that
got an adapter or a refusal. Request 0 is the target model with nothing registered.

{chr(10).join(rows)}

Registration latency (register -> detector enforcing -> adapter live):

{chr(10).join(timing_rows)}

{plots}
"""
    path = out_dir / "report.md"
    path.write_text(text)
    return path


def run(settings: RunSettings, out_dir: Path, base_model: Path, command: str) -> Path:
    """Everything above, end to end; returns the report path."""
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(seed=settings.seed, n_people=settings.n_people)
    requests = dataset.sequential_requests(settings.n_requests, settings.percent)
    everybody = [p.pid for p in dataset.people]

    def progress(step: int, total: int, loss: float) -> None:
        if step % 10 == 0 or step == total:
            print(f"  fine-tune step {step}/{total} loss {loss:.3f}", flush=True)

    print(f"fine-tuning the target model on {len(everybody)} people", flush=True)
    target = cached_finetune(base_model, dataset, everybody, out_dir.parent / "models", "target", settings.finetune, progress)
    summary = json.loads((target / "finetune.json").read_text())
    target_summary = f"`{target.name}`: {summary['steps']} steps on {summary['examples']} QA pairs, final loss {summary['final_loss']:.3f}"
    measurements, timings = asyncio.run(_run_sequence(target, dataset, requests, out_dir, settings))
    return _report(measurements, timings, out_dir, command, settings, target_summary, time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from oblivio.gateway.config import load_config

    parser = argparse.ArgumentParser(prog="oblivio eval continual", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized run")
    parser.add_argument("--out", type=Path, default=Path("eval/reports/continual"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    settings = RunSettings.quick() if args.quick else RunSettings()
    report = run(settings, args.out, load_config().model_path, "python -m oblivio.eval.continual" + (" --quick" if args.quick else ""))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
