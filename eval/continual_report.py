"""The continual-unlearning report: goals met or not, tables, PNG plots, raw JSON.

Kept apart from the run itself so the report can be regenerated from ``report.json`` and the
goal checks are one readable function.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from oblivio.eval.continual import BASELINE, GATE_CONFIGS, Measurement, ScoreLog
from oblivio.eval.machine import describe_machine

PLOTTED = (
    ("forget_accuracy", "forget accuracy (paraphrases)", False),
    ("retain_accuracy", "retain accuracy", False),
    ("general_accuracy", "general accuracy", False),
    ("model_utility", "model utility", False),
    ("forget_quality", "forget quality (KS p-value)", True),
)


def _find(measurements: Sequence[Measurement], request: int, config: str) -> Measurement:
    return next(m for m in measurements if m.request == request and m.config == config)


def goals(measurements: Sequence[Measurement]) -> list[tuple[str, str, bool]]:
    """(goal, what was measured, met) for each goal issue 7 sets."""
    last = max(m.request for m in measurements)
    base = _find(measurements, 0, BASELINE)
    ours, always, o3 = (_find(measurements, last, c) for c in ("oblivio_gate", "lora_always_on", "o3_sigmoid"))
    first = _find(measurements, 1, "oblivio_gate")
    retain_gap = ours.retain_accuracy - base.retain_accuracy
    general_gap = ours.general_accuracy - base.general_accuracy
    forget_better, forget_worse = ours.forget_accuracy < o3.forget_accuracy, ours.forget_accuracy > o3.forget_accuracy
    utility_better, utility_worse = ours.model_utility > o3.model_utility, ours.model_utility < o3.model_utility
    return [
        (f"forget accuracy on paraphrases <= 5% after request {last}",
         f"{ours.forget_accuracy:.1%} (target before unlearning: {base.forget_accuracy:.1%})", ours.forget_accuracy <= 0.05),
        ("retain accuracy within 1 point of the target",
         f"{ours.retain_accuracy:.1%} vs {base.retain_accuracy:.1%} ({retain_gap * 100:+.1f} pt)", abs(retain_gap) <= 0.01),
        ("general accuracy within 1 point of the target",
         f"{ours.general_accuracy:.1%} vs {base.general_accuracy:.1%} ({general_gap * 100:+.1f} pt)", abs(general_gap) <= 0.01),
        ("Forget Quality >= 0.05 on the first (forget01-sized) request",
         f"p = {first.forget_quality:.3g} (target before unlearning: {base.forget_quality:.3g})", first.forget_quality >= 0.05),
        ("gate beats LoRA-always-on on utility by a wide margin (MU gain >= half the target's MU)",
         f"MU {ours.model_utility:.3f} vs {always.model_utility:.3f} (target {base.model_utility:.3f}); retain acc "
         f"{ours.retain_accuracy:.1%} vs {always.retain_accuracy:.1%}",
         ours.model_utility > always.model_utility and ours.model_utility - always.model_utility >= 0.5 * base.model_utility),
        ("gate beats the O3-style gate on one axis without losing on the other",
         f"forget acc {ours.forget_accuracy:.1%} vs {o3.forget_accuracy:.1%}; MU {ours.model_utility:.3f} vs "
         f"{o3.model_utility:.3f}", (forget_better and not utility_worse) or (utility_better and not forget_worse)),
    ]


def _plots(measurements: Sequence[Measurement], scores: ScoreLog, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    paths = []
    base = _find(measurements, 0, BASELINE)
    fig, grid = plt.subplots(2, 3, figsize=(12.5, 7.5))
    axes = grid.ravel()
    axes[-1].set_visible(False)
    requests = sorted({m.request for m in measurements})
    for ax, (metric, label, log_scale) in zip(axes, PLOTTED):
        ax.set_xticks(requests)
        for config in GATE_CONFIGS:
            points = [(0, getattr(base, metric))] + [(m.request, getattr(m, metric)) for m in measurements if m.config == config]
            ax.plot(*zip(*points), marker="o", label=config)
        ax.set_xlabel("forget request number")
        ax.set_title(label, fontsize=10)
        if log_scale:
            ax.set_yscale("log")
            ax.axhline(0.05, color="grey", linestyle="--", linewidth=0.8)
        else:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "metrics_vs_request.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    if scores.positives:
        fig, ax = plt.subplots(figsize=(4.5, 4.2))
        for name in sorted(scores.positives):
            positives, negatives = scores.positives[name], scores.negatives.get(name, [])
            if not positives or not negatives:
                continue
            y = [1] * len(positives) + [0] * len(negatives)
            fpr, tpr, _ = roc_curve(y, positives + negatives)
            ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, positives + negatives):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set_xlabel("false positive rate (kept people + general prompts)")
        ax.set_ylabel("true positive rate (its people's paraphrases)")
        ax.set_title("detector ROC per request", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / "roc_per_request.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def _table(measurements: Sequence[Measurement]) -> str:
    header = ("| req | gate | forget acc | forget ROUGE-L | forget prob | forget TR | FQ (p) | retain acc | retain ROUGE-L "
              "| retain prob | retain TR score | general acc | general prob | MU | fired forget / retain / general |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for m in measurements:
        lines.append(
            f"| {m.request} | {m.config} | {m.forget_accuracy:.2f} | {m.forget_rouge_l:.2f} | {m.forget_probability:.3f} | "
            f"{m.forget_truth_ratio:.2f} | {m.forget_quality:.3g} | {m.retain_accuracy:.2f} | {m.retain_rouge_l:.2f} | "
            f"{m.retain_probability:.3f} | {m.retain_truth_score:.2f} | {m.general_accuracy:.2f} | {m.general_probability:.3f} | "
            f"{m.model_utility:.3f} | {m.forget_matched:.2f} / {m.retain_matched:.2f} / {m.general_matched:.2f} |")
    return "\n".join(lines)


def write_report(out_dir: Path, *, measurements: list[Measurement], timings: list[dict[str, float]], scores: ScoreLog,
                 cost: dict[str, str], models: dict[str, Any], settings: dict[str, Any], requests: list[list[str]],
                 command: str, seconds: float) -> Path:
    plots = _plots(measurements, scores, out_dir)
    goal_lines = ["| goal | measured | met |", "|---|---|---|"]
    goal_lines += [f"| {goal} | {measured} | {'yes' if met else '**no**'} |" for goal, measured, met in goals(measurements)]
    timing_lines = ["| request | people | to enforced (s) | to live (s) |", "|---|---|---|---|"]
    for number, (timing, names) in enumerate(zip(timings, requests), start=1):
        timing_lines.append(f"| {number} | {', '.join(names)} | {timing.get('enforcing', float('nan')):.1f} | "
                            f"{timing.get('live', float('nan')):.1f} |")
    model_lines = [f"- **{label}**: {info['steps']} steps on {info['examples']} QA pairs, final loss "
                   f"{info['final_loss']:.3f}, {info['seconds'] / 60:.1f} min to train" for label, info in models.items()]
    cost_text = "\n\n".join(f"### {'Gateway vs direct vLLM' if key == 'gateway' else 'Detector cost vs number of forget sets'}\n\n{text}"
                            for key, text in cost.items())
    text = f"""# Continual unlearning through the oblivio server

