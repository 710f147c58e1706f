"""The one error model of every front door: gRPC Chat, gRPC Admin and both HTTP front doors.

An exception meant for a client is a member of :class:`OblivioError`'s family, and its class
says what the client gets: a gRPC status code, an HTTP status and (for OpenAI clients) an error
``code`` and the request field at fault. :func:`error_status` is the ONE place that turns an
exception into that answer. Anything outside the family is a server fault: INTERNAL / 500, a
message that names only the exception's type, and a traceback in the server log.

Why a family instead of the builtins: the old mappers went by ``ValueError`` and ``KeyError``,
so a server fault that happened to subclass one (a broken stored adapter, an incompatible
scorer, an engine's ValueError) reached clients as their own mistake, and any stray KeyError
became NOT_FOUND. Client-error classes still subclass the builtin they replaced (InvalidArgument
is a ValueError, NotFound a KeyError) so ``except ValueError`` around validation keeps working;
the mapping never looks at the builtins.

FAILED_PRECONDITION maps to HTTP 400, as in google.rpc.Code's documented HTTP mapping: the call
cannot succeed in the server's present state (no detector, no registration pipeline) and
retrying it unchanged does not help; 409 stays ALREADY_EXISTS's, a conflict with a named thing.

Torch-free and free of oblivio imports, so adapters/ and detector/ may raise these too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import grpc

LOG = logging.getLogger(__name__)


class OblivioError(Exception):
    """Base of the client-facing errors; raise a subclass, whose class attributes say the status.

    ``openai_code`` is the ``code`` of OpenAI's error body and ``param`` the request field at
    fault (a class default, or set per instance by a subclass that knows the field).
    """

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500
    openai_code: ClassVar[str | None] = None
    param: str | None = None

    def __str__(self) -> str:
        # One argument is the message, also for the KeyError members (KeyError repr-quotes it).
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InvalidArgument(OblivioError, ValueError):
    """The request is malformed or out of bounds; the message says what to fix."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(OblivioError, KeyError):
    """The request names something (a forget set, a policy version, a model) that does not exist."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(OblivioError):
    """The request would create something whose name is taken."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class FailedPrecondition(OblivioError):
    """This server cannot do the call in its present state (e.g. it runs without a detector)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400


class Unavailable(OblivioError):
    """A dependency (engine, registry database) cannot serve right now; the call may be retried."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class ResourceExhausted(OblivioError):
    """A quota or capacity bound of this server is reached."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class ServerBusy(ResourceExhausted):
    """Every chat slot of this replica is taken (``server.max_concurrent_requests``).

    HTTP 503 rather than 429: the bound is the replica's, not the client's quota, so a client or
    load balancer should retry shortly, preferably on another replica.
    """

    http_status = 503
    openai_code = "server_busy"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this server is at its limit of {limit} concurrent chat calls "
            "(server.max_concurrent_requests); retry shortly or use another replica"
        )


class Unauthenticated(OblivioError):
    """No credentials, malformed ones, or ones this server does not know."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(OblivioError):
    """Valid credentials that may not use what the call asks for."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class DeadlineExceeded(OblivioError):
    """The client's deadline passed before the work finished."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


@dataclass(frozen=True)
class ErrorStatus:
    """What a client is told about a failed call, in the terms of every front door."""

    grpc_code: grpc.StatusCode
    http_status: int
    message: str
    openai_code: str | None = None
    param: str | None = None

    @property
    def openai_type(self) -> str:
        """OpenAI's error ``type``: the client's fault or the server's."""
        return "invalid_request_error" if self.http_status < 500 else "server_error"


def error_status(exc: BaseException, where: str) -> ErrorStatus:
    """The answer to a call (named ``where`` in the log) that failed with ``exc``.

    A family member gets its class's status and its own message (logged at INFO); anything else
    is a server fault, logged with its traceback and answered INTERNAL / 500 without details.
    """
    if isinstance(exc, OblivioError) and exc.grpc_code is not grpc.StatusCode.INTERNAL:
        status = ErrorStatus(exc.grpc_code, exc.http_status, str(exc), exc.openai_code, exc.param)
        LOG.info("%s -> %s: %s", where, status.grpc_code.name, status.message)
        return status
    LOG.error("%s failed", where, exc_info=exc)
    return ErrorStatus(grpc.StatusCode.INTERNAL, 500, f"internal error ({type(exc).__name__}); see the server log")
