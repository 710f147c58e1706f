"""``oblivio gate get|set|rollback|history|explain|explain-batch|calibrate``: tune a running gateway.

Talks to the server's Admin gRPC API (so changes reach the live process atomically and are
versioned there), never to files on disk. A blocking gRPC channel is enough for a one-shot
command; the address defaults to the configured ``server.host:server.grpc_port`` and the admin
token to ``$OBLIVIO_ADMIN_TOKEN`` (or the first configured admin token).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from oblivio.gateway.cli.admin_client import (
    AdminClient,
    CliInputError,
    add_admin_flags,
    message_to_json,
    run_admin_command,
)
from oblivio.gateway.input_files import json_lines, read_utf8_text

MODES = ("adapter", "refusal", "adapter_then_refusal")
ON_ERROR = ("fail_closed", "fail_open")
EXPLAIN_BATCH_CHUNK = 256
SET_FIELDS = ("threshold", "softness", "min_scale", "max_scale", "mode", "refusal_threshold")


def register(subparsers: argparse._SubParsersAction) -> None:
    gate = subparsers.add_parser("gate", help="inspect and tune the live gate policy of a running gateway")
    actions = gate.add_subparsers(dest="gate_command", required=True)

    get = actions.add_parser("get", help="show the current (or a given) policy version")
    get.add_argument("--version", type=int, help="a specific version (default: current)")
    add_admin_flags(get, json_flag=True)
    get.set_defaults(handler=_get)

    set_ = actions.add_parser("set", help="change one set's policy (or the default); creates a new version")
    set_.add_argument("--set", dest="forget_set", default="", help="forget set name (default: the default policy)")
    set_.add_argument("--threshold", type=float)
    set_.add_argument("--softness", type=float)
    set_.add_argument("--min-scale", type=float)
    set_.add_argument("--max-scale", type=float)
    set_.add_argument("--mode", choices=MODES)
    refusal = set_.add_mutually_exclusive_group()
    refusal.add_argument("--refusal-threshold", type=float)
    refusal.add_argument("--clear-refusal-threshold", action="store_true")
    set_.add_argument("--on-detector-error", choices=ON_ERROR, help="global; only with the default policy")
    add_admin_flags(set_, json_flag=True)
    set_.set_defaults(handler=_set)

    rollback = actions.add_parser("rollback", help="make an earlier version current again (as a new version)")
    rollback.add_argument("version", type=int)
    add_admin_flags(rollback, json_flag=True)
    rollback.set_defaults(handler=_rollback)

    history = actions.add_parser("history", help="list the policy versions, oldest first")
    add_admin_flags(history, json_flag=True)
    history.set_defaults(handler=_history)

    explain = actions.add_parser("explain", help="scores, decision and reasons for a prompt, without generating")
    explain.add_argument("prompt", help="the user message to explain")
    explain.add_argument("--system", help="an optional system message")
    _what_if(explain)
    add_admin_flags(explain, json_flag=True)
    explain.set_defaults(handler=_explain)

    batch = actions.add_parser("explain-batch", help="explain every prompt of a file (.jsonl or .txt)")
    batch.add_argument("file", type=Path, help='JSONL of {"prompt": ...} or {"messages": [...]}, or .txt (one prompt per line)')
    batch.add_argument("--out", type=Path, help="also write one JSON result per line here")
    _what_if(batch)
    add_admin_flags(batch, json_flag=True)
    batch.set_defaults(handler=_explain_batch)

    calibrate = actions.add_parser("calibrate", help="ROC, histograms and a suggested threshold from labelled probes")
    calibrate.add_argument("--set", dest="forget_set", required=True, help="forget set to calibrate")
    calibrate.add_argument("probes", type=Path, help='JSONL {"prompt": ..., "forget": true|false} or CSV prompt,label')
    target = calibrate.add_mutually_exclusive_group()
    target.add_argument("--target-catch-rate", type=float, help="reach this TPR with the fewest false positives (default 0.95)")
    target.add_argument("--target-fpr", type=float, help="catch the most while staying within this FPR")
    calibrate.add_argument("--apply", action="store_true", help="set the suggested threshold in the live policy")
    calibrate.add_argument("--output-dir", default="", help="subfolder under the server's calibration directory")
    add_admin_flags(calibrate, json_flag=True)
    calibrate.set_defaults(handler=_calibrate)


def _what_if(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--what-if",
        action="append",
        default=[],
        metavar="[SET:]FIELD=VALUE",
        help="explain under the current policy with this change (not applied); repeatable",
    )


# ---- policy ---------------------------------------------------------------------------------
def _fmt_set_policy(policy: Any) -> str:
    from oblivio.gateway.api.proto_convert import MODE_FROM_PROTO

    text = (
        f"threshold={policy.threshold:g} softness={policy.softness:g} "
        f"scale=[{policy.min_scale:g}, {policy.max_scale:g}] mode={MODE_FROM_PROTO.get(policy.mode, policy.mode)}"
    )
    if policy.HasField("refusal_threshold"):
        text += f" refusal_threshold={policy.refusal_threshold:g}"
    return text


def _print_policy(policy: Any) -> None:
    from oblivio.gateway.api.proto_convert import ON_ERROR_FROM_PROTO

    created = policy.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC") if policy.created_at.seconds else "-"
    print(f"version {policy.version}  (created {created})")
    print(f"  scale grid: {', '.join(f'{s:g}' for s in policy.scale_grid)}")
    print(f"  on detector error: {ON_ERROR_FROM_PROTO.get(policy.on_detector_error, '?')}")
    print(f"  default: {_fmt_set_policy(policy.default_policy)}")
    for name in sorted(policy.per_set):
        print(f"  {name}: {_fmt_set_policy(policy.per_set[name])}")


def _get(args: argparse.Namespace) -> int:
    from oblivio.v1 import oblivio_pb2 as pb

    def body(admin: AdminClient) -> None:
        request = pb.GetGatePolicyRequest()
        if args.version is not None:
            request.version = args.version
        policy = admin.call("GetGatePolicy", request)
        print(message_to_json(policy)) if args.json else _print_policy(policy)

    return run_admin_command(args, body, "oblivio gate")


def _changes_from_flags(args: argparse.Namespace) -> Any:
    from oblivio.gateway.api.proto_convert import MODE_TO_PROTO, ON_ERROR_TO_PROTO
    from oblivio.v1 import oblivio_pb2 as pb

    changes = pb.SetPolicyChanges()
    for field in ("threshold", "softness", "min_scale", "max_scale", "refusal_threshold"):
        value = getattr(args, field)
        if value is not None:
            setattr(changes, field, value)
    if args.mode:
        changes.mode = MODE_TO_PROTO[args.mode]
    if args.clear_refusal_threshold:
        changes.clear_refusal_threshold = True
    if args.on_detector_error:
        changes.on_detector_error = ON_ERROR_TO_PROTO[args.on_detector_error]
    if not changes.ListFields():
        raise CliInputError("nothing to change: give at least one of --threshold, --softness, --min-scale, "
                            "--max-scale, --mode, --refusal-threshold, --clear-refusal-threshold, --on-detector-error")
    return changes


def _set(args: argparse.Namespace) -> int:
    from oblivio.v1 import oblivio_pb2 as pb

    def body(admin: AdminClient) -> None:
        request = pb.UpdateGatePolicyRequest(forget_set=args.forget_set, changes=_changes_from_flags(args))
        policy = admin.call("UpdateGatePolicy", request)
        print(message_to_json(policy)) if args.json else _print_policy(policy)

    return run_admin_command(args, body, "oblivio gate")


def _rollback(args: argparse.Namespace) -> int:
    from oblivio.v1 import oblivio_pb2 as pb

    def body(admin: AdminClient) -> None:
        policy = admin.call("RollbackGatePolicy", pb.RollbackGatePolicyRequest(version=args.version))
        if args.json:
            print(message_to_json(policy))
        else:
            print(f"rolled back to the contents of version {args.version}:")
            _print_policy(policy)

    return run_admin_command(args, body, "oblivio gate")


def _history(args: argparse.Namespace) -> int:
    from oblivio.v1 import oblivio_pb2 as pb

    def body(admin: AdminClient) -> None:
        response = admin.call("ListGatePolicyVersions", pb.ListGatePolicyVersionsRequest())
        if args.json:
            print(message_to_json(response))
            return
        for policy in response.versions:
            marker = "*" if policy.version == response.current_version else " "
            created = policy.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if policy.created_at.seconds else "-"
            overrides = ", ".join(sorted(policy.per_set)) or "none"
            print(f"{marker} v{policy.version:<4} {created}  default: {_fmt_set_policy(policy.default_policy)}"
                  f"  overrides: {overrides}")

    return run_admin_command(args, body, "oblivio gate")


# ---- explain --------------------------------------------------------------------------------
def parse_what_if(items: Sequence[str]) -> list[Any]:
    """``[SET:]FIELD=VALUE`` flags -> UpdateGatePolicyRequests, one per target set."""
    from oblivio.gateway.api.proto_convert import MODE_TO_PROTO, ON_ERROR_TO_PROTO
    from oblivio.v1 import oblivio_pb2 as pb

    grouped: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        target, _, field = key.rpartition(":")
        target, field = target.strip(), field.strip().replace("-", "_")
        if not sep or not value.strip():
            raise CliInputError(f"--what-if {item!r}: expected [SET:]FIELD=VALUE")
        changes = grouped.setdefault(target, pb.SetPolicyChanges())
        value = value.strip()
        if field == "mode":
            if value not in MODE_TO_PROTO:
                raise CliInputError(f"--what-if {item!r}: mode must be one of {', '.join(MODES)}")
            changes.mode = MODE_TO_PROTO[value]
        elif field == "on_detector_error":
            if value not in ON_ERROR_TO_PROTO:
                raise CliInputError(f"--what-if {item!r}: on_detector_error must be one of {', '.join(ON_ERROR)}")
            changes.on_detector_error = ON_ERROR_TO_PROTO[value]
        elif field == "refusal_threshold" and value.lower() == "none":
            changes.clear_refusal_threshold = True
        elif field in SET_FIELDS:
            try:
                setattr(changes, field, float(value))
            except ValueError:
                raise CliInputError(f"--what-if {item!r}: {field} must be a number") from None
        else:
            raise CliInputError(f"--what-if {item!r}: unknown field {field!r}; one of {', '.join(SET_FIELDS)}, on_detector_error")
    return [pb.UpdateGatePolicyRequest(forget_set=target, changes=c) for target, c in grouped.items()]


def _fmt_score(score: float) -> str:
    return "  n/a" if math.isnan(score) else f"{score:.3f}"


def _print_explanation(result: Any, *, label: str = "") -> None:
    decision = result.decision
    if decision.refused:
        summary = "REFUSE"
    elif decision.adapters:
        summary = "adapters " + ", ".join(f"{a.name}@{a.scale:g}" for a in decision.adapters)
    else:
        summary = "base model"
    extra = " (detector error: fail policy applied)" if decision.detector_error else ""
    version = f"v{decision.policy_version}" if decision.policy_version else "what-if"
    print(f"{label}{summary}  [policy {version}, detector {result.detector_ms:.1f} ms]{extra}")
    if result.detector_error_message:
        print(f"    detector error: {result.detector_error_message}")
    for verdict in decision.verdicts:
        mark = "x" if verdict.matched else " "
        print(f"    [{mark}] {verdict.forget_set:<20} score {_fmt_score(verdict.score)}  {verdict.reason}")
    if not decision.verdicts:
        print("    (no forget sets registered)")


def _explain(args: argparse.Namespace) -> int:
    from oblivio.v1 import oblivio_pb2 as pb

    def body(admin: AdminClient) -> None:
        messages = []
        if args.system:
            messages.append(pb.ChatMessage(role=pb.ROLE_SYSTEM, content=args.system))
        messages.append(pb.ChatMessage(role=pb.ROLE_USER, content=args.prompt))
        request = pb.ExplainRequest(messages=messages, proposed_changes=parse_what_if(args.what_if))
        result = admin.call("Explain", request)
        print(message_to_json(result)) if args.json else _print_explanation(result)

    return run_admin_command(args, body, "oblivio gate")


_ROLES = ("system", "user", "assistant")


def read_conversations(path: Path) -> list[Any]:
    """A batch file as Conversation messages: .txt (one prompt per line) or JSONL rows with
    ``prompt`` (one user message) or ``messages`` ([{"role", "content"}, ...])."""
    from oblivio.v1 import oblivio_pb2 as pb

    conversations = []
    if path.suffix.lower() == ".txt":
        for line in read_utf8_text(path).splitlines():
            if line.strip():
                conversations.append(pb.Conversation(messages=[pb.ChatMessage(role=pb.ROLE_USER, content=line)]))
    elif path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for where, row in json_lines(path, CliInputError):
            if isinstance(row, dict) and isinstance(row.get("prompt"), str):
                messages = [pb.ChatMessage(role=pb.ROLE_USER, content=row["prompt"])]
            elif isinstance(row, dict) and isinstance(row.get("messages"), list):
                messages = []
                for item in row["messages"]:
                    if not isinstance(item, dict) or item.get("role") not in _ROLES or not isinstance(item.get("content"), str):
                        raise CliInputError(f'{where}: messages must be {{"role": system|user|assistant, "content": str}}')
                    messages.append(pb.ChatMessage(role=pb.Role.Value(f"ROLE_{item['role'].upper()}"), content=item["content"]))
            else:
                raise CliInputError(f'{where}: expected {{"prompt": ...}} or {{"messages": [...]}}')
            conversations.append(pb.Conversation(messages=messages))
    else:
        raise CliInputError(f"{path} must end in .jsonl or .txt")
    if not conversations:
        raise CliInputError(f"{path} contains no prompts")
    return conversations


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _explain_batch(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from oblivio.v1 import oblivio_pb2 as pb

    def body(admin: AdminClient) -> None:
        conversations = read_conversations(args.file)
        proposed = parse_what_if(args.what_if)
        results = []
        for chunk in _chunks(conversations, EXPLAIN_BATCH_CHUNK):
            response = admin.call("ExplainBatch", pb.ExplainBatchRequest(conversations=chunk, proposed_changes=proposed))
            results.extend(response.results)
        rows = [MessageToDict(r, preserving_proto_field_name=True) for r in results]
        if args.out:
            args.out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        if args.json:
            print(json.dumps(rows, indent=2))
            return
        counts = {"refusal": 0, "adapter": 0, "base": 0}
        for index, result in enumerate(results):
            _print_explanation(result, label=f"#{index:<4} ")
            decision = result.decision
            counts["refusal" if decision.refused else "adapter" if decision.adapters else "base"] += 1
        print(f"{len(results)} prompts: {counts['base']} base, {counts['adapter']} adapter, {counts['refusal']} refused")

    return run_admin_command(args, body, "oblivio gate")


# ---- calibration ----------------------------------------------------------------------------
def _calibrate(args: argparse.Namespace) -> int:
    from oblivio.gateway.gate.calibration import CalibrationError, load_probes
    from oblivio.v1 import oblivio_pb2 as pb

    def body(admin: AdminClient) -> None:
        try:
            probes = load_probes(args.probes)
        except CalibrationError as exc:
            raise CliInputError(str(exc)) from None
        request = pb.CalibrationReportRequest(
            forget_set=args.forget_set,
            probes=[pb.LabelledProbe(prompt=p.prompt, should_forget=p.forget) for p in probes],
            apply=args.apply,
            output_dir=args.output_dir,
        )
        if args.target_fpr is not None:
            request.target_fpr = args.target_fpr
        elif args.target_catch_rate is not None:
            request.target_catch_rate = args.target_catch_rate
        report = admin.call("CalibrationReport", request)
        if args.json:
            print(message_to_json(report))
            return
        print(f"forget set {report.forget_set}: {report.positives} forget / {report.negatives} keep probes")
        print(f"  ROC AUC             {report.roc_auc:.3f}")
        print(f"  suggested threshold {report.suggested_threshold:.4f}")
        print(f"  catch rate          {report.catch_rate:.3f}")
        print(f"  false-positive rate {report.false_positive_rate:.3f}")
        for path in report.plot_paths:
            print(f"  plot (on the server): {path}")
        print(f"  summary (on the server): {report.summary_json_path}")
        if report.HasField("applied_policy_version"):
            print(f"  applied: policy version {report.applied_policy_version} is live")

    return run_admin_command(args, body, "oblivio gate")
