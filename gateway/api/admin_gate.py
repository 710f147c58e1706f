"""The gate half of the Admin gRPC service: live policy tuning, explain, calibration.

Mixed into ``oblivio.gateway.api.admin_service.AdminServicer`` (which provides ``self.runtime``).
Errors are members of :mod:`oblivio.gateway.errors`' family, turned into status codes by the
server's interceptor.

Blocking work (fsync'ed policy writes, detector forwards, plotting) runs in worker threads so
the event loop keeps serving chat traffic while an operator tunes the gate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from oblivio.adapters.forget_set import UnknownForgetSetError
from oblivio.gateway.gate.calibration import (
    CalibrationError,
    CalibrationTarget,
    Probe,
    apply_suggested_threshold,
    calibrate,
)
from oblivio.gateway.errors import FailedPrecondition, InvalidArgument
from oblivio.gateway.gate.decision import GatePolicy, PolicyValidationError, SetPolicy
from oblivio.gateway.api.proto_convert import (
    MODE_TO_PROTO, MODE_FROM_PROTO, ON_ERROR_TO_PROTO, ON_ERROR_FROM_PROTO,
    explain_to_proto,
    messages_from_proto,
)
from oblivio.v1 import oblivio_pb2 as pb

if TYPE_CHECKING:
    from oblivio.gateway.serving.runtime import Runtime

MAX_EXPLAIN_BATCH = 1000
MAX_CALIBRATION_PROBES = 10_000
SCORING_CHUNK = 32  # prompts per detector forward during calibration (bounds memory)



class NoDetectorError(FailedPrecondition):
    """The gateway runs without a detector; calibration has nothing to score with."""


# ---- conversions --------------------------------------------------------------------------
def set_policy_to_proto(policy: SetPolicy) -> pb.SetPolicy:
    message = pb.SetPolicy(
        threshold=policy.threshold,
        softness=policy.softness,
        min_scale=policy.min_scale,
        max_scale=policy.max_scale,
        mode=MODE_TO_PROTO[policy.mode],
    )
    if policy.refusal_threshold is not None:
        message.refusal_threshold = policy.refusal_threshold
    return message


def policy_to_proto(policy: GatePolicy) -> pb.GatePolicy:
    created = Timestamp()
    if policy.created_at:
        created.FromNanoseconds(int(policy.created_at * 1e9))
    return pb.GatePolicy(
        version=policy.version,
        default_policy=set_policy_to_proto(policy.default),
        per_set={name: set_policy_to_proto(p) for name, p in policy.per_set.items()},
        scale_grid=list(policy.scale_grid),
        on_detector_error=ON_ERROR_TO_PROTO[policy.on_detector_error],
        created_at=created,
    )


def changes_from_proto(changes: pb.SetPolicyChanges) -> dict[str, Any]:
    """Only the fields the client set (proto3 presence), as the PolicyStore's change mapping."""
    out: dict[str, Any] = {}
    for name in ("threshold", "softness", "min_scale", "max_scale", "refusal_threshold"):
        if changes.HasField(name):
            out[name] = getattr(changes, name)
    if changes.clear_refusal_threshold:
        if "refusal_threshold" in out:
            raise PolicyValidationError("set either refusal_threshold or clear_refusal_threshold, not both")
        out["refusal_threshold"] = None
    if changes.HasField("mode"):
        if changes.mode not in MODE_FROM_PROTO:
            raise PolicyValidationError(
                "mode must be GATE_MODE_ADAPTER, GATE_MODE_REFUSAL or GATE_MODE_ADAPTER_THEN_REFUSAL"
            )
        out["mode"] = MODE_FROM_PROTO[changes.mode]
    if changes.HasField("on_detector_error"):
        if changes.on_detector_error not in ON_ERROR_FROM_PROTO:
            raise PolicyValidationError(
                "on_detector_error must be DETECTOR_ERROR_BEHAVIOUR_FAIL_CLOSED or _FAIL_OPEN"
            )
        out["on_detector_error"] = ON_ERROR_FROM_PROTO[changes.on_detector_error]
    return out


def _proposals(requests: Sequence[pb.UpdateGatePolicyRequest]) -> list[tuple[str | None, Mapping[str, Any]]]:
    return [(r.forget_set or None, changes_from_proto(r.changes)) for r in requests]


def _target_from_proto(request: pb.CalibrationReportRequest) -> CalibrationTarget:
    which = request.WhichOneof("target")
    if which == "target_fpr":
        return CalibrationTarget("fpr", request.target_fpr)
    if which == "target_catch_rate":
        return CalibrationTarget("catch_rate", request.target_catch_rate)
    return CalibrationTarget()