Command: `{command}`
Machine: {describe_machine()}. Total time: {seconds / 60:.1f} min.
Settings: `{json.dumps(settings)}`

Every registration, policy switch and chat went through the server's public gRPC API
(`oblivio serve` on the target model, vLLM backend). Probes are held-out paraphrase questions that
no forget request contained; answers are greedy. *Accuracy*: the answer contains the fact's key
value. *prob*, *TR*: TOFU's length-normalised answer probability and truth ratio, computed under
exactly the adapters and scales the server's gate chose for that probe (replayed in the exact
reference backend). *FQ*: KS-test p-value of the forget probes' truth ratios against the retain
model's (a model that never saw those people). *MU*: harmonic mean of retain probability,
ROUGE-L and truth-ratio score and general probability and accuracy. *fired*: share of probes
that got an adapter or a refusal. Request 0 is the target with nothing registered.

## Goals (after the last request, oblivio's gate)

{chr(10).join(goal_lines)}

## Models

{chr(10).join(model_lines)}

## Every measurement

Gates compared: `lora_always_on` (no gate: every prompt gets every adapter at scale 1),
`o3_sigmoid` (O3's curve without its hand-made table: every prompt gets at least scale 0.25,
rising with the score), `oblivio_gate` (the default policy: threshold 0.5, then 0.25 -> 1).{
"" if settings.get("compare_every_request", True) else " This run measured the first two after the last request only."}

{_table(measurements)}

## Registration latency (register -> detector enforcing -> adapter live)

{chr(10).join(timing_lines)}

## Plots

{chr(10).join(f"![{p.stem}]({p.name})" for p in plots)}

## Serving cost

{cost_text}
"""
    (out_dir / "report.json").write_text(json.dumps({
        "command": command, "settings": settings, "models": models, "timings": timings, "requests": requests,
        "cost": cost, "seconds": seconds, "measurements": [asdict(m) for m in measurements],
        "scores": asdict(scores)}, indent=2))
    path = out_dir / "report.md"
    path.write_text(text)
    return path
