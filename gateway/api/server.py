"""One process, one event loop: gRPC (Chat, Admin, health, reflection) and the OpenAI-compatible
HTTP app side by side over the same Runtime.

Why the same loop: both front doors then share the backend's async streams, the detector's
micro-batcher and the policy store without any cross-thread hand-off, and one graceful
shutdown drains both. Port 0 binds an ephemeral port (tests); the bound ports are reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from oblivio.adapters.registry import RegistryStateError
from oblivio.gateway.serving.backends.base import BackendError
from oblivio.gateway.api.auth import Authenticator
from oblivio.gateway.serving.backends.vllm_backend import VLLMBackend
from oblivio.gateway.config import OblivioConfig
from oblivio.gateway.api.grpc_server import GrpcServer
from oblivio.gateway.api.openai_http import create_app
from oblivio.gateway.serving.runtime import Runtime, build_runtime

LOG = logging.getLogger(__name__)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the Gateway decides when to shut down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind HTTP to {host}:{port}: {exc.strerror}") from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Gateway:
    """Starts and stops both servers around a Runtime."""

    def __init__(self, runtime: Runtime, authenticator: Authenticator) -> None:
        self.runtime = runtime
        server_config = runtime.config.server
        self.host = server_config.host
        # One authenticator (token files read once) guards both front doors.
        self.grpc = GrpcServer(runtime, host=self.host, port=server_config.grpc_port, authenticator=authenticator)
        self.authenticator = authenticator
        self.app: FastAPI | None = None  # built in start(): vLLM's app needs the running engine
        self.http_port: int | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._stopped = False

    @classmethod
    async def create(cls, config: OblivioConfig, **runtime_kwargs: Any) -> "Gateway":
        """Build the Runtime (loads the model, backend and detector) and wrap it.

        Token files are read first: a bad one then fails at once with a ConfigError, instead
        of after an engine has started (and would have to be torn down again).
        """
        authenticator = Authenticator.from_config(config.auth)
        return cls(await build_runtime(config, **runtime_kwargs), authenticator)

    @property
    def grpc_port(self) -> int | None:
        return self.grpc.port

    @property
    def grpc_target(self) -> str:
        return f"{_url_host(self.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.runtime.config.auth.tls_cert_file else "http"
        return f"{scheme}://{_url_host(self.host)}:{self.http_port}"

    async def _build_app(self) -> FastAPI:
        """vLLM's own OpenAI layer behind the gate for the vLLM backend; the hand-written one
        for the reference backend (exactness tests, no engine to build vLLM's on)."""
        runtime, server_config = self.runtime, self.runtime.config.server
        common: dict[str, Any] = dict(
            authenticator=self.authenticator,
            metrics=runtime.metrics,
            max_body_bytes=server_config.max_request_bytes,
            max_concurrent_chats=server_config.max_concurrent_requests,
        )
        if isinstance(runtime.backend, VLLMBackend):
            from oblivio.gateway.api.openai_vllm import create_vllm_app

            model = runtime.config.model
            return await create_vllm_app(runtime.chat, runtime.backend, served_name=model.served_name,
                                         model_path=str(runtime.config.model_path),
                                         max_model_len=model.max_model_len, **common)
        return create_app(runtime.chat, **common)

    async def start(self) -> None:
        config, auth = self.runtime.config.server, self.runtime.config.auth
        self.app = await self._build_app()
        await self.grpc.start()
        sock = _bind(self.host, config.http_port)
        self.http_port = sock.getsockname()[1]
        uv_config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(config.shutdown_grace_s)) if config.shutdown_grace_s else None,
            # The same certificate as gRPC; client certificates (mTLS) are a gRPC-side option.
            ssl_certfile=str(auth.tls_cert_file) if auth.tls_cert_file else None,
            ssl_keyfile=str(auth.tls_key_file) if auth.tls_key_file else None,
        )
        self._http = _EmbeddedUvicorn(uv_config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]), name="oblivio-http")
        while not self._http.started:
            if self._http_task.done():
                await self._http_task  # surfaces the bind/start error
                raise RuntimeError("HTTP server exited during start")
            await asyncio.sleep(0.01)
        await self.grpc.mark_serving()
        self.app.state.ready = True
        LOG.info("gRPC on %s, HTTP on %s", self.grpc_target, self.http_url)

    async def stop(self, grace: float | None = None) -> None:
        """Health goes NOT_SERVING, new calls are refused, in-flight ones get ``grace`` seconds."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.runtime.config.server.shutdown_grace_s if grace is None else grace
        if self.app is not None:
            self.app.state.ready = False
        if self._http is not None:
            self._http.config.timeout_graceful_shutdown = max(1, int(grace)) if grace else None
            self._http.should_exit = True
        await self.grpc.stop(grace)
        if self._http_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        await self.runtime.close()


def _ensure_model(config: OblivioConfig) -> None:
    if config.model.path is not None:
        if not config.model.path.exists():
            raise FileNotFoundError(f"model.path {config.model.path} does not exist")
        return
    from oblivio.gateway.serving.model_fetch import fetch_default_model

    fetch_default_model(config.model_path)


async def serve(config: OblivioConfig) -> int:
    """Start, print the addresses, wait for SIGINT/SIGTERM, drain, stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gateway = await Gateway.create(config)
    try:
        await gateway.start()
        print(f"oblivio: gRPC listening on {gateway.grpc_target}", flush=True)
        print(f"oblivio: OpenAI-compatible HTTP on {gateway.http_url}/v1 (metrics: {gateway.http_url}/metrics)", flush=True)
        await stop.wait()
        print(f"oblivio: shutting down (grace {config.server.shutdown_grace_s:g}s)", flush=True)
    finally:
        await gateway.stop()
    return 0


def run_server(config: OblivioConfig) -> int:
    """Entry point of ``oblivio serve``; returns the process exit code."""
    try:
        _ensure_model(config)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"oblivio: cannot prepare the model: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(config))
    except (OSError, BackendError, RegistryStateError) as exc:
        # Port in use, backend cannot load the model, registry unreadable or lost, ...: one
        # readable line, not a traceback.
        print(f"oblivio: cannot start the gateway: {exc}", file=sys.stderr)
        return 1
