"""The gate: a pure function from calibrated detector scores to an intervention.

Why a pure function: the decision is the one place where "how aggressively do we forget" is
decided, so it must be testable in isolation (property tests for monotonicity), explainable
(every set gets a verdict with a human-readable reason) and cheap (it runs on every request).
It reads a :class:`GatePolicy` object the caller fetched once from the policy store, so a
request in flight keeps the policy it started with even if an operator changes it meanwhile.

Interventions are totally ordered per forget set::

    none  <  adapter at scale s1  <  adapter at scale s2 (s2 > s1)  <  refusal

and :func:`decide` is monotone in every score: raising any score never yields a weaker
intervention for that set, and never a weaker decision overall (see :func:`at_least_as_strong`).

Score -> scale curve (O3 uses ``sigmoid(zeta * c - 2)``; that curve has no threshold and does
not reach 1, so it cannot be tuned per set). Here, for a matched set (score >= threshold)::

    raw(score) = (sigmoid(k * (score - t)) - sigmoid(0)) / (sigmoid(k * (1 - t)) - sigmoid(0))
    scale      = min_scale + (max_scale - min_scale) * raw(score)

so the scale is exactly ``min_scale`` at the threshold, ``max_scale`` at score 1, and rises
steeply near the threshold for large softness ``k`` (zeta) and almost linearly for small ``k``.
The result is then rounded UP onto the scale grid the backend serves (``scale_grid``): rounding
up never weakens an intervention (it may exceed ``max_scale`` when the grid has no point in between).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

from oblivio.gateway.errors import InvalidArgument
from oblivio.gateway.gate.scale_grid import GRID_TOLERANCE, round_up_to_grid

Mode = Literal["adapter", "refusal", "adapter_then_refusal"]
DetectorErrorPolicy = Literal["fail_closed", "fail_open"]
Action = Literal["none", "adapter", "refusal"]

MODES: tuple[str, ...] = get_args(Mode)
DETECTOR_ERROR_POLICIES: tuple[str, ...] = get_args(DetectorErrorPolicy)

REFUSAL_TEXT = (
    "I'm sorry, but I can't help with that. This topic has been removed from what I can discuss."
)


class PolicyValidationError(InvalidArgument):
    """A policy (or a change to one) is invalid; the message names the field and the rule."""


@dataclass(frozen=True)
class SetPolicy:
    """How one forget set is enforced. Defaults are the global default's defaults."""

    threshold: float = 0.5  # calibrated score at/above which the set "matches"
    softness: float = 10.0  # zeta in the monotone curve from score to scale
    min_scale: float = 0.25
    max_scale: float = 1.0
    mode: Mode = "adapter"
    refusal_threshold: float | None = None  # for adapter_then_refusal

    def validate(self, scale_grid: tuple[float, ...], *, where: str = "policy") -> None:
        """Raise :class:`PolicyValidationError` naming the first broken rule."""
        _check_unit(self.threshold, f"{where}.threshold")
        if not _finite(self.softness) or self.softness <= 0:
            raise PolicyValidationError(f"{where}.softness must be > 0 (got {self.softness!r})")
        if not _finite(self.min_scale) or not _finite(self.max_scale):
            raise PolicyValidationError(f"{where}.min_scale/max_scale must be finite numbers")
        if self.min_scale <= 0:
            raise PolicyValidationError(f"{where}.min_scale must be > 0 (got {self.min_scale!r})")
        if self.min_scale > self.max_scale:
            raise PolicyValidationError(
                f"{where}.min_scale ({self.min_scale}) must be <= max_scale ({self.max_scale})"
            )
        grid_max = max(scale_grid)
        if self.max_scale > grid_max + GRID_TOLERANCE:
            raise PolicyValidationError(
                f"{where}.max_scale ({self.max_scale}) exceeds the largest scale the backend "
                f"serves ({grid_max}); scale grid is {list(scale_grid)}"
            )
        if self.mode not in MODES:
            raise PolicyValidationError(
                f"{where}.mode must be one of {', '.join(MODES)} (got {self.mode!r})"
            )
        if self.refusal_threshold is not None:
            _check_unit(self.refusal_threshold, f"{where}.refusal_threshold")
            if self.refusal_threshold < self.threshold:
                raise PolicyValidationError(
                    f"{where}.refusal_threshold ({self.refusal_threshold}) must be >= "
                    f"threshold ({self.threshold})"
                )
        elif self.mode == "adapter_then_refusal":
            raise PolicyValidationError(
                f"{where}.refusal_threshold is required when mode is adapter_then_refusal"
            )


