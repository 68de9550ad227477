"""The deployment examples in deploy/ carry configs that pullthrough accepts as written,
and run Redis with a password that the replicas are given from the same place."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pullthrough.config import load

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PASSWORD_ENV = "REGISTRY_MIRROR_CLUSTER_REDIS_PASSWORD"


def test_compose_config_is_a_valid_cluster_config() -> None:
    config = load(DEPLOY / "pullthrough.yml", environ={})
    assert config.cluster is not None
    assert (config.cluster.redis_host, config.cluster.redis_port) == ("redis", 6379)
    with_password = load(DEPLOY / "pullthrough.yml", environ={PASSWORD_ENV: "from-env"})
    assert with_password.cluster is not None
    assert with_password.cluster.redis_password == "from-env"


def test_kubernetes_configmap_is_a_valid_cluster_config(tmp_path: Path) -> None:
    docs = _kubernetes()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "ConfigMap"} <= kinds
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    path = tmp_path / "config.yml"
    path.write_text(configmap["data"]["config.yml"])
    config = load(path, environ={PASSWORD_ENV: "from-the-secret"})
    assert config.cluster is not None
    assert config.cluster.redis_password == "from-the-secret"
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"redis", "mirror-1", "mirror-2", "mirror-3"} <= set(compose["services"])


def test_kubernetes_redis_requires_the_password_the_replicas_get_from_its_secret() -> None:
    docs = _kubernetes()
    redis = _container(docs, "redis")
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    source = _env(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secret = next(
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == source["name"]
    )
    assert source["key"] in secret["stringData"]
    mirror = _env(_container(docs, "pullthrough"))[PASSWORD_ENV]
    assert mirror["valueFrom"]["secretKeyRef"] == source
    assert "value" not in mirror  # never a literal password in the Deployment


def test_compose_redis_requires_the_password_every_replica_gets() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    command = services["redis"]["command"]
    given = command[command.index("--requirepass") + 1]
    variable = re.fullmatch(r"\$\{(\w+):\?[^}]+\}", given)
    assert variable, f"redis's password must be a required variable, not {given!r}"
    mirrors = [name for name in services if name.startswith("mirror-")]
    assert len(mirrors) == 3
    for name in mirrors:
        passed = services[name]["environment"][PASSWORD_ENV]
        assert re.fullmatch(rf"\$\{{{variable.group(1)}:\?[^}}]+\}}", passed), (name, passed)


def _kubernetes() -> list[dict[str, Any]]:
    text = (DEPLOY / "kubernetes" / "pullthrough.yaml").read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def _container(docs: list[dict[str, Any]], app: str) -> dict[str, Any]:
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == app)
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_deployments_run_the_image_not_pip_at_start() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for name in ("mirror-1", "mirror-2", "mirror-3"):
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
        assert "command" not in services[name]  # the image's own: serve the registry:2 path
        mounts = services[name]["volumes"]
        assert "./pullthrough.yml:/etc/docker/registry/config.yml:ro" in mounts
        assert "store:/var/lib/registry" in mounts
    container = _container(_kubernetes(), "pullthrough")
    assert "args" not in container and "command" not in container
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == "/etc/docker/registry"
    assert mounts["store"] == "/var/lib/registry"


def test_kubernetes_pods_are_locked_down_probed_and_protected_from_drains() -> None:
    docs = _kubernetes()
    container = _container(docs, "pullthrough")
    assert container["readinessProbe"]["httpGet"]["path"] == "/debug/health"
    assert "livenessProbe" in container
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    deployment = next(d for d in docs if d["metadata"]["name"] == "pullthrough")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    path_config = yaml.safe_load(configmap["data"]["config.yml"])
    drain = float(path_config["http"]["draintimeout"].rstrip("s"))
    assert pod["terminationGracePeriodSeconds"] > drain
    budget = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]


def test_s3_deployments_carry_configs_pullthrough_accepts(tmp_path: Path) -> None:
    secrets = {"REGISTRY_STORAGE_S3_ACCESSKEY": "ak", "REGISTRY_STORAGE_S3_SECRETKEY": "sk"}
    compose = yaml.safe_load((DEPLOY / "docker-compose-s3.yml").read_text())["services"]
    mirror = compose["mirror"]
    assert "./s3.yml:/etc/docker/registry/config.yml:ro" in mirror["volumes"]
    assert set(secrets) <= set(mirror["environment"])
    config = load(DEPLOY / "s3.yml", environ=secrets)
    assert config.s3 is not None and config.s3.access_key == "ak"
    assert config.root == Path("/var/lib/registry") and config.cluster is None

    text = (DEPLOY / "kubernetes" / "pullthrough-s3.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert "PersistentVolumeClaim" not in {d["kind"] for d in docs}  # no shared volume
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    path = tmp_path / "config.yml"
    path.write_text(configmap["data"]["config.yml"])
    peers = "REGISTRY_MIRROR_CLUSTER_SECRET"
    config = load(
        path,
        environ={**secrets, PASSWORD_ENV: "from-the-secret", peers: "sixteen characters+"},
    )
    assert config.s3 is not None and config.s3.redirect
    assert config.cluster is not None and config.cluster.redis_password == "from-the-secret"
    assert config.cluster.secret == "sixteen characters+"  # replicas stream from each other
    deployment = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "pullthrough"
    )
    assert deployment["spec"]["replicas"] == 3
    assert any(d["kind"] == "PodDisruptionBudget" for d in docs)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    for name in [*secrets, peers]:
        assert "secretKeyRef" in env[name]["valueFrom"] and "value" not in env[name]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["cache"] == str(config.root)
