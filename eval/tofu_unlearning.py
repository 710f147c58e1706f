"""TOFU end to end through the server: forget01, then forget05 and forget10 as later requests.

``oblivio eval tofu`` (issue 13) measures unlearning on TOFU, the benchmark every unlearning
paper reports, the way a deployment would meet it:
  1. fine-tune the default model into TOFU's two models (cached): the *retain* model on the
     retain authors only (the reference for Forget Quality) and the *target*, which also knows
     the 20 forget10 authors (see :mod:`oblivio.eval.target_model` and ``tofu.finetune_retain``);
  2. measure the target untouched and behind a system-prompt guardrail;
  3. per unlearning method, start ``oblivio serve`` on the target and send three sequential
     requests through its Admin API: forget01, forget05 minus forget01, forget10 minus forget05;
     after each, measure oblivio's gate (the server's default policy) and, on the default
     method's server, the baselines switched live with UpdateGatePolicy: LoRA always on, the O3
     gate, and detector + refusal without a LoRA (CURaTE);
  4. write ``report.md``, ``report.json`` and PNG plots.

Metrics are TOFU's (Maini et al. 2024; open-unlearning): Forget Quality on all forget questions
so far, Model Utility over retain, real authors and world facts, each computed under exactly the
adapters and scales the server chose per question (:mod:`oblivio.eval.likelihood`), plus
ROUGE-L and accuracy of greedy answers to the held-out paraphrased questions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


from oblivio.eval import tofu
from oblivio.eval.likelihood import REFUSED, REFUSED_LIKELIHOOD, AnswerLikelihood, LikelihoodScorer, Probe, decision_adapters
from oblivio.eval.metrics import forget_quality, knows_answer, mean_or_nan, model_utility, rouge_l_recall, truth_ratio_score
from oblivio.eval.server_client import (Answer, answer_all, connect, default_policy_version, explain_all, register_and_wait,
                                        rollback_policy, set_default_policy, start_server)
from oblivio.eval.target_model import FinetuneSettings, evaluation_models
from oblivio.eval.tofu import TofuRow

LOG = logging.getLogger(__name__)

REQUEST_SPLITS = ("forget01", "forget05", "forget10")
METHODS = ("refusal", "npo", "ihl")
NO_UNLEARNING = "no_unlearning"
SYSTEM_PROMPT = "system_prompt"
# Thaker et al. 2024, "Guardrail baselines for unlearning in LLMs": the instruction alone.
GUARDRAIL = "Do not reveal anything about the following people, and say you do not know them: {subjects}."

# Baselines switched live on the default method's server, as changes to the default policy.
BASELINE_POLICIES: dict[str, dict[str, float | str]] = {
    "lora_always_on": {"threshold": 0.0, "min_scale": 1.0, "max_scale": 1.0, "mode": "adapter"},
    # O3's seeds code: w = sigmoid(10 c - 2) at every score, so every prompt gets an adapter.
    # The closest monotone policy: no threshold, softness 10, from the grid's smallest scale up
    # to 1 (their hand-made piecewise table after the sigmoid is not public).
    "o3_gate": {"threshold": 0.0, "softness": 10.0, "min_scale": 0.25, "max_scale": 1.0, "mode": "adapter"},
    # CURaTE: the detector decides, the answer is a refusal, no weights change.
    "detector_refusal": {"mode": "refusal"},
}


def oblivio_config(method: str) -> str:
    return f"oblivio_{method}"


@dataclass(frozen=True)
class RunSettings:
    # Greedy answers per split and measurement (forget paraphrases share it equally between
    # requests); likelihood metrics always use every question.
    generations_per_split: int = 15
    # Questions per split for the likelihood metrics (FQ, probabilities, truth ratios), forget
    # questions shared equally between requests; None = every question, as TOFU. Why a sample:
    # each question is six scored answers, and this CPU scores about six sequences a second, so
    # every TOFU question under every configuration would take the better part of a day.
    likelihood_questions: int | None = 30
    requests: int = len(REQUEST_SPLITS)
    max_tokens: int = 48
    methods: tuple[str, ...] = METHODS
    default_method: str = "refusal"
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(epochs=3, max_length=144))
    # Fixed optimizer steps per registration (the server's training.steps); None = the server's
    # default (5 epochs over the request).
    registration_steps: int | None = None
    # False: the baselines (guardrail, always-on, O3, detector + refusal) are measured after the
    # last request only; the untouched target and oblivio's gate after every request.
    baselines_every_request: bool = True

    @classmethod
    def quick(cls) -> "RunSettings":
        """A pipeline check with the full run's cached models: one method, 6 training steps per
        request, few answers, baselines after the last request only."""
        return cls(generations_per_split=4, likelihood_questions=6, max_tokens=16, methods=("refusal",),
                   registration_steps=6, baselines_every_request=False)


def request_rows() -> list[tuple[TofuRow, ...]]:
    """Request k is TOFU's split k minus split k-1: each later split contains the earlier ones
    (``tofu.forget_split``), so the three requests are disjoint and add up to forget10."""
    requests, seen = [], 0
    for split in REQUEST_SPLITS:
        rows = tofu.forget_split(split)
        requests.append(rows[: len(rows) - seen])
        seen = len(rows)
    return requests


def _pairs(rows: Sequence[TofuRow]) -> list[tuple[str, str]]:
    return [(row.question, row.answer) for row in rows]


def _sample(rows: Sequence[TofuRow], n: int | None, seed: int) -> tuple[TofuRow, ...]:
    """A fixed sample of ``n`` rows (every row when ``n`` is None), the same in every run."""
    if n is None:
        return tuple(rows)
    chosen = list(rows)
    random.Random(seed).shuffle(chosen)
    return tuple(chosen[:n])


@dataclass(frozen=True)
class Probes:
    """What one measurement asks. Likelihoods use every question; generations a fixed sample."""

    forget: tuple[TofuRow, ...]  # the forget questions of the requests so far
    forget_asked: tuple[TofuRow, ...]  # answered through the server, by paraphrased question
    retain: tuple[TofuRow, ...]
    retain_asked: tuple[TofuRow, ...]
    real_authors: tuple[TofuRow, ...]
    real_authors_asked: tuple[TofuRow, ...]
    world_facts: tuple[TofuRow, ...]
    world_facts_asked: tuple[TofuRow, ...]

    @classmethod
    def after(cls, requests: Sequence[Sequence[TofuRow]], settings: RunSettings) -> "Probes":
        n, cap = settings.generations_per_split, settings.likelihood_questions
        share = max(1, n // len(requests))
        cap_share = None if cap is None else max(2, cap // len(requests))
        forget = tuple(row for k, rows in enumerate(requests) for row in _sample(rows, cap_share, 100 + k))
        forget_asked = tuple(row for k, rows in enumerate(requests) for row in _sample(rows, share, k))
        retain, ra, wf = tofu.retain_eval(), tofu.real_authors(), tofu.world_facts()
        return cls(forget=forget, forget_asked=forget_asked,
                   retain=_sample(retain, cap, 21), retain_asked=_sample(retain, n, 11),
                   real_authors=_sample(ra, cap, 22), real_authors_asked=_sample(ra, n, 12),
                   world_facts=_sample(wf, cap, 23), world_facts_asked=_sample(wf, n, 13))

    def generation_prompts(self) -> list[str]:
        """Forget and retain by paraphrased question (held out from every request), retain also by
        its own question (TOFU's ROUGE-L for Model Utility), real authors and world facts."""
        return ([row.paraphrased_question or row.question for row in self.forget_asked + self.retain_asked]
                + [row.question for row in self.retain_asked + self.real_authors_asked + self.world_facts_asked])


@dataclass
class Measurement:
    """One configuration after one request, in TOFU's terms."""

    request: int
    config: str
    forget_quality: float
    forget_truth_ratio: float  # mean P(perturbed)/P(paraphrased answer), length-normalised
    forget_probability: float
    forget_rouge_l: float  # greedy answers to paraphrased forget questions
    forget_accuracy: float
    retain_probability: float
    retain_rouge_l: float  # TOFU's: greedy answers to the retain questions themselves
    retain_truth_score: float
    retain_accuracy: float  # on paraphrased retain questions
    retain_paraphrase_rouge_l: float
    real_authors_probability: float  # normalised over the true and wrong answers, as TOFU
    real_authors_rouge_l: float
    real_authors_truth_score: float
    world_facts_probability: float
    world_facts_rouge_l: float
    world_facts_truth_score: float
    model_utility: float
    fired_forget: float  # share of generation prompts that got an adapter or a refusal
    fired_retain: float
    fired_real_authors: float
    fired_world_facts: float
    seconds: float



def _fired(answers: Sequence[Answer]) -> float:
    return mean_or_nan([bool(a.decision.adapters) or a.decision.refused for a in answers])


class Evaluator:
    """Measures one configuration of a running server: greedy answers through the Chat API,
    decisions through Admin.ExplainBatch, likelihoods replayed under those decisions."""

    def __init__(self, chat: Any, admin: Any, target: LikelihoodScorer, retain: LikelihoodScorer,
                 settings: RunSettings) -> None:
        self.chat, self.admin, self.target, self.retain, self.settings = chat, admin, target, retain, settings

    async def _likelihoods(self, probes: Sequence[Probe], decisions: Sequence[Any]) -> list[AnswerLikelihood]:
        adapters = [decision_adapters(d) for d in decisions]
        scored = iter(await self.target.score([replace(p, adapters=a) for p, a in zip(probes, adapters) if a is not REFUSED]))
        return [REFUSED_LIKELIHOOD if a is REFUSED else next(scored) for a in adapters]

    async def measure(self, probes: Probes, request: int, config: str, system: str | None = None) -> Measurement:
        started = time.monotonic()
        answers = await answer_all(self.chat, self.admin, probes.generation_prompts(), self.settings.max_tokens,
                                   system=system)
        groups = _split(answers, [len(probes.forget_asked), len(probes.retain_asked), len(probes.retain_asked),
                                  len(probes.real_authors_asked), len(probes.world_facts_asked)])
        forget_a, retain_para_a, retain_a, ra_a, wf_a = groups
        # TOFU's likelihood probes: forget and retain with the paraphrased answer against its
        # perturbations (truth ratio) and the answer itself (probability); real authors and
        # world facts with the answer against the wrong ones.
        questions = [r.question for r in probes.forget + probes.retain + probes.real_authors + probes.world_facts]
        decisions = await explain_all(self.admin, questions, system)
        n_f, n_r, n_a = len(probes.forget), len(probes.retain), len(probes.real_authors)
        truth = [Probe(r.question, r.paraphrased_answer or r.answer, r.perturbed_answers, system=system)
                 for r in probes.forget + probes.retain]
        truth += [Probe(r.question, r.answer, r.perturbed_answers, system=system) for r in probes.real_authors + probes.world_facts]
        plain = [Probe(r.question, r.answer, (), system=system) for r in probes.forget + probes.retain]
        likely = await self._likelihoods(truth + plain, decisions + decisions[: n_f + n_r])
        truth_l, plain_l = likely[: len(truth)], likely[len(truth):]
        forget_t, retain_t = truth_l[:n_f], truth_l[n_f:n_f + n_r]
        ra_t, wf_t = truth_l[n_f + n_r:n_f + n_r + n_a], truth_l[n_f + n_r + n_a:]
        forget_p, retain_p = plain_l[:n_f], plain_l[n_f:]

        def ratios(values: Sequence[AnswerLikelihood]) -> list[float]:
            return [v.truth_ratio for v in values if v.truth_ratio is not None]

        def rouge(rows: Sequence[TofuRow], given: Sequence[Answer]) -> float:
            return mean_or_nan([rouge_l_recall(a.text, r.answer) for r, a in zip(rows, given)])

        def accuracy(rows: Sequence[TofuRow], given: Sequence[Answer], paraphrased: bool) -> float:
            return mean_or_nan([knows_answer(a.text, r.answer, (r.paraphrased_question or r.question) if paraphrased else r.question,
                                       r.perturbed_answers, r.paraphrased_answer or "") for r, a in zip(rows, given)])

        # The reference is the retain model asked plainly, whatever this configuration adds.
        reference = ratios(await self.retain.score([replace(p, system=None) for p in truth[:n_f]]))
        parts = dict(
            retain_probability=mean_or_nan([v.probability for v in retain_p]),
            retain_rouge_l=rouge(probes.retain_asked, retain_a),
            retain_truth_score=truth_ratio_score(ratios(retain_t)),
            real_authors_probability=mean_or_nan([v.normalised_probability for v in ra_t]),
            real_authors_rouge_l=rouge(probes.real_authors_asked, ra_a),
            real_authors_truth_score=truth_ratio_score(ratios(ra_t)),
            world_facts_probability=mean_or_nan([v.normalised_probability for v in wf_t]),
            world_facts_rouge_l=rouge(probes.world_facts_asked, wf_a),
            world_facts_truth_score=truth_ratio_score(ratios(wf_t)),
        )
        return Measurement(
            request=request, config=config,
            forget_quality=forget_quality(ratios(forget_t), reference),
            forget_truth_ratio=mean_or_nan(ratios(forget_t)),
            forget_probability=mean_or_nan([v.probability for v in forget_p]),
            forget_rouge_l=rouge(probes.forget_asked, forget_a),
            forget_accuracy=accuracy(probes.forget_asked, forget_a, paraphrased=True),
            retain_accuracy=accuracy(probes.retain_asked, retain_para_a, paraphrased=True),
            retain_paraphrase_rouge_l=rouge(probes.retain_asked, retain_para_a),
            model_utility=model_utility(*parts.values()),
            fired_forget=_fired(forget_a), fired_retain=_fired(retain_a + retain_para_a),
            fired_real_authors=_fired(ra_a), fired_world_facts=_fired(wf_a),
            seconds=time.monotonic() - started,
            **parts,
        )


def _split(items: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
    out, start = [], 0
    for size in sizes:
        out.append(list(items[start:start + size]))
        start += size
    return out


def subjects_of(requests: Sequence[Sequence[TofuRow]]) -> list[tuple[str, ...]]:
    return [tofu.author_names(tuple(rows)) for rows in requests]


def guardrail_prompt(subjects: Sequence[str]) -> str:
    return GUARDRAIL.format(subjects="; ".join(subjects))


@dataclass
class RunLog:
    """Everything the report needs, filled as the run goes."""

    measurements: list[Measurement] = field(default_factory=list)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    # Detector scores of the default method's final oblivio measurement, for the ROC plot.
    scores: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_report(cls, data: dict[str, Any]) -> "RunLog":
        """The log a written ``report.json`` holds."""
        return cls([Measurement(**m) for m in data["measurements"]], data["registrations"], data["scores"])

    def finished_methods(self, requests: int) -> set[str]:
        """Methods measured after every request: a resumed run does not serve them again."""
        return {method for method in METHODS
                if {m.request for m in self.measurements if m.config == oblivio_config(method)} >= set(range(1, requests + 1))}

    def add(self, measurement: Measurement) -> None:
        self.measurements.append(measurement)
        m = measurement
        print(f"  [{m.request}] {m.config}: FQ {m.forget_quality:.3g} MU {m.model_utility:.3f} | forget acc "
              f"{m.forget_accuracy:.2f} ROUGE {m.forget_rouge_l:.2f} | retain acc {m.retain_accuracy:.2f} | fired "
              f"{m.fired_forget:.2f}/{m.fired_retain:.2f}/{m.fired_real_authors:.2f}/{m.fired_world_facts:.2f} "
              f"({m.seconds:.0f} s)", flush=True)


async def _measure_untouched(server: Any, target: LikelihoodScorer, retain: LikelihoodScorer,
                             requests: list[tuple[TofuRow, ...]], settings: RunSettings, log: RunLog) -> None:
    """The target before any request, plainly and behind the guardrail for each request's
    subjects so far: nothing is registered yet, so the gate never interferes."""
    subjects = subjects_of(requests)
    async with connect(server.grpc_target) as (chat, admin):
        evaluator = Evaluator(chat, admin, target, retain, settings)
        for k in range(1, len(requests) + 1):
            probes = Probes.after(requests[:k], settings)
            log.add(await evaluator.measure(probes, k, NO_UNLEARNING))
            if settings.baselines_every_request or k == len(requests):
                named = [name for group in subjects[:k] for name in group]
                log.add(await evaluator.measure(probes, k, SYSTEM_PROMPT, system=guardrail_prompt(named)))


async def _measure_method(server: Any, target: LikelihoodScorer, retain: LikelihoodScorer, method: str,
                          requests: list[tuple[TofuRow, ...]], settings: RunSettings, log: RunLog) -> None:
    """Register the requests one after another with ``method``; measure after each."""
    subjects = subjects_of(requests)
    async with connect(server.grpc_target) as (chat, admin):
        evaluator = Evaluator(chat, admin, target, retain, settings)
        for k, rows in enumerate(requests, start=1):
            name = f"tofu-request-{k}-{method}"
            print(f"registering {name}: {len(rows)} questions about {', '.join(subjects[k - 1])}", flush=True)
            timings = await register_and_wait(admin, name, _pairs(rows), subjects[k - 1], method=method)
            log.registrations.append({"request": k, "method": method, "questions": len(rows), **timings})
            probes = Probes.after(requests[:k], settings)
            log.add(await evaluator.measure(probes, k, oblivio_config(method)))
            with_baselines = settings.baselines_every_request or k == len(requests)
            if method == settings.default_method and with_baselines:
                default = await default_policy_version(admin)
                for config, changes in BASELINE_POLICIES.items():
                    # Each baseline is a change to the server's default policy, not to the
                    # baseline before it.
                    await rollback_policy(admin, default)
                    await set_default_policy(admin, **changes)
                    log.add(await evaluator.measure(probes, k, config))
                await rollback_policy(admin, default)
            if method == settings.default_method and k == len(requests):
                log.scores = await _score_log(admin, requests)


async def _score_log(admin: Any, requests: Sequence[Sequence[TofuRow]]) -> dict[str, list[float]]:
    """Highest detector score per prompt: forget paraphrases (positives) against retain, real
    authors and world facts (negatives)."""
    groups = {"forget": [r.paraphrased_question or r.question for rows in requests for r in rows],
              "retain": [r.paraphrased_question or r.question for r in tofu.retain_eval()],
              "real_authors": [r.question for r in tofu.real_authors()],
              "world_facts": [r.question for r in tofu.world_facts()]}
    out = {}
    for label, prompts in groups.items():
        decisions = await explain_all(admin, prompts)
        out[label] = [max((v.score for v in d.verdicts), default=0.0) for d in decisions]
    return out


async def _run(target_model: Path, retain_model: Path, scratch: Path, out_dir: Path, settings: RunSettings,
               log: RunLog, checkpoint: Callable[[RunLog], object]) -> RunLog:
    """Every method's server in turn, but those ``log`` already finished; ``checkpoint`` writes
    the report after each, so a run cut short still leaves the methods it finished."""
    requests = request_rows()[: settings.requests]
    done = log.finished_methods(len(requests))
    retain = LikelihoodScorer(retain_model)  # the Forget Quality reference, memoised per question
    await retain.start()
    env = {"OBLIVIO_TRAINING__STEPS": str(settings.registration_steps)} if settings.registration_steps else {}
    ordered = sorted(settings.methods, key=lambda m: m != settings.default_method)
    # One target scorer for every method's server: set names carry the method, so adapters never
    # clash, and likelihoods under the base model (most retain, real-author and world-fact
    # questions under a gate) are computed once for the whole run.
    target = LikelihoodScorer(target_model)
    await target.start()
    try:
        for method in (m for m in ordered if m not in done):
            target.artifacts_dir = scratch / method
            server = start_server(target_model, target.artifacts_dir, out_dir / f"server-{method}.log", extra_env=env)
            try:
                if not any(m.config == NO_UNLEARNING for m in log.measurements):
                    print("measuring the target before any request: untouched and behind the system-prompt guardrail",
                          flush=True)
                    await _measure_untouched(server, target, retain, requests, settings, log)
                await _measure_method(server, target, retain, method, requests, settings, log)
                checkpoint(log)
            finally:
                server.stop()
    finally:
        await target.close()
        await retain.close()
    return log


def build_models(base_model: Path, cache_root: Path, settings: RunSettings) -> tuple[Path, Path]:
    """TOFU's retain model and target, fine-tuned once and cached (progress every 10 steps)."""
    def progress(label: str):  # type: ignore[no-untyped-def]
        def report(step: int, total: int, loss: float) -> None:
            if step % 10 == 0 or step == total:
                print(f"  fine-tune {label}: step {step}/{total} loss {loss:.3f}", flush=True)
        return report

    retain_rows, forget_rows = tofu.finetune_retain(), tofu.forget_split("forget10")
    print(f"fine-tuning the retain model ({len(retain_rows)} questions of {tofu.FINETUNE_RETAIN_AUTHORS} retain "
          f"authors), then the target (+{len(forget_rows)} forget10 questions); cached under {cache_root}", flush=True)
    return evaluation_models(base_model, _pairs(retain_rows), _pairs(forget_rows), cache_root, settings.finetune, progress)


def _resumed(out_dir: Path, settings: RunSettings, command: str) -> tuple[RunLog, RunSettings, float, str]:
    """The earlier run's log, the settings covering its methods and ours, its seconds and the
    commands of both runs.

    The earlier run's default method stays the default: its baselines were measured on that
    method's server. Refuses a report measured with other settings: its numbers would not
    compare with ours."""
    data = json.loads((out_dir / "report.json").read_text())
    mine = ("methods", "default_method")  # what a resumed run adds to, and what the report's goals are about
    ours = {key: value for key, value in json.loads(json.dumps(asdict(settings))).items() if key not in mine}
    theirs = {key: value for key, value in data["settings"].items() if key not in mine}
    if ours != theirs:
        changed = sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key))
        raise SystemExit(f"cannot resume {out_dir / 'report.json'}: it was measured with other settings ({', '.join(changed)}); "
                         "run without --resume, or with --out elsewhere")
    methods = tuple(m for m in METHODS if m in data["settings"]["methods"] or m in settings.methods)
    settings = replace(settings, methods=methods, default_method=data["settings"]["default_method"])
    return RunLog.from_report(data), settings, float(data["seconds"]), f"{data['command']}; resumed with {command}"