@dataclass(frozen=True)
class GatePolicy:
    """One immutable, versioned policy. Requests hold on to the object they started with."""

    version: int
    default: SetPolicy
    per_set: Mapping[str, SetPolicy]
    scale_grid: tuple[float, ...]  # scales the vLLM backend serves; chosen scale rounds UP onto it
    on_detector_error: DetectorErrorPolicy = "fail_closed"
    created_at: float = 0.0  # unix time the version was committed (0 = never committed)

    def __post_init__(self) -> None:
        # Freeze the mapping too, so "immutable version" holds for the per-set overrides.
        object.__setattr__(self, "per_set", MappingProxyType(dict(sorted(self.per_set.items()))))
        object.__setattr__(self, "scale_grid", tuple(sorted(set(float(s) for s in self.scale_grid))))

    def for_set(self, name: str) -> SetPolicy:
        """The set's own override, else the global default."""
        return self.per_set.get(name, self.default)

    def validate(self) -> None:
        if not self.scale_grid:
            raise PolicyValidationError("scale_grid must not be empty")
        if any(not _finite(s) or s <= 0 for s in self.scale_grid):
            raise PolicyValidationError(f"scale_grid values must be > 0 (got {list(self.scale_grid)})")
        if self.on_detector_error not in DETECTOR_ERROR_POLICIES:
            raise PolicyValidationError(
                "on_detector_error must be one of "
                f"{', '.join(DETECTOR_ERROR_POLICIES)} (got {self.on_detector_error!r})"
            )
        self.default.validate(self.scale_grid, where="default")
        for name, set_policy in self.per_set.items():
            set_policy.validate(self.scale_grid, where=f"forget set '{name}'")


@dataclass(frozen=True)
class SetVerdict:
    """What the gate decided for one forget set, and why (for explain and responses)."""

    name: str
    score: float
    matched: bool
    scale: float  # adapter scale applied for this set; 0.0 when none (or when refusing)
    reason: str
    action: Action = "none"


@dataclass(frozen=True)
class GateDecision:
    adapters: tuple[tuple[str, float], ...]  # feed to AdapterApplication(adapters=...)
    refuse: bool  # answer with the refusal text, do not generate
    verdicts: tuple[SetVerdict, ...]  # one per scored set, for explain / responses
    policy_version: int

    @property
    def label(self) -> str:
        """Coarse decision for metrics and logs: ``base``, ``adapter`` or ``refusal``."""
        if self.refuse:
            return "refusal"
        return "adapter" if self.adapters else "base"


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_unit(value: float, name: str) -> None:
    if not _finite(value) or not 0.0 <= value <= 1.0:
        raise PolicyValidationError(f"{name} must be a number in [0, 1] (got {value!r})")


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def raw_scale(score: float, policy: SetPolicy) -> float:
    """The continuous scale for a matched score (before grid rounding), in [min, max]."""
    t, k = policy.threshold, policy.softness
    span = _sigmoid(k * (1.0 - t)) - 0.5
    if span <= 0.0:  # threshold at 1.0: only a perfect score matches, and it gets max_scale
        fraction = 1.0
    else:
        fraction = (_sigmoid(k * (min(score, 1.0) - t)) - 0.5) / span
    fraction = min(max(fraction, 0.0), 1.0)
    return policy.min_scale + (policy.max_scale - policy.min_scale) * fraction


def _verdict_for(
    name: str, score: float, policy: SetPolicy, grid: tuple[float, ...], live: bool
) -> SetVerdict:
    t = policy.threshold
    if score < t:
        return SetVerdict(name, score, False, 0.0, f"score {score:.3f} < threshold {t:.3f}: no action")
    if policy.mode == "refusal":
        return SetVerdict(
            name, score, True, 0.0, f"score {score:.3f} >= threshold {t:.3f}; mode refusal", "refusal"
        )
    if (
        policy.mode == "adapter_then_refusal"
        and policy.refusal_threshold is not None
        and score >= policy.refusal_threshold
    ):
        return SetVerdict(
            name,
            score,
            True,
            0.0,
            f"score {score:.3f} >= refusal threshold {policy.refusal_threshold:.3f}: refusal",
            "refusal",
        )
    if not live:
        return SetVerdict(
            name,
            score,
            True,
            0.0,
            f"score {score:.3f} >= threshold {t:.3f} but adapter not live yet: refusal fallback",
            "refusal",
        )
    raw = raw_scale(score, policy)
    scale = round_up_to_grid(raw, grid)
    return SetVerdict(
        name,
        score,
        True,
        scale,
        f"score {score:.3f} >= threshold {t:.3f}: adapter at scale {scale:g} (curve {raw:.3f})",
        "adapter",
    )


