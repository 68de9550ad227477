"""Config errors name a credential's key, never its value; URLs carry no userinfo;
``REGISTRY_*`` overrides of string keys are taken literally."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullthrough.config import ConfigError, load

SECRET = "hunter2"
# Loopback, so upstream credentials need no client authentication.
LOCAL = "http:\n  addr: 127.0.0.1:5000\n"


def _error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    path = tmp_path / "config.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path, environ={} if environ is None else environ)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("proxy: {username: u, password: 4815162342}", "proxy.password"),
        ("proxy: {username: 4815162342, password: x}", "proxy.username"),
        ("proxy: {username: u, password: [4815162342]}", "proxy.password"),
        (
            "mirror: {upstreams: [{name: ghcr.io, remoteurl: 'https://ghcr.io', "
            "username: u, password: 4815162342}]}",
            "mirror.upstreams[0].password",
        ),
        (
            "mirror: {cluster: {redis: {addr: ':6379', password: 4815162342}}}",
            "mirror.cluster.redis.password",
        ),
        ("mirror: {cluster: {secret: 4815162342}}", "mirror.cluster.secret"),
    ],
)
def test_a_credential_of_the_wrong_type_is_named_but_not_shown(
    tmp_path: Path, text: str, key: str
) -> None:
    message = _error(tmp_path, text)
    assert message.startswith(f"{key}: ")
    assert "4815162342" not in message


def test_an_entry_missing_a_key_is_described_without_its_credentials(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        "mirror: {upstreams: [{remoteurl: 'https://ghcr.io', username: u, "
        f"password: {SECRET}}}]}}",
    )
    assert message.startswith("mirror.upstreams[0].name: ")
    assert SECRET not in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f"proxy: {{remoteurl: 'https://bob:{SECRET}@registry.example'}}", "proxy.remoteurl"),
        (f"proxy: {{remoteurl: 'https://bob:{SECRET}@'}}", "proxy.remoteurl"),
        (f"proxy: {{remoteurl: 'https://{SECRET}@registry.example'}}", "proxy.remoteurl"),
        (
            f"mirror: {{upstreams: [{{name: ghcr.io, remoteurl: 'https://bob:{SECRET}@ghcr.io'}}]}}",
            "mirror.upstreams[0].remoteurl",
        ),
        (
            f"mirror: {{cluster: {{redis: {{addr: ':6379'}}, advertise: 'http://a:{SECRET}@node1:5000'}}}}",
            "mirror.cluster.advertise",
        ),
    ],
)
def test_userinfo_in_a_url_is_refused_without_repeating_it(
    tmp_path: Path, text: str, key: str
) -> None:
    message = _error(tmp_path, text)
    assert message.startswith(f"{key}: ")
    assert "credentials in the URL" in message
    assert SECRET not in message


def test_a_redis_url_in_an_address_key_is_not_repeated(tmp_path: Path) -> None:
    message = _error(
        tmp_path, f"mirror: {{cluster: {{redis: {{addr: 'redis://:{SECRET}@redis:6379'}}}}}}"
    )
    assert message.startswith("mirror.cluster.redis.addr: ")
    assert SECRET not in message


def test_a_userinfo_url_from_the_environment_is_refused_too(tmp_path: Path) -> None:
    message = _error(
        tmp_path, LOCAL, {"REGISTRY_PROXY_REMOTEURL": f"https://bob:{SECRET}@registry.example"}
    )
    assert message.startswith("proxy.remoteurl: ")
    assert SECRET not in message


@pytest.mark.parametrize("password", ["pa: ss", "#x", "0123", "12345", "true", "[a", "{b}", "~"])
def test_env_password_is_taken_literally(tmp_path: Path, password: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(LOCAL)
    config = load(
        path, environ={"REGISTRY_PROXY_USERNAME": "0042", "REGISTRY_PROXY_PASSWORD": password}
    )
    assert (config.upstream.username, config.upstream.password) == ("0042", password)


def test_env_redis_password_is_taken_literally(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(LOCAL)
    config = load(
        path,
        environ={
            "REGISTRY_MIRROR_CLUSTER_REDIS_ADDR": "127.0.0.1:6379",
            "REGISTRY_MIRROR_CLUSTER_REDIS_PASSWORD": "a: b # c",
        },
    )
    assert config.cluster is not None and config.cluster.redis_password == "a: b # c"


def test_env_numbers_booleans_and_durations_still_parse(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(LOCAL)
    config = load(
        path,
        environ={
            "REGISTRY_MIRROR_GC_BATCH": "5",
            "REGISTRY_MIRROR_VERIFY_ON_READ": "false",
            "REGISTRY_LOG_ACCESSLOG_DISABLED": "true",
            "REGISTRY_MIRROR_LIMITS_MAX_HEADERS": "64",
            "REGISTRY_PROXY_TTL": "2h",
            "REGISTRY_MIRROR_CLUSTER_REDIS_ADDR": ":6379",
            "REGISTRY_MIRROR_CLUSTER_REDIS_DB": "3",
            "REGISTRY_MIRROR_CLUSTER_REDIS_TLS": "false",
        },
    )
    assert config.gc_batch == 5 and config.verify_on_read is False
    assert config.accesslog is False and config.limits.max_headers == 64
    assert config.upstream.ttl == 7200.0
    assert config.cluster is not None and config.cluster.redis_db == 3
    assert config.cluster.redis_tls is False


def test_an_empty_env_credential_leaves_it_unset(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(LOCAL)
    config = load(path, environ={"REGISTRY_PROXY_USERNAME": "", "REGISTRY_PROXY_PASSWORD": ""})
    assert (config.upstream.username, config.upstream.password) == (None, None)
