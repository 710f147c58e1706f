"""Detector quality on real data: TOFU's fictitious authors and GeoNames' countries.

Each forget set is registered the way a user registers it: its question/answer pairs become
detector texts exactly as the registration pipeline makes them (``ForgetExample.detector_texts``),
fitted with the default settings, and decided at the gate's default threshold 0.5. No threshold
is picked on test data.

* TOFU forget01/05/10: positives = the split's own ``paraphrased_question`` (never seen at fit
  time); near negatives = other fictitious authors (TOFU's 400 retain paraphrased questions and
  a fixed sample of 400 retain90 questions); far = world facts and real authors. Each split is
  registered with the authors' names as subjects (``--subject``: "forget this person", the
  precise way, see ``detector.swaps``) and with the texts alone.
* Countries (a non-person set, ``country_data``): 20 countries registered with their names as
  subjects; positives = other wordings about them; near = the same wordings about every other
  country; far = world facts and real authors that name none of the 20.

``oblivio eval detector`` (or ``python -m oblivio.eval.detector_real``) writes
``eval/reports/detector_real/report.md``, a ROC and a score-histogram PNG per set, and
``results.json``. The generated-people table is ``oblivio eval detector-generated``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oblivio.eval import country_data, tofu
from oblivio.eval.bench_detector import tpr_at_fpr
from oblivio.eval.machine import describe_machine

LOG = logging.getLogger("oblivio.eval.detector_real")
DEFAULT_OUT = Path(__file__).resolve().parent / "reports" / "detector_real"
THRESHOLD = 0.5  # the gate's default
GOALS = {"catch": 0.95, "near_false_fire": 0.02, "far_false_fire": 0.005, "near_auroc": 0.99}


@dataclass(frozen=True)
class ForgetCase:
    """One registration to evaluate, and the probes it is judged on."""

    label: str
    texts: tuple[str, ...]
    subjects: tuple[str, ...]
    positives: tuple[str, ...]
    near: dict[str, tuple[str, ...]]  # group name -> prompts about other entities of the same kind
    far: tuple[str, ...]


@dataclass(frozen=True)
class CaseResult:
    label: str
    subjects: tuple[str, ...]
    n_fit_texts: int
    fit_seconds: float
    catch: float
    near_false_fire: dict[str, float]
    far_false_fire: float
    near_auroc: float
    far_auroc: float
    tpr_at_5pct_near_fpr: float
    reported_near_false_fire: float
    missed: tuple[str, ...]
    near_fires: tuple[str, ...]
    far_fires: tuple[str, ...]

    def goals_met(self) -> dict[str, bool]:
        return {
            "catch": self.catch >= GOALS["catch"],
            "near_false_fire": max(self.near_false_fire.values()) <= GOALS["near_false_fire"],
            "far_false_fire": self.far_false_fire <= GOALS["far_false_fire"],
            "near_auroc": self.near_auroc >= GOALS["near_auroc"],
        }


def registration_texts(pairs: list[tuple[str, str]]) -> tuple[str, ...]:
    """The detector texts a user's registration of these question/answer pairs produces."""
    from oblivio.adapters.forget_set import ForgetExample

    return tuple(t for q, a in pairs for t in ForgetExample(question=q, answer=a).detector_texts())


def tofu_case(split: str, with_subjects: bool, n_retain90: int = 400) -> ForgetCase:
    rows = tofu.forget_split(split)
    return ForgetCase(
        label=f"TOFU {split} + names" if with_subjects else f"TOFU {split}, texts only",
        texts=registration_texts([(r.question, r.answer) for r in rows]),
        subjects=tofu.author_names(rows) if with_subjects else (),
        positives=tuple(r.paraphrased_question or r.question for r in rows),
        near={
            "retain paraphrased": tuple(r.paraphrased_question or r.question for r in tofu.retain_eval()),
            "retain90": tuple(r.question for r in tofu.retain90_sample(n_retain90)),
        },
        far=tofu.far_questions(),
    )


