"""``oblivio forget register|list|show|watch|delete``: manage the forget sets of a running gateway.

Talks to the server's Admin gRPC API (connection flags and error printing shared with
``oblivio gate``), so registration happens in the live process while it keeps serving.
Examples are read from a file: JSONL with ``{"question": ..., "answer": ...}`` or
``{"text": ...}`` per line, or a ``.txt`` file with one plain text per line; they are streamed
in chunks so a large set never becomes one giant message.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oblivio.gateway.cli.admin_client import CliInputError, add_admin_flags, message_to_json, run_admin_command
from oblivio.gateway.input_files import json_lines, read_utf8_text

CHUNK = 64
METHODS = ("refusal", "npo", "ihl")
EXAMPLE_FIELDS = ("question", "answer", "text")
JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}


def register(subparsers: argparse._SubParsersAction) -> None:
    forget = subparsers.add_parser("forget", help="register, inspect and delete forget sets of a running gateway")
    actions = forget.add_subparsers(dest="forget_command", required=True)

    reg = actions.add_parser("register", help="register a forget set; the gateway enforces it at once and trains its adapter")
    reg.add_argument("name", help="set name: a-z, 0-9, '_' or '-' (also the adapter name)")
    reg.add_argument("file", type=Path, help='JSONL of {"question","answer"} or {"text"}, or .txt (one text per line)')
    reg.add_argument("--description", default="")
    reg.add_argument("--subject", action="append", default=[],
                     help="who or what is to be forgotten, by name (a person, a place, a work); repeatable. "
                          "The detector's measured setting: without it, names are guessed from capitalised words")
    reg.add_argument("--method", choices=METHODS, default="refusal", help="unlearning loss (default refusal)")
    reg.add_argument("--keep-data", action="store_true", help="keep the raw examples after training")
    reg.add_argument("--wait", action="store_true", help="follow the registration until it is live or failed")
    add_admin_flags(reg, json_flag=True)
    reg.set_defaults(handler=_register)

    list_ = actions.add_parser("list", help="list forget sets and their states")
    add_admin_flags(list_, json_flag=True)
    list_.set_defaults(handler=_list)

    show = actions.add_parser("show", help="show one forget set")
    show.add_argument("name")
    add_admin_flags(show, json_flag=True)
    show.set_defaults(handler=_show)

    watch = actions.add_parser("watch", help="follow a registration's progress until it ends")
    watch.add_argument("name")
    watch.add_argument("--job", default="", help="a specific job id (default: the latest)")
    add_admin_flags(watch, json_flag=True)
    watch.set_defaults(handler=_watch)

    delete = actions.add_parser("delete", help="remove a set from the gate, detector, backend and disk")
    delete.add_argument("name")
    add_admin_flags(delete, json_flag=True)
    delete.set_defaults(handler=_delete)


def _example(item: object, where: str) -> dict[str, str]:
    """One JSONL row as an example. Every field must already be a string: converting would
    register ``null`` as the answer "None" (or 42 as "42") and train the adapter on it."""
    if not isinstance(item, dict) or not ({"question", "text"} & set(item)):
        raise CliInputError(f'{where}: expected {{"question": ..., "answer": ...}} or {{"text": ...}}')
    unknown = set(item) - set(EXAMPLE_FIELDS)
    if unknown:
        raise CliInputError(f"{where}: unknown fields {sorted(unknown)}")
    for field, value in item.items():
        if not isinstance(value, str):
            raise CliInputError(f'{where}: "{field}" must be a string (got {JSON_TYPES.get(type(value), type(value).__name__)})')
    return dict(item)


def read_examples(path: Path) -> list[dict[str, str]]:
    """Parse an examples file; errors name the line so the operator can fix it."""
    if path.suffix == ".txt":
        examples = [{"text": line.strip()} for line in read_utf8_text(path).splitlines() if line.strip()]
    else:
        examples = [_example(item, where) for where, item in json_lines(path, CliInputError)]
    if not examples:
        raise CliInputError(f"{path} holds no examples")
    return examples


NO_SUBJECT_HINT = (
    "oblivio forget: no --subject given, so the detector guesses names from capitalised words and "
    "may take descriptors (\"Japanese\", \"African American\") for names; name who or what is to be "
    "forgotten with --subject for the precise, measured setting (detector/README.md)"
)


def _requests(args: argparse.Namespace, examples: list[dict[str, str]]) -> Iterator[Any]:
    from oblivio.gateway.api.proto_convert import METHOD_TO_PROTO
    from oblivio.v1 import oblivio_pb2 as pb

    yield pb.RegisterForgetSetRequest(header=pb.ForgetSetHeader(
        name=args.name, description=args.description, subjects=args.subject,
        method=METHOD_TO_PROTO[args.method], keep_data=args.keep_data,
    ))
    for start in range(0, len(examples), CHUNK):
        chunk = []
        for item in examples[start:start + CHUNK]:
            if "question" in item:
                chunk.append(pb.Example(qa=pb.QAPair(question=item["question"], answer=item.get("answer", ""))))
            else:
                chunk.append(pb.Example(text=item["text"]))
        yield pb.RegisterForgetSetRequest(chunk=pb.ExampleChunk(examples=chunk))


def _state(value: int) -> str:
    from oblivio.v1 import oblivio_pb2 as pb

    return pb.RegistrationState.Name(value).removeprefix("REGISTRATION_STATE_")


def _print_set(info: Any) -> None:
    print(f"{info.name}: {_state(info.state)}  ({info.example_count} examples, job {info.job_id})")
    if info.description:
        print(f"  description: {info.description}")
    if info.subjects:
        print(f"  subjects: {', '.join(info.subjects)}")
    print(f"  adapter version: {info.adapter_version or '-'}   raw data retained: {'yes' if info.data_retained else 'no'}")
    for overlap in info.overlaps:
        print(f"  overlap with {overlap.other_set}: {overlap.overlap:.4f}")
    if info.error:
        print(f"  error: {info.error}")


def _follow(admin: Any, name: str, job: str, as_json: bool) -> int:
    from oblivio.v1 import oblivio_pb2 as pb

    last = None
    stream = admin.stub.WatchRegistration(pb.WatchRegistrationRequest(name=name, job_id=job), metadata=admin.metadata)
    for event in stream:
        last = event
        if as_json:
            print(message_to_json(event).replace("\n", " "), flush=True)
        else:
            print(f"[{event.fraction * 100:5.1f}%] {_state(event.state):<16} {event.message}", flush=True)
    return 0 if last is not None and last.state == pb.REGISTRATION_STATE_LIVE or (last and last.message == "deleted") else 1


def _register(args: argparse.Namespace) -> int:
    def body(admin: Any) -> int:
        examples = read_examples(args.file)
        if not args.subject:
            print(NO_SUBJECT_HINT, file=sys.stderr)
        response = admin.call("RegisterForgetSet", _requests(args, examples))
        if args.json:
            print(message_to_json(response))
        else:
            print(f"registered {response.name}: {response.example_count} examples, job {response.job_id}, {_state(response.state)}")
        return _follow(admin, response.name, response.job_id, args.json) if args.wait else 0

    return run_admin_command(args, body, "oblivio forget")


def _list(args: argparse.Namespace) -> int:
    from oblivio.v1 import oblivio_pb2 as pb

    def body(admin: Any) -> int:
        response = admin.call("ListForgetSets", pb.ListForgetSetsRequest())
        if args.json:
            print(message_to_json(response))
        elif not response.forget_sets:
            print("no forget sets")
        for info in response.forget_sets if not args.json else ():
            print(f"{info.name:<24} {_state(info.state):<16} {info.example_count:>6} examples  adapter v{info.adapter_version}")
        return 0

    return run_admin_command(args, body, "oblivio forget")


def _show(args: argparse.Namespace) -> int:
    from oblivio.v1 import oblivio_pb2 as pb

    def body(admin: Any) -> int:
        info = admin.call("GetForgetSet", pb.GetForgetSetRequest(name=args.name))
        print(message_to_json(info)) if args.json else _print_set(info)
        return 0

    return run_admin_command(args, body, "oblivio forget")


def _watch(args: argparse.Namespace) -> int:
    return run_admin_command(args, lambda admin: _follow(admin, args.name, args.job, args.json), "oblivio forget")


def _delete(args: argparse.Namespace) -> int:
    from oblivio.v1 import oblivio_pb2 as pb

    def body(admin: Any) -> int:
        response = admin.call("DeleteForgetSet", pb.DeleteForgetSetRequest(name=args.name))
        print(message_to_json(response)) if args.json else print(f"deleted {response.name}")
        return 0

    return run_admin_command(args, body, "oblivio forget")


if __name__ == "__main__":  # pragma: no cover - convenience
    from oblivio.gateway.cli.main import main

    sys.exit(main(["forget", *sys.argv[1:]]))
