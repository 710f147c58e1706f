"""Gate Admin RPCs and the ``oblivio gate`` CLI over a real gRPC socket of a real gateway.

The gateway runs on the shared reference backend with its own home (so policy changes here do
not leak into other areas' tests). The blocking CLI runs in a worker thread because the server
shares the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from oblivio.gateway.cli.main import main as cli_main
from oblivio.gateway.serving.metrics import forget_set_metric_id
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc

pytestmark = pytest.mark.slow

SET = "gate_authors"


@pytest.fixture(scope="module")
async def gate_gateway(model_path: Path, reference_backend, tmp_path_factory: pytest.TempPathFactory):
    from fixtures_serving import serving_config

    from oblivio.gateway.api.server import Gateway

    config = serving_config(model_path, tmp_path_factory.mktemp("gate_admin_home"))
    gateway = await Gateway.create(config, backend=reference_backend, detector=None)
    gateway.runtime.policy_store.register_set(SET)
    await gateway.start()
    yield gateway
    await gateway.stop(grace=1)


@pytest.fixture(scope="module")
async def admin(gate_gateway):
    async with grpc.aio.insecure_channel(gate_gateway.grpc_target) as channel:
        yield oblivio_pb2_grpc.AdminStub(channel)


def _changes(**fields) -> pb.SetPolicyChanges:
    return pb.SetPolicyChanges(**fields)


async def test_get_update_rollback_and_history(admin, gate_gateway) -> None:
    start = await admin.GetGatePolicy(pb.GetGatePolicyRequest())
    assert start.version >= 1 and list(start.scale_grid) == [0.25, 0.5, 0.75, 1.0]
    assert start.on_detector_error == pb.DETECTOR_ERROR_BEHAVIOUR_FAIL_CLOSED

    updated = await admin.UpdateGatePolicy(
        pb.UpdateGatePolicyRequest(forget_set=SET, changes=_changes(threshold=0.8, mode=pb.GATE_MODE_ADAPTER_THEN_REFUSAL, refusal_threshold=0.95))
    )
    assert updated.version == start.version + 1
    assert updated.per_set[SET].threshold == pytest.approx(0.8)
    assert updated.per_set[SET].HasField("refusal_threshold")
    assert updated.created_at.seconds > 0
    # The live store (what new chat requests read) is the updated one.
    assert gate_gateway.runtime.policy_store.current().version == updated.version
    assert gate_gateway.runtime.metrics.registry.get_sample_value("oblivio_gate_policy_version") == updated.version

    cleared = await admin.UpdateGatePolicy(
        pb.UpdateGatePolicyRequest(forget_set=SET, changes=_changes(mode=pb.GATE_MODE_ADAPTER, clear_refusal_threshold=True))
    )
    assert not cleared.per_set[SET].HasField("refusal_threshold")
    default_change = await admin.UpdateGatePolicy(
        pb.UpdateGatePolicyRequest(changes=_changes(on_detector_error=pb.DETECTOR_ERROR_BEHAVIOUR_FAIL_OPEN))
    )
    assert default_change.on_detector_error == pb.DETECTOR_ERROR_BEHAVIOUR_FAIL_OPEN

    old = await admin.GetGatePolicy(pb.GetGatePolicyRequest(version=start.version))
    assert old == start
    rolled = await admin.RollbackGatePolicy(pb.RollbackGatePolicyRequest(version=start.version))
    assert rolled.version == default_change.version + 1
    assert rolled.default_policy == start.default_policy and dict(rolled.per_set) == dict(start.per_set)

    history = await admin.ListGatePolicyVersions(pb.ListGatePolicyVersionsRequest())
    assert history.current_version == rolled.version
    assert [p.version for p in history.versions][-5:] == list(range(start.version, rolled.version + 1))


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (pb.UpdateGatePolicyRequest(changes=_changes(threshold=-0.5)), grpc.StatusCode.INVALID_ARGUMENT, "default.threshold must be a number in [0, 1]"),
        (pb.UpdateGatePolicyRequest(forget_set=SET, changes=_changes(softness=0)), grpc.StatusCode.INVALID_ARGUMENT, "softness must be > 0"),
        (pb.UpdateGatePolicyRequest(changes=_changes(max_scale=9)), grpc.StatusCode.INVALID_ARGUMENT, "exceeds the largest scale"),
        (pb.UpdateGatePolicyRequest(changes=_changes(mode=pb.GATE_MODE_UNSPECIFIED)), grpc.StatusCode.INVALID_ARGUMENT, "mode must be"),
        (pb.UpdateGatePolicyRequest(changes=_changes()), grpc.StatusCode.INVALID_ARGUMENT, "no changes"),
        (pb.UpdateGatePolicyRequest(forget_set=SET, changes=_changes(on_detector_error=pb.DETECTOR_ERROR_BEHAVIOUR_FAIL_OPEN)), grpc.StatusCode.INVALID_ARGUMENT, "is global"),
        (pb.UpdateGatePolicyRequest(forget_set="no_such_set", changes=_changes(threshold=0.5)), grpc.StatusCode.NOT_FOUND, "forget set 'no_such_set' is not registered"),
    ],
)
async def test_update_errors_map_to_status_codes(admin, gate_gateway, request_, code, fragment) -> None:
    before = gate_gateway.runtime.policy_store.current()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.UpdateGatePolicy(request_)
    assert info.value.code() == code
    assert fragment in info.value.details()
    assert gate_gateway.runtime.policy_store.current() is before


async def test_unknown_version_is_not_found(admin) -> None:
    for call, request in (
        (admin.RollbackGatePolicy, pb.RollbackGatePolicyRequest(version=10_000)),
        (admin.GetGatePolicy, pb.GetGatePolicyRequest(version=10_000)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "version 10000 does not exist" in info.value.details()


async def test_explain_without_detector_and_what_if_validation(admin) -> None:
    message = pb.ChatMessage(role=pb.ROLE_USER, content="Tell me about the weather.")
    result = await admin.Explain(pb.ExplainRequest(messages=[message]))
    assert result.scored_text == "Tell me about the weather."
    assert not result.decision.refused and not result.decision.adapters
    bad = pb.UpdateGatePolicyRequest(changes=_changes(threshold=2.0))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.Explain(pb.ExplainRequest(messages=[message], proposed_changes=[bad]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.Explain(pb.ExplainRequest(messages=[pb.ChatMessage(role=pb.ROLE_SYSTEM, content="hi")]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user message" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.ExplainBatch(pb.ExplainBatchRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_calibration_without_detector_is_a_failed_precondition(admin) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.CalibrationReport(
            pb.CalibrationReportRequest(forget_set=SET, probes=[pb.LabelledProbe(prompt="x", should_forget=True)])
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "without a detector" in info.value.details()


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(cli_main, list(argv))


async def test_cli_set_get_history_rollback(gate_gateway, capsys: pytest.CaptureFixture[str]) -> None:
    address = ["--address", gate_gateway.grpc_target]
    before = gate_gateway.runtime.policy_store.current().version
    assert await _cli("gate", "set", "--set", SET, "--threshold", "0.65", "--softness", "25", *address) == 0
    out = capsys.readouterr().out
    assert f"version {before + 1}" in out and f"{SET}: threshold=0.65 softness=25" in out

    assert await _cli("gate", "get", "--json", *address) == 0
    policy = json.loads(capsys.readouterr().out)
    assert int(policy["version"]) == before + 1 and policy["per_set"][SET]["threshold"] == 0.65

    assert await _cli("gate", "history", *address) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith(f"* v{before + 1}")

    assert await _cli("gate", "rollback", str(before), *address) == 0
    assert "rolled back to the contents of version" in capsys.readouterr().out
    assert gate_gateway.runtime.policy_store.current().version == before + 2


async def test_cli_reports_server_errors_clearly(gate_gateway, capsys: pytest.CaptureFixture[str]) -> None:
    address = ["--address", gate_gateway.grpc_target]
    assert await _cli("gate", "set", "--threshold", "-1", *address) == 1
    assert "INVALID_ARGUMENT: default.threshold must be a number in [0, 1]" in capsys.readouterr().err
    assert await _cli("gate", "set", "--set", "ghost", "--threshold", "0.3", *address) == 1
    assert "NOT_FOUND: forget set 'ghost' is not registered" in capsys.readouterr().err
    assert await _cli("gate", "set", *address) == 2
    assert "nothing to change" in capsys.readouterr().err
    assert await _cli("gate", "explain", "hello", "--what-if", "bogus", *address) == 2
    assert "expected [SET:]FIELD=VALUE" in capsys.readouterr().err
    assert await _cli("gate", "explain", "hello", "--what-if", "threshold=7", *address) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    assert await _cli("gate", "explain", "What is rain?", *address) == 0
    out = capsys.readouterr().out
    assert out.startswith("base model  [policy v") and "(no forget sets registered)" in out


def test_what_if_flags_parse_into_per_set_changes() -> None:
    from oblivio.gateway.cli.gate import CliInputError, parse_what_if

    requests = parse_what_if(["threshold=0.2", f"{SET}:mode=refusal", f"{SET}:max-scale=0.5", "refusal_threshold=none"])
    by_set = {r.forget_set: r.changes for r in requests}
    assert by_set[""].threshold == pytest.approx(0.2) and by_set[""].clear_refusal_threshold
    assert by_set[SET].mode == pb.GATE_MODE_REFUSAL and by_set[SET].max_scale == 0.5
    for bad in ("colour=red", "mode=loud", "threshold=", "threshold=high"):
        with pytest.raises(CliInputError):
            parse_what_if([bad])


# ---- with a real fitted detector ------------------------------------------------------------
@pytest.fixture(scope="module")
async def detector_gateway(
    model_path: Path, reference_backend, lora_adapters, gate_detector_bank, tmp_path_factory: pytest.TempPathFactory
):
    """A gateway whose detector knows ``gate_authors`` and whose backend serves its adapter."""
    from fixtures_gate import GATE_SET
    from fixtures_serving import serving_config

    from oblivio.gateway.api.server import Gateway

    config = serving_config(model_path, tmp_path_factory.mktemp("gate_detector_home"))
    gateway = await Gateway.create(config, backend=reference_backend, detector=gate_detector_bank)
    gateway.runtime.policy_store.register_set(GATE_SET)
    await reference_backend.add_adapter(GATE_SET, lora_adapters["alpha"])
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop(grace=1)
        await reference_backend.remove_adapter(GATE_SET)


@pytest.fixture(scope="module")
async def detector_admin(detector_gateway):
    async with grpc.aio.insecure_channel(detector_gateway.grpc_target) as channel:
        yield oblivio_pb2_grpc.AdminStub(channel), oblivio_pb2_grpc.ChatStub(channel)


def _user(text: str) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role=pb.ROLE_USER, content=text)]


def _set_changes(**fields) -> list[pb.UpdateGatePolicyRequest]:
    from fixtures_gate import GATE_SET

    return [pb.UpdateGatePolicyRequest(forget_set=GATE_SET, changes=pb.SetPolicyChanges(**fields))]


async def test_explain_reports_scores_decision_and_reasons(detector_admin, detector_gateway) -> None:
    from fixtures_gate import FORGET_PROBES, GATE_SET, KEEP_PROBES

    admin, _ = detector_admin
    live = detector_gateway.runtime.policy_store.current()
    threshold = live.for_set(GATE_SET).threshold
    for prompt in (FORGET_PROBES[0], KEEP_PROBES[0]):
        result = await admin.Explain(pb.ExplainRequest(messages=_user(prompt)))
        assert result.scored_text == prompt and result.detector_ms > 0
        (verdict,) = result.decision.verdicts
        assert verdict.forget_set == GATE_SET and 0.0 <= verdict.score <= 1.0
        assert verdict.matched == (verdict.score >= threshold)
        assert f"threshold {threshold:.3f}" in verdict.reason
        applied = {a.name: a.scale for a in result.decision.adapters}
        assert (GATE_SET in applied) == verdict.matched
        assert result.decision.policy_version == live.version

    # What-if: the same prompt under proposed changes, without touching the live policy.
    catch_all = await admin.Explain(pb.ExplainRequest(messages=_user(KEEP_PROBES[0]), proposed_changes=_set_changes(threshold=0.0)))
    assert catch_all.decision.policy_version == 0  # a what-if policy, never a live version
    assert [a.name for a in catch_all.decision.adapters] == [GATE_SET]
    refuse = await admin.Explain(
        pb.ExplainRequest(messages=_user(KEEP_PROBES[0]), proposed_changes=_set_changes(threshold=0.0, mode=pb.GATE_MODE_REFUSAL))
    )
    assert refuse.decision.refused and "mode refusal" in refuse.decision.verdicts[0].reason
    assert detector_gateway.runtime.policy_store.current() is live


async def test_explain_batch_keeps_order_and_separates_topics(detector_admin, tmp_path: Path, capsys, detector_gateway) -> None:
    from fixtures_gate import FORGET_PROBES, KEEP_PROBES

    admin, _ = detector_admin
    prompts = [*FORGET_PROBES, *KEEP_PROBES]
    response = await admin.ExplainBatch(
        pb.ExplainBatchRequest(conversations=[pb.Conversation(messages=_user(p)) for p in prompts])
    )
    assert [r.scored_text for r in response.results] == prompts
    scores = [r.decision.verdicts[0].score for r in response.results]
    forget_mean = sum(scores[: len(FORGET_PROBES)]) / len(FORGET_PROBES)
    keep_mean = sum(scores[len(FORGET_PROBES) :]) / len(KEEP_PROBES)
    assert forget_mean > keep_mean + 0.3, (forget_mean, keep_mean)

    # The same through the CLI, from a file, with results written as JSONL.
    batch_file = tmp_path / "prompts.jsonl"
    batch_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[:3]))
    out_file = tmp_path / "results.jsonl"
    code = await _cli("gate", "explain-batch", str(batch_file), "--out", str(out_file), "--address", detector_gateway.grpc_target)
    assert code == 0
    printed = capsys.readouterr().out
    assert "3 prompts:" in printed and "gate_authors" in printed
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [row["scored_text"] for row in rows] == prompts[:3]


async def test_policy_updates_reach_new_chat_requests_atomically(detector_admin, detector_gateway) -> None:
    """Concurrent explain + chat traffic while the threshold flips: every response carries one
    committed version and its verdict is exactly what that version's threshold implies."""
    from fixtures_gate import FORGET_PROBES, GATE_SET, KEEP_PROBES

    admin, chat = detector_admin
    store = detector_gateway.runtime.policy_store
    stop = asyncio.Event()
    seen: list[pb.ExplainResponse] = []

    async def traffic(prompt: str) -> None:
        while not stop.is_set():
            seen.append(await admin.Explain(pb.ExplainRequest(messages=_user(prompt))))

    tasks = [asyncio.create_task(traffic(p)) for p in (FORGET_PROBES[1], KEEP_PROBES[1], FORGET_PROBES[2])]
    async def observed(version: int) -> None:
        while not any(r.decision.policy_version >= version for r in seen):
            await asyncio.sleep(0.05)

    try:
        for threshold in (0.0, 1.0, 0.0, 1.0):
            updated = await admin.UpdateGatePolicy(
                pb.UpdateGatePolicyRequest(forget_set=GATE_SET, changes=pb.SetPolicyChanges(threshold=threshold))
            )
            # Each new version must reach new requests (no restart, no stale cache).
            await asyncio.wait_for(observed(updated.version), timeout=120)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    versions = {r.decision.policy_version for r in seen}
    assert len(versions) >= 4
    for result in seen:
        policy = store.get_version(result.decision.policy_version)
        verdict = result.decision.verdicts[0]
        threshold = policy.for_set(GATE_SET).threshold
        assert verdict.matched == (verdict.score >= threshold)
        assert f"threshold {threshold:.3f}" in verdict.reason

    # A real chat request after the update uses the new version: threshold 0 => adapter applied.
    applied = await admin.UpdateGatePolicy(
        pb.UpdateGatePolicyRequest(forget_set=GATE_SET, changes=pb.SetPolicyChanges(threshold=0.0))
    )
    reply = await chat.Complete(
        pb.ChatRequest(messages=_user(KEEP_PROBES[2]), sampling=pb.SamplingParams(max_tokens=2)), timeout=120
    )
    assert reply.gate.policy_version == applied.version and reply.gate.served == pb.SERVED_ADAPTER
    metrics = detector_gateway.runtime.metrics.registry
    assert metrics.get_sample_value("oblivio_gate_decisions_total", {"decision": "adapter"}) >= 1
    assert metrics.get_sample_value("oblivio_detector_score_count", {"forget_set_id": forget_set_metric_id(GATE_SET)}) >= 1
    await admin.UpdateGatePolicy(pb.UpdateGatePolicyRequest(forget_set=GATE_SET, changes=pb.SetPolicyChanges(threshold=0.5)))


