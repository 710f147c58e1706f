"""The one error model: what each kind of failure tells a client, over gRPC and HTTP alike."""

from __future__ import annotations

import json

import grpc
import pytest

from oblivio.adapters.forget_set import UnknownForgetSetError
from oblivio.adapters.registry import ForgetSetExistsError, RegistryUnavailableError
from oblivio.adapters.variants import AdapterFormatError
from oblivio.detector import IncompatibleScorerError
from oblivio.gateway.api.auth import BadCredentials, ScopeDenied
from oblivio.gateway.serving.backends.base import BackendError
from oblivio.gateway.serving.chat_core import ChatInputError, ModelNotServedError
from oblivio.gateway.errors import DeadlineExceeded, FailedPrecondition, ServerBusy, error_status
from oblivio.gateway.api.openai_http import RequestFieldError, error_for

Code = grpc.StatusCode


@pytest.mark.parametrize(
    ("exc", "code", "http"),
    [
        (ChatInputError("bad"), Code.INVALID_ARGUMENT, 400),
        (UnknownForgetSetError("no forget set named 'x'"), Code.NOT_FOUND, 404),
        (ForgetSetExistsError("taken"), Code.ALREADY_EXISTS, 409),
        (FailedPrecondition("no detector"), Code.FAILED_PRECONDITION, 400),
        (BackendError("engine down"), Code.UNAVAILABLE, 503),
        (RegistryUnavailableError("database restarting"), Code.UNAVAILABLE, 503),
                (BadCredentials("invalid credentials"), Code.UNAUTHENTICATED, 401),
        (ScopeDenied("may not use the Admin API"), Code.PERMISSION_DENIED, 403),
        (DeadlineExceeded("deadline exceeded"), Code.DEADLINE_EXCEEDED, 504),
    ],
)
def test_client_errors_carry_their_status_and_message(exc: Exception, code: grpc.StatusCode, http: int) -> None:
    status = error_status(exc, "test")
    # The message as raised: NotFound is a KeyError, but its message is not repr-quoted.
    assert (status.grpc_code, status.http_status, status.message) == (code, http, exc.args[0] if exc.args else "")


@pytest.mark.parametrize(
    "exc",
    [
        AdapterFormatError("the stored adapter is broken"),  # ValueErrors of the server's own state
        IncompatibleScorerError("refit it"),
        ValueError("an engine's ValueError"),
        KeyError("a stray lookup"),
        RuntimeError("a bug"),
    ],
)
def test_everything_else_is_internal_without_details(exc: Exception, caplog: pytest.LogCaptureFixture) -> None:
    status = error_status(exc, "test")
    assert (status.grpc_code, status.http_status) == (Code.INTERNAL, 500)
    assert status.message == f"internal error ({type(exc).__name__}); see the server log"
    assert any(record.exc_info and record.exc_info[1] is exc for record in caplog.records)  # a traceback


def test_a_busy_replica_is_resource_exhausted_over_grpc_but_503_over_http() -> None:
    status = error_status(ServerBusy(2), "test")
    assert (status.grpc_code, status.http_status) == (Code.RESOURCE_EXHAUSTED, 503)
    assert "limit of 2 concurrent chat calls" in status.message


def test_http_errors_keep_openai_fields() -> None:
    def body(exc: Exception) -> dict[str, object]:
        return json.loads(error_for(exc, "test").body)["error"]

    assert body(ModelNotServedError("model 'x' is not served here")) == {
        "message": "model 'x' is not served here", "type": "invalid_request_error",
        "param": "model", "code": "model_not_found",
    }
    assert body(RequestFieldError("stream: not a boolean", param="stream"))["param"] == "stream"
    assert body(BackendError("engine down"))["code"] == "backend_unavailable"
    assert body(ServerBusy(1))["type"] == "server_error"
    assert body(BadCredentials("invalid credentials"))["code"] == "invalid_api_key"