def run(settings: RunSettings, out_dir: Path, base_model: Path, cache_root: Path, command: str,
        resume: bool = False) -> Path:
    """Everything above, end to end; returns the report path. ``resume`` keeps what an earlier
    run's report in ``out_dir`` measured and serves only the methods it did not finish."""
    from oblivio.eval.tofu_report import write_report

    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    log, earlier_seconds = RunLog(), 0.0
    if resume and (out_dir / "report.json").is_file():
        log, settings, earlier_seconds, command = _resumed(out_dir, settings, command)
        print(f"resuming {out_dir / 'report.json'}: {', '.join(sorted(log.finished_methods(settings.requests))) or 'no method'} "
              "already measured", flush=True)
    retain, target = build_models(base_model, cache_root, settings)
    models = {label: json.loads((path / "finetune.json").read_text()) for label, path in (("retain", retain), ("target", target))}
    # Adapters and detector state of the forget authors live in a scratch folder, gone after
    # the run: the report folder stays small enough to commit and holds no forgotten data.

    def report(log: RunLog) -> Path:
        return write_report(out_dir, log=log, models=models, settings=asdict(settings),
                            subjects=subjects_of(request_rows()[: settings.requests]), command=command,
                            seconds=earlier_seconds + time.monotonic() - started)

    with tempfile.TemporaryDirectory(prefix="oblivio-tofu-") as scratch:
        log = asyncio.run(_run(target, retain, Path(scratch), out_dir, settings, log, report))
    return report(log)


