"""The committed gRPC stubs match the .proto, and the contract declares every agreed method."""

from __future__ import annotations

import subprocess
import sys

from oblivio.v1 import oblivio_pb2, oblivio_pb2_grpc


def test_generated_stubs_are_current() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oblivio.v1.codegen", "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "current" in result.stdout


def test_services_declare_the_agreed_methods() -> None:
    services = oblivio_pb2.DESCRIPTOR.services_by_name
    chat = {m.name: m for m in services["Chat"].methods}
    admin = {m.name: m for m in services["Admin"].methods}
    assert set(chat) == {"Complete", "StreamComplete"}
    assert chat["StreamComplete"].server_streaming and not chat["Complete"].server_streaming
    assert set(admin) == {
        "RegisterForgetSet", "ListForgetSets", "GetForgetSet", "WatchRegistration", "DeleteForgetSet",
        "GetGatePolicy", "UpdateGatePolicy", "RollbackGatePolicy", "ListGatePolicyVersions",
        "Explain", "ExplainBatch", "CalibrationReport",
    }
    assert admin["RegisterForgetSet"].client_streaming
    assert admin["WatchRegistration"].server_streaming
    # Every declared method exists on the generated servicer base, so mixins can override it.
    for name in admin:
        assert hasattr(oblivio_pb2_grpc.AdminServicer, name)


def test_policy_changes_track_field_presence() -> None:
    """UpdateGatePolicy must tell 'set threshold to 0' apart from 'leave threshold alone'."""
    changes = oblivio_pb2.SetPolicyChanges(threshold=0.0)
    assert changes.HasField("threshold")
    assert not changes.HasField("softness")
    roundtrip = oblivio_pb2.SetPolicyChanges.FromString(changes.SerializeToString())
    assert roundtrip.HasField("threshold") and roundtrip.threshold == 0.0


def test_register_stream_messages_roundtrip() -> None:
    header = oblivio_pb2.RegisterForgetSetRequest(
        header=oblivio_pb2.ForgetSetHeader(name="paris", subjects=["Paris"], keep_data=True)
    )
    chunk = oblivio_pb2.RegisterForgetSetRequest(
        chunk=oblivio_pb2.ExampleChunk(
            examples=[
                oblivio_pb2.Example(qa=oblivio_pb2.QAPair(question="Capital of France?", answer="Paris")),
                oblivio_pb2.Example(text="Paris is the capital of France."),
            ]
        )
    )
    assert header.WhichOneof("item") == "header"
    parsed = oblivio_pb2.RegisterForgetSetRequest.FromString(chunk.SerializeToString())
    assert [e.WhichOneof("kind") for e in parsed.chunk.examples] == ["qa", "text"]
