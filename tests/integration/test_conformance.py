"""The OCI distribution-spec conformance suite against a live ``pullthrough serve``.

The suite is a compiled program (tests/support/conformance.py says where it is looked for
and how to build it); these tests skip when it is absent. Each run's output is kept in the
test's temp dir (``run.out``), and a failure lists every failing leaf with its reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import MirrorFactory
from tests.support import KiB
from tests.support.conformance import HOSTED_CONFIG, check_all_workflows, program, run
from tests.support.images import ImageFactory
from tests.support.proxy import RecordingProxy
from tests.support.registry import RegistryFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_pull_workflow_on_a_mirrored_namespace(
    registry_factory: RegistryFactory,
    image_factory: ImageFactory,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> None:
    """Read-only mode, as the suite's README describes it for a mirror: an OCI image, a
    Docker schema 2 image and an OCI index under three tags of one upstream repository,
    every manifest and blob of them named, pulled through the mirror."""
    program()
    upstream = registry_factory()
    repo = "library/testimg"
    pushed = [
        image_factory(repo, "v1", (64 * KiB, 32 * KiB), seed="conf-v1", registry=upstream),
        image_factory(
            repo, "v2s2", (48 * KiB,), seed="conf-v2s2", format="v2s2", registry=upstream
        ),
        image_factory(repo, "multi", (16 * KiB,), seed="conf-multi", index=True, registry=upstream),
    ]
    image_factory("someorg/app", "v1", (8 * KiB,), seed="conf-app", registry=upstream)
    manifests = [p.digest for p in pushed] + [c for p in pushed for c in p.child_digests]
    blobs = sorted({b for p in pushed for b in p.blob_digests})
    mirror = mirror_factory(upstream.url)

    outcome = run(
        mirror.host,
        tmp_path / "conformance",
        settings={
            "OCI_REPO1": repo,
            "OCI_REPO2": "someorg/app",
            "OCI_API_PUSH": "false",
            "OCI_API_BLOBS_DELETE": "false",
            "OCI_API_MANIFESTS_DELETE": "false",
            "OCI_API_TAGS_DELETE": "false",
            "OCI_API_REFERRER": "false",
            "OCI_RO_DATA_TAGS": "v1 v2s2 multi",
            "OCI_RO_DATA_MANIFESTS": " ".join(manifests),
            "OCI_RO_DATA_BLOBS": " ".join(blobs),
        },
    )

    print(f"conformance, pull workflow, mirrored namespace: {outcome.summary}")
    assert outcome.failures == [], "\n".join(outcome.failures)
    assert outcome.verdict == "Pass" and outcome.passed > 0, outcome.output[-4000:]


def test_all_workflows_on_a_hosted_namespace(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    """The whole suite against hosted repositories of a running mirror, and none of it
    reaches the upstream."""
    program()
    mirror = mirror_factory(upstream_proxy.url, config=HOSTED_CONFIG)
    check_all_workflows(mirror.host, tmp_path / "conformance", "hosted namespace")
    assert upstream_proxy.requests() == []
