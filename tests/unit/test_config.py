"""The distribution config format, env overrides and clear errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullthrough.config import DEFAULT_REMOTE, ConfigError, load, parse_duration

DISTRIBUTION_PROXY_CONFIG = """
version: 0.1
log:
  level: info
  formatter: text
  fields:
    service: registry
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
proxy:
  remoteurl: https://registry-1.docker.io
  username: someuser
  password: secret
  ttl: 168h
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def test_embedded_default_mirrors_docker_hub_into_data_on_port_5000() -> None:
    config = load(None, environ={})
    assert config.upstream.url == DEFAULT_REMOTE
    assert config.upstream.name == "docker.io"
    assert config.upstream.is_docker_hub
    assert str(config.root) == "data"
    assert config.index_path == config.root / "index.db"
    assert (config.host, config.port) == ("0.0.0.0", 5000)
    assert config.upstream.ttl == 168 * 3600


def test_distribution_proxy_config_loads_unchanged_without_warnings(tmp_path: Path) -> None:
    text = DISTRIBUTION_PROXY_CONFIG.replace("  addr: :5000", "  addr: 127.0.0.1:5000")
    config = load(write(tmp_path, text), environ={})
    assert config.upstream.username == "someuser"
    assert config.upstream.password == "secret"
    assert config.accesslog is False
    assert str(config.root) == "/var/lib/registry"
    assert config.warnings == ()


def test_upstream_credentials_without_client_auth_on_a_public_port_are_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, DISTRIBUTION_PROXY_CONFIG), environ={})
    message = str(info.value)
    assert message.startswith("auth:") and "private image" in message
    assert "mirror.allow_anonymous_with_upstream_credentials" in message
    assert "secret" not in message
    allowed = (
        DISTRIBUTION_PROXY_CONFIG + "mirror:\n  allow_anonymous_with_upstream_credentials: true\n"
    )
    config = load(write(tmp_path, allowed), environ={})
    assert any("anyone who reaches this port" in w for w in config.warnings)


def test_env_overrides_file_values(tmp_path: Path) -> None:
    env = {
        "REGISTRY_HTTP_ADDR": "127.0.0.1:6000",
        "REGISTRY_PROXY_REMOTEURL": "http://127.0.0.1:9999",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "store"),
        "REGISTRY_PROXY_TTL": "1h",
        "REGISTRY_LOG_LEVEL": "debug",
        "REGISTRY_MIRROR_TAG_FRESHNESS": "30s",
    }
    config = load(write(tmp_path, DISTRIBUTION_PROXY_CONFIG), environ=env)
    assert (config.host, config.port) == ("127.0.0.1", 6000)
    assert config.upstream.url == "http://127.0.0.1:9999"
    assert config.root == tmp_path / "store"
    assert config.upstream.ttl == 3600
    assert config.log_level == "debug"
    assert config.upstream.tag_freshness == 30


def test_unknown_env_override_and_unknown_key_are_warnings(tmp_path: Path) -> None:
    config = load(
        write(tmp_path, "version: 0.1\nproxy: {remoteurl: http://x.test, colour: blue}\n"),
        environ={"REGISTRY_NOPE_THING": "1"},
    )
    assert any("REGISTRY_NOPE_THING" in w for w in config.warnings)
    assert any("proxy.colour" in w for w in config.warnings)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("proxy: {remoteurl: 'not a url'}", "proxy.remoteurl"),
        ("proxy: {remoteurl: 'ftp://host/x'}", "proxy.remoteurl"),
        ("proxy: {remoteurl: 'http://host:99999'}", "proxy.remoteurl"),
        ("proxy: {ttl: -1h}", "proxy.ttl"),
        ("proxy: {ttl: soon}", "proxy.ttl"),
        ("proxy: {username: u}", "proxy.username"),
        ("log: {level: loud}", "log.level"),
        ("log: {formatter: xml}", "log.formatter"),
        ("http: {addr: 'nonsense'}", "http.addr"),
        ("http: {addr: ':70000'}", "http.addr"),
        (
            "http: {tls: {certificate: /nonexistent.pem, key: /nonexistent.key}}",
            "http.tls.certificate",
        ),
        ("http: {tls: {certificate: /nonexistent.pem}}", "http.tls"),
        ("storage: {s3: {bucket: b}}", "storage.s3"),
        ("mirror: {upstream_connect_timeout: 0s}", "mirror.upstream_connect_timeout"),
        ("mirror: {limits: {max_body_size: lots}}", "mirror.limits.max_body_size"),
        ("mirror: {limits: {header_timeout: 0s}}", "mirror.limits.header_timeout"),
        ("mirror: {limits: {max_headers: 0}}", "mirror.limits.max_headers"),
        ("mirror: {scrub_rate: fast}", "mirror.scrub_rate"),
        ("mirror: {scrub_rate: -5MB/s}", "mirror.scrub_rate"),
        ("mirror: {scrub_rate: 5MB/h}", "mirror.scrub_rate"),
        ("mirror: {scrub_rate: true}", "mirror.scrub_rate"),
        ("mirror: {upstream_max_downloads: 0}", "mirror.upstream_max_downloads"),
        ("mirror: {upstream_max_downloads: lots}", "mirror.upstream_max_downloads"),
        (
            "mirror: {upstreams: [{name: ghcr.io, remoteurl: 'https://ghcr.io', "
            "upstream_max_downloads: -1}]}",
            "mirror.upstreams[0].upstream_max_downloads",
        ),
        ("log: [1, 2]", "log"),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), environ={})
    message = str(info.value)
    assert message.startswith(key), message
    assert "\n" not in message


