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

from oblivio.gateway.cli import main as cli_main
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc

pytestmark = pytest.mark.slow

SET = "gate_authors"


@pytest.fixture(scope="module")
async def gate_gateway(model_path: Path, reference_backend, tmp_path_factory: pytest.TempPathFactory):
    from fixtures_serving import serving_config

    from oblivio.gateway.server import Gateway

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
