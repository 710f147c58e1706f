"""Deployment files are validated offline: no Docker engine or cluster is reachable here, so we
check what would break a deploy (bad YAML, a probe on the wrong port, a config the server would
reject, a Dockerfile copying a path that does not exist)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from oblivio.gateway.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
REPO = DEPLOY.parent


def _k8s_documents() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def _by_kind(kind: str) -> list[dict]:
    return [doc for doc in _k8s_documents() if doc["kind"] == kind]


def _named(kind: str, name: str) -> dict:
    (doc,) = [doc for doc in _by_kind(kind) if doc["metadata"]["name"] == name]
    return doc


def _mounts(pod: dict, container: dict) -> dict[str, dict]:
    """mountPath -> the pod volume mounted there (claim templates of a StatefulSet are left out)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"] if m["name"] in volumes}


def _served_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    (configmap,) = _by_kind("ConfigMap")
    config_file = tmp_path / "oblivio.toml"
    config_file.write_text(configmap["data"]["oblivio.toml"])
    return load_config(config_file, environ={"OBLIVIO_HOME": "/var/lib/oblivio"})


def test_every_k8s_object_is_well_formed() -> None:
    docs = _k8s_documents()
    assert {doc["kind"] for doc in docs} >= {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret",
                                            "PersistentVolumeClaim"}
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"], doc
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    on_disk = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_gateway_probes_use_grpc_health_on_the_served_port() -> None:
    (deployment,) = _by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_volumes_config_and_secrets_are_wired() -> None:
    (deployment,) = _by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounted = {m["name"] for m in container["volumeMounts"]}
    declared = {v["name"]: v for v in pod["volumes"]}
    assert mounted == set(declared)
    (pvc,) = _by_kind("PersistentVolumeClaim")
    assert declared["artifacts"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "replicas share one artifact store"
    assert declared["tokens"]["secret"]["secretName"] == _named("Secret", "oblivio-tokens")["metadata"]["name"]
    (configmap,) = _by_kind("ConfigMap")
    assert declared["config"]["configMap"]["name"] == configmap["metadata"]["name"]


def test_configmap_config_is_accepted_by_the_server(tmp_path: Path) -> None:
    config = _served_config(tmp_path)
    (deployment,) = _by_kind("Deployment")
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert (config.server.grpc_port, config.server.http_port) == (ports["grpc"], ports["http"])
    assert config.server.host == "0.0.0.0"


@pytest.mark.parametrize(("service_name", "kind", "workload_name"), [
    ("oblivio-gateway", "Deployment", "oblivio-gateway"), ("oblivio-postgres", "StatefulSet", "oblivio-postgres"),
])
def test_services_target_named_container_ports(service_name: str, kind: str, workload_name: str) -> None:
    service, workload = _named("Service", service_name), _named(kind, workload_name)
    names = {p["name"] for p in workload["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    assert service["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    others = [d for d in _by_kind("Deployment") + _by_kind("StatefulSet") if d["metadata"]["name"] != workload_name]
    assert not [d for d in others if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]


def test_gateways_share_the_postgres_registry_with_its_password_from_the_secret(tmp_path: Path) -> None:
    """Replicas on several nodes need a network registry: the gateway config points at the
    PostgreSQL Service, as the user and database PostgreSQL creates, with the password read from
    the same Secret key PostgreSQL is initialised with, and never in the URL."""
    registry = _served_config(tmp_path).registry
    url = urlsplit(registry.url)
    assert url.scheme == "postgresql" and url.password is None
    service, postgres = _named("Service", "oblivio-postgres"), _named("StatefulSet", "oblivio-postgres")
    assert (url.hostname, url.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    assert postgres["spec"]["serviceName"] == service["metadata"]["name"]
    db_pod = postgres["spec"]["template"]["spec"]
    (db,) = db_pod["containers"]
    env = {e["name"]: e["value"] for e in db["env"]}
    assert (url.username, url.path.lstrip("/")) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
    db_secret = _mounts(db_pod, db)[str(Path(env["POSTGRES_PASSWORD_FILE"]).parent)]["secret"]["secretName"]

    (deployment,) = _by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    assert registry.password_file is not None and registry.password is None
    mounted = _mounts(pod, gateway)[str(registry.password_file.parent)]
    assert mounted["secret"]["secretName"] == db_secret
    secret = _named("Secret", db_secret)
    assert registry.password_file.name in secret["stringData"]
    assert Path(env["POSTGRES_PASSWORD_FILE"]).name == registry.password_file.name
    (wait,) = pod["initContainers"]  # the gateway starts once its registry answers
    assert f"-h {url.hostname} -p {url.port}" in " ".join(wait["command"])
    assert any("ReadWriteOnce" in t["spec"]["accessModes"] for t in postgres["spec"]["volumeClaimTemplates"])


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfile_copies_existing_paths_and_runs_setup(dockerfile: str) -> None:
    text = (DEPLOY / dockerfile).read_text()
    sources = [line.split()[1] for line in text.splitlines() if line.startswith("COPY ")]
    assert sources, "a Dockerfile without COPY cannot contain the project"
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile} copies missing path {source}"
    assert "deploy/setup.sh" in text and "oblivio model fetch" in text
    assert re.search(r'^ENTRYPOINT \["oblivio", "serve"\]', text, re.M)
    assert re.search(r"^USER \d+", text, re.M), "containers must not run as root"


def test_compose_services_build_existing_dockerfiles_and_valid_env() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name
        env = {k: str(v) for k, v in service["environment"].items()}
        load_config(environ=env)
        assert {"50051:50051", "8000:8000"} <= set(service["ports"])