def test_unreadable_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load(tmp_path / "missing.yml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(write(tmp_path, "proxy: [unclosed"), environ={})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("168h", 604800), ("1h30m", 5400), ("500ms", 0.5), ("0", 0), (0, 0), ("10s", 10), (30, 30)],
)
def test_go_durations(value: object, seconds: float) -> None:
    assert parse_duration(value, "k") == pytest.approx(seconds)


def test_several_upstreams_inherit_mirror_wide_settings(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            "proxy: {remoteurl: http://127.0.0.1:1}\n"
            "mirror:\n"
            "  upstream_read_timeout: 12s\n"
            "  upstream_max_downloads: 8\n"
            "  upstreams:\n"
            "    - {name: ghcr.io, remoteurl: https://ghcr.io, tag_freshness: 1m}\n"
            "    - {name: Quay.IO, remoteurl: https://quay.io, username: u, password: p,"
            " ttl: 1h, upstream_max_downloads: 3}\n"
            "http: {addr: '127.0.0.1:5000'}\n",
        ),
        environ={},
    )
    names = [u.name for u in config.upstreams]
    assert names == ["docker.io", "ghcr.io", "quay.io"]
    assert config.default_upstream == "docker.io"
    assert config.upstream.url == "http://127.0.0.1:1"
    ghcr, quay = config.upstreams[1], config.upstreams[2]
    assert (ghcr.read_timeout, ghcr.tag_freshness) == (12, 60)
    assert (quay.username, quay.ttl) == ("u", 3600)
    assert (config.upstreams[0].max_downloads, ghcr.max_downloads, quay.max_downloads) == (8, 8, 3)
    assert not ghcr.is_docker_hub and config.upstreams[0].is_docker_hub


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "mirror: {upstreams: [{name: docker.io, remoteurl: 'https://x.io'}]}",
            "mirror.upstreams[0].name",
        ),
        (
            "mirror: {upstreams: [{name: a.io, remoteurl: 'https://a.io'},"
            " {name: a.io, remoteurl: 'https://b.io'}]}",
            "mirror.upstreams[1].name",
        ),
        (
            "mirror: {upstreams: [{name: 'not a host', remoteurl: 'https://a.io'}]}",
            "mirror.upstreams[0].name",
        ),
        ("mirror: {upstreams: [{name: a.io, remoteurl: 'nope'}]}", "mirror.upstreams[0].remoteurl"),
        ("mirror: {upstreams: [{name: a.io}]}", "mirror.upstreams[0].remoteurl"),
        (
            "mirror: {upstreams: [{name: a.io, remoteurl: 'https://a.io', ttl: -1s}]}",
            "mirror.upstreams[0].ttl",
        ),
        ("mirror: {default_upstream: quay.io}", "mirror.default_upstream"),
    ],
)
def test_bad_upstream_entries_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), environ={})
    assert str(info.value).startswith(key), str(info.value)


def test_adhoc_upstream_slots_are_configured_and_bad_values_name_the_key(
    tmp_path: Path,
) -> None:
    config = load(
        write(tmp_path, "mirror:\n  adhoc_upstreams:\n    max: 8\n    idle: 90s\n"), environ={}
    )
    assert (config.adhoc_max, config.adhoc_idle) == (8, 90.0)
    defaults = load(None, environ={})
    assert (defaults.adhoc_max, defaults.adhoc_idle) == (64, 600.0)
    for bad, key in [
        ("max: 0", "mirror.adhoc_upstreams.max"),
        ("max: lots", "mirror.adhoc_upstreams.max"),
        ("idle: 0s", "mirror.adhoc_upstreams.idle"),
        ("idle: soon", "mirror.adhoc_upstreams.idle"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load(write(tmp_path, f"mirror:\n  adhoc_upstreams:\n    {bad}\n"), environ={})


def test_outbound_allow_entries_are_checked_and_a_bad_one_names_its_key(tmp_path: Path) -> None:
    text = "mirror:\n  outbound:\n    allow: [10.0.0.0/8, 'fd00::1', registry.lab]\n"
    config = load(write(tmp_path, text), environ={})
    assert config.outbound_allow == ("10.0.0.0/8", "fd00::1", "registry.lab")
    bad = "mirror:\n  outbound:\n    allow: [10.0.0.0/8, 'not a host!']\n"
    with pytest.raises(ConfigError, match=r"mirror\.outbound\.allow\[1\]: 'not a host!'"):
        load(write(tmp_path, bad), environ={})
    with pytest.raises(ConfigError, match=r"mirror\.outbound\.allow"):
        load(write(tmp_path, "mirror:\n  outbound:\n    allow: 10.0.0.0/8\n"), environ={})


def test_draintimeout_bounds_the_sigterm_drain(tmp_path: Path) -> None:
    assert load(None, environ={}).drain_timeout == 8.0  # inside Docker's 10 s stop timeout
    config = load(write(tmp_path, "version: 0.1\nhttp: {draintimeout: 45s}\n"), environ={})
    assert config.drain_timeout == 45.0
    assert not config.warnings  # distribution's key, no longer ignored
    overridden = load(None, environ={"REGISTRY_HTTP_DRAINTIMEOUT": "0s"})
    assert overridden.drain_timeout == 0.0
    with pytest.raises(ConfigError, match="http.draintimeout"):
        load(write(tmp_path, "version: 0.1\nhttp: {draintimeout: soon}\n"), environ={})
