"""Self-tests for tests/support/tokens.py: Docker-Hub-style token auth with a real registry.

A ``TokenIssuer`` signs RS256 JWTs; a real ``docker-registry`` 2.8 configured with
``auth.token`` (rootcertbundle = the issuer's certificate) verifies them. skopeo
does the Bearer flow itself for pushes and pulls.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import TOKEN_USER
from tests.support.images import ImageFactory, manifest_digest_in_dir, pull_dir
from tests.support.net import http_request
from tests.support.registry import Registry, RegistryError, RegistryFactory
from tests.support.tokens import (
    REGISTRY_LEEWAY,
    Scope,
    TokenError,
    TokenIssuer,
    bearer_request,
    fetch_token,
    libtrust_key_id,
    parse_challenge,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


def _get(reg: Registry, repo: str, ref: str, token: str | None = None) -> tuple[int, str]:
    """Status and WWW-Authenticate of a manifest GET with an optional Bearer token."""
    headers = dict(ACCEPT)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    resp = http_request("GET", f"{reg.url}/v2/{repo}/manifests/{ref}", headers=headers)
    return resp.status, resp.header("WWW-Authenticate") or ""


def _issuer(reg: Registry) -> TokenIssuer:
    assert reg.token_issuer is not None
    return reg.token_issuer


# ---------------------------------------------------------------------------- the protocol


def test_challenge_token_retry(
    token_registry_factory: RegistryFactory, image_factory: ImageFactory
) -> None:
    reg = token_registry_factory()
    issuer = _issuer(reg)
    img = image_factory("library/pub", registry=reg)
    issuer.reset()

    status, challenge = _get(reg, "library/pub", "v1")
    assert status == 401
    assert challenge == (
        f'Bearer realm="{issuer.url}",service="{issuer.service}",'
        'scope="repository:library/pub:pull"'
    )
    scheme, params = parse_challenge(challenge)
    assert scheme == "bearer"
    assert params == {
        "realm": issuer.url,
        "service": issuer.service,
        "scope": "repository:library/pub:pull",
    }

    token = fetch_token(params["realm"], service=params["service"], scopes=[params["scope"]])
    resp = http_request(
        "GET",
        f"{reg.url}/v2/library/pub/manifests/v1",
        headers={**ACCEPT, "Authorization": f"Bearer {token}"},
    )
    assert resp.status == 200
    assert resp.header("Docker-Content-Digest") == img.digest

    [req] = issuer.requests()
    assert (req.method, req.user) == ("GET", None)
    assert not req.authorization and not req.authenticated
    assert req.scopes == ("repository:library/pub:pull",)
    assert req.service == issuer.service
    assert req.status == 200
    assert req.granted == ("repository:library/pub:pull",)
    assert issuer.count("library/pub") == 1 and issuer.count("other") == 0

    claims = issuer.decode(token)
    assert claims["iss"] == issuer.issuer and claims["aud"] == issuer.service
    assert claims["sub"] == ""
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - time.time()) < 5
    assert len(claims["jti"]) >= 16
    assert claims["access"] == [{"type": "repository", "name": "library/pub", "actions": ["pull"]}]


def test_token_response_shape(token_registry_factory: RegistryFactory) -> None:
    issuer = _issuer(token_registry_factory(expires_in=120))
    resp = http_request(
        "GET",
        f"{issuer.url}?service={issuer.service}&scope=repository:a/b:pull",
        auth=TOKEN_USER,
    )
    assert resp.status == 200
    doc = json.loads(resp.body)
    assert set(doc) == {"token", "access_token", "expires_in", "issued_at"}
    assert doc["token"] == doc["access_token"]
    assert doc["expires_in"] == 120
    assert doc["issued_at"].endswith("Z")
    claims = issuer.decode(doc["token"])
    assert claims["sub"] == TOKEN_USER[0]
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize("key_header", ["x5c", "kid"])
def test_registry_verifies_signature(
    token_registry_factory: RegistryFactory, image_factory: ImageFactory, key_header: str
) -> None:
    """Both ways distribution 2.8 finds the signing key work; a foreign key is refused."""
    reg = token_registry_factory(key_header=key_header)
    issuer = _issuer(reg)
    image_factory("library/sig", registry=reg)
    token = fetch_token(issuer.url, service=issuer.service, scopes=["repository:library/sig:pull"])

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    cert = x509.load_pem_x509_certificate(issuer.cert_path.read_bytes())
    if key_header == "x5c":
        assert "kid" not in header
        der = cert.public_bytes(serialization.Encoding.DER)
        assert header["x5c"] == [base64.b64encode(der).decode()]
    else:
        assert "x5c" not in header
        public_key = cert.public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert header["kid"] == issuer.key_id == libtrust_key_id(public_key)
        assert len(header["kid"]) == 59 and header["kid"].count(":") == 11
    assert _get(reg, "library/sig", "v1", token)[0] == 200

    # Same iss/aud/claims, different key: the registry must refuse it.
    with TokenIssuer(
        service=issuer.service, issuer=issuer.issuer, key_header=issuer.key_header
    ) as rogue:
        forged = rogue.issue_token(["repository:library/sig:pull"])
    status, challenge = _get(reg, "library/sig", "v1", forged)
    assert status == 401
    assert 'error="invalid_token"' in challenge


# ---------------------------------------------------------------------------- skopeo


def test_skopeo_push_with_creds_and_anonymous_pull(
    token_registry_factory: RegistryFactory, image_factory: ImageFactory, tmp_path: Path
) -> None:
    reg = token_registry_factory()
    issuer = _issuer(reg)
    assert reg.creds == TOKEN_USER
    img = image_factory("library/public", registry=reg)

    pushes = [r for r in issuer.requests("library/public") if r.asked("push")]
    assert pushes and all(r.user == TOKEN_USER[0] and r.authenticated for r in pushes)
    assert "repository:library/public:pull,push" in pushes[0].granted

    issuer.reset()
    pull_dir(f"{reg.host}/library/public:v1", tmp_path / "pulled")
    assert manifest_digest_in_dir(tmp_path / "pulled") == img.digest
    reqs = issuer.requests()
    assert reqs and all(r.user is None and not r.authorization for r in reqs)
    assert all(r.granted == ("repository:library/public:pull",) for r in reqs)


def test_realm_on_another_loopback_host(
    token_registry_factory: RegistryFactory, image_factory: ImageFactory, tmp_path: Path
) -> None:
    reg = token_registry_factory(host="127.0.0.2")
    issuer = _issuer(reg)
    assert issuer.url.startswith("http://127.0.0.2:")
    img = image_factory("library/far", registry=reg)
    _, challenge = _get(reg, "library/far", "v1")
    assert parse_challenge(challenge)[1]["realm"] == issuer.url
    pull_dir(f"{reg.host}/library/far:v1", tmp_path / "pulled")
    assert manifest_digest_in_dir(tmp_path / "pulled") == img.digest
    assert issuer.count("library/far") >= 2  # the push and the pull


def test_private_repo_needs_credentials(
    token_registry_factory: RegistryFactory, image_factory: ImageFactory, tmp_path: Path
) -> None:
    reg = token_registry_factory(private={"team/secret"})
    issuer = _issuer(reg)
    img = image_factory("team/secret", registry=reg)
    issuer.reset()

    # Anonymous: a valid token, but with no access to the private repository.
    token = fetch_token(issuer.url, service=issuer.service, scopes=["repository:team/secret:pull"])
    assert issuer.decode(token)["access"] == []
    status, challenge = _get(reg, "team/secret", "v1", token)
    assert status == 401 and 'error="insufficient_scope"' in challenge
    failed = pull_dir(f"{reg.host}/team/secret:v1", tmp_path / "anon", check=False)
    assert failed.returncode != 0
    assert all(r.granted == () for r in issuer.requests("team/secret"))

    pull_dir(f"{reg.host}/team/secret:v1", tmp_path / "authed", creds=TOKEN_USER)
    assert manifest_digest_in_dir(tmp_path / "authed") == img.digest
    assert any(r.user == TOKEN_USER[0] and r.granted for r in issuer.requests("team/secret"))

    # Flip the policy at runtime: the repository becomes public.
    issuer.private.discard("team/secret")
    token = fetch_token(issuer.url, service=issuer.service, scopes=["repository:team/secret:pull"])
    assert _get(reg, "team/secret", "v1", token)[0] == 200


def test_push_only_for_authenticated_users(
    token_registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    reg = token_registry_factory()
    issuer = _issuer(reg)
    anon = fetch_token(issuer.url, service=issuer.service, scopes=["repository:x/y:pull,push"])
    assert issuer.decode(anon)["access"] == [
        {"type": "repository", "name": "x/y", "actions": ["pull"]}
    ]
    upload = f"{reg.url}/v2/x/y/blobs/uploads/"
    refused = http_request("POST", upload, headers={"Authorization": f"Bearer {anon}"})
    assert refused.status == 401
    assert 'error="insufficient_scope"' in (refused.header("WWW-Authenticate") or "")

    authed = fetch_token(
        issuer.url, service=issuer.service, scopes=["repository:x/y:pull,push"], creds=TOKEN_USER
    )
    accepted = http_request("POST", upload, headers={"Authorization": f"Bearer {authed}"})
    assert accepted.status == 202


def test_bad_credentials_are_refused(
    token_registry_factory: RegistryFactory, image_factory: ImageFactory, tmp_path: Path
) -> None:
    reg = token_registry_factory(users={"alice": "right", "bob": "also"})
    issuer = _issuer(reg)
    assert reg.creds == ("alice", "right")
    image_factory("library/c", registry=reg)
    issuer.reset()

    with pytest.raises(TokenError) as err:
        fetch_token(issuer.url, service=issuer.service, creds=("alice", "wrong"))
    assert err.value.status == 401
    with pytest.raises(TokenError):
        fetch_token(issuer.url, service=issuer.service, creds=("mallory", "right"))
    failed = pull_dir(
        f"{reg.host}/library/c:v1", tmp_path / "p", creds=("alice", "wrong"), check=False
    )
    assert failed.returncode != 0

    refused = issuer.requests(status=401)
    assert len(refused) >= 3
    assert {r.user for r in refused} == {"alice", "mallory"}
    assert all(r.authorization and not r.authenticated for r in refused)

    issuer.users["carol"] = "new"  # runtime change
    fetch_token(issuer.url, service=issuer.service, creds=("carol", "new"))


# ---------------------------------------------------------------------------- expiry


def test_expired_token_is_refused(
    token_registry_factory: RegistryFactory, image_factory: ImageFactory
) -> None:
    """distribution 2.8 accepts a token until ``exp + 60 s`` (clock-skew leeway).

    So a token with ``expires_in=1`` is still good 2 s later; to see a refusal within
    seconds the issuer's clock is set back by the leeway (``clock_skew``).
    """
    reg = token_registry_factory()
    issuer = _issuer(reg)
    image_factory("library/exp", registry=reg)
    scope = ["repository:library/exp:pull"]

    issuer.expires_in = 1
    plain = fetch_token(issuer.url, service=issuer.service, scopes=scope)
    # exp lands 58-57 s in the past: the registry accepts it for another 2-3 s.
    issuer.clock_skew = -(REGISTRY_LEEWAY - 2)
    skewed = fetch_token(issuer.url, service=issuer.service, scopes=scope)
    claims = issuer.decode(skewed, verify_exp=False)
    assert claims["exp"] - claims["iat"] == 1
    assert claims["exp"] < time.time() - 50
    assert issuer.decode(plain, verify_exp=False)["exp"] - time.time() <= 1

    assert _get(reg, "library/exp", "v1", plain)[0] == 200
    assert _get(reg, "library/exp", "v1", skewed)[0] == 200

    # Wait until the registry's deadline for the skewed token has passed (~3 s).
    wait = claims["exp"] + REGISTRY_LEEWAY + 0.5 - time.time()
    assert 0 < wait < 5
    time.sleep(max(wait, 2.0))

    status, challenge = _get(reg, "library/exp", "v1", skewed)
    assert status == 401 and 'error="invalid_token"' in challenge
    assert "token not to be used after" in reg.log_tail(20)
    # The plain token expired too (exp passed), but is inside the registry's leeway.
    assert _get(reg, "library/exp", "v1", plain)[0] == 200


# ---------------------------------------------------------------------------- issuer knobs


def test_scopes_repeat_split_or_absent(token_registry_factory: RegistryFactory) -> None:
    issuer = _issuer(token_registry_factory(private={"p/q"}))
    token = fetch_token(
        issuer.url,
        service=issuer.service,
        scopes=["repository:a/b:pull", "repository:c/d:pull,push repository:p/q:pull"],
    )
    assert issuer.decode(token)["access"] == [
        {"type": "repository", "name": "a/b", "actions": ["pull"]},
        {"type": "repository", "name": "c/d", "actions": ["pull"]},
    ]
    [req] = issuer.requests()
    assert req.scopes == ("repository:a/b:pull", "repository:c/d:pull,push", "repository:p/q:pull")
    assert issuer.count("p/q") == 1

    none = fetch_token(issuer.url, service=issuer.service)
    assert issuer.decode(none)["access"] == []
    assert issuer.requests()[-1].scopes == ()
    parsed = Scope.parse("repository:host:5000/x:pull")
    assert parsed == Scope("repository", "host:5000/x", ("pull",))

    # OAuth2 password grant (what docker login style clients POST).
    form = (
        f"grant_type=password&service={issuer.service}&client_id=t"
        f"&username={TOKEN_USER[0]}&password={TOKEN_USER[1]}&scope=repository:a/b:push"
    ).encode()
    resp = http_request(
        "POST",
        issuer.url,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        data=form,
    )
    assert resp.status == 200
    assert issuer.decode(json.loads(resp.body)["access_token"])["access"][0]["actions"] == ["push"]
    assert issuer.requests()[-1].user == TOKEN_USER[0]


def test_fail_status_and_records(token_registry_factory: RegistryFactory) -> None:
    reg = token_registry_factory()
    issuer = _issuer(reg)
    issuer.fail_status = 503
    with pytest.raises(TokenError) as err:
        fetch_token(issuer.url, service=issuer.service, scopes=["repository:a/b:pull"])
    assert err.value.status == 503
    with pytest.raises(TokenError):
        bearer_request("GET", f"{reg.url}/v2/a/b/manifests/v1")
    assert issuer.count() == 2
    assert [r.status for r in issuer.requests()] == [503, 503]
    issuer.fail_status = None
    issuer.reset()
    assert issuer.count() == 0
    assert reg.get_manifest("a/b", "v1").status == 404  # Bearer flow, then "unknown"
    assert issuer.count("a/b") == 1


def test_registry_helpers(token_registry_factory: RegistryFactory, tmp_path: Path) -> None:
    reg = token_registry_factory()
    issuer = _issuer(reg)
    assert reg.config()["auth"] == {
        "token": {
            "realm": issuer.url,
            "service": issuer.service,
            "issuer": issuer.issuer,
            "rootcertbundle": str(issuer.cert_path),
        }
    }
    assert reg.request("GET", "/v2/", auth=False).status == 401
    assert reg.request("GET", "/v2/").status == 200
    assert issuer.requests()[-1].user == TOKEN_USER[0]

    with pytest.raises(ValueError):
        Registry(tmp_path / "both", htpasswd=("a", "b"), token_auth=issuer)
    idle = TokenIssuer(root=tmp_path / "idle")
    with pytest.raises(RegistryError, match="start the token issuer"):
        Registry(tmp_path / "idle-reg", token_auth=idle).start()