async def test_calibration_report_rpc_writes_plots_and_applies(detector_admin, detector_gateway, tmp_path: Path, capsys) -> None:
    from fixtures_gate import FORGET_PROBES, GATE_SET, KEEP_PROBES, assert_real_png, write_probe_file

    admin, _ = detector_admin
    probes = [pb.LabelledProbe(prompt=p, should_forget=True) for p in FORGET_PROBES]
    probes += [pb.LabelledProbe(prompt=p, should_forget=False) for p in KEEP_PROBES]
    report = await admin.CalibrationReport(
        pb.CalibrationReportRequest(forget_set=GATE_SET, probes=probes, target_catch_rate=0.9, apply=True, output_dir="rpc-test")
    )
    assert (report.positives, report.negatives) == (10, 10)
    assert report.roc_auc >= 0.9 and report.catch_rate >= 0.9
    assert report.HasField("applied_policy_version")
    store = detector_gateway.runtime.policy_store
    assert store.current().version == report.applied_policy_version
    assert store.current().for_set(GATE_SET).threshold == pytest.approx(report.suggested_threshold)
    calibration_root = detector_gateway.runtime.config.artifacts_path / "calibration"
    assert len(report.plot_paths) == 2
    for path in map(Path, report.plot_paths):
        assert path.is_relative_to(calibration_root / "rpc-test")
        assert_real_png(path)
    assert json.loads(Path(report.summary_json_path).read_text())["applied_policy_version"] == report.applied_policy_version

    for request, code in (
        (pb.CalibrationReportRequest(forget_set="ghost", probes=probes), grpc.StatusCode.NOT_FOUND),
        (pb.CalibrationReportRequest(forget_set=GATE_SET, probes=probes[:3]), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.CalibrationReportRequest(forget_set=GATE_SET, probes=probes, output_dir="../../etc"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.CalibrationReportRequest(forget_set=GATE_SET, probes=probes, target_fpr=1.5), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.CalibrationReport(request)
        assert info.value.code() == code, info.value.details()

    # The CLI path: probe file in, summary printed.
    probe_file = write_probe_file(tmp_path / "probes.jsonl")
    code = await _cli("gate", "calibrate", "--set", GATE_SET, str(probe_file), "--target-fpr", "0.1", "--address", detector_gateway.grpc_target)
    assert code == 0
    out = capsys.readouterr().out
    assert "suggested threshold" in out and "ROC AUC" in out and out.count("plot (on the server)") == 2
