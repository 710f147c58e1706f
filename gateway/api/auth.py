"""Authentication for both front doors: bearer tokens for Admin, API keys for chat.

The gateway decides what a model may say, so the Admin API (which changes that) is a security
boundary. Secrets are compared in constant time against every configured value (no early exit
that would leak which one nearly matched), and logs name the peer and method, never the token.
Health checking and reflection stay open so orchestrators can probe without credentials.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import grpc

from oblivio.gateway.config import MIN_SECRET_CHARS, AuthConfig, ConfigError
from oblivio.gateway.errors import OblivioError, PermissionDenied, Unauthenticated, error_status

ADMIN_METHOD_PREFIX = "/oblivio.v1.Admin/"
CHAT_METHOD_PREFIX = "/oblivio.v1.Chat/"


class Scope(str, Enum):
    ADMIN = "admin"
    CHAT = "chat"
    METRICS = "metrics"


SCOPE_NAMES = {Scope.ADMIN: "the Admin API", Scope.CHAT: "chat", Scope.METRICS: "/metrics"}


class AuthError(OblivioError):
    """A request was refused for its credentials; one of the two kinds below."""

    openai_code = "invalid_api_key"

    @property
    def unauthenticated(self) -> bool:
        """True for missing, malformed or unknown credentials; False for a valid credential
        that may not use the scope."""
        return isinstance(self, Unauthenticated)


class BadCredentials(AuthError, Unauthenticated):
    """No credentials, malformed ones, or ones this server does not know."""


class ScopeDenied(AuthError, PermissionDenied):
    """A valid credential that does not open the scope asked for."""


def _read_secret_file(file: Path) -> list[str]:
    """The secrets of a token file (one per line, ``#`` comments and blank lines skipped).

    Inline tokens are length-checked by the config; a file is read only here, so its tokens
    are checked here, by the same rule. Errors name the file and line, never the token.
    """
    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {file}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"token file {file} is not valid UTF-8 text") from None
    secrets = []
    for number, line in enumerate(lines, start=1):
        secret = line.strip()
        if not secret or secret.startswith("#"):
            continue
        if len(secret) < MIN_SECRET_CHARS:
            raise ConfigError(
                f"token file {file}, line {number}: tokens must be at least {MIN_SECRET_CHARS} characters"
            )
        secrets.append(secret)
    return secrets


def _read_secrets(inline: Iterable[str], file: Path | None) -> tuple[bytes, ...]:
    secrets = list(inline) + (_read_secret_file(file) if file is not None else [])
    return tuple(secret.encode() for secret in secrets)


def _matches_any(candidate: bytes, secrets: tuple[bytes, ...]) -> bool:
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(candidate, secret)
    return found


@dataclass(frozen=True)
class Authenticator:
    """Which secrets open which scope; an empty set of secrets leaves that scope open."""

    admin_tokens: tuple[bytes, ...]
    chat_keys: tuple[bytes, ...]
    metrics_tokens: tuple[bytes, ...] = ()

    @classmethod
    def from_config(cls, config: AuthConfig) -> "Authenticator":
        return cls(
            admin_tokens=_read_secrets(config.admin_tokens, config.admin_tokens_file),
            chat_keys=_read_secrets(config.chat_api_keys, config.chat_api_keys_file),
            metrics_tokens=_read_secrets(config.metrics_tokens, config.metrics_tokens_file),
        )

    def _own_secrets(self, scope: Scope) -> tuple[bytes, ...]:
        return {Scope.ADMIN: self.admin_tokens, Scope.CHAT: self.chat_keys, Scope.METRICS: self.metrics_tokens}[scope]

    def required(self, scope: Scope) -> bool:
        """Admin and chat are closed once their own secrets exist; metrics once admin tokens do
        too, since its per-set series are operator data."""
        return bool(self._own_secrets(scope) or (scope is Scope.METRICS and self.admin_tokens))

    def check(self, scope: Scope, authorization: str | None) -> None:
        """Raise AuthError unless ``authorization`` ("Bearer <secret>") opens ``scope``.

        An admin token opens every scope (operators test what they configure); a chat key or
        metrics token opens only its own: another valid credential is PERMISSION_DENIED, not
        UNAUTHENTICATED.
        """
        if not self.required(scope):
            return
        if not authorization:
            raise BadCredentials("missing credentials: send 'authorization: Bearer <token>'")
        kind, _, secret = authorization.partition(" ")
        if kind.lower() != "bearer" or not secret.strip():
            raise BadCredentials("malformed authorization header: expected 'Bearer <token>'")
        candidate = secret.strip().encode()
        if _matches_any(candidate, self.admin_tokens + self._own_secrets(scope)):
            return
        if _matches_any(candidate, self.chat_keys + self.metrics_tokens):
            raise ScopeDenied(f"this credential may not use {SCOPE_NAMES[scope]}")
        raise BadCredentials("invalid credentials")


def scope_of_method(method: str) -> Scope | None:
    if method.startswith(ADMIN_METHOD_PREFIX):
        return Scope.ADMIN
    if method.startswith(CHAT_METHOD_PREFIX):
        return Scope.CHAT
    return None


def _denying_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape as ``handler`` that only aborts."""

    async def abort_unary(request_or_iterator: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def abort_stream(request_or_iterator: object, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.abort(code, message)
        yield  # pragma: no cover - unreachable, makes this an async generator

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort_unary)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort_unary)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks credentials before any oblivio.v1 handler runs."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        scope = scope_of_method(handler_call_details.method)
        if handler is None or scope is None:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        try:
            self._authenticator.check(scope, metadata.get("authorization"))
        except AuthError as exc:
            status = error_status(exc, handler_call_details.method)
            return _denying_handler(handler, status.grpc_code, status.message)
        return handler


def server_credentials(config: AuthConfig) -> grpc.ServerCredentials | None:
    """TLS (and mTLS when a client CA is configured) for the gRPC port; None = plaintext."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    key, cert = Path(config.tls_key_file).read_bytes(), Path(config.tls_cert_file).read_bytes()
    client_ca = Path(config.tls_client_ca_file).read_bytes() if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
