"""Continual unlearning through the real server: does it forget, does it keep, how fast.

Sequence (``oblivio eval continual``):
  1. generate the fictitious-people data set and its disjoint sequential forget requests;
  2. fine-tune the default model into the retain model (never sees the requests' people, the
     reference for Forget Quality) and the target (knows everybody) -- cached;
  3. start ``oblivio serve`` on the target and measure it before any request (no unlearning);
  4. register the requests one after another through the Admin API; after each, measure every
     gate configuration (switched live with UpdateGatePolicy): LoRA always on, an O3-style gate,
     and oblivio's default gate -- generations through the Chat API, answer likelihoods under
     the adapters the server chose (see :mod:`oblivio.eval.likelihood`);
  5. measure serving cost (gateway vs direct vLLM, detector cost vs number of sets);
  6. write a markdown report with tables, goals met or not, and PNG plots.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from oblivio.eval.entity_data import EntityDataset, QAItem, build_dataset
from oblivio.eval.facts import item_key_values
from oblivio.eval.likelihood import REFUSED, REFUSED_LIKELIHOOD, AnswerLikelihood, LikelihoodScorer, Probe, decision_adapters
from oblivio.eval.metrics import contains_fact, forget_quality, mean_or_nan, model_utility, rouge_l_recall, truth_ratio_score
from oblivio.eval.server_client import answer_all, connect, register_and_wait, set_default_policy, start_server
from oblivio.eval.target_model import FinetuneSettings, entity_pairs, evaluation_models
from oblivio.gateway.api.proto_convert import METHOD_TO_PROTO

LOG = logging.getLogger(__name__)

# Gate configurations compared (when: RunSettings.configs_after), as changes to the default
# policy. All use the same detector scores; they differ only in how a score becomes a scale.
GATE_CONFIGS: dict[str, dict[str, float | str]] = {
    "lora_always_on": {"threshold": 0.0, "min_scale": 1.0, "max_scale": 1.0, "mode": "adapter"},
    # O3 applies w = sigmoid(10 c - 2) at every score (then a hand-made table we cannot
    # reproduce). Closest monotone policy: no threshold, softness 10, from the grid's smallest
    # scale up to 1, so every prompt gets at least a weak adapter, as in O3.
    "o3_sigmoid": {"threshold": 0.0, "softness": 10.0, "min_scale": 0.25, "max_scale": 1.0, "mode": "adapter"},
    "oblivio_gate": {"threshold": 0.5, "softness": 10.0, "min_scale": 0.25, "max_scale": 1.0, "mode": "adapter"},
}
BASELINE = "no_unlearning"


@dataclass(frozen=True)
class RunSettings:
    seed: int = 0
    n_people: int = 20
    n_requests: int = 3
    percent: float = 5.0  # of people per request; at 20 people one person, the "forget01" size
    probes_per_split: int = 30
    max_tokens: int = 24
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(epochs=3))
    # Gateway vs direct vLLM starts a second engine and runs load: minutes. The detector's cost
    # vs number of sets is always measured (seconds).
    gateway_benchmark: bool = True
    # Fixed optimizer steps per registration (the server's training.steps); None = its default
    # (5 epochs). Smaller runs shrink it: it decides how well each request is unlearned.
    registration_steps: int | None = None
    # How each request's adapter is trained: refusal (O3), npo or ihl (see adapters/losses.py).
    method: str = "refusal"
    # False: the baseline gates (always-on, O3-style) are measured only after the last request,
    # which is all the goals compare; oblivio's gate is still measured after every request.
    compare_every_request: bool = True
    detector_repeats: int = 11  # timings per point of the detector-cost table (median reported)

    @classmethod
    def quick(cls) -> "RunSettings":
        """A CI-sized check of the whole path: the same people and cached models as the full run
        (fine-tuning them is the one slow step, paid once), fewer probes, 6 training steps per
        request, 12-token answers (the key fact comes first), baseline gates compared after the
        last request only, no gateway benchmark."""
        return cls(probes_per_split=6, max_tokens=12, gateway_benchmark=False, registration_steps=6,
                   compare_every_request=False, detector_repeats=5)

    def configs_after(self, request: int) -> list[str]:
        """The gate configurations measured after ``request`` (oblivio's gate is always last)."""
        if self.compare_every_request or request == self.n_requests:
            return list(GATE_CONFIGS)
        return ["oblivio_gate"]


@dataclass
class Measurement:
    """One gate configuration measured at one point of the sequence (TOFU's metrics)."""

    request: int
    config: str
    forget_accuracy: float
    forget_rouge_l: float
    forget_probability: float
    forget_truth_ratio: float  # mean; near 1 = no preference for the true answer
    forget_quality: float  # KS p-value against the retain model on the same questions
    retain_accuracy: float
    retain_rouge_l: float
    retain_probability: float
    retain_truth_score: float  # TOFU's mean max(0, 1 - R) on retained people
    general_accuracy: float
    general_probability: float
    model_utility: float
    forget_matched: float  # share of probes where the gate applied an adapter or refused
    retain_matched: float
    general_matched: float
    seconds: float


@dataclass
class Probes:
    """The questions one measurement asks: forgotten people, kept people, general knowledge."""

    forget: list[QAItem]
    retain: list[QAItem]
    general: list[Any]

    def prompts(self) -> list[str]:
        return [q.question for q in self.forget] + [q.question for q in self.retain] + [g.prompt for g in self.general]


@dataclass
class ScoreLog:
    """Detector scores of the final oblivio_gate measurement, for ROC curves per request."""

    positives: dict[str, list[float]] = field(default_factory=dict)
    negatives: dict[str, list[float]] = field(default_factory=dict)


def _sample(items: Sequence[Any], n: int, seed: int) -> list[Any]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n]


