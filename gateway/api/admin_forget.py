"""The forget-set half of the Admin gRPC service: register, list, show, watch, delete.

Mixed into ``oblivio.gateway.api.admin_service.AdminServicer`` (which provides ``self.runtime``);
all work is delegated to ``runtime.registration`` (the RegistrationPipeline), so these methods
only translate between protobuf and the pipeline. Errors are members of
:mod:`oblivio.gateway.errors`' family, turned into status codes by the server's interceptor:
bad input -> INVALID_ARGUMENT, unknown set/job -> NOT_FOUND, taken name -> ALREADY_EXISTS,
no pipeline in this process -> FAILED_PRECONDITION.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from oblivio.adapters.limits import RegistrationLimits
from oblivio.adapters.registry import ForgetSetRecord
from oblivio.gateway.errors import FailedPrecondition, InvalidArgument
from oblivio.gateway.api.proto_convert import METHOD_FROM_PROTO, METHOD_TO_PROTO, STATE_TO_PROTO
from oblivio.v1 import oblivio_pb2 as pb

if TYPE_CHECKING:
    from oblivio.adapters.registration.events import RegistrationEvent
    from oblivio.adapters.registration.pipeline import RegistrationPipeline



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


class ForgetAdminMixin:
    """RegisterForgetSet, ListForgetSets, GetForgetSet, WatchRegistration, DeleteForgetSet."""

    runtime: Any

    def _pipeline(self) -> RegistrationPipeline:
        pipeline: RegistrationPipeline | None = getattr(self.runtime, "registration", None)
        if pipeline is None:
            raise FailedPrecondition("this gateway runs without a registration pipeline")
        return pipeline

    async def RegisterForgetSet(
        self, request_iterator: AsyncIterator[pb.RegisterForgetSetRequest], context: grpc.aio.ServicerContext
    ) -> pb.RegisterForgetSetResponse:
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
        return pb.RegisterForgetSetResponse(
            name=record.name, job_id=record.job_id, state=STATE_TO_PROTO[record.state],
            example_count=record.example_count,
        )

    async def ListForgetSets(
        self, request: pb.ListForgetSetsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListForgetSetsResponse:
        records = self._pipeline().list()
        return pb.ListForgetSetsResponse(forget_sets=[forget_set_to_proto(r) for r in records])

    async def GetForgetSet(self, request: pb.GetForgetSetRequest, context: grpc.aio.ServicerContext) -> pb.ForgetSet:
        record = self._pipeline().get(request.name)
        return forget_set_to_proto(record)

    async def WatchRegistration(
        self, request: pb.WatchRegistrationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RegistrationEvent]:
        async for event in self._pipeline().watch(request.name, request.job_id):
            yield event_to_proto(event)

    async def DeleteForgetSet(
        self, request: pb.DeleteForgetSetRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteForgetSetResponse:
        state = await self._pipeline().delete(request.name)
        return pb.DeleteForgetSetResponse(name=request.name, state=STATE_TO_PROTO[state])


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
                raise InvalidArgument("the forget set header must be sent exactly once, as the first message")
            header = message.header
        elif kind == "chunk":
            if header is None:
                raise InvalidArgument("send the forget set header before any examples")
            for example in message.chunk.examples:
                which = example.WhichOneof("kind")
                if which == "qa":
                    examples.append({"question": example.qa.question, "answer": example.qa.answer})
                elif which == "text":
                    examples.append({"text": example.text})
                else:
                    raise InvalidArgument("an example must be a question/answer pair or a text")
                counter.add(examples[-1])
        else:
            raise InvalidArgument("empty RegisterForgetSetRequest message")
    if header is None:
        raise InvalidArgument("no forget set header received")
    if header.method not in METHOD_FROM_PROTO:
        raise InvalidArgument(f"unknown training method {header.method}")
    return header, examples
