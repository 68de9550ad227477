"""Real clients against a mirror that wants to know who they are (``auth.htpasswd``) or that
speaks TLS (``http.tls``, certificate from the test's own CA for ``IP:127.0.0.1`` and
``IP:::1``; with ``http.tls.clientcas``, mutual TLS).

Log in (bcrypt htpasswd file made here; each client has its own auth file):

* podman and skopeo: ``login --tls-verify=false <mirror>`` stores the credentials for the
  mirror's host, and containers/image uses them for that host also when it is a
  registries.conf ``[[registry.mirror]]``: docker.io names pull through the mirror. A wrong
  password fails the login (the mirror's 401: "invalid username/password"). Without a
  login, the mirror's own names fail with 401 and nothing is tried elsewhere; a docker.io
  name in mirror mode fails at the mirror and the client then tries docker.io itself (the
  HubGuard refuses and records it): that is containers/image's fallback, not the mirror's.
* docker: ``docker login <mirror>`` works, and so does ``docker pull <mirror>/library/x:v1``
  (the mirror used as a registry). But dockerd never uses those credentials for its
  ``registry-mirrors``: a Docker Hub name is asked of the mirror with the credentials the
  CLI has for Docker Hub (``https://index.docker.io/v1/`` in config.json), if any
  (moby/moby#30880, #42022). With none, the mirror answers 401, dockerd logs "no basic auth
  credentials" and falls back to registry-1.docker.io. With Docker Hub credentials that
  happen to be a mirror user's, the pull through the mirror works.

TLS (``mirror`` parametrized ``tls`` / ``mtls``):

* dockerd pulls Docker Hub names through an https ``registry-mirrors`` entry, trusting the
  CA from ``/etc/docker/certs.d/<host:port>/ca.crt`` (and presenting ``client.cert`` +
  ``client.key`` from there), a directory bind-mounted over ``/etc/docker`` in its private
  mount namespace only. dockerd treats every 127.0.0.0/8 registry as insecure (no
  certificate check, certs.d never read), so it reaches the mirror at ``[::1]`` through an
  ``Ipv6Relay`` (TLS end to end). A daemon lacking the CA (or its client certificate) is
  refused at the TLS layer at once, and falls back to Docker Hub. (The mirror's own names
  cannot be pulled this way: Docker 20.10's CLI rejects ``[::1]:port/...`` references.)
* skopeo in mirror mode (``insecure = false``) with ``--src-cert-dir`` (``ca.crt``, and
  ``client.cert`` + ``client.key`` for mutual TLS).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from tests.clients.scenario import USER_AGENT, assert_no_fallback, check_served, describe
from tests.integration.conftest import MirrorFactory
from tests.support.clients import (
    AccessEntry,
    AccessLogCursor,
    CertAuthority,
    DockerDaemon,
    HubGuard,
    Ipv6Relay,
    KeyPair,
    Podman,
    Skopeo,
    cert_dir,
    registries_conf,
    start_mutual_tls_mirror,
)
from tests.support.images import ImageSet
from tests.support.mirror import MirrorProcess
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.clients, pytest.mark.slow]

ALICE = ("alice", "alice-mirror-secret")
REALM = "pullthrough-clients"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
"""The key under which the docker CLI keeps Docker Hub credentials in config.json."""


@dataclass(frozen=True)
class Pki:
    """The server CA and certificate the TLS mirrors use, and the CA of their clients."""

    server_ca: CertAuthority
    server: KeyPair
    client_ca: CertAuthority

    def client(self, name: str) -> KeyPair:
        return self.client_ca.issue(name, usage="client")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    server_ca = CertAuthority(tmp_path / "server-ca", "pullthrough server CA")
    server = server_ca.issue("mirror", san="IP:127.0.0.1,IP:::1")  # ::1: see Ipv6Relay
    return Pki(server_ca, server, CertAuthority(tmp_path / "client-ca"))


@pytest.fixture
def mirror(
    request: pytest.FixtureRequest,
    mirror_factory: MirrorFactory,
    upstream_proxy: RecordingProxy,
    tmp_path: Path,
) -> MirrorProcess:
    """Overrides the conftest's, so every client factory points at it. By default a mirror
    with ``auth.htpasswd`` (user ``ALICE``); parametrized indirectly with ``"tls"``, one
    serving https with ``pki.server``, with ``"mtls"`` also requiring a client certificate
    from ``pki.client_ca``."""
    kind = getattr(request, "param", "htpasswd")
    if kind == "htpasswd":
        users = tmp_path / "htpasswd"
        hashed = bcrypt.hashpw(ALICE[1].encode(), bcrypt.gensalt(rounds=6)).decode()
        users.write_text(f"{ALICE[0]}:{hashed}\n")
        auth = {"htpasswd": {"realm": REALM, "path": str(users)}}
        return mirror_factory(upstream_proxy.url, config={"auth": auth})
    pki: Pki = request.getfixturevalue("pki")
    tls: dict[str, object] = {"certificate": str(pki.server.cert), "key": str(pki.server.key)}
    if kind == "tls":
        return mirror_factory(upstream_proxy.url, config={"http": {"tls": tls}})
    assert kind == "mtls", kind
    tls["clientcas"] = [str(pki.client_ca.cert)]
    made = mirror_factory(upstream_proxy.url, config={"http": {"tls": tls}}, start=False)
    return start_mutual_tls_mirror(made, pki.client("probe"))


def _mutual(request: pytest.FixtureRequest) -> bool:
    return bool(request.node.callspec.params["mirror"] == "mtls")


# ---------------------------------------------------------------------------- podman, skopeo

TOOLS = ["podman", "skopeo"]


def _tool(request: pytest.FixtureRequest, kind: str) -> Podman | Skopeo:
    factory: Callable[..., Podman | Skopeo] = request.getfixturevalue(f"{kind}_factory")
    return factory()


def _try_pull(
    tool: Podman | Skopeo, ref: str, *, insecure: bool = False
) -> subprocess.CompletedProcess[str]:
    """A pull expected to fail (``insecure``: plain HTTP to a name not in registries.conf)."""
    if isinstance(tool, Skopeo):
        return tool.try_pull(ref, extra_args=["--src-tls-verify=false"] if insecure else [])
    flags = ["--tls-verify=false"] if insecure else []
    return tool.cmd(["pull", *tool.pull_args(), *flags, ref], timeout=60, check=False)


def _auths(path: Path) -> dict[str, object]:
    auths: dict[str, object] = json.loads(path.read_text()).get("auths", {})
    return auths


def _manifest_statuses(entries: list[AccessEntry], repo: str) -> set[int]:
    return {e.status for e in entries if e.path.startswith(f"/v2/{repo}/manifests/")}


@pytest.mark.parametrize("kind", TOOLS)
def test_login_to_the_mirror_then_pull_docker_hub_names_through_it(
    request: pytest.FixtureRequest,
    kind: str,
    images: ImageSet,
    mirror: MirrorProcess,
    hub_guard: HubGuard,
) -> None:
    tool = _tool(request, kind)
    ua = USER_AGENT[kind]
    cursor = AccessLogCursor(mirror)

    wrong = tool.login(mirror.host, ALICE[0], "not-her-password", tls_verify=False, check=False)
    print(f"{kind} login, wrong password: exit {wrong.returncode}: {wrong.stdout.strip()}")
    assert wrong.returncode != 0
    assert "invalid username/password" in wrong.stdout, wrong.stdout
    probes = cursor.wait_for(lambda es: any(e.path == "/v2/" and e.status == 401 for e in es))
    assert all(e.status != 200 for e in probes if e.path == "/v2/"), describe(probes)
    assert _auths(tool.auth_file) == {}

    ok = tool.login(mirror.host, *ALICE, tls_verify=False)
    assert "Login Succeeded" in ok.stdout, ok.stdout
    assert list(_auths(tool.auth_file)) == [mirror.host]  # stored for the mirror's host only

    cursor.reset()
    image = images.oci_small
    assert tool.pull(f"docker.io/{image.ref}").digest == image.digest
    served = check_served(cursor, [image], user_agent=ua)
    print(f"{kind}, logged in, docker.io name:", describe(served))
    assert_no_fallback(hub_guard)
    assert ALICE[1] not in mirror.log_text()


@pytest.mark.parametrize("kind", TOOLS)
def test_without_login_the_mirror_answers_401(
    request: pytest.FixtureRequest,
    kind: str,
    images: ImageSet,
    mirror: MirrorProcess,
    hub_guard: HubGuard,
) -> None:
    tool = _tool(request, kind)
    image = images.oci_small
    cursor = AccessLogCursor(mirror)

    direct = _try_pull(tool, image.on(mirror.host), insecure=True)
    print(f"{kind}, no login, mirror's own name: {direct.stdout.strip()[-300:]}")
    assert direct.returncode != 0
    assert "unauthorized" in direct.stdout, direct.stdout
    entries = cursor.wait_for(lambda es: bool(_manifest_statuses(es, image.repo)))
    assert _manifest_statuses(entries, image.repo) == {401}, describe(entries)
    assert hub_guard.attempts == []  # a registry's own name: nowhere else to go
    assert mirror.stored_files() == {}  # nothing was fetched for an anonymous client

    # Mirror mode: the mirror refuses, and containers/image then tries the registry itself.
    cursor.reset()
    hub = _try_pull(tool, f"docker.io/{image.ref}")
    print(f"{kind}, no login, docker.io name: {hub.stdout.strip()[-400:]}")
    assert hub.returncode != 0
    assert "Mirrors also failed" in hub.stdout and "unauthorized" in hub.stdout, hub.stdout
    entries = cursor.wait_for(lambda es: bool(_manifest_statuses(es, image.repo)))
    assert _manifest_statuses(entries, image.repo) == {401}, describe(entries)
    assert any("registry-1.docker.io" in a for a in hub_guard.attempts), hub_guard.attempts
    assert mirror.stored_files() == {}


# ---------------------------------------------------------------------------- docker

UA_DOCKER = USER_AGENT["docker"]


def _assert_only_challenged(cursor: AccessLogCursor) -> None:
    """dockerd, holding no credentials for the mirror, met the 401 Basic challenge of
    ``GET /v2/`` and stopped there ("no basic auth credentials"): no manifest or blob
    request reached the mirror."""
    entries = cursor.wait_for(
        lambda es: any(e.path == "/v2/" and UA_DOCKER in e.user_agent for e in es)
    )
    ours = [e for e in entries if UA_DOCKER in e.user_agent]
    assert {(e.path, e.status) for e in ours} == {("/v2/", 401)}, describe(entries)


def test_docker_login_to_the_mirror_then_pull_the_mirrors_own_names(
    images: ImageSet,
    mirror: MirrorProcess,
    docker_factory: Callable[..., DockerDaemon],
    hub_guard: HubGuard,
) -> None:
    """``docker login <mirror>`` and ``docker pull <mirror>/library/oci-small:v1``: the mirror
    used as a registry (plain HTTP: it is in ``insecure-registries``)."""
    image = images.oci_small
    ref = image.on(mirror.host)
    docker = docker_factory()
    cursor = AccessLogCursor(mirror)

    anonymous = docker.docker(["pull", ref], check=False, timeout=60)
    print("docker pull, no login:", anonymous.stdout.strip())
    assert anonymous.returncode != 0
    assert "no basic auth credentials" in anonymous.stdout, anonymous.stdout
    _assert_only_challenged(cursor)

    wrong = docker.login(mirror.host, ALICE[0], "not-her-password", check=False)
    print("docker login, wrong password:", wrong.stdout.strip().splitlines()[-1])
    assert wrong.returncode != 0
    assert "401 Unauthorized" in wrong.stdout, wrong.stdout
    assert not docker.cli_config.exists() or _auths(docker.cli_config) == {}

    ok = docker.login(mirror.host, *ALICE)
    assert "Login Succeeded" in ok.stdout, ok.stdout
    assert list(_auths(docker.cli_config)) == [mirror.host]

    cursor.reset()
    assert docker.pull(ref).digest == image.digest
    served = check_served(cursor, [image], user_agent=UA_DOCKER)
    print("docker, logged in, mirror's own name:", describe(served))
    assert_no_fallback(hub_guard)
    assert ALICE[1] not in mirror.log_text()


def test_docker_sees_denied_for_a_repository_mirror_access_does_not_give_the_user(
    images: ImageSet,
    mirror_factory: MirrorFactory,
    upstream_proxy: RecordingProxy,
    docker_factory: Callable[..., DockerDaemon],
    tmp_path: Path,
) -> None:
    """``mirror.access``: alice may pull oci-small, not multi; docker says "denied"."""
    users = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(ALICE[1].encode(), bcrypt.gensalt(rounds=6)).decode()
    users.write_text(f"{ALICE[0]}:{hashed}\n")
    mirror = mirror_factory(upstream_proxy.url, config={
        "auth": {"htpasswd": {"realm": REALM, "path": str(users)}},
        "mirror": {"access": [{"repositories": ["oci-small"], "users": [ALICE[0]]}]},
    })
    docker = docker_factory(mirrors=[mirror.url], insecure=[mirror.host])
    assert "Login Succeeded" in docker.login(mirror.host, *ALICE).stdout
    assert docker.pull(images.oci_small.on(mirror.host)).digest == images.oci_small.digest
    upstream_proxy.reset()
    refused = docker.docker(["pull", images.multi.on(mirror.host)], check=False, timeout=60)
    print("docker pull, not allowed:", refused.stdout.strip().splitlines()[-1:])
    assert refused.returncode != 0
    assert "user alice may not pull docker.io/library/multi (mirror.access)" in refused.stdout
    assert upstream_proxy.count() == 0


def test_dockerd_sends_its_docker_hub_credentials_to_registry_mirrors_not_the_mirrors(
    images: ImageSet,
    mirror: MirrorProcess,
    docker_factory: Callable[..., DockerDaemon],
    hub_guard: HubGuard,
) -> None:
    """How Docker 20.10 authenticates to a ``registry-mirrors`` entry (facts, checked here):

    1. Logged in to the mirror, a Docker Hub name is still asked of the mirror without
       credentials: the mirror answers 401, dockerd logs "no basic auth credentials" and
       falls back to registry-1.docker.io (the guard refuses it) (moby/moby#30880).
    2. The credentials the CLI holds for Docker Hub go to the mirror (moby/moby#42022): when
       they are a mirror user's, the pull goes through the mirror, nothing falls back.

    So a mirror with client auth serves dockerd's Docker Hub pulls only to daemons whose
    Docker Hub login is also a mirror login; otherwise dockerd silently goes to Docker Hub.
    """
    docker = docker_factory()
    docker.login(mirror.host, *ALICE)
    cursor = AccessLogCursor(mirror)

    refused = docker.docker(["pull", images.schema2.ref], check=False, timeout=60)
    print("docker pull <hub name>, logged in to the mirror:", refused.stdout.strip())
    assert refused.returncode != 0
    _assert_only_challenged(cursor)
    assert "no basic auth credentials" in docker.log_text()
    assert any("registry-1.docker.io" in a for a in hub_guard.attempts), hub_guard.attempts

    # Docker Hub credentials (as `docker login` to Docker Hub would store them) = a mirror user.
    config = json.loads(docker.cli_config.read_text())
    token = base64.b64encode(f"{ALICE[0]}:{ALICE[1]}".encode()).decode()
    config["auths"][DOCKER_HUB_AUTH_KEY] = {"auth": token}
    docker.cli_config.write_text(json.dumps(config))
    before = len(hub_guard.attempts)
    cursor.reset()
    assert docker.pull(images.multi.ref).digest == images.multi.digest
    served = check_served(cursor, [images.multi], user_agent=UA_DOCKER)
    print("docker pull <hub name>, Docker Hub login = mirror user:", describe(served))
    assert hub_guard.attempts[before:] == []


# ---------------------------------------------------------------------------- TLS


@pytest.fixture
def relay(mirror: MirrorProcess) -> Iterator[Ipv6Relay]:
    """The mirror at ``[::1]``: dockerd treats every 127.0.0.0/8 registry as insecure (no
    certificate check, no certs.d), so it has to reach the TLS mirror another way."""
    with Ipv6Relay(mirror.port) as relay:
        yield relay


@pytest.mark.parametrize("mirror", ["tls", "mtls"], indirect=True)
def test_docker_pulls_through_an_https_mirror_trusting_the_ca_in_certs_d(
    request: pytest.FixtureRequest,
    images: ImageSet,
    mirror: MirrorProcess,
    relay: Ipv6Relay,
    pki: Pki,
    docker_factory: Callable[..., DockerDaemon],
    hub_guard: HubGuard,
    tmp_path: Path,
) -> None:
    mutual = _mutual(request)
    assert mirror.url.startswith("https://")
    host = relay.host  # [::1]:port
    certs_d = tmp_path / "certs.d"
    client = pki.client("dockerd") if mutual else None
    cert_dir(certs_d / host, ca=pki.server_ca.cert, client=client)
    cursor = AccessLogCursor(mirror)

    # Not an insecure registry: the certificate is verified against certs.d's ca.crt.
    docker = docker_factory(mirrors=[f"https://{host}"], insecure=[], certs_d=certs_d)
    wanted = [images.oci_small, images.multi]
    for image in wanted:
        assert docker.pull(image.ref).digest == image.digest, image.ref
    served = check_served(cursor, wanted, user_agent=UA_DOCKER)
    print(f"docker over {'mutual ' if mutual else ''}TLS:", describe(served))
    assert_no_fallback(hub_guard)

    # A daemon lacking the CA (TLS) or its client certificate (mutual TLS) is refused at
    # the TLS layer, at once, and falls back to Docker Hub (which the guard refuses).
    lacking = tmp_path / "certs.d-lacking"
    lacking.mkdir()
    if mutual:
        cert_dir(lacking / host, ca=pki.server_ca.cert)
    other = docker_factory(mirrors=[f"https://{host}"], insecure=[], certs_d=lacking)
    cursor.reset()
    start = time.monotonic()
    refused = other.docker(["pull", images.schema2.ref], check=False, timeout=60)
    seconds = time.monotonic() - start
    assert refused.returncode != 0
    why = [
        line
        for line in other.log_text().splitlines()
        if "Attempting next endpoint" in line and f"https://{host}/" in line
    ]
    print(f"docker lacking {'its client certificate' if mutual else 'the CA'}, {seconds:.2f}s:")
    print("\n".join(why))
    assert why, other.log_tail(40)
    if mutual:
        assert any(s in why[0] for s in ("EOF", "connection reset", "tls:")), why
    else:
        assert "x509: certificate signed by unknown authority" in why[0], why
    assert seconds < 20, seconds
    assert any("registry-1.docker.io" in a for a in hub_guard.attempts), hub_guard.attempts
    assert not [e for e in cursor.entries() if e.status == 200], describe(cursor.entries())
    assert "Traceback" not in mirror.log_text()


@pytest.mark.parametrize("mirror", ["tls", "mtls"], indirect=True)
def test_skopeo_pulls_through_an_https_mirror_with_src_cert_dir(
    request: pytest.FixtureRequest,
    images: ImageSet,
    mirror: MirrorProcess,
    pki: Pki,
    skopeo_factory: Callable[..., Skopeo],
    hub_guard: HubGuard,
    tmp_path: Path,
) -> None:
    mutual = _mutual(request)
    conf = registries_conf(tmp_path / "registries.conf", [mirror.host], insecure=False)
    client = pki.client("skopeo") if mutual else None
    certs = cert_dir(tmp_path / "skopeo-certs", ca=pki.server_ca.cert, client=client)
    skopeo = skopeo_factory(registries=conf)
    cursor = AccessLogCursor(mirror)
    image = images.oci_small
    result = skopeo.pull(f"docker.io/{image.ref}", extra_args=["--src-cert-dir", str(certs)])
    assert result.digest == image.digest
    served = check_served(cursor, [image], user_agent=USER_AGENT["skopeo"])
    print(f"skopeo over {'mutual ' if mutual else ''}TLS:", describe(served))
    assert_no_fallback(hub_guard)
