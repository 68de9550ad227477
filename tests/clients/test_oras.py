"""The ``oras`` Python package (PyPI) pushes an artifact with a ``subject`` to a hosted
repository, and the referrers API lists it: how signatures and SBOMs are attached to an
image pushed to the mirror. Skipped when oras is not installed (requirements.lock pins it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import MirrorFactory
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

oras_client = pytest.importorskip("oras.client")
oras_oci = pytest.importorskip("oras.oci")

pytestmark = [pytest.mark.clients]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SIGNATURE = "application/vnd.example.signature.v1+json"
HOSTED: dict[str, Any] = {
    "mirror": {
        "hosted": {"repositories": ["acme"]},
        "access": [
            {"repositories": ["**"]},
            {"repositories": ["acme/**"], "actions": ["pull", "push"]},
        ],
    }
}


def test_oras_pushes_an_artifact_with_a_subject_and_the_referrers_api_lists_it(
    mirror_factory: MirrorFactory,
    upstream_proxy: RecordingProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mirror = mirror_factory(upstream_proxy.url, config=HOSTED)
    monkeypatch.chdir(tmp_path)  # oras pushes files relative to the working directory
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))  # no host credentials
    Path("app.txt").write_text("the artifact an image would be\n")
    Path("sig.json").write_text('{"signed": true}\n')
    client = oras_client.OrasClient(hostname=mirror.host, insecure=True)

    client.push(target=f"{mirror.host}/acme/app:v1", files=["app.txt"], quiet=True)
    head = http_request(
        "HEAD", f"{mirror.url}/v2/acme/app/manifests/v1", headers={"Accept": OCI_MANIFEST}
    )
    assert head.status == 200
    subject_digest = head.header("Docker-Content-Digest") or ""
    subject = oras_oci.Subject(OCI_MANIFEST, subject_digest, int(head.header("Content-Length")))

    pushed = client.push(
        target=f"{mirror.host}/acme/app:v1-sig",
        files=[f"sig.json:{SIGNATURE}"],
        manifest_config=f"sig.json:{SIGNATURE}",
        subject=subject,
        quiet=True,
    )
    assert pushed.status_code == 201
    assert pushed.headers.get("OCI-Subject") == subject_digest
    signature_digest = pushed.headers["Docker-Content-Digest"]

    listed = http_request("GET", f"{mirror.url}/v2/acme/app/referrers/{subject_digest}")
    assert listed.status == 200
    doc = json.loads(listed.body)
    assert [(d["digest"], d.get("artifactType")) for d in doc["manifests"]] == [
        (signature_digest, SIGNATURE)
    ]
    # oras reads back what it pushed, through the mirror.
    manifest = client.get_manifest(f"{mirror.host}/acme/app@{signature_digest}")
    assert manifest["subject"]["digest"] == subject_digest
    assert upstream_proxy.requests() == []  # a hosted name never reaches the upstream