def _forget_probes(dataset: EntityDataset, requests: Sequence[list[int]], n: int) -> list[QAItem]:
    """Paraphrase probes of every request so far, an equal share each, so each request's
    forgetting (and its ROC) is measured on its own people however many came before."""
    share = max(2, n // len(requests))
    return [item for number, people in enumerate(requests, start=1)
            for item in _sample(dataset.items(people, paraphrase=True), share, number)]



class Evaluator:
    """Measures one configuration: generations from the server, likelihoods replayed exactly."""

    def __init__(self, chat: Any, admin: Any, dataset: EntityDataset, target: LikelihoodScorer, retain: LikelihoodScorer,
                 settings: RunSettings) -> None:
        self.chat, self.admin, self.dataset = chat, admin, dataset
        self.target, self.retain, self.settings = target, retain, settings

    async def _likelihoods(self, asked: Sequence[tuple[str, str, tuple[str, ...]]], responses: Sequence[Any]) -> list[AnswerLikelihood]:
        """TOFU likelihoods of each (question, answer, perturbed) under its response's decision."""
        decided = [decision_adapters(r.decision) for r in responses]
        scored = iter(await self.target.score([Probe(*item, adapters) for item, adapters in zip(asked, decided)
                                               if adapters is not REFUSED]))
        return [REFUSED_LIKELIHOOD if adapters is REFUSED else next(scored) for adapters in decided]

    async def measure(self, probes: Probes, request: int, config: str) -> tuple[Measurement, list[Any]]:
        started = time.monotonic()
        responses = await answer_all(self.chat, self.admin, probes.prompts(), self.settings.max_tokens)
        generated = time.monotonic()
        n_forget, n_retain = len(probes.forget), len(probes.retain)
        forget_r, retain_r, general_r = responses[:n_forget], responses[n_forget:n_forget + n_retain], responses[n_forget + n_retain:]
        asked = [(q.question, q.answer, q.perturbed_answers) for q in probes.forget + probes.retain]
        asked += [(g.prompt, g.answer, ()) for g in probes.general]
        likelihoods = await self._likelihoods(asked, responses)
        forget_l, retain_l = likelihoods[:n_forget], likelihoods[n_forget:n_forget + n_retain]
        general_l = likelihoods[n_forget + n_retain:]
        reference = await self.retain.score([Probe(*item) for item in asked[:n_forget]])
        LOG.info("%s after request %d: generation %.1f s, likelihoods %.1f s", config, request,
                 generated - started, time.monotonic() - generated)

        def accuracy(items: Sequence[QAItem], answers: Sequence[Any]) -> float:
            return mean_or_nan([contains_fact(r.text, item_key_values(self.dataset, q)) for q, r in zip(items, answers)])

        def rouge(items: Sequence[QAItem], answers: Sequence[Any]) -> float:
            return mean_or_nan([rouge_l_recall(r.text, q.answer) for q, r in zip(items, answers)])

        def matched(answers: Sequence[Any]) -> float:
            return mean_or_nan([bool(r.decision.adapters) or r.decision.refused for r in answers])

        retain_ratios = [lik.truth_ratio for lik in retain_l if lik.truth_ratio is not None]
        general_accuracy = mean_or_nan([contains_fact(r.text, [g.answer]) for g, r in zip(probes.general, general_r)])
        parts = dict(
            retain_probability=mean_or_nan([lik.probability for lik in retain_l]),
            retain_rouge_l=rouge(probes.retain, retain_r),
            retain_truth_score=truth_ratio_score(retain_ratios) if retain_ratios else float("nan"),
            general_probability=mean_or_nan([lik.probability for lik in general_l]),
            general_accuracy=general_accuracy,
        )
        measurement = Measurement(
            request=request,
            config=config,
            forget_accuracy=accuracy(probes.forget, forget_r),
            forget_rouge_l=rouge(probes.forget, forget_r),
            forget_probability=mean_or_nan([lik.probability for lik in forget_l]),
            forget_truth_ratio=mean_or_nan([lik.truth_ratio for lik in forget_l if lik.truth_ratio is not None]),
            forget_quality=forget_quality([lik.truth_ratio for lik in forget_l if lik.truth_ratio is not None],
                                          [lik.truth_ratio for lik in reference if lik.truth_ratio is not None]),
            retain_accuracy=accuracy(probes.retain, retain_r),
            model_utility=model_utility_of(parts),
            forget_matched=matched(forget_r),
            retain_matched=matched(retain_r),
            general_matched=matched(general_r),
            seconds=time.monotonic() - started,
            **parts,
        )
        return measurement, responses


def model_utility_of(parts: dict[str, float]) -> float:
    """TOFU's Model Utility adapted to our data: harmonic mean of probability, ROUGE-L and
    truth-ratio score on retained people, and probability and accuracy on general knowledge
    (which has no perturbed answers). One collapsed component drags it to 0, as in TOFU."""
    values = [parts["retain_probability"], parts["retain_rouge_l"], parts["retain_truth_score"],
              parts["general_probability"], parts["general_accuracy"]]
    if any(np.isnan(v) for v in values):
        return float("nan")
    return model_utility(*values)


def _log_scores(log: ScoreLog, probes: Probes, responses: Sequence[Any], requests: list[list[int]]) -> None:
    """Per set: its own people's probes are positives, kept people and general prompts negatives."""
    owner = {pid: f"request-{number}" for number, people in enumerate(requests, start=1) for pid in people}
    n_forget = len(probes.forget)
    for index, response in enumerate(responses):
        scores = {v.forget_set: v.score for v in response.decision.verdicts}
        for name, score in scores.items():
            is_own = index < n_forget and owner.get(probes.forget[index].person_id) == name
            if is_own:
                log.positives.setdefault(name, []).append(score)
            elif index >= n_forget:
                log.negatives.setdefault(name, []).append(score)


async def _run_sequence(target_model: Path, retain_model: Path, dataset: EntityDataset, requests: list[list[int]],
                        artifacts: Path, out_dir: Path, settings: RunSettings) -> tuple[list[Measurement], list[dict[str, float]], ScoreLog]:
    env = {"OBLIVIO_TRAINING__STEPS": str(settings.registration_steps)} if settings.registration_steps else {}
    server = start_server(target_model, artifacts, out_dir / "server.log", extra_env=env)
    target_scorer, retain_scorer = LikelihoodScorer(target_model, artifacts), LikelihoodScorer(retain_model)
    await target_scorer.start()
    await retain_scorer.start()
    measurements: list[Measurement] = []
    timings: list[dict[str, float]] = []
    scores = ScoreLog()
    all_forget = {pid for request in requests for pid in request}
    retain_probe = _sample(dataset.items(dataset.retain_ids(all_forget), paraphrase=True), settings.probes_per_split, 1)
    general_probe = [g for g in dataset.general if g.answer][: settings.probes_per_split]
    try:
        async with connect(server.grpc_target) as (chat, admin):
            evaluator = Evaluator(chat, admin, dataset, target_scorer, retain_scorer, settings)
            print("measuring the target model before any request (no unlearning)", flush=True)
            probes = Probes(_forget_probes(dataset, requests[:1], settings.probes_per_split), retain_probe, general_probe)
            baseline, _ = await evaluator.measure(probes, 0, BASELINE)
            print(f"  {BASELINE}: {_brief(baseline)}", flush=True)
            measurements.append(baseline)
            for number, people in enumerate(requests, start=1):
                name = f"request-{number}"
                pairs = [(q.question, q.answer) for q in dataset.items(people, paraphrase=False)]
                print(f"registering {name}: {len(people)} people, {len(pairs)} examples", flush=True)
                timings.append(await register_and_wait(admin, name, pairs, dataset.names(people), method=settings.method))
                probes = replace(probes, forget=_forget_probes(dataset, requests[:number], settings.probes_per_split))
                for config in settings.configs_after(number):
                    await set_default_policy(admin, **GATE_CONFIGS[config])
                    measurement, responses = await evaluator.measure(probes, number, config)
                    print(f"  {config}: {_brief(measurement)}", flush=True)
                    measurements.append(measurement)
                    if config == "oblivio_gate" and number == len(requests):
                        _log_scores(scores, probes, responses, requests)
    finally:
        server.stop()
        await target_scorer.close()
        await retain_scorer.close()
    return measurements, timings, scores


def _brief(m: Measurement) -> str:
    return (f"forget acc {m.forget_accuracy:.2f} FQ {m.forget_quality:.3g} | retain acc {m.retain_accuracy:.2f} | "
            f"general acc {m.general_accuracy:.2f} | MU {m.model_utility:.3f} | fired {m.forget_matched:.2f}/"
            f"{m.retain_matched:.2f}/{m.general_matched:.2f} ({m.seconds:.0f} s)")


def run(settings: RunSettings, out_dir: Path, base_model: Path, cache_root: Path, command: str) -> Path:
    """Everything above, end to end; returns the report path."""
    from oblivio.eval.continual_report import write_report
    from oblivio.eval.serving_cost import detector_latency, gateway_overhead

    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(seed=settings.seed, n_people=settings.n_people)
    requests = dataset.sequential_requests(settings.n_requests, settings.percent)
    forget_ids = sorted({pid for request in requests for pid in request})

    def progress(label: str):  # type: ignore[no-untyped-def]
        def report(step: int, total: int, loss: float) -> None:
            if step % 10 == 0 or step == total:
                print(f"  fine-tune {label}: step {step}/{total} loss {loss:.3f}", flush=True)
        return report

    print(f"fine-tuning: retain model ({settings.n_people - len(forget_ids)} people), then the target "
          f"(+{len(forget_ids)} forget people); cached under {cache_root}", flush=True)
    retain, target = evaluation_models(base_model, entity_pairs(dataset, dataset.retain_ids(forget_ids)),
                                       entity_pairs(dataset, forget_ids), cache_root, settings.finetune, progress)
    models = {label: json.loads((path / "finetune.json").read_text()) for label, path in (("retain", retain), ("target", target))}
    cost: dict[str, str] = {}
    # The server's artifact directory holds adapters and detector state of invented people: a
    # scratch folder, gone after the run, keeps the report folder small enough to commit.
    with tempfile.TemporaryDirectory(prefix="oblivio-continual-") as scratch:
        artifacts = Path(scratch) / "artifacts"
        measurements, timings, scores = asyncio.run(
            _run_sequence(target, retain, dataset, requests, artifacts, out_dir, settings))
        cost["detector"] = detector_latency(target, artifacts, [f"request-{n}" for n in range(1, len(requests) + 1)],
                                            settings.detector_repeats)
        if settings.gateway_benchmark:
            cost["gateway"] = gateway_overhead(target, out_dir / "gateway_overhead.md", out_dir / "gateway_overhead.log")
    return write_report(out_dir, measurements=measurements, timings=timings, scores=scores, cost=cost, models=models,
                        settings=asdict(settings), requests=[dataset.names(r) for r in requests], command=command,
                        seconds=time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="oblivio eval continual", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), "python -m oblivio.eval.continual")


