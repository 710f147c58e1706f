"""The TOFU report: goals after every request, every configuration's metrics, PNG plots, JSON.

Kept apart from the run so the goal checks are one readable function and the report can be
written again from ``report.json`` (:func:`rewrite`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from oblivio.eval.machine import describe_machine
from oblivio.eval.tofu_unlearning import (BASELINE_POLICIES, NO_UNLEARNING, SYSTEM_PROMPT, Measurement, RunLog,
                                          oblivio_config)

BASELINES = (NO_UNLEARNING, SYSTEM_PROMPT, *BASELINE_POLICIES)
COLUMNS = (
    ("forget_quality", "FQ", ".3g"), ("model_utility", "MU", ".3f"),
    ("forget_accuracy", "forget acc", ".2f"), ("forget_rouge_l", "forget ROUGE", ".2f"),
    ("forget_truth_ratio", "forget TR", ".2f"), ("forget_probability", "forget prob", ".3f"),
    ("retain_accuracy", "retain acc", ".2f"), ("retain_rouge_l", "retain ROUGE", ".2f"),
    ("retain_probability", "retain prob", ".3f"), ("retain_truth_score", "retain TR score", ".2f"),
    ("real_authors_probability", "RA prob", ".3f"), ("real_authors_rouge_l", "RA ROUGE", ".2f"),
    ("world_facts_probability", "WF prob", ".3f"), ("world_facts_rouge_l", "WF ROUGE", ".2f"),
)


def _find(measurements: Sequence[Measurement], request: int, config: str) -> Measurement | None:
    return next((m for m in measurements if m.request == request and m.config == config), None)


# Forget Quality is a p-value: at or above this level the model cannot be told apart from the
# retain model, whatever the exact value.
FQ_LEVEL = 0.05


def _fq_order(ours: float, other: float) -> int:
    """+1 when ours forgets better, -1 worse, 0 a tie. Two p-values at or above ``FQ_LEVEL`` are
    a tie (both look like the retain model; 0.6 against 0.8 is not evidence of anything);
    otherwise the side above the level wins, and below it the larger p-value."""
    if ours >= FQ_LEVEL and other >= FQ_LEVEL:
        return 0
    if (ours >= FQ_LEVEL) != (other >= FQ_LEVEL):
        return 1 if ours >= FQ_LEVEL else -1
    return (ours > other) - (ours < other)


def dominates(ours: Measurement, other: Measurement) -> bool:
    """Better on forgetting or on utility (Model Utility, at the report's three decimals) and not
    worse on the other. Forgetting is Forget Quality (:func:`_fq_order`), and on a tie the
    accuracy on held-out paraphrased forget questions: lower forgets better."""
    order = _fq_order(ours.forget_quality, other.forget_quality)
    if order == 0:
        order = (ours.forget_accuracy < other.forget_accuracy) - (ours.forget_accuracy > other.forget_accuracy)
    fq_better, fq_worse = order > 0, order < 0
    mu_better = round(ours.model_utility, 3) > round(other.model_utility, 3)
    mu_worse = round(ours.model_utility, 3) < round(other.model_utility, 3)
    return (fq_better and not mu_worse) or (mu_better and not fq_worse)


def goals(measurements: Sequence[Measurement], default_method: str) -> list[tuple[str, str, bool]]:
    """(goal, what was measured, met) for each goal of issue 13, after every request."""
    ours_name = oblivio_config(default_method)
    rows = []
    for k in sorted({m.request for m in measurements}):
        ours, target = _find(measurements, k, ours_name), _find(measurements, k, NO_UNLEARNING)
        if ours is None or target is None:
            continue
        rows += [
            (f"[{k}] forget accuracy on paraphrases <= 5%",
             f"{ours.forget_accuracy:.1%} (target {target.forget_accuracy:.1%})", ours.forget_accuracy <= 0.05),
            (f"[{k}] Model Utility >= 0.95 x target's",
             f"{ours.model_utility:.3f} vs {target.model_utility:.3f}",
             ours.model_utility >= 0.95 * target.model_utility),
            (f"[{k}] Forget Quality >= 0.05 (all forget questions so far)",
             f"p = {ours.forget_quality:.3g} (target {target.forget_quality:.3g})", ours.forget_quality >= 0.05),
        ]
        for baseline in BASELINES:
            other = _find(measurements, k, baseline)
            if other is not None:
                rows.append((f"[{k}] beats {baseline} on forgetting or MU without losing on the other",
                             f"FQ {ours.forget_quality:.3g} vs {other.forget_quality:.3g}, forget acc "
                             f"{ours.forget_accuracy:.0%} vs {other.forget_accuracy:.0%}; MU {ours.model_utility:.3f} "
                             f"vs {other.model_utility:.3f}", dominates(ours, other)))
    return rows


def _plots(log: RunLog, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    paths = []
    configs = list(dict.fromkeys(m.config for m in log.measurements))
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for config in configs:
        series = sorted((m for m in log.measurements if m.config == config), key=lambda m: m.request)
        requests = [m.request for m in series]
        axes[0].plot(requests, [max(m.forget_quality, 1e-30) for m in series], marker="o", label=config)
        axes[1].plot(requests, [m.model_utility for m in series], marker="o", label=config)
        axes[2].plot(requests, [m.forget_accuracy for m in series], marker="o", label=config)
    axes[0].set_yscale("log")
    axes[0].axhline(0.05, color="grey", linestyle="--", linewidth=1)
    for axis, title in zip(axes, ("Forget Quality (KS p-value, log)", "Model Utility", "forget accuracy (paraphrases)")):
        axis.set_title(title)
        axis.set_xlabel("request (1 = forget01, 2 = forget05, 3 = forget10)")
        axis.set_xticks([1, 2, 3])
    axes[2].legend(fontsize=7)
    figure.tight_layout()
    paths.append(out_dir / "metrics_vs_request.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    last = max(m.request for m in log.measurements)
    figure, axis = plt.subplots(figsize=(7, 5))
    for m in (m for m in log.measurements if m.request == last):
        axis.scatter(m.model_utility, max(m.forget_quality, 1e-30), s=40)
        axis.annotate(m.config, (m.model_utility, max(m.forget_quality, 1e-30)), fontsize=8)
    axis.set_yscale("log")
    axis.axhline(0.05, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel("Model Utility")
    axis.set_ylabel("Forget Quality (log)")
    axis.set_title(f"after request {last} (forget10): up and to the right is better")
    figure.tight_layout()
    paths.append(out_dir / "fq_vs_mu.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    if log.scores.get("forget"):
        figure, axis = plt.subplots(figsize=(6, 5))
        positives = log.scores["forget"]
        for label in ("retain", "real_authors", "world_facts"):
            negatives = log.scores.get(label, [])
            if negatives:
                fpr, tpr, _ = roc_curve([1] * len(positives) + [0] * len(negatives), positives + negatives)
                axis.plot(fpr, tpr, label=f"forget10 paraphrases vs {label}")
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
        axis.set_xlabel("false fire rate")
        axis.set_ylabel("catch rate")
        axis.set_title("detector after the last request (max score over sets)")
        axis.legend(fontsize=8)
        figure.tight_layout()
        paths.append(out_dir / "detector_roc.png")
        figure.savefig(paths[-1], dpi=110)
        plt.close(figure)
    return paths


def _table(measurements: Sequence[Measurement]) -> list[str]:
    head = "| req | configuration | " + " | ".join(label for _, label, _ in COLUMNS) + " | fired F/R/RA/WF | s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for m in sorted(measurements, key=lambda m: m.request):
        values = " | ".join(format(getattr(m, name), spec) for name, _, spec in COLUMNS)
        lines.append(f"| {m.request} | {m.config} | {values} | {m.fired_forget:.2f}/{m.fired_retain:.2f}/"
                     f"{m.fired_real_authors:.2f}/{m.fired_world_facts:.2f} | {m.seconds:.0f} |")
    return lines


def write_report(out_dir: Path, *, log: RunLog, models: dict[str, Any], settings: dict[str, Any],
                 subjects: Sequence[Sequence[str]], command: str, seconds: float,
                 machine: str | None = None) -> Path:
    machine = machine or describe_machine()
    (out_dir / "report.json").write_text(json.dumps({
        "command": command, "machine": machine, "seconds": seconds, "settings": settings, "models": models,
        "subjects": [list(s) for s in subjects], "measurements": [asdict(m) for m in log.measurements],
        "registrations": log.registrations, "scores": log.scores}, indent=1))
    plots = _plots(log, out_dir)
    met = goals(log.measurements, settings["default_method"])
    lines = [
        "# TOFU, end to end through the oblivio server",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}. Total time: {seconds / 60:.1f} min.  ",
        f"Settings: `{json.dumps(settings)}`",
        "",
        "Sequential requests went through the Admin API of a real `oblivio serve` on the target, one server "
        "per unlearning method: forget01, then forget05 minus forget01, then forget10 minus forget05 (authors: "
        + "; ".join(", ".join(s) for s in subjects) + "). "
        "Metrics are TOFU's: *FQ* is the KS-test p-value of the truth ratios (paraphrased answer against its "
        "perturbations) on all forget questions so far against the retain model's; *MU* is the harmonic mean "
        "of probability, ROUGE-L and truth-ratio score on retain, real authors and world facts. Likelihoods are "
        "taken under exactly the adapters and scales the server chose for each question (a refusal counts as "
        "probability 0 and truth ratio 1). *acc*: a greedy answer to the held-out paraphrased question holds "
        "at least half of the answer's key terms (`eval/metrics.py:knows_answer`). *fired*: share of answered "
        "prompts that got an adapter or a refusal (forget / retain / real authors / world facts).",
        "",
        f"## Goals (oblivio's default gate with `{settings['default_method']}` adapters)",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
        *[f"| {goal} | {measured} | {'yes' if ok else '**no**'} |" for goal, measured, ok in met],
        "",
        "## Models",
        "",
        *[f"- **{label}**: {info['steps']} steps on {info['examples']} QA pairs, final loss {info['final_loss']:.3f}, "
          f"{info['seconds'] / 60:.1f} min to train" for label, info in models.items()],
        "",
        "## Every configuration after every request",
        "",
        *_table(log.measurements),
        "",
        "## Registrations (register -> detector enforcing -> adapter live)",
        "",
        "| request | method | questions | to enforcing (s) | to live (s) |",
        "|---|---|---|---|---|",
        *[f"| {r['request']} | {r['method']} | {r['questions']} | {r.get('enforcing', float('nan')):.1f} | "
          f"{r.get('live', float('nan')):.1f} |" for r in log.registrations],
        "",
        "## Plots",
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def rewrite(out_dir: Path) -> Path:
    """The report again from ``report.json`` (after a change to the goals or the layout)."""
    data = json.loads((out_dir / "report.json").read_text())
    log = RunLog.from_report(data)
    return write_report(out_dir, log=log, models=data["models"], settings=data["settings"], subjects=data["subjects"],
                        command=data["command"], seconds=data["seconds"], machine=data["machine"])