class GateAdminMixin:
    """GetGatePolicy, UpdateGatePolicy, RollbackGatePolicy, ListGatePolicyVersions, Explain,
    ExplainBatch and CalibrationReport over ``self.runtime``."""

    runtime: Runtime

    # ---- policy ---------------------------------------------------------------------------
    async def GetGatePolicy(self, request: pb.GetGatePolicyRequest, context: grpc.aio.ServicerContext) -> pb.GatePolicy:
        store = self.runtime.policy_store
        policy = store.get_version(request.version) if request.HasField("version") else store.current()
        return policy_to_proto(policy)

    async def UpdateGatePolicy(
        self, request: pb.UpdateGatePolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GatePolicy:
        changes = changes_from_proto(request.changes)
        policy = await asyncio.to_thread(self.runtime.policy_store.update, request.forget_set or None, changes)
        self._note_version(policy)
        return policy_to_proto(policy)

    async def RollbackGatePolicy(
        self, request: pb.RollbackGatePolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GatePolicy:
        policy = await asyncio.to_thread(self.runtime.policy_store.rollback, request.version)
        self._note_version(policy)
        return policy_to_proto(policy)

    async def ListGatePolicyVersions(
        self, request: pb.ListGatePolicyVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListGatePolicyVersionsResponse:
        store = self.runtime.policy_store
        current = store.current()
        return pb.ListGatePolicyVersionsResponse(
            versions=[policy_to_proto(p) for p in store.history()], current_version=current.version
        )

    def _note_version(self, policy: GatePolicy) -> None:
        if self.runtime.metrics is not None:
            self.runtime.metrics.set_policy_version(policy.version)

    # ---- explain ----------------------------------------------------------------------------
    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        policy = self._policy_for(request.proposed_changes)
        outcome = await self.runtime.chat.evaluate(messages_from_proto(request.messages), policy)
        return explain_to_proto(outcome)

    async def ExplainBatch(
        self, request: pb.ExplainBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainBatchResponse:
        count = len(request.conversations)
        if count == 0:
            raise PolicyValidationError("conversations must not be empty")
        if count > MAX_EXPLAIN_BATCH:
            raise PolicyValidationError(
                f"at most {MAX_EXPLAIN_BATCH} conversations per ExplainBatch call (got {count}); split the file"
            )
        # One policy object for the whole batch: every row is explained under the same version.
        policy = self._policy_for(request.proposed_changes) or self.runtime.policy_store.current()
        conversations = []
        for index, conversation in enumerate(request.conversations):
            try:
                conversations.append(messages_from_proto(conversation.messages))
            except InvalidArgument as exc:
                raise PolicyValidationError(f"conversations[{index}]: {exc}") from None
        # Concurrent evaluation lets the chat core's detector runner score them in batches.
        outcomes = await asyncio.gather(
            *(self._evaluate_row(index, messages, policy) for index, messages in enumerate(conversations))
        )
        return pb.ExplainBatchResponse(results=[explain_to_proto(o) for o in outcomes])

    async def _evaluate_row(self, index: int, messages: Sequence[Any], policy: GatePolicy) -> Any:
        try:
            return await self.runtime.chat.evaluate(messages, policy)
        except InvalidArgument as exc:
            raise PolicyValidationError(f"conversations[{index}]: {exc}") from None

    def _policy_for(self, proposed: Sequence[pb.UpdateGatePolicyRequest]) -> GatePolicy | None:
        """None = the live policy (read once by the chat core); else a validated what-if policy."""
        if not proposed:
            return None
        return self.runtime.policy_store.propose(_proposals(proposed))

    # ---- calibration ------------------------------------------------------------------------
    async def CalibrationReport(
        self, request: pb.CalibrationReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.CalibrationReportResponse:
        name = request.forget_set
        if not name:
            raise CalibrationError("forget_set is required")
        bank = self.runtime.detector
        if bank is None:
            raise NoDetectorError("this gateway runs without a detector; nothing to calibrate")
        if name not in bank.names():
            raise UnknownForgetSetError(
                f"forget set '{name}' has no detector; known: {', '.join(sorted(bank.names())) or '(none)'}"
            )
        if len(request.probes) > MAX_CALIBRATION_PROBES:
            raise CalibrationError(f"at most {MAX_CALIBRATION_PROBES} probes per report (got {len(request.probes)})")
        probes = [Probe(p.prompt, p.should_forget) for p in request.probes]
        if any(not p.prompt.strip() for p in probes):
            raise CalibrationError("every probe needs a non-empty prompt")
        target = _target_from_proto(request)
        out_dir = self._calibration_dir(name, request.output_dir)
        store = self.runtime.policy_store
        current = store.current().for_set(name).threshold

        def score(prompts: Sequence[str]) -> list[float]:
            values: list[float] = []
            for start in range(0, len(prompts), SCORING_CHUNK):
                rows = bank.score(list(prompts[start : start + SCORING_CHUNK]))
                values.extend(float(row.get(name, math.nan)) for row in rows)
            return values

        def run() -> Any:
            report = calibrate(
                name, probes, out_dir=out_dir, scorer=score, target=target, current_threshold=current
            )
            if request.apply:
                apply_suggested_threshold(report, store)
            return report

        report = await asyncio.to_thread(run)
        if report.applied_policy_version is not None:
            self._note_version(store.current())
        response = pb.CalibrationReportResponse(
            forget_set=name,
            roc_auc=report.roc_auc,
            suggested_threshold=report.suggested_threshold,
            catch_rate=report.catch_rate,
            false_positive_rate=report.false_positive_rate,
            positives=report.positives,
            negatives=report.negatives,
            plot_paths=[str(p) for p in report.plot_paths],
            summary_json_path=str(report.summary_json_path),
        )
        if report.applied_policy_version is not None:
            response.applied_policy_version = report.applied_policy_version
        return response

    def _calibration_dir(self, name: str, requested: str) -> Path:
        """Reports live under ``<artifacts>/calibration``; a client may pick a subfolder only.

        A remote client choosing arbitrary server paths would be a file-write primitive, so
        absolute paths and ``..`` are refused.
        """
        root = (Path(self.runtime.config.artifacts_path) / "calibration").resolve()
        if requested:
            relative = Path(requested)
            target = (root / relative).resolve()
            if relative.is_absolute() or not target.is_relative_to(root):
                raise CalibrationError(
                    f"output_dir must be a relative folder under the server's calibration directory "
                    f"({root}); got {requested!r}"
                )
            return target
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return root / name / f"{stamp}-{time.time_ns() % 1_000_000:06d}"


__all__ = ["GateAdminMixin", "changes_from_proto", "policy_to_proto", "set_policy_to_proto"]