def add_arguments(parser: Any) -> None:
    from oblivio.gateway.config import oblivio_home

    parser.add_argument("--quick", action="store_true", help="CI-sized run: 6 probes per split, 12-token answers, 6 training steps per request, baseline gates compared after the last request only, no gateway benchmark")
    parser.add_argument("--people", type=int, help="number of invented people (overrides the preset)")
    parser.add_argument("--requests", type=int, help="number of sequential forget requests")
    parser.add_argument("--epochs", type=float, help="fine-tune epochs of the retain and target models")
    parser.add_argument("--method", choices=sorted(METHOD_TO_PROTO), help="how each request's adapter is trained (default refusal)")
    parser.add_argument("--no-gateway-benchmark", action="store_true", help="skip gateway vs direct vLLM (minutes)")
    parser.add_argument("--model", type=Path, help="base model folder (default: the fetched default model)")
    parser.add_argument("--out", type=Path, default=Path("eval/reports/continual"))
    parser.add_argument("--cache", type=Path, default=oblivio_home() / "eval-models",
                        help="where fine-tuned retain/target models are cached")


def run_from_args(args: Any, program: str) -> int:
    from oblivio.gateway.config import load_config

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    LOG.setLevel(logging.INFO)
    settings = RunSettings.quick() if args.quick else RunSettings()
    if args.people:
        settings = replace(settings, n_people=args.people)
    if args.requests:
        settings = replace(settings, n_requests=args.requests)
    if args.epochs:
        settings = replace(settings, finetune=replace(settings.finetune, epochs=args.epochs))
    if args.method:
        settings = replace(settings, method=args.method)
    if args.no_gateway_benchmark:
        settings = replace(settings, gateway_benchmark=False)
    base = args.model or load_config().model_path
    argv = " ".join(sys.argv[1:]) if program.startswith("python") else " ".join(sys.argv[3:])  # after "eval continual"
    report = run(settings, args.out, base, args.cache, f"{program} {argv}".strip())
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
