"""Calibration report: pick a forget set's threshold from operator-labelled probe prompts.

Why: the detector's scores are calibrated membership probabilities, but "0.5" is not the right
threshold for every set. An operator writes a handful of prompts that *should* be forgotten and
some that *should not* (near misses are the valuable ones), and this module shows what each
threshold would do: the ROC curve, the score histograms of both groups, and the threshold that
reaches a target catch rate (TPR) or stays within a target false-positive rate. The output is
PNG plots plus a JSON summary a person (or a CI job) can read; optionally the suggested
threshold is applied to the live policy as a new version.

Thresholds use the gate's own rule, ``score >= threshold`` matches, and every reported rate is
recomputed from the scores at the final threshold, so the numbers are exactly what the gate
would do with these prompts.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from oblivio.gateway.errors import InvalidArgument
from oblivio.gateway.input_files import json_lines, read_utf8_text

TargetKind = Literal["catch_rate", "fpr"]
Scorer = Callable[[Sequence[str]], Sequence[float]]

_TRUE = {"1", "true", "yes", "y", "forget", "t"}
_FALSE = {"0", "false", "no", "n", "keep", "retain", "f"}


class CalibrationError(InvalidArgument):
    """The probes or the target cannot produce a report; the message says what to fix."""


@dataclass(frozen=True)
class Probe:
    prompt: str
    forget: bool  # True = this prompt is about the forget set and should be caught


@dataclass(frozen=True)
class CalibrationTarget:
    """Either a catch rate to reach (smallest-FPR threshold) or an FPR not to exceed."""

    kind: TargetKind = "catch_rate"
    value: float = 0.95

    def __post_init__(self) -> None:
        if self.kind not in ("catch_rate", "fpr"):
            raise CalibrationError(f"target kind must be catch_rate or fpr (got {self.kind!r})")
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise CalibrationError(f"target value must be a number (got {self.value!r})")
        low_ok = self.value > 0 if self.kind == "catch_rate" else self.value >= 0
        if not (low_ok and self.value <= 1):
            bounds = "(0, 1]" if self.kind == "catch_rate" else "[0, 1]"
            raise CalibrationError(f"target {self.kind} must be in {bounds} (got {self.value})")


@dataclass
class CalibrationReport:
    forget_set: str
    target: CalibrationTarget
    positives: int
    negatives: int
    roc_auc: float
    suggested_threshold: float
    catch_rate: float  # TPR at the suggested threshold
    false_positive_rate: float  # FPR at the suggested threshold
    current_threshold: float | None = None
    current_catch_rate: float | None = None
    current_false_positive_rate: float | None = None
    roc_fpr: list[float] = field(default_factory=list)
    roc_tpr: list[float] = field(default_factory=list)
    roc_thresholds: list[float] = field(default_factory=list)
    positive_scores: list[float] = field(default_factory=list)
    negative_scores: list[float] = field(default_factory=list)
    plot_paths: list[Path] = field(default_factory=list)
    summary_json_path: Path | None = None
    applied_policy_version: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["plot_paths"] = [str(p) for p in self.plot_paths]
        data["summary_json_path"] = str(self.summary_json_path) if self.summary_json_path else None
        return data


# ---- probe files --------------------------------------------------------------------------
def _parse_label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CalibrationError(f"{where}: label must be true/false (or 1/0, forget/keep), got {value!r}")


def load_probes(path: Path) -> list[Probe]:
    """Read labelled probes: JSONL ``{"prompt": ..., "forget": true|false}`` or CSV ``prompt,label``.

    The format is chosen by extension (``.jsonl``/``.json`` vs ``.csv``). A CSV may have a
    header row ``prompt,label`` (or ``prompt,forget``).
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"probe file not found: {path}")
    suffix = path.suffix.lower()
    probes: list[Probe] = []
    if suffix in (".jsonl", ".json", ".ndjson"):
        for where, item in json_lines(path, CalibrationError):
            if not isinstance(item, dict) or "prompt" not in item or "forget" not in item:
                raise CalibrationError(f'{where}: expected {{"prompt": ..., "forget": true|false}}')
            probes.append(Probe(_prompt(item["prompt"], where), _parse_label(item["forget"], where)))
    elif suffix == ".csv":
        rows = list(csv.reader(io.StringIO(read_utf8_text(path), newline="")))
        if rows and [c.strip().lower() for c in rows[0][:2]] in (["prompt", "label"], ["prompt", "forget"]):
            rows = rows[1:]
        for number, row in enumerate(rows, start=1):
            if not row or not any(cell.strip() for cell in row):
                continue
            where = f"{path.name} row {number}"
            if len(row) < 2:
                raise CalibrationError(f"{where}: expected two columns: prompt,label")
            probes.append(Probe(_prompt(row[0], where), _parse_label(row[1], where)))
    else:
        raise CalibrationError(f"probe file {path} must end in .jsonl or .csv")
    if not probes:
        raise CalibrationError(f"probe file {path} contains no probes")
    return probes


