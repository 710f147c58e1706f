import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_REFUSED: _ClassVar[FinishReason]

class Served(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVED_UNSPECIFIED: _ClassVar[Served]
    SERVED_BASE: _ClassVar[Served]
    SERVED_ADAPTER: _ClassVar[Served]
    SERVED_REFUSED: _ClassVar[Served]

class TrainingMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_METHOD_UNSPECIFIED: _ClassVar[TrainingMethod]
    TRAINING_METHOD_REFUSAL: _ClassVar[TrainingMethod]
    TRAINING_METHOD_NPO: _ClassVar[TrainingMethod]
    TRAINING_METHOD_IHL: _ClassVar[TrainingMethod]

class RegistrationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGISTRATION_STATE_UNSPECIFIED: _ClassVar[RegistrationState]
    REGISTRATION_STATE_VALIDATING: _ClassVar[RegistrationState]
    REGISTRATION_STATE_FITTING_DETECTOR: _ClassVar[RegistrationState]
    REGISTRATION_STATE_ENFORCING: _ClassVar[RegistrationState]
    REGISTRATION_STATE_TRAINING: _ClassVar[RegistrationState]
    REGISTRATION_STATE_PUBLISHING: _ClassVar[RegistrationState]
    REGISTRATION_STATE_LOADING: _ClassVar[RegistrationState]
    REGISTRATION_STATE_LIVE: _ClassVar[RegistrationState]
    REGISTRATION_STATE_FAILED: _ClassVar[RegistrationState]
    REGISTRATION_STATE_DELETING: _ClassVar[RegistrationState]

class GateMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GATE_MODE_UNSPECIFIED: _ClassVar[GateMode]
    GATE_MODE_ADAPTER: _ClassVar[GateMode]
    GATE_MODE_REFUSAL: _ClassVar[GateMode]
    GATE_MODE_ADAPTER_THEN_REFUSAL: _ClassVar[GateMode]

class DetectorErrorBehaviour(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DETECTOR_ERROR_BEHAVIOUR_UNSPECIFIED: _ClassVar[DetectorErrorBehaviour]
    DETECTOR_ERROR_BEHAVIOUR_FAIL_CLOSED: _ClassVar[DetectorErrorBehaviour]
    DETECTOR_ERROR_BEHAVIOUR_FAIL_OPEN: _ClassVar[DetectorErrorBehaviour]
ROLE_UNSPECIFIED: Role
ROLE_SYSTEM: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_REFUSED: FinishReason
SERVED_UNSPECIFIED: Served
SERVED_BASE: Served
SERVED_ADAPTER: Served
SERVED_REFUSED: Served
TRAINING_METHOD_UNSPECIFIED: TrainingMethod
TRAINING_METHOD_REFUSAL: TrainingMethod
TRAINING_METHOD_NPO: TrainingMethod
TRAINING_METHOD_IHL: TrainingMethod
REGISTRATION_STATE_UNSPECIFIED: RegistrationState
REGISTRATION_STATE_VALIDATING: RegistrationState
REGISTRATION_STATE_FITTING_DETECTOR: RegistrationState
REGISTRATION_STATE_ENFORCING: RegistrationState
REGISTRATION_STATE_TRAINING: RegistrationState
REGISTRATION_STATE_PUBLISHING: RegistrationState
REGISTRATION_STATE_LOADING: RegistrationState
REGISTRATION_STATE_LIVE: RegistrationState
REGISTRATION_STATE_FAILED: RegistrationState
REGISTRATION_STATE_DELETING: RegistrationState
GATE_MODE_UNSPECIFIED: GateMode
GATE_MODE_ADAPTER: GateMode
GATE_MODE_REFUSAL: GateMode
GATE_MODE_ADAPTER_THEN_REFUSAL: GateMode
DETECTOR_ERROR_BEHAVIOUR_UNSPECIFIED: DetectorErrorBehaviour
DETECTOR_ERROR_BEHAVIOUR_FAIL_CLOSED: DetectorErrorBehaviour
DETECTOR_ERROR_BEHAVIOUR_FAIL_OPEN: DetectorErrorBehaviour

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: Role
    content: str
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "max_tokens", "stop", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("messages", "sampling", "model", "request_id")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    sampling: SamplingParams
    model: str
    request_id: str
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., model: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ChatDecision(_message.Message):
    __slots__ = ("served", "policy_version", "detector_error")
    SERVED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_ERROR_FIELD_NUMBER: _ClassVar[int]
    served: Served
    policy_version: int
    detector_error: bool
    def __init__(self, served: _Optional[_Union[Served, str]] = ..., policy_version: _Optional[int] = ..., detector_error: _Optional[bool] = ...) -> None: ...

class SetVerdict(_message.Message):
    __slots__ = ("forget_set", "score", "matched", "scale", "reason")
    FORGET_SET_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    forget_set: str
    score: float
    matched: bool
    scale: float
    reason: str
    def __init__(self, forget_set: _Optional[str] = ..., score: _Optional[float] = ..., matched: _Optional[bool] = ..., scale: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class AppliedAdapter(_message.Message):
    __slots__ = ("name", "scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    scale: float
    def __init__(self, name: _Optional[str] = ..., scale: _Optional[float] = ...) -> None: ...

class GateDecision(_message.Message):
    __slots__ = ("verdicts", "adapters", "refused", "policy_version", "detector_error")
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_ERROR_FIELD_NUMBER: _ClassVar[int]
    verdicts: _containers.RepeatedCompositeFieldContainer[SetVerdict]
    adapters: _containers.RepeatedCompositeFieldContainer[AppliedAdapter]
    refused: bool
    policy_version: int
    detector_error: bool
    def __init__(self, verdicts: _Optional[_Iterable[_Union[SetVerdict, _Mapping]]] = ..., adapters: _Optional[_Iterable[_Union[AppliedAdapter, _Mapping]]] = ..., refused: _Optional[bool] = ..., policy_version: _Optional[int] = ..., detector_error: _Optional[bool] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class ChatResponse(_message.Message):
    __slots__ = ("id", "model", "text", "finish_reason", "usage", "gate")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    text: str
    finish_reason: FinishReason
    usage: Usage
    gate: ChatDecision
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., text: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., gate: _Optional[_Union[ChatDecision, _Mapping]] = ...) -> None: ...

class ChatChunk(_message.Message):
    __slots__ = ("id", "delta", "finish_reason", "usage", "gate")
    ID_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    delta: str
    finish_reason: FinishReason
    usage: Usage
    gate: ChatDecision
    def __init__(self, id: _Optional[str] = ..., delta: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., gate: _Optional[_Union[ChatDecision, _Mapping]] = ...) -> None: ...

class ForgetSetHeader(_message.Message):
    __slots__ = ("name", "description", "subjects", "method", "keep_data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    KEEP_DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    subjects: _containers.RepeatedScalarFieldContainer[str]
    method: TrainingMethod
    keep_data: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., subjects: _Optional[_Iterable[str]] = ..., method: _Optional[_Union[TrainingMethod, str]] = ..., keep_data: _Optional[bool] = ...) -> None: ...

class QAPair(_message.Message):
    __slots__ = ("question", "answer")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    question: str
    answer: str
    def __init__(self, question: _Optional[str] = ..., answer: _Optional[str] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("qa", "text")
    QA_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    qa: QAPair
    text: str
    def __init__(self, qa: _Optional[_Union[QAPair, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class ExampleChunk(_message.Message):
    __slots__ = ("examples",)
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    examples: _containers.RepeatedCompositeFieldContainer[Example]
    def __init__(self, examples: _Optional[_Iterable[_Union[Example, _Mapping]]] = ...) -> None: ...

class RegisterForgetSetRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ForgetSetHeader
    chunk: ExampleChunk
    def __init__(self, header: _Optional[_Union[ForgetSetHeader, _Mapping]] = ..., chunk: _Optional[_Union[ExampleChunk, _Mapping]] = ...) -> None: ...

class RegisterForgetSetResponse(_message.Message):
    __slots__ = ("name", "job_id", "state", "example_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    job_id: str
    state: RegistrationState
    example_count: int
    def __init__(self, name: _Optional[str] = ..., job_id: _Optional[str] = ..., state: _Optional[_Union[RegistrationState, str]] = ..., example_count: _Optional[int] = ...) -> None: ...

class AdapterOverlap(_message.Message):
    __slots__ = ("other_set", "overlap")
    OTHER_SET_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    other_set: str
    overlap: float
    def __init__(self, other_set: _Optional[str] = ..., overlap: _Optional[float] = ...) -> None: ...

class ForgetSet(_message.Message):
    __slots__ = ("name", "description", "subjects", "method", "state", "example_count", "keep_data", "data_retained", "job_id", "error", "adapter_version", "overlaps", "created_at", "updated_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    KEEP_DATA_FIELD_NUMBER: _ClassVar[int]
    DATA_RETAINED_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    OVERLAPS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    subjects: _containers.RepeatedScalarFieldContainer[str]
    method: TrainingMethod
    state: RegistrationState
    example_count: int
    keep_data: bool
    data_retained: bool
    job_id: str
    error: str
    adapter_version: int
    overlaps: _containers.RepeatedCompositeFieldContainer[AdapterOverlap]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., subjects: _Optional[_Iterable[str]] = ..., method: _Optional[_Union[TrainingMethod, str]] = ..., state: _Optional[_Union[RegistrationState, str]] = ..., example_count: _Optional[int] = ..., keep_data: _Optional[bool] = ..., data_retained: _Optional[bool] = ..., job_id: _Optional[str] = ..., error: _Optional[str] = ..., adapter_version: _Optional[int] = ..., overlaps: _Optional[_Iterable[_Union[AdapterOverlap, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListForgetSetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListForgetSetsResponse(_message.Message):
    __slots__ = ("forget_sets",)
    FORGET_SETS_FIELD_NUMBER: _ClassVar[int]
    forget_sets: _containers.RepeatedCompositeFieldContainer[ForgetSet]
    def __init__(self, forget_sets: _Optional[_Iterable[_Union[ForgetSet, _Mapping]]] = ...) -> None: ...

class GetForgetSetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchRegistrationRequest(_message.Message):
    __slots__ = ("name", "job_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    job_id: str
    def __init__(self, name: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class RegistrationEvent(_message.Message):
    __slots__ = ("name", "job_id", "state", "fraction", "message", "time", "terminal")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    job_id: str
    state: RegistrationState
    fraction: float
    message: str
    time: _timestamp_pb2.Timestamp
    terminal: bool
    def __init__(self, name: _Optional[str] = ..., job_id: _Optional[str] = ..., state: _Optional[_Union[RegistrationState, str]] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., terminal: _Optional[bool] = ...) -> None: ...

class DeleteForgetSetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteForgetSetResponse(_message.Message):
    __slots__ = ("name", "state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: RegistrationState
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[RegistrationState, str]] = ...) -> None: ...

class SetPolicy(_message.Message):
    __slots__ = ("threshold", "softness", "min_scale", "max_scale", "mode", "refusal_threshold")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SOFTNESS_FIELD_NUMBER: _ClassVar[int]
    MIN_SCALE_FIELD_NUMBER: _ClassVar[int]
    MAX_SCALE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    softness: float
    min_scale: float
    max_scale: float
    mode: GateMode
    refusal_threshold: float
    def __init__(self, threshold: _Optional[float] = ..., softness: _Optional[float] = ..., min_scale: _Optional[float] = ..., max_scale: _Optional[float] = ..., mode: _Optional[_Union[GateMode, str]] = ..., refusal_threshold: _Optional[float] = ...) -> None: ...

class GatePolicy(_message.Message):
    __slots__ = ("version", "default_policy", "per_set", "scale_grid", "on_detector_error", "created_at")
    class PerSetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SetPolicy
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SetPolicy, _Mapping]] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_POLICY_FIELD_NUMBER: _ClassVar[int]
    PER_SET_FIELD_NUMBER: _ClassVar[int]
    SCALE_GRID_FIELD_NUMBER: _ClassVar[int]
    ON_DETECTOR_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    default_policy: SetPolicy
    per_set: _containers.MessageMap[str, SetPolicy]
    scale_grid: _containers.RepeatedScalarFieldContainer[float]
    on_detector_error: DetectorErrorBehaviour
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., default_policy: _Optional[_Union[SetPolicy, _Mapping]] = ..., per_set: _Optional[_Mapping[str, SetPolicy]] = ..., scale_grid: _Optional[_Iterable[float]] = ..., on_detector_error: _Optional[_Union[DetectorErrorBehaviour, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetGatePolicyRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class SetPolicyChanges(_message.Message):
    __slots__ = ("threshold", "softness", "min_scale", "max_scale", "mode", "refusal_threshold", "clear_refusal_threshold", "on_detector_error")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SOFTNESS_FIELD_NUMBER: _ClassVar[int]
    MIN_SCALE_FIELD_NUMBER: _ClassVar[int]
    MAX_SCALE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLEAR_REFUSAL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ON_DETECTOR_ERROR_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    softness: float
    min_scale: float
    max_scale: float
    mode: GateMode
    refusal_threshold: float
    clear_refusal_threshold: bool
    on_detector_error: DetectorErrorBehaviour
    def __init__(self, threshold: _Optional[float] = ..., softness: _Optional[float] = ..., min_scale: _Optional[float] = ..., max_scale: _Optional[float] = ..., mode: _Optional[_Union[GateMode, str]] = ..., refusal_threshold: _Optional[float] = ..., clear_refusal_threshold: _Optional[bool] = ..., on_detector_error: _Optional[_Union[DetectorErrorBehaviour, str]] = ...) -> None: ...

class UpdateGatePolicyRequest(_message.Message):
    __slots__ = ("forget_set", "changes")
    FORGET_SET_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    forget_set: str
    changes: SetPolicyChanges
    def __init__(self, forget_set: _Optional[str] = ..., changes: _Optional[_Union[SetPolicyChanges, _Mapping]] = ...) -> None: ...

class RollbackGatePolicyRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ListGatePolicyVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListGatePolicyVersionsResponse(_message.Message):
    __slots__ = ("versions", "current_version")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[GatePolicy]
    current_version: int
    def __init__(self, versions: _Optional[_Iterable[_Union[GatePolicy, _Mapping]]] = ..., current_version: _Optional[int] = ...) -> None: ...

class Conversation(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("messages", "proposed_changes")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_CHANGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    proposed_changes: _containers.RepeatedCompositeFieldContainer[UpdateGatePolicyRequest]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., proposed_changes: _Optional[_Iterable[_Union[UpdateGatePolicyRequest, _Mapping]]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("decision", "scored_text", "detector_error_message", "detector_ms")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SCORED_TEXT_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_MS_FIELD_NUMBER: _ClassVar[int]
    decision: GateDecision
    scored_text: str
    detector_error_message: str
    detector_ms: float
    def __init__(self, decision: _Optional[_Union[GateDecision, _Mapping]] = ..., scored_text: _Optional[str] = ..., detector_error_message: _Optional[str] = ..., detector_ms: _Optional[float] = ...) -> None: ...

class ExplainBatchRequest(_message.Message):
    __slots__ = ("conversations", "proposed_changes")
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_CHANGES_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[Conversation]
    proposed_changes: _containers.RepeatedCompositeFieldContainer[UpdateGatePolicyRequest]
    def __init__(self, conversations: _Optional[_Iterable[_Union[Conversation, _Mapping]]] = ..., proposed_changes: _Optional[_Iterable[_Union[UpdateGatePolicyRequest, _Mapping]]] = ...) -> None: ...

class ExplainBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ExplainResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[ExplainResponse, _Mapping]]] = ...) -> None: ...

class LabelledProbe(_message.Message):
    __slots__ = ("prompt", "should_forget")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SHOULD_FORGET_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    should_forget: bool
    def __init__(self, prompt: _Optional[str] = ..., should_forget: _Optional[bool] = ...) -> None: ...

class CalibrationReportRequest(_message.Message):
    __slots__ = ("forget_set", "probes", "target_catch_rate", "target_fpr", "apply", "output_dir")
    FORGET_SET_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    TARGET_CATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    APPLY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    forget_set: str
    probes: _containers.RepeatedCompositeFieldContainer[LabelledProbe]
    target_catch_rate: float
    target_fpr: float
    apply: bool
    output_dir: str
    def __init__(self, forget_set: _Optional[str] = ..., probes: _Optional[_Iterable[_Union[LabelledProbe, _Mapping]]] = ..., target_catch_rate: _Optional[float] = ..., target_fpr: _Optional[float] = ..., apply: _Optional[bool] = ..., output_dir: _Optional[str] = ...) -> None: ...

class CalibrationReportResponse(_message.Message):
    __slots__ = ("forget_set", "roc_auc", "suggested_threshold", "catch_rate", "false_positive_rate", "positives", "negatives", "plot_paths", "summary_json_path", "applied_policy_version")
    FORGET_SET_FIELD_NUMBER: _ClassVar[int]
    ROC_AUC_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    FALSE_POSITIVE_RATE_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    NEGATIVES_FIELD_NUMBER: _ClassVar[int]
    PLOT_PATHS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_PATH_FIELD_NUMBER: _ClassVar[int]
    APPLIED_POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    forget_set: str
    roc_auc: float
    suggested_threshold: float
    catch_rate: float
    false_positive_rate: float
    positives: int
    negatives: int
    plot_paths: _containers.RepeatedScalarFieldContainer[str]
    summary_json_path: str
    applied_policy_version: int
    def __init__(self, forget_set: _Optional[str] = ..., roc_auc: _Optional[float] = ..., suggested_threshold: _Optional[float] = ..., catch_rate: _Optional[float] = ..., false_positive_rate: _Optional[float] = ..., positives: _Optional[int] = ..., negatives: _Optional[int] = ..., plot_paths: _Optional[_Iterable[str]] = ..., summary_json_path: _Optional[str] = ..., applied_policy_version: _Optional[int] = ...) -> None: ...
