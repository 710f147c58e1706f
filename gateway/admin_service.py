"""The Admin gRPC servicer, composed from the areas that own each half of it.

GATE writes ``GateAdminMixin`` (policy, explain, calibration); REGISTRATION writes
``ForgetAdminMixin`` (forget sets). Both reach the live process through ``self.runtime``.
Composing here keeps one servicer registered on the server while each area owns its methods;
a half whose module is not written yet falls back to the generated base, which answers
UNIMPLEMENTED. A half whose module exists but fails to import is a bug and fails loudly.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from oblivio.v1 import oblivio_pb2_grpc

if TYPE_CHECKING:
    from oblivio.gateway.runtime import Runtime

LOG = logging.getLogger(__name__)


def _optional_mixin(module_name: str, class_name: str) -> type:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        LOG.info("%s not present: its Admin methods answer UNIMPLEMENTED", module_name)
        return type(f"Absent{class_name}", (), {})
    return getattr(module, class_name)


GateAdminMixin = _optional_mixin("oblivio.gateway.admin_gate", "GateAdminMixin")
ForgetAdminMixin = _optional_mixin("oblivio.gateway.admin_forget", "ForgetAdminMixin")


class AdminServicer(GateAdminMixin, ForgetAdminMixin, oblivio_pb2_grpc.AdminServicer):  # type: ignore[misc, valid-type]
    """``oblivio.v1.Admin``; exceptions are mapped to status codes by the server's interceptor."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