def _prompt(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CalibrationError(f"{where}: prompt must be a non-empty string")
    return value


# ---- the report ---------------------------------------------------------------------------
def _rates(pos: np.ndarray, neg: np.ndarray, threshold: float) -> tuple[float, float]:
    return float(np.mean(pos >= threshold)), float(np.mean(neg >= threshold))


def suggest_threshold(
    labels: Sequence[bool], scores: Sequence[float] | np.ndarray, target: CalibrationTarget
) -> float:
    """The gate threshold meeting ``target`` on these scores, in [0, 1].

    catch_rate: the operating point with the fewest false positives whose TPR reaches the target.
    fpr: the operating point with the most catches whose FPR stays within the target (and, among
    equal catch rates, the fewest false positives).

    Every threshold strictly between the chosen score and the next lower score gives the same
    rates on the probes; the midpoint is returned (largest margin on both sides), so a prompt
    scoring a hair differently from a probe does not flip the decision.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(np.asarray(labels, dtype=int), np.asarray(scores), drop_intermediate=False)
    if target.kind == "catch_rate":
        index = int(np.argmax(tpr >= target.value - 1e-12))
    else:
        within = np.nonzero(fpr <= target.value + 1e-12)[0]
        best = tpr[within].max()
        index = int(within[np.argmax(tpr[within] >= best)])
    upper = float(min(thresholds[index], 1.0))
    if index + 1 < len(thresholds):
        lower = float(thresholds[index + 1])
        if lower < upper:
            upper = (upper + lower) / 2.0
    return float(min(max(upper, 0.0), 1.0))


def calibrate(
    forget_set: str,
    probes: Sequence[Probe],
    *,
    out_dir: Path,
    scores: Sequence[float] | None = None,
    scorer: Scorer | None = None,
    target: CalibrationTarget = CalibrationTarget(),
    current_threshold: float | None = None,
) -> CalibrationReport:
    """Score the probes (or take precomputed ``scores``), then write plots + JSON to ``out_dir``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if not probes:
        raise CalibrationError("no probes given")
    if (scores is None) == (scorer is None):
        raise CalibrationError("give exactly one of scores= or scorer=")
    labels = [p.forget for p in probes]
    n_pos, n_neg = sum(labels), len(labels) - sum(labels)
    if n_pos == 0 or n_neg == 0:
        raise CalibrationError(
            f"need at least one probe that should be forgotten and one that should not "
            f"(got {n_pos} and {n_neg})"
        )
    values = list(scores) if scores is not None else list(scorer([p.prompt for p in probes]))  # type: ignore[misc]
    if len(values) != len(probes):
        raise CalibrationError(f"got {len(values)} scores for {len(probes)} probes")
    array = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(array)):
        raise CalibrationError("scores must be finite numbers (the detector returned NaN/inf)")
    y = np.asarray(labels, dtype=int)
    pos, neg = array[y == 1], array[y == 0]

    threshold = suggest_threshold(labels, array, target)
    catch, false_pos = _rates(pos, neg, threshold)
    fpr, tpr, thresholds = roc_curve(y, array, drop_intermediate=False)
    report = CalibrationReport(
        forget_set=forget_set,
        target=target,
        positives=n_pos,
        negatives=n_neg,
        roc_auc=float(roc_auc_score(y, array)),
        suggested_threshold=threshold,
        catch_rate=catch,
        false_positive_rate=false_pos,
        roc_fpr=fpr.tolist(),
        roc_tpr=tpr.tolist(),
        roc_thresholds=[min(float(t), 1.0) for t in thresholds],  # roc_curve's first is +inf
        positive_scores=pos.tolist(),
        negative_scores=neg.tolist(),
    )
    if current_threshold is not None:
        report.current_threshold = float(current_threshold)
        report.current_catch_rate, report.current_false_positive_rate = _rates(pos, neg, current_threshold)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.plot_paths = [_plot_roc(report, out_dir), _plot_histograms(report, out_dir)]
    report.summary_json_path = out_dir / f"{_safe(forget_set)}_calibration.json"
    write_summary(report)
    return report