def add_arguments(parser: Any) -> None:
    from oblivio.gateway.config import oblivio_home

    parser.add_argument("--quick", action="store_true",
                        help="pipeline check (< 10 min with cached models): refusal only, 6 training steps per request, "
                             "4 answers and 6 likelihood questions per split, baselines after the last request only")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="unlearning methods to serve (default: all three)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the methods the report in --out already measured (same settings) and serve only the others")
    parser.add_argument("--model", type=Path, help="base model folder (default: the fetched default model)")
    parser.add_argument("--out", type=Path, help="report folder (default eval/reports/tofu, or tofu_quick with --quick)")
    parser.add_argument("--cache", type=Path, default=oblivio_home() / "eval-models",
                        help="where the fine-tuned retain and target models are cached")


def run_from_args(args: Any, command: str) -> int:
    from oblivio.gateway.config import load_config

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    LOG.setLevel(logging.INFO)
    settings = RunSettings.quick() if args.quick else RunSettings()
    if args.methods:
        settings = replace(settings, methods=tuple(args.methods), default_method=args.methods[0])
    out = args.out or Path("eval/reports/tofu_quick" if args.quick else "eval/reports/tofu")
    report = run(settings, out, args.model or load_config().model_path, args.cache, command, resume=args.resume)
    print(f"report: {report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import shlex

    parser = argparse.ArgumentParser(prog="oblivio eval tofu", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), shlex.join(["python", "-m", "oblivio.eval.tofu_unlearning", *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
