"""Prometheus metrics for the whole gateway (gate decisions + generic request metrics).

Why one object with its own registry: tests build several gateways in one process, and
prometheus_client refuses to register the same metric name twice in one registry. Each
:class:`GatewayMetrics` therefore owns a registry (a fresh one unless injected) and the HTTP
``/metrics`` endpoint renders exactly that registry with :meth:`GatewayMetrics.render`.

Per-set series are labelled ``forget_set_id``, an opaque stable id (:func:`forget_set_metric_id`:
the first 12 hex digits of SHA-256 of the set's name), never the name: the names say what was
forgotten, and metrics end up in scrapers, dashboards and long-term storage. An operator who
knows a name can compute its id (``printf %s NAME | sha256sum | cut -c1-12``); the id is not a
secret against someone who guesses names, which is why ``/metrics`` also needs credentials
when auth is configured. A deleted set's series are dropped (:meth:`GatewayMetrics.forget_set_removed`).

Metric names (all prefixed ``oblivio_``):

Gate
  ``oblivio_gate_decisions_total{decision}``               requests by decision: base|adapter|refusal
  ``oblivio_gate_set_decisions_total{forget_set_id,action}`` per scored set: none|adapter|refusal
  ``oblivio_gate_detector_errors_total``                    requests decided by on_detector_error
  ``oblivio_detector_score{forget_set_id}``                 histogram of calibrated scores in [0, 1]
  ``oblivio_gate_adapter_scale{forget_set_id}``             histogram of applied adapter scales
  ``oblivio_gate_latency_seconds``                          detection + gate decision, per request
  ``oblivio_gate_policy_version``                           version of the policy last used / set
Registration
  ``oblivio_forget_set_quarantined{forget_set_id,enforced_by}`` 1 per set whose stored artifacts
      failed to load in this process: enforced_by="refusal" (adapter unreadable, the detector
      still matches and the gate refuses) or "none" (detector state unreadable: the set is NOT
      enforced; alert on this)
Generic (for the serving layer)
  ``oblivio_requests_total{endpoint,code}``              finished requests by status code
  ``oblivio_request_latency_seconds{endpoint}``          whole-request latency
  ``oblivio_requests_in_flight{endpoint}``               requests currently being served
  ``oblivio_time_to_first_token_seconds{endpoint}``      latency until the first output chunk
  ``oblivio_tokens_total{endpoint,kind}``                prompt / completion tokens
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from oblivio.gateway.gate.decision import GateDecision

SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 .. 1.0
SCALE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
GATE_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
QUARANTINE_ENFORCEMENT = ("refusal", "none")
REQUEST_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SET_ACTIONS = ("none", "adapter", "refusal")


def forget_set_metric_id(name: str) -> str:
    """The ``forget_set_id`` label of a set: stable across replicas and restarts, not its name."""
    return hashlib.sha256(name.encode()).hexdigest()[:12]


class GatewayMetrics:
    """All metrics of one gateway process, registered in ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "oblivio_gate_decisions", "Chat requests by gate decision.", ["decision"], registry=r
        )
        self.set_decisions = Counter(
            "oblivio_gate_set_decisions",
            "Per forget set and request: the action the gate took for that set.",
            ["forget_set_id", "action"],
            registry=r,
        )
        self.detector_errors = Counter(
            "oblivio_gate_detector_errors",
            "Requests the detector could not score (decided by on_detector_error).",
            registry=r,
        )
        self.scores = Histogram(
            "oblivio_detector_score",
            "Calibrated detector score per forget set.",
            ["forget_set_id"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.scales = Histogram(
            "oblivio_gate_adapter_scale",
            "Adapter scale applied per forget set (only requests that got the adapter).",
            ["forget_set_id"],
            buckets=SCALE_BUCKETS,
            registry=r,
        )
        self.gate_latency = Histogram(
            "oblivio_gate_latency_seconds",
            "Time from the start of detection to the gate decision, per request.",
            buckets=GATE_LATENCY_BUCKETS,
            registry=r,
        )
        self.policy_version = Gauge(
            "oblivio_gate_policy_version", "Version of the gate policy last used or set.", registry=r
        )
        self.quarantined = Gauge(
            "oblivio_forget_set_quarantined",
            "Forget sets whose stored artifacts failed to load in this process. enforced_by=refusal: "
            "the adapter is unreadable and matched prompts are refused; enforced_by=none: the detector "
            "state is unreadable and the set is NOT enforced on this replica.",
            ["forget_set_id", "enforced_by"],
            registry=r,
        )
        self.requests = Counter(
            "oblivio_requests", "Finished requests by endpoint and status code.", ["endpoint", "code"], registry=r
        )
        self.request_latency = Histogram(
            "oblivio_request_latency_seconds",
            "Whole-request latency by endpoint.",
            ["endpoint"],
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "oblivio_requests_in_flight", "Requests being served now.", ["endpoint"], registry=r
        )
        self.first_token = Histogram(
            "oblivio_time_to_first_token_seconds",
            "Latency until the first output chunk.",
            ["endpoint"],
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "oblivio_tokens", "Prompt and completion tokens.", ["endpoint", "kind"], registry=r
        )
        self.speculations = Counter(
            "oblivio_speculations",
            "vLLM front door: base answers started before the gate decided (released: the gate said base; "
            "discarded: its prefill was wasted), or not started because recent decisions said it would not pay (skipped).",
            ["outcome"],
            registry=r,
        )

    # ---- gate ---------------------------------------------------------------------------
    def observe_decision(
        self, decision: GateDecision, seconds: float, *, detector_error: bool | None = None
    ) -> None:
        """Record one chat request's gate decision and its detection + gate latency.

        ``detector_error`` defaults to "every verdict lacks a score" (how the gate marks
        decisions taken without scores), so callers that do not track it still count errors.
        """
        self.decisions.labels(decision=decision.label).inc()
        if detector_error is None:
            detector_error = bool(decision.verdicts) and all(math.isnan(v.score) for v in decision.verdicts)
        if detector_error:
            self.detector_errors.inc()
        for verdict in decision.verdicts:
            set_id = forget_set_metric_id(verdict.name)
            self.set_decisions.labels(forget_set_id=set_id, action=verdict.action).inc()
            if not math.isnan(verdict.score):
                self.scores.labels(forget_set_id=set_id).observe(verdict.score)
            if verdict.action == "adapter" and not decision.refuse:
                self.scales.labels(forget_set_id=set_id).observe(verdict.scale)
        if math.isfinite(seconds) and seconds >= 0:
            self.gate_latency.observe(seconds)
        if decision.policy_version > 0:  # 0 = a what-if policy, never live
            self.policy_version.set(decision.policy_version)

    def set_policy_version(self, version: int) -> None:
        self.policy_version.set(version)

    def forget_set_removed(self, name: str) -> None:
        """Drop a deleted set's series so dashboards do not show it forever."""
        set_id = forget_set_metric_id(name)
        for metric, label_sets in (
            (self.scores, [(set_id,)]),
            (self.scales, [(set_id,)]),
            (self.set_decisions, [(set_id, action) for action in SET_ACTIONS]),
        ):
            for labels in label_sets:
                with contextlib.suppress(KeyError):
                    metric.remove(*labels)

    # ---- registration -------------------------------------------------------------------
    def forget_set_quarantined(self, name: str, enforced_by: str) -> None:
        """Mark a set quarantined; ``enforced_by`` is "refusal" or "none" (one series per set)."""
        if enforced_by not in QUARANTINE_ENFORCEMENT:
            raise ValueError(f"enforced_by must be one of {QUARANTINE_ENFORCEMENT}, got {enforced_by!r}")
        self.forget_set_unquarantined(name)
        self.quarantined.labels(forget_set_id=forget_set_metric_id(name), enforced_by=enforced_by).set(1)

    def forget_set_unquarantined(self, name: str) -> None:
        """The set loaded after all, or was deleted: drop its quarantine series."""
        for enforced_by in QUARANTINE_ENFORCEMENT:
            with contextlib.suppress(KeyError):
                self.quarantined.remove(forget_set_metric_id(name), enforced_by)

    # ---- generic requests ---------------------------------------------------------------
    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, code=code).inc()
        self.request_latency.labels(endpoint=endpoint).observe(max(seconds, 0.0))

    @contextlib.contextmanager
    def track_in_flight(self, endpoint: str) -> Iterator[None]:
        gauge = self.in_flight.labels(endpoint=endpoint)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def observe_first_token(self, endpoint: str, seconds: float) -> None:
        self.first_token.labels(endpoint=endpoint).observe(max(seconds, 0.0))

    def observe_speculation(self, outcome: str) -> None:
        self.speculations.labels(outcome=outcome).inc()

    def add_tokens(self, endpoint: str, prompt_tokens: int, completion_tokens: int) -> None:
        if prompt_tokens:
            self.tokens.labels(endpoint=endpoint, kind="prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(endpoint=endpoint, kind="completion").inc(completion_tokens)

    # ---- exposition ---------------------------------------------------------------------
    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        """The Prometheus text exposition of this gateway's registry (for ``/metrics``)."""
        return generate_latest(self.registry)


__all__ = ["GatewayMetrics", "forget_set_metric_id"]