def write_summary(report: CalibrationReport) -> None:
    """(Re)write the JSON summary atomically, e.g. after the threshold was applied."""
    assert report.summary_json_path is not None
    path = report.summary_json_path
    fd, tmp = tempfile.mkstemp(prefix=".calibration.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(report.to_json(), handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "forget_set"


def _figure():
    # A bare Figure (not pyplot) renders through Agg without touching the global backend or
    # pyplot's figure registry: safe from a server's worker threads and headless machines.
    from matplotlib.figure import Figure

    return Figure(figsize=(6.4, 4.8), dpi=100)


def _plot_roc(report: CalibrationReport, out_dir: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(report.roc_fpr, report.roc_tpr, color="tab:blue", lw=2, label=f"ROC (AUC = {report.roc_auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    ax.scatter(
        [report.false_positive_rate], [report.catch_rate], color="tab:red", zorder=3,
        label=f"suggested threshold {report.suggested_threshold:.3f}",
    )
    if report.current_threshold is not None:
        ax.scatter(
            [report.current_false_positive_rate], [report.current_catch_rate], color="tab:green",
            marker="s", zorder=3, label=f"current threshold {report.current_threshold:.3f}",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-positive rate (kept prompts caught)")
    ax.set_ylabel("catch rate (forget prompts caught)")
    ax.set_title(f"ROC: forget set '{report.forget_set}' ({report.positives}+/{report.negatives}-)")
    ax.legend(loc="lower right")
    path = out_dir / f"{_safe(report.forget_set)}_roc.png"
    fig.savefig(path)
    return path


def _plot_histograms(report: CalibrationReport, out_dir: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 21)
    ax.hist(report.negative_scores, bins=bins, alpha=0.6, color="tab:green", label=f"should keep ({report.negatives})")
    ax.hist(report.positive_scores, bins=bins, alpha=0.6, color="tab:red", label=f"should forget ({report.positives})")
    ax.axvline(report.suggested_threshold, color="black", ls="--", label=f"suggested {report.suggested_threshold:.3f}")
    if report.current_threshold is not None:
        ax.axvline(report.current_threshold, color="tab:blue", ls=":", label=f"current {report.current_threshold:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("detector score")
    ax.set_ylabel("probes")
    ax.set_title(f"Scores by label: forget set '{report.forget_set}'")
    ax.legend(loc="best")
    path = out_dir / f"{_safe(report.forget_set)}_score_histograms.png"
    fig.savefig(path)
    return path


def apply_suggested_threshold(report: CalibrationReport, store: Any) -> int:
    """Set the set's threshold in the live policy (a new version); returns that version.

    Validation (e.g. an existing refusal_threshold below the new threshold) raises the store's
    PolicyValidationError unchanged: the operator must decide, not this function.
    """
    policy = store.update(report.forget_set, {"threshold": report.suggested_threshold})
    report.applied_policy_version = policy.version
    if report.summary_json_path is not None:
        write_summary(report)
    return policy.version


__all__ = [
    "CalibrationError",
    "CalibrationReport",
    "CalibrationTarget",
    "Probe",
    "apply_suggested_threshold",
    "calibrate",
    "load_probes",
    "suggest_threshold",
]
