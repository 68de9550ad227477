"""The deployment examples in deploy/ carry configs that pullthrough accepts as written."""

from __future__ import annotations

from pathlib import Path

import yaml

from pullthrough.config import load

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_config_is_a_valid_cluster_config() -> None:
    config = load(DEPLOY / "pullthrough.yml", environ={})
    assert config.cluster is not None
    assert (config.cluster.redis_host, config.cluster.redis_port) == ("redis", 6379)


def test_kubernetes_configmap_is_a_valid_cluster_config(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "pullthrough.yaml").read_text()))
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "ConfigMap"} <= kinds
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    path = tmp_path / "config.yml"
    path.write_text(configmap["data"]["config.yml"])
    config = load(path, environ={})
    assert config.cluster is not None
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"redis", "mirror-1", "mirror-2", "mirror-3"} <= set(compose["services"])
