#!/usr/bin/env python3
"""Which async S3 client the S3 storage driver should use: aiobotocore or obstore, measured.

    /work/main/.venv/bin/python bench/s3_clients.py [--size-mib 1024] [--runs 3]
        [--parts 16,64] [--inflight 4] [--only aiobotocore,obstore] [--workdir DIR]

For each candidate it makes a venv under --workdir (default /tmp/s3-clients) holding
pullthrough's runtime dependencies pinned by requirements.lock, then the candidate: the
growth of site-packages (files as installed, bytecode included) is what the candidate adds
to the image. It starts the test suite's S3 server (tests/support/s3_server.py: radosgw on a
private one-OSD memstore cluster, loopback) and, in a worker process inside each venv:

* upload: a multipart upload of a --size-mib file of random bytes, read in 4 MiB chunks
  (as a fetch hands them over), part size 16 and 64 MiB, --inflight parts in flight;
  aiobotocore through create/upload_part/complete (what the driver will do), obstore
  through ``put_async`` of an async iterator (its only multipart path);
* download: one GET of the whole object, streamed in 1 MiB chunks and dropped (never held);
* features: each row of the feature table tried against the server where it can be.

--runs runs of each (interleaving the candidates), medians and spread ((max-min)/median).
The first download of each candidate is hashed and checked (untimed); timed runs count bytes.
It prints a table and writes bench/results/<timestamp>-s3-clients.json (git-ignored).
A worker runs as ``s3_clients.py --worker NAME --op OP --conf JSON`` and prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CHUNK = 4 << 20
CANDIDATES = ("aiobotocore", "obstore")


# ---------------------------------------------------------------------------- worker side


async def file_chunks(path: str) -> AsyncIterator[bytes]:
    """The file in CHUNK-sized reads off the loop thread, as a fetch would hand bytes over."""
    loop = asyncio.get_running_loop()
    with open(path, "rb") as f:  # noqa: ASYNC230 - opening is instant; reads go to a thread
        while chunk := await loop.run_in_executor(None, f.read, CHUNK):
            yield chunk


class Aiobotocore:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf

    def client(self, **extra: Any) -> Any:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        kwargs: dict[str, Any] = {
            "endpoint_url": self.conf["endpoint"],
            "region_name": self.conf["region"],
            "config": AioConfig(
                s3={"addressing_style": "path"},
                # The driver checks the blob's sha256 itself; a CRC32 per part on top would
                # be CPU for nothing, and older RGWs do not take the trailing checksums.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=32,
            ),
        }
        if not extra.pop("from_environment", False):
            kwargs["aws_access_key_id"] = self.conf["access_key"]
            kwargs["aws_secret_access_key"] = self.conf["secret_key"]
        return get_session().create_client("s3", **kwargs, **extra)

    def connect(self) -> Any:
        return self.client()

    async def upload(self, s3: Any, key: str, path: str, part: int, inflight: int) -> int:
        bucket, sent = self.conf["bucket"], 0
        upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        slots = asyncio.Semaphore(inflight)
        etags: dict[int, str] = {}

        async def send(number: int, data: bytes) -> None:
            try:
                done = await s3.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
                etags[number] = done["ETag"]
            finally:
                slots.release()

        tasks: list[asyncio.Task[None]] = []
        buf = bytearray()
        try:
            async for chunk in file_chunks(path):
                buf += chunk
                sent += len(chunk)
                while len(buf) >= part:
                    await slots.acquire()
                    with memoryview(buf) as view:
                        data = bytes(view[:part])  # one copy: the part must outlive buf
                    del buf[:part]
                    tasks.append(asyncio.create_task(send(len(tasks) + 1, data)))
            if buf:
                await slots.acquire()
                tasks.append(asyncio.create_task(send(len(tasks) + 1, bytes(buf))))
            await asyncio.gather(*tasks)
            # Here the driver would compare the digest, and abort on a mismatch.
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            await s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            for task in tasks:
                task.cancel()
            await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        return sent

    async def download(self, s3: Any, key: str, hasher: Any = None) -> int:
        got = 0
        response = await s3.get_object(Bucket=self.conf["bucket"], Key=key)
        async with response["Body"] as body:
            async for chunk in body.iter_chunks(1 << 20):
                got += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
        return got

    async def features(self) -> dict[str, Any]:
        bucket, out = self.conf["bucket"], {}
        async with self.client() as s3:
            body = b"0123456789" * 1000
            await s3.put_object(Bucket=bucket, Key="features/a", Body=body)

            async def multipart() -> str:
                key = "features/mpu"
                up = await s3.create_multipart_upload(Bucket=bucket, Key=key)
                etag = (
                    await s3.upload_part(
                        Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=body
                    )
                )["ETag"]
                listed = await s3.list_multipart_uploads(Bucket=bucket, Prefix=key)
                assert [u["UploadId"] for u in listed["Uploads"]] == [up["UploadId"]]
                await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"])
                up = await s3.create_multipart_upload(Bucket=bucket, Key=key)
                etag = (
                    await s3.upload_part(
                        Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=body
                    )
                )["ETag"]
                await s3.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=up["UploadId"],
                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
                )
                return "yes: create/upload_part/complete/abort are separate calls (tested)"

            out["multipart_control"] = await attempt(multipart)

            async def list_uploads() -> str:
                await s3.list_multipart_uploads(Bucket=bucket)
                return "yes: list_multipart_uploads (tested)"

            out["list_multipart_uploads"] = await attempt(list_uploads)

            async def presigned() -> str:
                url = await s3.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": "features/a"}, ExpiresIn=60
                )
                assert await fetch(url) == body
                return "yes: generate_presigned_url (tested)"

            out["presigned_get"] = await attempt(presigned)

            async def ranged() -> str:
                r = await s3.get_object(Bucket=bucket, Key="features/a", Range="bytes=10-19")
                async with r["Body"] as b:
                    assert await b.read() == body[10:20]
                return "yes: Range= (tested)"

            out["ranged_get"] = await attempt(ranged)
            out["sse_kms"] = (
                "per request: ServerSideEncryption='aws:kms', SSEKMSKeyId= on put and "
                "create_multipart_upload (not tried: the test RGW has no KMS)"
            )

            async def storage_class() -> str:
                await s3.put_object(
                    Bucket=bucket, Key="features/sc", Body=b"x", StorageClass="STANDARD"
                )
                return "yes: StorageClass= per request (tested with STANDARD)"

            out["storage_class"] = await attempt(storage_class)
        out["endpoint_pathstyle_http_skipverify"] = (
            "yes: endpoint_url, s3.addressing_style=path, http:// (tested); verify=False"
        )

        async def env_credentials() -> str:
            os.environ["AWS_ACCESS_KEY_ID"] = self.conf["access_key"]
            os.environ["AWS_SECRET_ACCESS_KEY"] = self.conf["secret_key"]
            try:
                async with self.client(from_environment=True) as s3:
                    await s3.head_object(Bucket=bucket, Key="features/a")
            finally:
                del os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
            return "env"

        async def file_credentials() -> str:
            creds = Path(self.conf["workdir"]) / "aws-credentials"
            creds.write_text(
                "[default]\n"
                f"aws_access_key_id = {self.conf['access_key']}\n"
                f"aws_secret_access_key = {self.conf['secret_key']}\n"
            )
            os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
            try:
                async with self.client(from_environment=True) as s3:
                    await s3.head_object(Bucket=bucket, Key="features/a")
            finally:
                del os.environ["AWS_SHARED_CREDENTIALS_FILE"]
            return "shared credentials file"

        tried = [await attempt(env_credentials), await attempt(file_credentials)]
        out["credential_chain"] = (
            f"tried: {'; '.join(tried)}; botocore's whole chain (env, shared config and "
            "credentials files, profiles, SSO, web identity, container, instance metadata)"
        )
        return out


class Obstore:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf

    def store(self, *, from_environment: bool = False) -> Any:
        from obstore.store import S3Store

        kwargs: dict[str, Any] = {
            "endpoint": self.conf["endpoint"],
            "region": self.conf["region"],
            "virtual_hosted_style_request": False,
            "client_options": {"allow_http": True},
        }
        if from_environment:
            # The end of its chain is the instance metadata service: keep that on loopback
            # (a closed port), never the link-local address.
            kwargs["metadata_endpoint"] = "http://127.0.0.1:9"
        else:
            kwargs["access_key_id"] = self.conf["access_key"]
            kwargs["secret_access_key"] = self.conf["secret_key"]
        return S3Store(self.conf["bucket"], **kwargs)

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        yield self.store()

    async def upload(self, store: Any, key: str, path: str, part: int, inflight: int) -> int:
        import obstore

        sent = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in file_chunks(path):
                sent += len(chunk)
                yield chunk

        await obstore.put_async(store, key, counted(), chunk_size=part, max_concurrency=inflight)
        return sent

    async def download(self, store: Any, key: str, hasher: Any = None) -> int:
        import obstore

        got = 0
        response = await obstore.get_async(store, key)
        async for chunk in response.stream(min_chunk_size=1 << 20):
            got += len(chunk)
            if hasher is not None:
                hasher.update(chunk)
        return got

    async def features(self) -> dict[str, Any]:
        import obstore

        store, out = self.store(), {}
        body = b"0123456789" * 1000
        await obstore.put_async(store, "features/a", body)

        async def refused_source() -> str:
            # No multipart calls of its own: the one way to keep an upload from completing
            # is to fail the source it reads; the driver checks what is left behind.
            async def source() -> AsyncIterator[bytes]:
                yield b"y" * (6 << 20)
                yield b"y" * (6 << 20)
                raise ValueError("digest mismatch")

            try:
                await obstore.put_async(store, "features/refused", source(), chunk_size=5 << 20)
            except Exception as err:  # noqa: BLE001 - what it raises is the finding
                return f"put_async raised {type(err).__name__}"
            return "put_async completed despite the source failing"

        out["multipart_control"] = (
            "no explicit calls (put_async/open_writer complete on their own); "
            + await attempt(refused_source)
        )
        has_list = any("multipart" in name.lower() for name in dir(obstore) + dir(store))
        out["list_multipart_uploads"] = "yes" if has_list else "no: no API for it"

        async def presigned() -> str:
            url = await obstore.sign_async(store, "GET", "features/a", timedelta(seconds=60))
            assert await fetch(url) == body
            return "yes: sign_async (tested)"

        out["presigned_get"] = await attempt(presigned)

        async def ranged() -> str:
            got = await obstore.get_range_async(store, "features/a", start=10, end=20)
            assert bytes(got) == body[10:20]
            return "yes: get_range_async / get_async(options=range) (tested)"

        out["ranged_get"] = await attempt(ranged)
        out["sse_kms"] = (
            "per store: server_side_encryption='aws:kms', sse_kms_key_id= (not tried: the test "
            "RGW has no KMS)"
        )

        async def storage_class() -> str:
            await obstore.put_async(
                store, "features/sc", b"x", attributes={"Storage-Class": "STANDARD"}
            )
            return "yes: attributes={'Storage-Class': ...} per request (tested with STANDARD)"

        out["storage_class"] = await attempt(storage_class)
        out["endpoint_pathstyle_http_skipverify"] = (
            "yes: endpoint, virtual_hosted_style_request=False, allow_http (tested); "
            "client_options allow_invalid_certificates"
        )

        async def env_credentials() -> str:
            os.environ["AWS_ACCESS_KEY_ID"] = self.conf["access_key"]
            os.environ["AWS_SECRET_ACCESS_KEY"] = self.conf["secret_key"]
            try:
                await obstore.head_async(self.store(from_environment=True), "features/a")
            finally:
                del os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
            return "env"

        async def file_credentials() -> str:
            creds = Path(self.conf["workdir"]) / "aws-credentials"
            creds.write_text(
                "[default]\n"
                f"aws_access_key_id = {self.conf['access_key']}\n"
                f"aws_secret_access_key = {self.conf['secret_key']}\n"
            )
            os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
            try:
                await obstore.head_async(self.store(from_environment=True), "features/a")
            finally:
                del os.environ["AWS_SHARED_CREDENTIALS_FILE"]
            return "shared credentials file"

        tried = [await attempt(env_credentials), await attempt(file_credentials)]
        out["credential_chain"] = (
            f"tried: {'; '.join(tried)}; its own chain: env, web identity, container, instance "
            "metadata; profiles/SSO only through a boto3 credential_provider"
        )
        return out


async def attempt(fn: Callable[[], Any]) -> str:
    try:
        return str(await fn())
    except Exception as err:  # noqa: BLE001 - a failed feature is a row, not a crash
        return f"FAILED ({fn.__name__}): {type(err).__name__}: {str(err)[:160]}"


async def fetch(url: str) -> bytes:
    def get() -> bytes:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=10) as r:
            return bytes(r.read())

    return await asyncio.to_thread(get)


async def worker(name: str, op: str, conf: dict[str, Any]) -> dict[str, Any]:
    """One operation in a fresh process. The timer covers the transfer only: the client (or
    store) is made first, as the driver would keep one for its lifetime."""
    client = Aiobotocore(conf) if name == "aiobotocore" else Obstore(conf)
    result: dict[str, Any] = {}
    if op == "features":
        result["features"] = await client.features()
        return result
    async with client.connect() as handle:
        began = time.perf_counter()
        if op == "upload":
            result["bytes"] = await client.upload(
                handle, conf["key"], conf["file"], conf["part_mib"] << 20, conf["inflight"]
            )
        else:
            hasher = hashlib.sha256() if conf.get("verify") else None
            result["bytes"] = await client.download(handle, conf["key"], hasher)
            if hasher is not None:
                result["sha256"] = hasher.hexdigest()
        result["seconds"] = time.perf_counter() - began
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------------------- driver side


def site_packages_bytes(venv: Path) -> tuple[int, dict[str, str]]:
    site = next((venv / "lib").glob("python3*/site-packages"))
    total = sum((Path(d) / f).stat().st_size for d, _, files in os.walk(site) for f in files)
    frozen = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "freeze", "--all"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    pins = dict(line.split("==", 1) for line in frozen.splitlines() if "==" in line)
    return total, pins


def make_venv(workdir: Path, name: str) -> dict[str, Any]:
    """A venv with pullthrough's runtime dependencies (pinned) and then ``name``: what the
    candidate adds is the growth of site-packages and the distributions that appeared."""
    venv = workdir / f"venv-{name}"
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if not (venv / "bin/python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        runtime = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        subprocess.run([*pip, "-c", str(REPO / "requirements.lock"), *runtime], check=True)
        (venv / "baseline.json").write_text(json.dumps(site_packages_bytes(venv)))
    base_bytes, base_pins = json.loads((venv / "baseline.json").read_text())
    subprocess.run([*pip, "-c", str(REPO / "requirements.lock"), name], check=True)
    now_bytes, pins = site_packages_bytes(venv)
    added = {k: v for k, v in pins.items() if base_pins.get(k) != v}
    return {
        "python": str(venv / "bin/python"),
        "version": pins.get(name, "?"),
        "installed_mb": round((now_bytes - base_bytes) / 1e6, 1),
        "added": added,
    }


def run_worker(python: str, name: str, op: str, conf: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # No credential chain may reach for an instance metadata service off this machine.
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.pop("http_proxy", None), env.pop("HTTP_PROXY", None)
    done = subprocess.run(
        [python, __file__, "--worker", name, "--op", op, "--conf", json.dumps(conf)],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        return {"error": f"exit {done.returncode}: {done.stderr[-1500:]}"}
    result = dict(json.loads(lines[-1]))
    if done.returncode != 0:
        # It finished and reported; the process then died on its way out (seen: obstore
        # 0.12.1 aborting with SIGABRT at interpreter exit, now and then). Kept, and counted.
        result["exit"] = done.returncode
    return result


def summarize(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    median = statistics.median(values)
    return {
        "median": round(median, 1),
        "spread": round((max(values) - min(values)) / median, 3) if median else 0.0,
    }


async def leftovers(server: Any, key: str) -> str:
    """What a failed upload left at ``key``: an object, pending uploads, or nothing."""
    from tests.support.s3_client import s3_client

    async with s3_client(server) as s3:
        pending = await s3.list_multipart_uploads(Bucket=server.bucket, Prefix=key)
        listed = await s3.list_objects_v2(Bucket=server.bucket, Prefix=key)
    uploads, objects = len(pending.get("Uploads", [])), len(listed.get("Contents", []))
    return f"{objects} object(s) and {uploads} unfinished upload(s) at the key"


def git_commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip()


def render(results: dict[str, Any], parts: list[int], size_mib: int) -> str:
    lines = [f"S3 clients, {size_mib} MiB object, radosgw on loopback (median MB/s, spread)"]
    head = f"{'client':<12} {'version':<9} " + " ".join(
        f"{'up ' + str(p) + ' MiB':>16}" for p in parts
    )
    lines.append(head + f" {'download':>16} {'peak RSS up/down':>17} {'installed':>10}")
    for name, r in results.items():
        row = f"{name:<12} {r['version']:<9} "
        for p in parts:
            s = r["upload"][str(p)]["mbps"]
            row += f"{_cell(s):>16} "
        row += f"{_cell(r['download']['mbps']):>16} "
        rss_up = max((x.get("peak_rss_mib", 0) for p in parts for x in r["upload"][str(p)]["runs"]),
                     default=0)  # fmt: skip
        rss_down = max((x.get("peak_rss_mib", 0) for x in r["download"]["runs"]), default=0)
        row += f"{f'{rss_up:.0f}/{rss_down:.0f} MiB':>17} {r['installed_mb']:>7.1f} MB"
        lines.append(row)
    lines.append("")
    for name, r in results.items():
        lines.append(
            f"{name} adds: " + ", ".join(f"{k} {v}" for k, v in sorted(r["added"].items()))
        )
    for name, r in results.items():
        runs = [*r["download"]["runs"], *(y for u in r["upload"].values() for y in u["runs"])]
        bad = [x["exit"] for x in runs if "exit" in x]
        if bad:
            lines.append(f"{name}: {len(bad)} of {len(runs)} workers died after reporting {bad}")
    lines.append("")
    keys = next(iter(results.values()))["features"].keys()
    for key in keys:
        lines.append(f"{key}:")
        for name, r in results.items():
            lines.append(f"  {name:<12} {r['features'].get(key)}")
    return "\n".join(lines)


def _cell(s: dict[str, float]) -> str:
    return f"{s['median']:.0f} ({s['spread'] * 100:.0f}%)" if s else "failed"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--op", help=argparse.SUPPRESS)
    p.add_argument("--conf", help=argparse.SUPPRESS)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--parts", default="16,64", help="part sizes in MiB")
    p.add_argument("--inflight", type=int, default=4, help="parts in flight")
    p.add_argument("--only", default=",".join(CANDIDATES))
    p.add_argument("--workdir", default="/tmp/s3-clients")
    p.add_argument("--out", default=str(BENCH / "results"))
    a = p.parse_args()
    if a.worker:
        print(json.dumps(asyncio.run(worker(a.worker, a.op, json.loads(a.conf)))))
        return 0

    sys.path.insert(0, str(REPO))
    from tests.support.s3_server import CephS3

    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    names = [n for n in a.only.split(",") if n]
    parts = [int(x) for x in a.parts.split(",")]
    venvs = {name: make_venv(workdir, name) for name in names}

    blob = workdir / f"blob-{a.size_mib}m"
    if not blob.exists() or blob.stat().st_size != a.size_mib << 20:
        with open(blob, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(1 << 20))
    hasher = hashlib.sha256()
    with open(blob, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    digest = hasher.hexdigest()

    results: dict[str, Any] = {}
    began = time.monotonic()
    # Capacity the OSD reports: objects live in its memory until deleted and collected.
    with CephS3(workdir / "s3", memory_bytes=max(8 << 30, (a.size_mib << 20) * 6)) as server:
        conf = {
            "endpoint": server.endpoint_url,
            "region": server.region,
            "bucket": server.bucket,
            "access_key": server.access_key,
            "secret_key": server.secret_key,
            "workdir": str(workdir),
            "file": str(blob),
            "inflight": a.inflight,
        }
        server_meta = {"start_seconds": server.timings}
        for name in names:
            v = venvs[name]
            results[name] = {
                "version": v["version"],
                "installed_mb": v["installed_mb"],
                "added": v["added"],
                "upload": {str(p): {"runs": []} for p in parts},
                "download": {"runs": []},
                "features": run_worker(v["python"], name, "features", conf).get("features", {}),
            }
            left = asyncio.run(leftovers(server, "features/refused"))
            if name == "obstore":
                results[name]["features"]["multipart_control"] += f"; afterwards {left}"
        for run in range(a.runs):
            order = names if run % 2 == 0 else names[::-1]
            for name in order:
                r, py = results[name], venvs[name]["python"]
                key = f"bench/{name}"
                for part in parts:
                    up = run_worker(py, name, "upload", {**conf, "key": key, "part_mib": part})
                    r["upload"][str(part)]["runs"].append(up)
                    print(f"run {run} {name} upload {part} MiB: {up}", flush=True)
                verify = run == 0
                down = run_worker(py, name, "download", {**conf, "key": key, "verify": verify})
                if verify:
                    down["verified"] = down.get("sha256") == digest
                    # The timed download follows the checked one (hashing costs CPU).
                    r["download"]["check"] = down
                    down = run_worker(py, name, "download", {**conf, "key": key})
                r["download"]["runs"].append(down)
                print(f"run {run} {name} download: {down}", flush=True)
        for r in results.values():
            for part in parts:
                u = r["upload"][str(part)]
                u["mbps"] = summarize(
                    [x["bytes"] / x["seconds"] / 1e6 for x in u["runs"] if "seconds" in x]
                )
            d = r["download"]
            d["mbps"] = summarize(
                [x["bytes"] / x["seconds"] / 1e6 for x in d["runs"] if "seconds" in x]
            )

    table = render(results, parts, a.size_mib)
    print(table)
    meta = {
        "commit": git_commit(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - began),
        "size_mib": a.size_mib,
        "runs": a.runs,
        "parts_mib": parts,
        "inflight": a.inflight,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "server": {"kind": "radosgw (ceph 16, memstore, one OSD)", **server_meta},
        "sha256": digest,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-s3-clients.json"
    path.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=1))
    print(f"wrote {path}")
    failed = any(
        "error" in x
        for r in results.values()
        for x in [*r["download"]["runs"], *(y for u in r["upload"].values() for y in u["runs"])]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
