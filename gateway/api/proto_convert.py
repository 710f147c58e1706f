"""Conversions between ``oblivio.v1`` protobuf messages and the gateway's Python types, enum
maps included.

In their own module so that the Chat servicer, the Admin mixins (Explain returns the same
GateDecision message) and the CLI can import them without importing the servers.
"""

from __future__ import annotations

from collections.abc import Sequence

from oblivio.gateway.gate import decision as gate
from oblivio.gateway.serving.chat_core import FINISH_REFUSED, ChatInputError, GateOutcome, Message, SamplingRequest
from oblivio.adapters.registry import State
from oblivio.v1 import oblivio_pb2 as pb

METHOD_FROM_PROTO = {
    pb.TRAINING_METHOD_UNSPECIFIED: "refusal",
    pb.TRAINING_METHOD_REFUSAL: "refusal",
    pb.TRAINING_METHOD_NPO: "npo",
    pb.TRAINING_METHOD_IHL: "ihl",
}
METHOD_TO_PROTO = {"refusal": pb.TRAINING_METHOD_REFUSAL, "npo": pb.TRAINING_METHOD_NPO, "ihl": pb.TRAINING_METHOD_IHL}
STATE_TO_PROTO = {state: getattr(pb, f"REGISTRATION_STATE_{state.value}") for state in State}
MODE_TO_PROTO = {
    "adapter": pb.GATE_MODE_ADAPTER,
    "refusal": pb.GATE_MODE_REFUSAL,
    "adapter_then_refusal": pb.GATE_MODE_ADAPTER_THEN_REFUSAL,
}
MODE_FROM_PROTO = {value: key for key, value in MODE_TO_PROTO.items()}
ON_ERROR_TO_PROTO = {
    "fail_closed": pb.DETECTOR_ERROR_BEHAVIOUR_FAIL_CLOSED,
    "fail_open": pb.DETECTOR_ERROR_BEHAVIOUR_FAIL_OPEN,
}
ON_ERROR_FROM_PROTO = {value: key for key, value in ON_ERROR_TO_PROTO.items()}
ROLE_NAMES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}
FINISH_REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    FINISH_REFUSED: pb.FINISH_REASON_REFUSED,
}
SERVED = {"base": pb.SERVED_BASE, "adapter": pb.SERVED_ADAPTER, "refusal": pb.SERVED_REFUSED}


def messages_from_proto(messages: Sequence[pb.ChatMessage]) -> list[Message]:
    parsed = []
    for index, message in enumerate(messages):
        role = ROLE_NAMES.get(message.role)
        if role is None:
            raise ChatInputError(
                f"messages[{index}].role must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT "
                f"(got {pb.Role.Name(message.role) if message.role in pb.Role.values() else message.role})"
            )
        parsed.append(Message(role=role, content=message.content))
    return parsed


def sampling_from_proto(params: pb.SamplingParams) -> SamplingRequest:
    return SamplingRequest(
        temperature=params.temperature if params.HasField("temperature") else None,
        top_p=params.top_p if params.HasField("top_p") else None,
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        stop=tuple(params.stop),
        seed=params.seed if params.HasField("seed") else None,
    )


def decision_to_proto(decision: gate.GateDecision, *, detector_error: bool = False) -> pb.GateDecision:
    return pb.GateDecision(
        verdicts=[
            pb.SetVerdict(forget_set=v.name, score=v.score, matched=v.matched, scale=v.scale, reason=v.reason)
            for v in decision.verdicts
        ],
        adapters=[pb.AppliedAdapter(name=name, scale=scale) for name, scale in decision.adapters],
        refused=decision.refuse,
        policy_version=decision.policy_version,
        detector_error=detector_error,
    )


def outcome_to_proto(outcome: GateOutcome) -> pb.GateDecision:
    return decision_to_proto(outcome.decision, detector_error=outcome.detector_error is not None)


def chat_decision_to_proto(outcome: GateOutcome) -> pb.ChatDecision:
    """What a Chat client may learn of the decision: no set names, scores or scales."""
    return pb.ChatDecision(
        served=SERVED[outcome.label],
        policy_version=outcome.decision.policy_version,
        detector_error=outcome.detector_error is not None,
    )


def explain_to_proto(outcome: GateOutcome) -> pb.ExplainResponse:
    """An Admin ``ExplainResponse`` for one evaluated conversation."""
    return pb.ExplainResponse(
        decision=outcome_to_proto(outcome),
        scored_text=outcome.scored_text,
        detector_error_message=outcome.detector_error or "",
        detector_ms=outcome.detector_ms,
    )


def finish_reason_to_proto(reason: str | None) -> pb.FinishReason:
    return FINISH_REASONS.get(reason or "stop", pb.FINISH_REASON_STOP)


def usage_to_proto(prompt_tokens: int, completion_tokens: int) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
