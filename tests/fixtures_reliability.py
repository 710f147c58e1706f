"""Reliability fixtures and helpers: snapshots of stored state, request builders.

A refusal of bad input must leave everything stored untouched, so tests compare a snapshot of
the artifact directory (every file's path and content hash, SQLite side files excluded because
a reader may checkpoint the WAL) and of the registry/policy state before and after.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from oblivio.v1 import oblivio_pb2 as pb

# SQLite may rewrite its -wal/-shm side files on a plain read; their content is not state.
_VOLATILE_SUFFIXES = ("-wal", "-shm", "-journal")


def tree_snapshot(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every regular file under ``root`` (directories as "dir")."""
    snapshot: dict[str, str] = {}
    if not root.exists():
        return snapshot
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.name.endswith(_VOLATILE_SUFFIXES):
            continue
        if path.is_dir():
            snapshot[rel] = "dir"
        elif path.is_file():
            snapshot[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return snapshot


def stored_state(gateway: Any) -> dict[str, Any]:
    """Everything a refused request must not change: files, registry rows, gate policy."""
    runtime = gateway.runtime
    registration = runtime.registration
    policy = runtime.policy_store.current()
    return {
        "files": tree_snapshot(runtime.config.artifacts_path),
        "sets": [(r.name, r.state.value, r.job_id) for r in registration.list()] if registration else [],
        "policy_version": policy.version,
        "known_sets": sorted(runtime.policy_store.known_sets()),
        "adapters": sorted(runtime.backend.list_adapters()),
    }


def user_request(text: str, **sampling: Any) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=text)],
        sampling=pb.SamplingParams(**({"max_tokens": 4, "temperature": 0.0} | sampling)),
    )


def registration_messages(
    name: str, examples: list[dict[str, str]], *, chunk: int = 500, **header: Any
) -> list[pb.RegisterForgetSetRequest]:
    """The client-streamed RegisterForgetSet messages: header, then example chunks."""
    messages = [pb.RegisterForgetSetRequest(header=pb.ForgetSetHeader(name=name, **header))]
    for start in range(0, len(examples), chunk):
        items = []
        for ex in examples[start:start + chunk]:
            if "text" in ex:
                items.append(pb.Example(text=ex["text"]))
            else:
                items.append(pb.Example(qa=pb.QAPair(question=ex.get("question", ""), answer=ex.get("answer", ""))))
        messages.append(pb.RegisterForgetSetRequest(chunk=pb.ExampleChunk(examples=items)))
    return messages


async def stream_of(messages: list[Any]):
    for message in messages:
        yield message
