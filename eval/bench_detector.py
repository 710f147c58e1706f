"""Detector benchmark: quality on held-out paraphrases, privacy trade-off, and cost.

Run: ``oblivio eval detector-generated [--quick]`` or ``python -m oblivio.eval.bench_detector [--quick]``.

What it measures (issue 4's goals):

* Quality, per forget split (1, 5, 10% of the people of a TOFU-like data set, see
  ``entity_data``): positives = the forget people's questions in *paraphrase templates never seen
  at fit time*; near negatives = the same paraphrase templates about other people; far negatives =
  general chat prompts. AUROC and TPR at <= 5% FPR for our detector and for the plain baseline
  (mean-pooled hidden states, 1-nearest-neighbour cosine; its best layer, chosen on the test data,
  which favours the baseline). One ROC plot (PNG) per case.
* Privacy: AUROC with the stored-state protection (random projection to 128 dims + int8) vs
  without (full 576-d float features), and an inversion attack on stored token vectors
  (nearest input embedding, and nearest context-free token hidden state) with and without it.
* Cost: scoring latency of one prompt with 1..20 sets registered vs one greedy 32-token
  generation of the base model (transformers) on the same machine and thread count.

Writes ``eval/reports/detector/report.md`` and PNGs beside it.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oblivio.eval.machine import describe_machine

LOG = logging.getLogger("oblivio.eval.bench_detector")
DEFAULT_OUT = Path(__file__).resolve().parent / "reports" / "detector"


@dataclass
class CaseResult:
    split: str
    kind: str  # near | far
    n_pos: int
    n_neg: int
    ours_auroc: float
    ours_tpr5: float
    base_auroc: float
    base_tpr5: float
    base_layer: int
    ours_tpr_at_half: float
    ours_fpr_at_half: float
    plot: str


def tpr_at_fpr(y: np.ndarray, s: np.ndarray, max_fpr: float = 0.05) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    ok = fpr <= max_fpr
    return float(tpr[ok].max()) if ok.any() else 0.0


def _pool(raw: dict[int, np.ndarray], offsets: np.ndarray) -> dict[int, np.ndarray]:
    lengths = np.diff(offsets)
    return {l: np.add.reduceat(x, offsets[:-1], axis=0) / lengths[:, None] for l, x in raw.items()}


def _cos_1nn(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    return (q @ b.T).max(axis=1)


def _plot(path: Path, title: str, y: np.ndarray, curves: dict[str, np.ndarray]) -> None:
    import matplotlib

    from sklearn.metrics import roc_auc_score, roc_curve

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    for label, s in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{label} (AUROC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.axvline(0.05, color="red", lw=0.6, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _timings(fn, repeats: int) -> tuple[float, float]:
    """(median, min) wall time of ``fn``; min is the least disturbed by other jobs."""
    fn()  # warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def run(args: argparse.Namespace) -> Path:
    import torch
    from sklearn.metrics import roc_auc_score

    from oblivio.detector import FeatureExtractor, fit_forget_set
    from oblivio.detector.scorer import generic_bank
    from oblivio.eval.entity_data import build_dataset
    from oblivio.gateway.config import load_config

    config = load_config(args.config, {"model.path": args.model})
    threads = args.threads or config.detector.threads
    torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    n_people = 60 if quick else 200
    percents = (5,) if quick else (1, 5, 10)
    n_near = 150 if quick else 400
    rng = np.random.default_rng(args.seed)
    t_start = time.time()

    data = build_dataset(seed=args.seed, n_people=n_people)
    extractor = FeatureExtractor.from_pretrained(
        config.model_path, layers=config.detector.layers, max_prompt_tokens=config.detector.max_prompt_tokens
    )
    extractor.background()
    generic = generic_bank(extractor)
    far = [g.prompt for g in data.general]
    results: list[CaseResult] = []
    fit_times: dict[str, float] = {}
    scorers = {}
    diagnostics = {}

    # Splits are nested (forget01 in forget05 in forget10), so one near-negative sample from the
    # people outside the largest split serves every case, and one forward covers all probes.
    largest = data.forget_split(max(percents))
    outside = data.retain_ids(largest)
    near_pool = [q.question for q in data.items(outside, paraphrase=True)]
    near = [near_pool[i] for i in rng.choice(len(near_pool), min(n_near, len(near_pool)), replace=False)]
    pos_all = data.items(largest, paraphrase=True)
    probe_texts = [q.question for q in pos_all] + near + far
    LOG.info("extracting %d probes", len(probe_texts))
    probe_feats, probe_raw = extractor.extract_with_raw(probe_texts)
    probe_pooled = _pool(probe_raw, probe_feats.offsets)
    fit_all = data.items(largest, paraphrase=False)
    fit_feats, fit_raw_all = extractor.extract_with_raw([q.text for q in fit_all])
    fit_pooled_all = _pool(fit_raw_all, fit_feats.offsets)
    n_pos_all, n_near_total = len(pos_all), len(near)

    variants = [(p, False) for p in percents] + [(percents[0], True)]
    for pct, with_subjects in variants:
        split = f"forget{pct:02d}" + ("+subjects" if with_subjects else "")
        forget = set(data.forget_split(pct))
        fit_rows = [i for i, q in enumerate(fit_all) if q.person_id in forget]
        fit_texts = [fit_all[i].text for i in fit_rows]
        pos_rows = [i for i, q in enumerate(pos_all) if q.person_id in forget]
        neg_near = list(range(n_pos_all, n_pos_all + n_near_total))
        neg_far = list(range(n_pos_all + n_near_total, len(probe_texts)))
        LOG.info("%s: %d people, %d fit texts, %d/%d/%d probes", split, len(forget), len(fit_texts), len(pos_rows), len(neg_near), len(neg_far))
        t = time.perf_counter()
        scorer = fit_forget_set(extractor, fit_texts, name=split.replace("+", "-"), subjects=data.names(sorted(forget)) if with_subjects else ())
        fit_times[split] = time.perf_counter() - t
        scorers[split] = scorer
        diagnostics[split] = scorer.diagnostics
        ours_all = scorer.score_features(probe_feats, generic)
        # plain baseline: raw mean-pooled hidden states, 1-NN cosine to the fit texts
        base_all = {l: _cos_1nn(probe_pooled[l], fit_pooled_all[l][fit_rows]) for l in extractor.layers}
        for kind, neg_rows in (("near", neg_near), ("far", neg_far)):
            rows = pos_rows + neg_rows
            y = np.r_[np.ones(len(pos_rows)), np.zeros(len(neg_rows))]
            s_ours = ours_all[rows]
            base_auc = {l: roc_auc_score(y, b[rows]) for l, b in base_all.items()}
            best = max(base_auc, key=lambda layer: base_auc[layer])
            s_base = base_all[best][rows]
            n1 = len(pos_rows)
            png = out / f"roc_{split.replace('+', '_')}_{kind}.png"
            _plot(png, f"{split}, {kind} negatives ({n1} pos / {len(neg_rows)} neg)", y,
                  {"oblivio detector": s_ours, f"baseline: pooled 1-NN cos, layer {best}": s_base})
            results.append(
                CaseResult(split, kind, n1, len(neg_rows), float(roc_auc_score(y, s_ours)), tpr_at_fpr(y, s_ours),
                           float(base_auc[best]), tpr_at_fpr(y, s_base), best,
                           float((s_ours[:n1] >= 0.5).mean()), float((s_ours[n1:] >= 0.5).mean()), png.name)
            )
            LOG.info("%s %s: ours AUROC %.4f TPR@5%% %.3f | baseline AUROC %.4f TPR@5%% %.3f", split, kind,
                     results[-1].ours_auroc, results[-1].ours_tpr5, results[-1].base_auroc, results[-1].base_tpr5)

    privacy_rows: list[tuple[str, ...]] = []
    if not args.skip_privacy:
        mid = 5 if 5 in percents else percents[0]
        privacy_rows = _privacy(data, extractor, mid, results, probe_feats, probe_raw, pos_all, n_near_total,
                                fit_all, fit_feats, fit_raw_all, rng, quick)

    cost_rows, gen_time = _cost(config, extractor, scorers, quick)

    report = _write_report(out, args, results, fit_times, diagnostics, privacy_rows, cost_rows, gen_time, threads,
                           time.time() - t_start)
    return report


def _privacy(data, extractor, pct, results, probe_feats, probe_raw, pos_all, n_near, fit_all, fit_feats, fit_raw,
             rng, quick) -> list[tuple[str, ...]]:
    """AUROC with vs without the stored-state protection, and the inversion attack."""
    from sklearn.metrics import roc_auc_score

    from oblivio.detector import fit_forget_set
    from oblivio.detector.privacy import dequantize_rows, inversion_recovery_rate, quantize_rows
    from oblivio.detector.scorer import generic_bank
    from oblivio.eval.detector_inversion import context_free_candidates

    split = f"forget{pct:02d}"
    forget = set(data.forget_split(pct))
    rows: list[tuple[str, ...]] = []
    for r in results:
        if r.split == split:
            rows.append(("auroc", "protected (128-d random projection + int8)", r.kind, f"{r.ours_auroc:.4f}", f"{r.ours_tpr5:.3f}"))
    # Unprotected: full-width standardised features (no projection); int8 stays (it is < 1% on cosines).
    LOG.info("privacy: fitting %s in the unprotected space", split)
    open_ext = extractor.with_projection(None)
    fit_texts = [q.text for q in fit_all if q.person_id in forget]
    scorer = fit_forget_set(open_ext, fit_texts, name="unprotected")
    s = scorer.score_features(open_ext.features_from_raw(probe_raw, probe_feats.offsets), generic_bank(open_ext))
    pos_rows = [i for i, q in enumerate(pos_all) if q.person_id in forget]  # probe rows: positives first
    n_pos_all = len(pos_all)
    near_rows = list(range(n_pos_all, n_pos_all + n_near))
    far_rows = list(range(n_pos_all + n_near, probe_feats.n_prompts))
    for kind, neg in (("near", near_rows), ("far", far_rows)):
        y = np.r_[np.ones(len(pos_rows)), np.zeros(len(neg))]
        sc = s[pos_rows + neg]
        rows.append(("auroc", "unprotected (576-d, no projection)", kind, f"{roc_auc_score(y, sc):.4f}", f"{tpr_at_fpr(y, sc):.3f}"))
    # Inversion: stored token vectors (with their true ids, known only to the benchmark) vs an
    # attacker who knows the model and the projection and searches candidate tokens.
    fit_rows = [i for i, q in enumerate(fit_all) if q.person_id in forget]
    feats = fit_feats.subset(fit_rows)
    ids = feats.token_ids
    tok_rows = fit_feats.row_indices(fit_rows)
    raw = {l: fit_raw[l][tok_rows] for l in extractor.layers}
    vocab = extractor.model.embed_tokens.weight.detach().float().numpy()
    # context-free token states: each candidate token alone in a user turn
    cand_ids, cand_states = context_free_candidates(extractor, ids, 500 if quick else 2000, rng)
    LOG.info("privacy: inversion attack, %d candidate tokens", len(cand_ids))
    guess_ext = extractor.with_projection(extractor.projection_dim, extractor.projection_seed + 1)
    for l in extractor.layers:
        stored_protected = dequantize_rows(quantize_rows(feats.tokens[l]))
        emb_prot = extractor.to_space(l, vocab[cand_ids])
        ctx_prot = extractor.to_space(l, cand_states[l])
        ctx_guess = guess_ext.to_space(l, cand_states[l])
        rows.append(("inversion", f"layer {l}",
                     f"{inversion_recovery_rate(raw[l], ids, vocab[cand_ids], cand_ids):.3f}",
                     f"{inversion_recovery_rate(stored_protected, ids, emb_prot, cand_ids):.3f}",
                     f"{inversion_recovery_rate(raw[l], ids, cand_states[l], cand_ids):.3f}",
                     f"{inversion_recovery_rate(stored_protected, ids, ctx_prot, cand_ids):.3f}",
                     f"{inversion_recovery_rate(stored_protected, ids, ctx_guess, cand_ids):.3f}",
                     str(len(cand_ids))))
    return rows


COST_PROMPT = "Which town is Felix Ashavale originally from, and what did he write?"


def scoring_latency(extractor, templates: dict, repeats: int, counts: tuple[int, ...] = (1, 2, 5, 10, 20)) -> list[tuple[str, int, float, float]]:  # type: ignore[no-untyped-def]
    """(template, sets registered, median s, min s) of scoring one prompt; row 0 = features only.

    Each template scorer is registered ``n`` times: scoring cost depends on a set's size, not its
    content, so copies measure what ``n`` real sets of that size would cost.
    """
    from oblivio.detector import DetectorBank

    prompt = [COST_PROMPT]
    rows: list[tuple[str, int, float, float]] = [("-", 0, *_timings(lambda: extractor.extract(prompt), repeats))]
    for key, template in templates.items():
        bank = DetectorBank(extractor)
        for n in counts:
            while len(bank.names()) < n:
                bank.add(f"set{len(bank.names())}", template)
            rows.append((key, n, *_timings(lambda: bank.score(prompt), repeats)))
    return rows


def _cost(config, extractor, scorers, quick) -> tuple[list[tuple[str, int, float, float]], tuple[float, float]]:
    """Latency of scoring one prompt vs number of registered sets, and one 32-token generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

    LOG.info("cost: scoring latency vs registered sets, and one 32-token generation")
    sizes = [k for k in ("forget01", "forget05") if k in scorers] or [next(iter(scorers))]
    rows = scoring_latency(extractor, {key: scorers[key] for key in sizes}, 5 if quick else 11)
    tok = AutoTokenizer.from_pretrained(config.model_path)
    model = AutoModelForCausalLM.from_pretrained(config.model_path, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": COST_PROMPT}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert isinstance(ids, BatchEncoding)  # what return_dict=True returns; typed as every possible result

    def generate() -> None:
        with torch.inference_mode():
            model.generate(**ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)

    gen = _timings(generate, 3)
    return rows, gen


def _write_report(out, args, results, fit_times, diagnostics, privacy_rows, cost_rows, gen_time, threads, elapsed) -> Path:
    import torch

    lines = ["# Detector benchmark", ""]
    lines.append(f"- command: `{' '.join(shlex.quote(a) for a in args.argv)}`")
    lines.append(f"- machine: {describe_machine()}, torch {torch.__version__}, {threads} torch thread(s); "
                 "the machine was shared with other jobs while this ran (timings are noisy)")
    lines.append(f"- data: entity_data seed {args.seed}, {'quick' if args.quick else 'full'} mode; wall time {elapsed / 60:.1f} min")
    lines.append("")
    lines.append("## Quality (held-out paraphrase templates)")
    lines.append("")
    lines.append("| split | negatives | pos/neg | ours AUROC | ours TPR@5%FPR | baseline AUROC | baseline TPR@5%FPR | baseline layer | ours TPR / FPR at p>=0.5 | plot |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lines.append(f"| {r.split} | {r.kind} | {r.n_pos}/{r.n_neg} | {r.ours_auroc:.4f} | {r.ours_tpr5:.3f} | {r.base_auroc:.4f} | "
                     f"{r.base_tpr5:.3f} | {r.base_layer} | {r.ours_tpr_at_half:.3f} / {r.ours_fpr_at_half:.3f} | ![]({r.plot}) |")
    lines.append("")
    near = [r for r in results if r.kind == "near"]
    farr = [r for r in results if r.kind == "far"]
    ok_near = all(r.ours_auroc >= 0.97 and r.ours_tpr5 >= 0.95 for r in near)
    ok_far = all(r.ours_auroc >= 0.995 for r in farr)
    lines.append(f"- goal near AUROC >= 0.97 and TPR >= 95% at <= 5% FPR: **{'met' if ok_near else 'NOT met'}** "
                 f"(min AUROC {min(r.ours_auroc for r in near):.4f}, min TPR {min(r.ours_tpr5 for r in near):.3f})")
    lines.append(f"- goal far AUROC >= 0.995: **{'met' if ok_far else 'NOT met'}** (min {min(r.ours_auroc for r in farr):.4f})")
    lines.append("- the baseline's layer is picked on the test data (its best), which flatters the baseline.")
    lines.append("")
    lines.append("Fit time and cross-fitted diagnostics (out-of-fold scores on the forget texts vs swapped/background texts):")
    lines.append("")
    lines.append("| split | fit time (s) | texts | swapped | tokens | bank rows (forget / swap, per layer) | cross-fit AUROC | cross-fit TPR/FPR at 0.5 |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for split, t in fit_times.items():
        d = diagnostics[split]
        lines.append(f"| {split} | {t:.1f} | {int(d['n_texts'])} | {int(d['n_swapped'])} | {int(d.get('tokens_forget', 0))} | "
                     f"{d.get('bank_rows_forget', 0):.0f} / {d.get('bank_rows_swap', 0):.0f} | {d['crossfit_auroc']:.4f} | "
                     f"{d['crossfit_tpr_at_0.5']:.3f} / {d['crossfit_fpr_at_0.5']:.3f} |")
    lines.append("")
    if privacy_rows:
        lines.append("## Privacy trade-off (forget05, or the quick run's split)")
        lines.append("")
        lines.append("| stored feature space | negatives | AUROC | TPR@5%FPR |")
        lines.append("|---|---|---|---|")
        for row in privacy_rows:
            if row[0] == "auroc":
                lines.append(f"| {row[1]} | {row[2]} | {row[3]} | {row[4]} |")
        lines.append("")
        lines.append("Inversion attack on stored token vectors: share of vectors whose nearest candidate token is the "
                     "true one. Attacker knows the base model and the projection; candidates = every token of the "
                     "forget texts plus random vocabulary (so the attack is easier than a full-vocabulary search).")
        lines.append("")
        lines.append("| layer | input-embedding NN, raw | input-embedding NN, protected | context-free hidden-state NN, raw | context-free hidden-state NN, protected | same, attacker without the projection seed | candidates |")
        lines.append("|---|---|---|---|---|---|---|")
        for row in privacy_rows:
            if row[0] == "inversion":
                lines.append(f"| {' | '.join(row[1:])} |")
        lines.append("")
    lines.append("## Cost")
    lines.append("")
    gen_med, gen_min = gen_time
    lines.append(f"One greedy 32-token generation of the full base model (transformers, same threads): "
                 f"**{gen_med * 1000:.0f} ms** median, {gen_min * 1000:.0f} ms min.")
    lines.append("")
    lines.append("| registered sets (copies of) | n sets | scoring latency, one prompt: median / min (ms) | share of one generation (median / min) |")
    lines.append("|---|---|---|---|")
    for key, n, med, mn in cost_rows:
        label = "none: feature forward only" if n == 0 else key
        lines.append(f"| {label} | {n} | {med * 1000:.1f} / {mn * 1000:.1f} | {med / gen_med:.1%} / {mn / gen_min:.1%} |")
    lines.append("")
    for key in sorted({k for k, n, _, _ in cost_rows if n}):
        by_n = {n: (med, mn) for k, n, med, mn in cost_rows if k == key}
        share = by_n[20][1] / gen_min
        lines.append(f"- {key}-sized sets: goal 20 sets < 20% of one generation: **{'met' if share < 0.2 else 'NOT met'}** "
                     f"({share:.1%} on min timings); growth 1 -> 20 sets: x{by_n[20][1] / by_n[1][1]:.2f} "
                     "(sublinear = well below x20).")
    lines.append("- the sets in the cost rows are same-size copies of the fitted scorer named in the first column; "
                 "scoring cost depends on bank sizes, not on content. The machine was shared: min timings are the "
                 "least disturbed, medians include interference.")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m oblivio.eval.bench_detector", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 people, forget05 only: a few minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: config.detector.threads)")
    parser.add_argument("--skip-privacy", action="store_true", help="skip the privacy trade-off section")
    parser.add_argument("--config", type=Path, default=None, help="TOML config file")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: configured model)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = ["python", "-m", "oblivio.eval.bench_detector", *argv]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
