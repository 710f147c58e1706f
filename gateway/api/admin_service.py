"""The Admin gRPC servicer, composed from the areas that own each half of it.

``GateAdminMixin`` (policy, explain, calibration) and ``ForgetAdminMixin`` (forget sets) each
implement their RPCs and reach the live process through ``self.runtime``; composing them here
keeps one servicer registered on the server while each module owns its methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oblivio.gateway.api.admin_forget import ForgetAdminMixin
from oblivio.gateway.api.admin_gate import GateAdminMixin
from oblivio.v1 import oblivio_pb2_grpc

if TYPE_CHECKING:
    from oblivio.gateway.serving.runtime import Runtime


class AdminServicer(GateAdminMixin, ForgetAdminMixin, oblivio_pb2_grpc.AdminServicer):
    """``oblivio.v1.Admin``; exceptions are mapped to status codes by the server's interceptor."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
