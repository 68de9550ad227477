"""What hosted gc relies on below the command: a manifest pushed while gc sweeps is either
seen by the sweep or refused, never recorded naming a blob the sweep took."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pullthrough.store.hosted_index import ChildGone, HostedIndex, HostedManifest, connect
from pullthrough.store.hosted_sweep import collect

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BLOB = "sha256:" + "b" * 64
M = "sha256:" + "a" * 64


async def test_a_manifest_naming_a_blob_gc_took_is_refused(tmp_path: Path) -> None:
    index = HostedIndex(tmp_path / "hosted.db")
    await index.open()
    try:
        await index.add_blob("acme/app", BLOB, 10)
        # The push checked the blob was held; gc (another process) sweeps before it records.
        db = connect(tmp_path / "hosted.db")
        try:
            garbage = collect(db, pushed_before=time.time() + 1, dry_run=False)
        finally:
            db.close()
        assert garbage.blobs == (("acme/app", BLOB, 10),)
        assert garbage.files == (BLOB,)
        with pytest.raises(ChildGone):
            await index.add_manifest(
                "acme/app",
                HostedManifest(M, MANIFEST, 100),
                subject=None,
                children=[BLOB],
                tag="v1",
            )
        assert await index.tag("acme/app", "v1") is None
        # The refused manifest's file (stored before the check) is gc's to remove.
        db = connect(tmp_path / "hosted.db")
        try:
            again = collect(db, pushed_before=time.time() + 1, dry_run=True)
        finally:
            db.close()
        assert M in again.files
    finally:
        await index.close()


async def test_a_manifest_recorded_first_keeps_its_blobs_from_gc(tmp_path: Path) -> None:
    index = HostedIndex(tmp_path / "hosted.db")
    await index.open()
    try:
        await index.add_blob("acme/app", BLOB, 10)
        await index.add_manifest(
            "acme/app", HostedManifest(M, MANIFEST, 100), subject=None, children=[BLOB], tag="v1"
        )
        db = connect(tmp_path / "hosted.db")
        try:
            garbage = collect(db, pushed_before=time.time() + 1, dry_run=False)
        finally:
            db.close()
        assert garbage.blobs == () and garbage.files == ()
    finally:
        await index.close()
