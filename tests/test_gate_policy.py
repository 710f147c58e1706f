"""The gate policy: monotone in every score (property-based), modes, fallbacks, validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from oblivio.gateway.gate.decision import (
    MODES,
    REFUSAL_TEXT,
    GatePolicy,
    PolicyValidationError,
    SetPolicy,
    at_least_as_strong,
    decide,
    decide_on_detector_error,
    raw_scale,
    verdict_strength,
)
from oblivio.gateway.gate.scale_grid import round_up_to_grid

GRID = (0.25, 0.5, 0.75, 1.0)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
grids = st.lists(
    st.floats(min_value=0.05, max_value=4.0, allow_nan=False), min_size=1, max_size=6, unique=True
).map(lambda g: tuple(sorted(g)))


@st.composite
def set_policies(draw: st.DrawFn, grid: tuple[float, ...]) -> SetPolicy:
    threshold = draw(unit)
    max_scale = draw(st.floats(min_value=1e-3, max_value=max(grid), allow_nan=False))
    min_scale = draw(st.floats(min_value=1e-3, max_value=max_scale, allow_nan=False))
    mode = draw(st.sampled_from(MODES))
    refusal = draw(st.floats(min_value=threshold, max_value=1.0, allow_nan=False))
    return SetPolicy(
        threshold=threshold,
        softness=draw(st.floats(min_value=1e-3, max_value=200.0, allow_nan=False)),
        min_scale=min_scale,
        max_scale=max_scale,
        mode=mode,
        refusal_threshold=refusal if mode == "adapter_then_refusal" or draw(st.booleans()) else None,
    )


@st.composite
def scenarios(draw: st.DrawFn):
    grid = draw(grids)
    names = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True))
    per_set = {n: draw(set_policies(grid)) for n in names if draw(st.booleans())}
    policy = GatePolicy(
        version=draw(st.integers(1, 50)),
        default=draw(set_policies(grid)),
        per_set=per_set,
        scale_grid=grid,
        on_detector_error=draw(st.sampled_from(["fail_closed", "fail_open"])),
    )
    policy.validate()
    scores = {n: draw(unit) for n in names}
    live = [n for n in names if draw(st.booleans())]
    return policy, scores, live


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_raising_any_score_never_weakens_the_decision(scenario, data) -> None:
    policy, scores, live = scenario
    name = data.draw(st.sampled_from(sorted(scores)))
    higher = dict(scores, **{name: data.draw(st.floats(scores[name], 1.0, allow_nan=False))})
    low, high = decide(scores, policy, live), decide(higher, policy, live)
    assert at_least_as_strong(high, low), (scores, higher, low, high)
    # Per set too: the raised set's own intervention never gets weaker, the others are unchanged.
    low_v = {v.name: v for v in low.verdicts}
    high_v = {v.name: v for v in high.verdicts}
    assert verdict_strength(high_v[name]) >= verdict_strength(low_v[name])
    for other in scores.keys() - {name}:
        assert high_v[other] == low_v[other]


@settings(max_examples=300)
@given(grids, st.data())
def test_grid_rounding_never_weakens_and_is_monotone(grid, data) -> None:
    a = data.draw(st.floats(min_value=1e-3, max_value=max(grid), allow_nan=False))
    b = data.draw(st.floats(min_value=a, max_value=max(grid), allow_nan=False))
    ra, rb = round_up_to_grid(a, grid), round_up_to_grid(b, grid)
    assert ra in grid and rb in grid
    assert ra >= a - 1e-9 and rb >= b - 1e-9
    assert rb >= ra


@settings(max_examples=300)
@given(set_policies(GRID), unit, unit)
def test_curve_is_monotone_and_bounded(policy, s1, s2) -> None:
    assume(s1 >= policy.threshold and s2 >= policy.threshold)
    lo, hi = sorted((s1, s2))
    a, b = raw_scale(lo, policy), raw_scale(hi, policy)
    assert policy.min_scale - 1e-12 <= a <= b + 1e-12 <= policy.max_scale + 1e-9


def test_curve_endpoints_and_steepness() -> None:
    gentle = SetPolicy(threshold=0.5, softness=1.0, min_scale=0.25, max_scale=1.0)
    steep = SetPolicy(threshold=0.5, softness=40.0, min_scale=0.25, max_scale=1.0)
    assert raw_scale(0.5, steep) == pytest.approx(0.25)
    assert raw_scale(1.0, steep) == pytest.approx(1.0)
    # Large softness saturates just above the threshold; small softness is nearly linear.
    assert raw_scale(0.6, steep) > 0.9
    assert raw_scale(0.75, gentle) == pytest.approx(0.25 + 0.75 * 0.5, abs=0.03)


def _policy(**set_kwargs) -> GatePolicy:
    return GatePolicy(version=3, default=SetPolicy(**set_kwargs), per_set={}, scale_grid=GRID)


def test_adapter_mode_scales_and_sorts_several_sets() -> None:
    policy = GatePolicy(
        version=7,
        default=SetPolicy(threshold=0.5, softness=10.0),
        per_set={"bio": SetPolicy(threshold=0.2, softness=10.0)},
        scale_grid=GRID,
    )
    decision = decide({"zeta": 0.99, "bio": 0.3, "chem": 0.1}, policy, {"zeta", "bio", "chem"})
    assert not decision.refuse and decision.policy_version == 7
    assert [name for name, _ in decision.adapters] == ["bio", "zeta"]
    scales = dict(decision.adapters)
    assert scales["zeta"] == 1.0  # curve ~1.0 near score 1
    assert scales["bio"] in GRID and scales["bio"] >= raw_scale(0.3, policy.for_set("bio"))
    by_name = {v.name: v for v in decision.verdicts}
    assert [v.name for v in decision.verdicts] == ["bio", "chem", "zeta"]
    assert not by_name["chem"].matched and by_name["chem"].action == "none"
    assert "< threshold" in by_name["chem"].reason
    assert decision.label == "adapter"


def test_below_every_threshold_is_the_base_model() -> None:
    decision = decide({"a": 0.1, "b": 0.49}, _policy(threshold=0.5), {"a", "b"})
    assert decision.adapters == () and not decision.refuse and decision.label == "base"


def test_threshold_is_inclusive() -> None:
    decision = decide({"a": 0.5}, _policy(threshold=0.5), {"a"})
    assert decision.adapters == (("a", 0.25),)


def test_refusal_mode_and_adapter_then_refusal() -> None:
    assert decide({"a": 0.6}, _policy(mode="refusal"), {"a"}).refuse
    two_step = _policy(mode="adapter_then_refusal", threshold=0.5, refusal_threshold=0.9)
    mid = decide({"a": 0.7}, two_step, {"a"})
    top = decide({"a": 0.95}, two_step, {"a"})
    assert not mid.refuse and mid.adapters and mid.adapters[0][0] == "a"
    assert top.refuse and top.adapters == () and "refusal threshold" in top.verdicts[0].reason
    assert top.label == "refusal" and REFUSAL_TEXT


def test_one_refusing_set_refuses_the_whole_request() -> None:
    policy = GatePolicy(
        version=1,
        default=SetPolicy(),
        per_set={"secret": SetPolicy(mode="refusal")},
        scale_grid=GRID,
    )
    decision = decide({"secret": 0.8, "other": 0.9}, policy, {"secret", "other"})
    assert decision.refuse and decision.adapters == ()
    assert {v.name: v.action for v in decision.verdicts} == {"secret": "refusal", "other": "adapter"}


def test_matched_set_without_live_adapter_falls_back_to_refusal() -> None:
    decision = decide({"training": 0.8, "live": 0.8}, _policy(), {"live"})
    assert decision.refuse
    verdict = next(v for v in decision.verdicts if v.name == "training")
    assert verdict.action == "refusal" and "not live" in verdict.reason
    # Not matched: the missing adapter does not matter.
    assert not decide({"training": 0.1}, _policy(), set()).refuse


def test_detector_error_fail_closed_and_fail_open() -> None:
    policy = GatePolicy(
        version=2,
        default=SetPolicy(max_scale=0.6),
        per_set={"r": SetPolicy(mode="refusal")},
        scale_grid=GRID,
    )
    closed = decide_on_detector_error(["a"], policy, {"a"})
    assert closed.adapters == (("a", 0.75),)  # max_scale 0.6 rounds up onto the grid
    assert math.isnan(closed.verdicts[0].score) and "fail_closed" in closed.verdicts[0].reason
    assert decide_on_detector_error(["a", "r"], policy, {"a", "r"}).refuse
    assert decide_on_detector_error(["a"], policy, set()).refuse  # no live adapter: refusal
    open_policy = GatePolicy(
        version=2, default=SetPolicy(), per_set={}, scale_grid=GRID, on_detector_error="fail_open"
    )
    opened = decide_on_detector_error(["a", "b"], open_policy, {"a"})
    assert opened.adapters == () and not opened.refuse and len(opened.verdicts) == 2
    assert decide_on_detector_error([], policy, set()).label == "base"


def test_nan_score_for_one_set_uses_the_error_policy_for_that_set() -> None:
    decision = decide({"a": float("nan"), "b": 0.0}, _policy(), {"a", "b"})
    assert decision.adapters == (("a", 1.0),)
    assert decide({"a": float("inf")}, _policy(), {"a"}).adapters == (("a", 1.0),)  # clamped


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": -0.1}, "threshold must be a number in [0, 1]"),
        ({"threshold": 1.5}, "threshold must be a number in [0, 1]"),
        ({"softness": 0.0}, "softness must be > 0"),
        ({"min_scale": 0.0}, "min_scale must be > 0"),
        ({"min_scale": 0.8, "max_scale": 0.5}, "must be <= max_scale"),
        ({"max_scale": 2.0}, "exceeds the largest scale"),
        ({"mode": "delete"}, "mode must be one of"),
        ({"mode": "adapter_then_refusal"}, "refusal_threshold is required"),
        ({"threshold": 0.6, "refusal_threshold": 0.5}, "must be >= threshold"),
        ({"threshold": float("nan")}, "threshold must be a number"),
    ],
)
def test_validation_errors_name_the_field(kwargs, message) -> None:
    with pytest.raises(PolicyValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _policy(**kwargs).validate()


def test_policy_is_immutable() -> None:
    policy = GatePolicy(version=1, default=SetPolicy(), per_set={"a": SetPolicy()}, scale_grid=GRID)
    with pytest.raises(TypeError):
        policy.per_set["b"] = SetPolicy()  # type: ignore[index]
    with pytest.raises(AttributeError):
        policy.version = 2  # type: ignore[misc]


@settings(max_examples=300)
@given(scenarios())
def test_fail_closed_is_at_least_as_strong_as_any_scored_decision(scenario) -> None:
    policy, scores, live = scenario
    closed = GatePolicy(
        version=policy.version,
        default=policy.default,
        per_set=policy.per_set,
        scale_grid=policy.scale_grid,
        on_detector_error="fail_closed",
    )
    on_error = decide_on_detector_error(scores.keys(), closed, live)
    assert at_least_as_strong(on_error, decide(scores, closed, live))
    assert at_least_as_strong(on_error, decide({n: 1.0 for n in scores}, closed, live))
