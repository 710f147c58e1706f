"""TLS on both front doors and mTLS on gRPC, with a certificate made for the test."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fixtures_serving import serving_config

pytestmark = pytest.mark.slow


def _issue(subject: str, issuer_key: Any = None, issuer_name: x509.Name | None = None, *, ca: bool = False) -> tuple[bytes, bytes, Any, x509.Name]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, key, name


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca_cert, _, ca_key, ca_name = _issue("oblivio test CA", ca=True)
    files = {"ca": ca_cert}
    files["server_cert"], files["server_key"], _, _ = _issue("127.0.0.1", ca_key, ca_name)
    files["client_cert"], files["client_key"], _, _ = _issue("operator", ca_key, ca_name)
    paths = {}
    for label, data in files.items():
        paths[label] = folder / f"{label}.pem"
        paths[label].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
async def tls_gateway(model_path: Path, reference_backend: Any, pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    from oblivio.gateway.api.server import Gateway

    config = serving_config(
        model_path,
        tmp_path_factory.mktemp("tls_home"),
        **{"auth.tls_cert_file": str(pki["server_cert"]), "auth.tls_key_file": str(pki["server_key"]),
           "auth.tls_client_ca_file": str(pki["ca"])},
    )
    gateway = await Gateway.create(config, backend=reference_backend, detector=None, registration=False)
    await gateway.start()
    yield gateway
    await gateway.stop(grace=1)


async def _health(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return response.status


async def test_grpc_requires_a_client_certificate_signed_by_the_ca(tls_gateway: Any, pki: dict[str, Path]) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki["client_key"].read_bytes(),
        certificate_chain=pki["client_cert"].read_bytes(),
    )
    async with grpc.aio.secure_channel(tls_gateway.grpc_target, credentials) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    without_client_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    async with grpc.aio.secure_channel(tls_gateway.grpc_target, without_client_cert) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _health(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(tls_gateway.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await _health(channel)


async def test_http_is_served_over_tls_only(tls_gateway: Any, pki: dict[str, Path]) -> None:
    from openai import AsyncOpenAI

    assert tls_gateway.http_url.startswith("https://")
    trust = ssl.create_default_context(cafile=str(pki["ca"]))
    async with httpx.AsyncClient(verify=trust) as http:
        client = AsyncOpenAI(base_url=f"{tls_gateway.http_url}/v1", api_key="unused", http_client=http, max_retries=0)
        models = await client.models.list()
        assert [m.id for m in models.data] == [tls_gateway.runtime.config.model.served_name]
    plain = tls_gateway.http_url.replace("https://", "http://")
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.HTTPError):
            await http.get(f"{plain}/v1/models", timeout=10)