def countries_case(n_forget: int = 20) -> ForgetCase:
    far = tofu.far_questions()
    split = country_data.country_split(n_forget, avoid=far)
    return ForgetCase(
        label=f"{n_forget} countries + names",
        texts=registration_texts([p for c in split.forget for p in country_data.fit_pairs(c)]),
        subjects=tuple(c.name for c in split.forget),
        positives=tuple(q for c in split.forget for q in country_data.probe_questions(c)),
        near={"other countries": tuple(q for c in split.others for q in country_data.probe_questions(c))},
        far=tuple(q for q in far if not any(c.name in q for c in split.forget)),
    )


class FeatureCache:
    """Probe features by text, so probes shared by several cases are run through the model once."""

    def __init__(self, extractor: Any) -> None:
        self.extractor = extractor
        self._memo: dict[str, Any] = {}

    def features(self, texts: tuple[str, ...]) -> Any:
        from oblivio.detector.features import concat_features

        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            batch = self.extractor.extract(missing)
            self._memo.update((t, batch.subset([i])) for i, t in enumerate(missing))
        return concat_features([self._memo[t] for t in texts])


def evaluate(case: ForgetCase, cache: FeatureCache, generic: Any) -> tuple[CaseResult, dict[str, np.ndarray], Any]:
    """Fit ``case`` as a registration does and score its probes at the default threshold."""
    from sklearn.metrics import roc_auc_score

    from oblivio.detector import fit_forget_set
    from oblivio.detector.attributes import pair_floors, prompt_digests

    started = time.perf_counter()
    scorer = fit_forget_set(cache.extractor, list(case.texts), name="case", subjects=list(case.subjects))
    fit_seconds = time.perf_counter() - started

    def score(texts: tuple[str, ...]) -> np.ndarray:
        """As the server's DetectorBank scores (its spelling variants aside)."""
        mentioned = [prompt_digests([t], cache.extractor.secret(), cache.extractor.is_common_word) for t in texts]
        floors = pair_floors(mentioned, scorer.pair_digests)
        return np.maximum(scorer.score_features(cache.features(texts), generic), floors)

    pos = score(case.positives)
    near = {group: score(texts) for group, texts in case.near.items()}
    far = score(case.far)
    near_all = np.concatenate(list(near.values()))
    near_texts = [t for texts in case.near.values() for t in texts]
    ones = np.ones(len(pos))
    result = CaseResult(
        label=case.label,
        subjects=case.subjects,
        n_fit_texts=len(case.texts),
        fit_seconds=fit_seconds,
        catch=float((pos >= THRESHOLD).mean()),
        near_false_fire={group: float((s >= THRESHOLD).mean()) for group, s in near.items()},
        far_false_fire=float((far >= THRESHOLD).mean()),
        near_auroc=float(roc_auc_score(np.r_[ones, np.zeros(len(near_all))], np.r_[pos, near_all])),
        far_auroc=float(roc_auc_score(np.r_[ones, np.zeros(len(far))], np.r_[pos, far])),
        tpr_at_5pct_near_fpr=tpr_at_fpr(np.r_[ones, np.zeros(len(near_all))], np.r_[pos, near_all]),
        reported_near_false_fire=float(scorer.diagnostics.get("crossfit_near_fpr_at_0.5", float("nan"))),
        missed=tuple(t for t, s in zip(case.positives, pos) if s < THRESHOLD),
        near_fires=tuple(t for t, s in zip(near_texts, near_all) if s >= THRESHOLD),
        far_fires=tuple(t for t, s in zip(case.far, far) if s >= THRESHOLD),
    )
    return result, {"forget": pos, "near": near_all, "far": far}, scorer


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _plots(out: Path, result: CaseResult, scores: dict[str, np.ndarray]) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    pos = scores["forget"]
    roc_png, hist_png = f"roc_{_slug(result.label)}.png", f"scores_{_slug(result.label)}.png"
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    for label, neg, auc in (("near: same kind, other entities", scores["near"], result.near_auroc), ("far: world facts, real authors", scores["far"], result.far_auroc)):
        fpr, tpr, _ = roc_curve(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
        ax.plot(fpr, tpr, label=f"{label} (AUROC {auc:.4f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("false positive rate (log above 1%)")
    ax.set_ylabel("held-out forget prompts caught")
    ax.set_title(f"{result.label}: {len(pos)} held-out prompts", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / roc_png)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
    bins = np.linspace(0, 1, 41).tolist()
    for label, key in (("forget, held out", "forget"), ("near", "near"), ("far", "far")):
        ax.hist(scores[key], bins=bins, alpha=0.55, label=f"{label} ({len(scores[key])})", density=True)
    ax.axvline(THRESHOLD, color="red", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("membership probability (gate threshold 0.5 dashed)")
    ax.set_title(result.label, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / hist_png)
    plt.close(fig)
    return roc_png, hist_png


def run(extractor: Any, out: Path, cases: list[ForgetCase]) -> tuple[list[CaseResult], list[tuple[str, str]], dict[str, Any]]:
    """Evaluate ``cases``; writes PNGs into ``out``. Also returns each case's fitted scorer."""
    from oblivio.detector.scorer import generic_bank

    out.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(extractor)
    generic = generic_bank(extractor)
    results, plots, scorers = [], [], {}
    for i, case in enumerate(cases, 1):
        LOG.info("[%d/%d] registering %s (%d texts) as a user does", i, len(cases), case.label, len(case.texts))
        result, scores, scorers[case.label] = evaluate(case, cache, generic)
        LOG.info("%s: catch %.3f, near false fire %s, far %.4f, near AUROC %.4f, fit %.0f s", result.label, result.catch,
                 result.near_false_fire, result.far_false_fire, result.near_auroc, result.fit_seconds)
        results.append(result)
        plots.append(_plots(out, result, scores))
    return results, plots, scorers


def render(
    results: list[CaseResult], plots: list[tuple[str, str]], cost: "Cost | None", privacy: str | None, command: str, elapsed: float
) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    def mark(ok: bool) -> str:
        return "" if ok else " ✗"

    lines = [
        "# Detector on real data",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min). Machine: {describe_machine()}.",
        "",
        "Every set registered from question/answer pairs exactly as `oblivio forget register` does (with",
        "`--subject` names where the label says so), default settings, decisions at the gate's default threshold",
        "0.5; nothing tuned on these probes. Held-out prompts are other wordings than the registered ones. ✗ = goal",
        "missed. Near false fire per probe group in the order of the `near` column's groups.",
        "",
        "| forget set | fit texts | fit | caught (≥ 95%) | near false fire (≤ 2%) | far false fire (≤ 0.5%) | near AUROC (≥ 0.99) | TPR @ 5% near FPR | far AUROC | near false fire the fit reported |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        g = r.goals_met()
        near = " / ".join(f"{pct(v)} {k}" for k, v in r.near_false_fire.items())
        lines.append(
            f"| {r.label} | {r.n_fit_texts} | {r.fit_seconds:.0f} s | {pct(r.catch)}{mark(g['catch'])} | {near}{mark(g['near_false_fire'])} | "
            f"{pct(r.far_false_fire)}{mark(g['far_false_fire'])} | {r.near_auroc:.4f}{mark(g['near_auroc'])} | "
            f"{r.tpr_at_5pct_near_fpr:.3f} | {r.far_auroc:.4f} | {pct(r.reported_near_false_fire)} |"
        )
    if cost is not None:
        lines += ["", "## Cost", "", cost.render()]
    if privacy is not None:
        lines += ["", "## Privacy: the inversion attack on a stored set", "", privacy]
    lines += ["", "## Plots", ""]
    lines += [f"- {r.label}: [ROC]({roc}), [score histogram]({hist})" for r, (roc, hist) in zip(results, plots)]
    lines += ["", "## Misses and false fires (first 10 each)", ""]
    for r in results:
        lines.append(f"### {r.label}")
        if r.subjects:
            lines.append(f"- subjects given: {', '.join(r.subjects)}")
        for title, items in (("missed", r.missed), ("near false fires", r.near_fires), ("far false fires", r.far_fires)):
            lines.append(f"- {title} ({len(items)}): " + ("; ".join(f"“{t}”" for t in items[:10]) or "none"))
        lines.append("")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Cost:
    """Detector latency for one prompt with 1..20 sets of the largest registered size, against
    one greedy 32-token generation by the configured backend (vLLM by default)."""

    set_label: str
    threads: int
    rows: list[tuple[str, int, float, float]]
    generation_median: float
    generation_min: float
    backend: str

    @classmethod
    def measure(cls, config: Any, extractor: Any, results: list[CaseResult], scorers: dict[str, Any]) -> "Cost":
        import torch

        from oblivio.eval.detector_cost import detector_cost, vllm_generation_seconds

        largest = max(results, key=lambda r: r.n_fit_texts).label
        LOG.info("cost: scoring with 1..20 sets the size of %s", largest)
        rows = detector_cost(extractor, scorers[largest], largest)
        LOG.info("cost: one 32-token generation by the %s backend", config.engine.backend)
        med, low = vllm_generation_seconds(config)
        return cls(largest, torch.get_num_threads(), rows, med, low, config.engine.backend)

    def render(self) -> str:
        lines = [
            f"One prompt scored against n sets the size of *{self.set_label}* ({self.threads} torch thread(s), the",
            f"server's `detector.threads`), against one greedy 32-token generation by the {self.backend} backend:",
            f"{self.generation_median * 1000:.0f} ms median ({self.generation_min * 1000:.0f} ms min). Goal: 20 forget10-sized sets ≤ 20%.",
            "",
            "| sets | median | min | min ÷ generation min |",
            "|---|---|---|---|",
        ]
        for label, n, med, low in self.rows:
            lines.append(f"| {n} ({label}) | {med * 1000:.0f} ms | {low * 1000:.0f} ms | {100 * low / self.generation_min:.0f}% |")
        return "\n".join(lines)


def _privacy(extractor: Any, cases: list[ForgetCase], scorers: dict[str, Any]) -> str | None:
    """The inversion attack on the first set registered with its subjects' names."""
    from oblivio.eval.detector_inversion import inversion_attack, render_inversion

    named = [c for c in cases if c.subjects]
    if not named:
        return None
    LOG.info("privacy: inversion attack on the stored banks of %s", named[0].label)
    return render_inversion(named[0].label, inversion_attack(extractor, scorers[named[0].label], named[0].texts, named[0].subjects))


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", type=Path, default=None, help="oblivio config (model path, detector layers)")
    parser.add_argument("--model", default=None, help="override the model path")
    parser.add_argument("--splits", default="forget01,forget05,forget10", help="comma-separated TOFU forget splits")
    parser.add_argument("--subjects", choices=("both", "names", "texts"), default="both",
                        help="register TOFU with the authors' names as subjects, the texts only, or both (default)")
    parser.add_argument("--skip-countries", action="store_true", help="skip the non-person set (20 countries)")
    parser.add_argument("--skip-cost", action="store_true", help="skip the cost table (it starts a vLLM engine)")
    parser.add_argument("--skip-privacy", action="store_true", help="skip the inversion attack on the first set registered with names")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's detector.threads)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser


def cases_from_args(args: argparse.Namespace) -> list[ForgetCase]:
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    modes = {"both": (True, False), "names": (True,), "texts": (False,)}[args.subjects]
    cases = [tofu_case(split, with_subjects) for with_subjects in modes for split in splits]
    return cases + ([] if args.skip_countries else [countries_case()])


def main_from_args(args: argparse.Namespace, command: str) -> Path:
    import torch

    from oblivio.detector import FeatureExtractor
    from oblivio.gateway.config import load_config

    config = load_config(args.config, {"model.path": args.model})
    torch.set_num_threads(args.threads or config.detector.threads)
    started = time.time()
    extractor = FeatureExtractor.from_pretrained(
        config.model_path, layers=config.detector.layers, max_prompt_tokens=config.detector.max_prompt_tokens
    )
    cases = cases_from_args(args)
    results, plots, scorers = run(extractor, args.out, cases)
    cost = None if args.skip_cost else Cost.measure(config, extractor, results, scorers)
    privacy = None if args.skip_privacy else _privacy(extractor, cases, scorers)
    elapsed = time.time() - started
    payload = {"cases": [{**asdict(r), "goals_met": r.goals_met()} for r in results], "cost": None if cost is None else asdict(cost)}
    (args.out / "results.json").write_text(json.dumps(payload, indent=2))
    report = args.out / "report.md"
    report.write_text(render(results, plots, cost, privacy, command, elapsed))
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)
    command = "python -m oblivio.eval.detector_real " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(main_from_args(args, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