def _strongest_verdict(
    name: str, policy: SetPolicy, grid: tuple[float, ...], live: bool, why: str
) -> SetVerdict:
    if policy.mode == "adapter" and live:
        scale = round_up_to_grid(policy.max_scale, grid)
        return SetVerdict(name, math.nan, True, scale, f"{why}: adapter at max scale {scale:g}", "adapter")
    detail = "adapter not live yet" if policy.mode == "adapter" else f"mode {policy.mode}"
    return SetVerdict(name, math.nan, True, 0.0, f"{why}: refusal ({detail})", "refusal")


def _assemble(verdicts: list[SetVerdict], version: int) -> GateDecision:
    verdicts.sort(key=lambda v: v.name)
    refuse = any(v.action == "refusal" for v in verdicts)
    adapters = () if refuse else tuple((v.name, v.scale) for v in verdicts if v.action == "adapter")
    return GateDecision(adapters=adapters, refuse=refuse, verdicts=tuple(verdicts), policy_version=version)


def decide(
    scores: Mapping[str, float], policy: GatePolicy, live_adapters: Collection[str]
) -> GateDecision:
    """Turn per-set calibrated scores into a decision under ``policy``.

    Scores are clamped into [0, 1]. A NaN score means the detector failed for that set only and
    is handled by ``policy.on_detector_error`` for that set. Any refusing set makes the whole
    request a refusal (no adapters are applied since nothing is generated); otherwise every
    adapter-matched set contributes ``(name, scale)``, sorted by name, and the backend sums them.
    """
    live = set(live_adapters)
    verdicts: list[SetVerdict] = []
    for name, raw in scores.items():
        set_policy = policy.for_set(name)
        score = float(raw)
        if math.isnan(score):
            verdicts.append(_error_verdict(name, set_policy, policy, name in live))
            continue
        score = min(max(score, 0.0), 1.0)
        verdicts.append(_verdict_for(name, score, set_policy, policy.scale_grid, name in live))
    return _assemble(verdicts, policy.version)


def _error_verdict(name: str, set_policy: SetPolicy, policy: GatePolicy, live: bool) -> SetVerdict:
    if policy.on_detector_error == "fail_open":
        return SetVerdict(name, math.nan, False, 0.0, "detector error; fail_open: base model")
    return _strongest_verdict(name, set_policy, policy.scale_grid, live, "detector error; fail_closed")


def decide_on_detector_error(
    set_names: Collection[str], policy: GatePolicy, live_adapters: Collection[str]
) -> GateDecision:
    """Decision when the detector could not score the prompt at all.

    fail_closed: every set gets its strongest intervention (adapter at max scale, or refusal when
    its mode refuses or its adapter is not live). fail_open: the base model, with verdicts that
    say so.
    """
    live = set(live_adapters)
    verdicts = [_error_verdict(name, policy.for_set(name), policy, name in live) for name in set_names]
    return _assemble(verdicts, policy.version)


_ACTION_RANK = {"none": 0, "adapter": 1, "refusal": 2}


def verdict_strength(verdict: SetVerdict) -> tuple[int, float]:
    """Sortable strength of one set's intervention: none < adapter(s) by scale < refusal."""
    return (_ACTION_RANK[verdict.action], verdict.scale if verdict.action == "adapter" else 0.0)


def at_least_as_strong(stronger: GateDecision, weaker: GateDecision) -> bool:
    """True when ``stronger`` intervenes at least as much as ``weaker`` on every set.

    A refusal dominates everything; otherwise every adapter scale in ``weaker`` must be matched
    or exceeded in ``stronger`` (an absent set counts as scale 0).
    """
    if stronger.refuse:
        return True
    if weaker.refuse:
        return False
    have = dict(stronger.adapters)
    return all(have.get(name, 0.0) + GRID_TOLERANCE >= scale for name, scale in weaker.adapters)


__all__ = [
    "Action",
    "DetectorErrorPolicy",
    "GateDecision",
    "GatePolicy",
    "MODES",
    "Mode",
    "PolicyValidationError",
    "REFUSAL_TEXT",
    "SetPolicy",
    "SetVerdict",
    "at_least_as_strong",
    "decide",
    "decide_on_detector_error",
    "raw_scale",
    "verdict_strength",
]
