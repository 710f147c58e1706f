"""The forget-set half of the Admin gRPC service: register, list, show, watch, delete.

Mixed into ``oblivio.gateway.admin_service.AdminServicer`` (which provides ``self.runtime``);
all work is delegated to ``runtime.registration`` (the RegistrationPipeline), so these methods
only translate between protobuf and the pipeline. Errors are mapped here as well as in the
server's interceptor so the codes are right even when the servicer is served without it:
bad input -> INVALID_ARGUMENT, unknown set/job -> NOT_FOUND, taken name -> ALREADY_EXISTS,
no pipeline in this process -> FAILED_PRECONDITION.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from oblivio.adapters.limits import RegistrationLimits
from oblivio.adapters.registry import ForgetSetRecord, RegistryUnavailableError, State
from oblivio.v1 import oblivio_pb2 as pb

if TYPE_CHECKING:
    from oblivio.adapters.pipeline import RegistrationEvent

METHOD_FROM_PROTO = {
    pb.TRAINING_METHOD_UNSPECIFIED: "refusal",
    pb.TRAINING_METHOD_REFUSAL: "refusal",
    pb.TRAINING_METHOD_NPO: "npo",
    pb.TRAINING_METHOD_IHL: "ihl",
}
METHOD_TO_PROTO = {"refusal": pb.TRAINING_METHOD_REFUSAL, "npo": pb.TRAINING_METHOD_NPO, "ihl": pb.TRAINING_METHOD_IHL}
STATE_TO_PROTO = {state: getattr(pb, f"REGISTRATION_STATE_{state.value}") for state in State}


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def forget_set_to_proto(record: ForgetSetRecord) -> pb.ForgetSet:
    return pb.ForgetSet(
        name=record.name,
        description=record.description,
        subjects=record.subjects,
        method=METHOD_TO_PROTO.get(record.method, pb.TRAINING_METHOD_UNSPECIFIED),
        state=STATE_TO_PROTO[record.state],
        example_count=record.example_count,
        keep_data=record.keep_data,
        data_retained=record.data_retained,
        job_id=record.job_id,
        error=record.error,
        adapter_version=record.adapter_version,
        overlaps=[pb.AdapterOverlap(other_set=k, overlap=v) for k, v in sorted(record.overlaps.items())],
        created_at=_timestamp(record.created_at),
        updated_at=_timestamp(record.updated_at),
    )


def event_to_proto(event: RegistrationEvent) -> pb.RegistrationEvent:
    return pb.RegistrationEvent(
        name=event.name,
        job_id=event.job_id,
        state=STATE_TO_PROTO[event.state],
        fraction=event.fraction,
        message=event.message,
        time=_timestamp(event.time),
        terminal=event.terminal,
    )


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status for an expected error; None for a bug (left to the interceptor as INTERNAL)."""
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, RegistryUnavailableError):  # a network registry restarting: retry
        return grpc.StatusCode.UNAVAILABLE, message
    if isinstance(exc, FileExistsError):
        return grpc.StatusCode.ALREADY_EXISTS, message
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, message
    if isinstance(exc, LookupError):
        return grpc.StatusCode.NOT_FOUND, message
    return None


class ForgetAdminMixin:
    """RegisterForgetSet, ListForgetSets, GetForgetSet, WatchRegistration, DeleteForgetSet."""

    runtime: Any

    def _pipeline(self) -> Any:
        pipeline = getattr(self.runtime, "registration", None)
        if pipeline is None:
            raise _Unavailable("this gateway runs without a registration pipeline")
        return pipeline

    async def _fail(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        if isinstance(exc, _Unavailable):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        mapped = status_for(exc)
        if mapped is None:
            raise exc
        await context.abort(*mapped)

    async def RegisterForgetSet(
        self, request_iterator: AsyncIterator[pb.RegisterForgetSetRequest], context: grpc.aio.ServicerContext
    ) -> pb.RegisterForgetSetResponse:
        try:
            pipeline = self._pipeline()
            header, examples = await _read_registration(request_iterator, pipeline.limits)
            record = await pipeline.register(
                header.name,
                examples,
                description=header.description,
                subjects=list(header.subjects),
                method=METHOD_FROM_PROTO.get(header.method, ""),
                keep_data=header.keep_data,
            )
        except Exception as exc:  # noqa: BLE001 - mapped to a status (or re-raised)
            await self._fail(context, exc)
            raise
        return pb.RegisterForgetSetResponse(
            name=record.name, job_id=record.job_id, state=STATE_TO_PROTO[record.state],
            example_count=record.example_count,
        )

    async def ListForgetSets(
        self, request: pb.ListForgetSetsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListForgetSetsResponse:
        try:
            records = self._pipeline().list()
        except Exception as exc:  # noqa: BLE001
            await self._fail(context, exc)
            raise
        return pb.ListForgetSetsResponse(forget_sets=[forget_set_to_proto(r) for r in records])

    async def GetForgetSet(self, request: pb.GetForgetSetRequest, context: grpc.aio.ServicerContext) -> pb.ForgetSet:
        try:
            record = self._pipeline().get(request.name)
        except Exception as exc:  # noqa: BLE001
            await self._fail(context, exc)
            raise
        return forget_set_to_proto(record)

    async def WatchRegistration(
        self, request: pb.WatchRegistrationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RegistrationEvent]:
        try:
            events = self._pipeline().watch(request.name, request.job_id)
            async for event in events:
                yield event_to_proto(event)
        except Exception as exc:  # noqa: BLE001
            await self._fail(context, exc)
            raise

    async def DeleteForgetSet(
        self, request: pb.DeleteForgetSetRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteForgetSetResponse:
        try:
            state = await self._pipeline().delete(request.name)
        except Exception as exc:  # noqa: BLE001
            await self._fail(context, exc)
            raise
        return pb.DeleteForgetSetResponse(name=request.name, state=STATE_TO_PROTO[state])


class _Unavailable(RuntimeError):
    grpc_status_code = grpc.StatusCode.FAILED_PRECONDITION


async def _read_registration(
    request_iterator: AsyncIterator[pb.RegisterForgetSetRequest], limits: RegistrationLimits,
) -> tuple[pb.ForgetSetHeader, list[dict[str, str]]]:
    """Header first (exactly once), then example chunks. Each example is counted against
    ``limits`` as it arrives, so an oversized set is refused without buffering the rest of it."""
    header: pb.ForgetSetHeader | None = None
    examples: list[dict[str, str]] = []
    counter = limits.counter()
    async for message in request_iterator:
        kind = message.WhichOneof("item")
        if kind == "header":
            if header is not None:
                raise ValueError("the forget set header must be sent exactly once, as the first message")
            header = message.header
        elif kind == "chunk":
            if header is None:
                raise ValueError("send the forget set header before any examples")
            for example in message.chunk.examples:
                which = example.WhichOneof("kind")
                if which == "qa":
                    examples.append({"question": example.qa.question, "answer": example.qa.answer})
                elif which == "text":
                    examples.append({"text": example.text})
                else:
                    raise ValueError("an example must be a question/answer pair or a text")
                counter.add(examples[-1])
        else:
            raise ValueError("empty RegisterForgetSetRequest message")
    if header is None:
        raise ValueError("no forget set header received")
    if header.method not in METHOD_FROM_PROTO:
        raise ValueError(f"unknown training method {header.method}")
    return header, examples
