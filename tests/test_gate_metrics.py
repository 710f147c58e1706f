"""Gateway metrics: real gate decisions recorded into a fresh registry and scraped back."""

from __future__ import annotations

import hashlib

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from oblivio.gateway.gate.decision import GatePolicy, SetPolicy, decide, decide_on_detector_error
from oblivio.gateway.serving.metrics import GatewayMetrics, forget_set_metric_id

BIO, SECRET = forget_set_metric_id("bio"), forget_set_metric_id("secret")

POLICY = GatePolicy(
    version=4,
    default=SetPolicy(threshold=0.5),
    per_set={"secret": SetPolicy(mode="refusal")},
    scale_grid=(0.25, 0.5, 1.0),
)


def _samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_decisions_scores_and_latency_are_recorded() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    live = {"bio", "secret"}
    metrics.observe_decision(decide({"bio": 0.9, "secret": 0.1}, POLICY, live), 0.004)
    metrics.observe_decision(decide({"bio": 0.2, "secret": 0.1}, POLICY, live), 0.002)
    metrics.observe_decision(decide({"bio": 0.2, "secret": 0.7}, POLICY, live), 0.003)
    metrics.observe_decision(decide_on_detector_error(["bio"], POLICY, live), 0.5)
    s = _samples(metrics)
    assert s[("oblivio_gate_decisions_total", (("decision", "adapter"),))] == 2
    assert s[("oblivio_gate_decisions_total", (("decision", "base"),))] == 1
    assert s[("oblivio_gate_decisions_total", (("decision", "refusal"),))] == 1
    assert s[("oblivio_gate_detector_errors_total", ())] == 1
    assert s[("oblivio_gate_set_decisions_total", (("action", "refusal"), ("forget_set_id", SECRET)))] == 1
    assert s[("oblivio_detector_score_count", (("forget_set_id", BIO),))] == 3  # NaN score skipped
    assert s[("oblivio_detector_score_bucket", (("forget_set_id", BIO), ("le", "0.5")))] == 2
    assert s[("oblivio_gate_adapter_scale_count", (("forget_set_id", BIO),))] == 2
    assert s[("oblivio_gate_latency_seconds_count", ())] == 4
    assert s[("oblivio_gate_policy_version", ())] == 4
    # The registry is the injected one, so two gateways in one process do not collide.
    assert registry.get_sample_value("oblivio_gate_latency_seconds_count") == 4
    GatewayMetrics()  # a second instance with its own registry must not raise


def test_request_metrics_and_forgetting_a_set() -> None:
    metrics = GatewayMetrics()
    with metrics.track_in_flight("grpc.Complete"):
        assert metrics.registry.get_sample_value(
            "oblivio_requests_in_flight", {"endpoint": "grpc.Complete"}
        ) == 1
    metrics.observe_request("grpc.Complete", "OK", 0.3)
    metrics.observe_first_token("grpc.Complete", 0.1)
    metrics.add_tokens("grpc.Complete", 12, 5)
    s = _samples(metrics)
    assert s[("oblivio_requests_in_flight", (("endpoint", "grpc.Complete"),))] == 0
    assert s[("oblivio_requests_total", (("code", "OK"), ("endpoint", "grpc.Complete")))] == 1
    assert s[("oblivio_tokens_total", (("endpoint", "grpc.Complete"), ("kind", "completion")))] == 5
    metrics.observe_decision(decide({"bio": 0.9}, POLICY, {"bio"}), 0.001)
    assert any(dict(labels).get("forget_set_id") == BIO for _, labels in _samples(metrics))
    metrics.forget_set_removed("bio")
    assert not any(dict(labels).get("forget_set_id") == BIO for _, labels in _samples(metrics))


def test_series_carry_opaque_set_ids_never_names() -> None:
    """Forget-set names say what was forgotten; metrics go to scrapers and long-term storage."""
    metrics = GatewayMetrics()
    metrics.observe_decision(decide({"elena-marwick": 0.9, "secret": 0.1}, POLICY, {"elena-marwick", "secret"}), 0.001)
    metrics.forget_set_quarantined("elena-marwick", "none")
    text = metrics.render().decode()
    assert "elena" not in text and "secret" not in text
    assert f'forget_set_id="{forget_set_metric_id("elena-marwick")}"' in text
    assert forget_set_metric_id("elena-marwick") == hashlib.sha256(b"elena-marwick").hexdigest()[:12]
