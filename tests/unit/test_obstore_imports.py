"""The S3 client (obstore, a Rust extension with its own runtime threads) is loaded only when
storage.s3 is configured: a filesystem store neither pays for it nor carries its threads
into interpreter exit."""

from __future__ import annotations

import subprocess
import sys

BUILD_A_MIRROR = (
    "import sys, asyncio\n"
    "import pullthrough.cli, pullthrough.server.app, pullthrough.mirror.service\n"
    "import pullthrough.commands.gc, pullthrough.commands.offline, pullthrough.commands.ls\n"
    "from pullthrough.config.load import _validate\n"
    "from pullthrough.mirror.service import Mirror\n"
    "async def main():\n"
    "    Mirror(_validate({RAW}, []))\n"
    "asyncio.run(main())\n"
    "print('obstore' in sys.modules)\n"
)


def obstore_loaded(raw: dict[str, object]) -> bool:
    """Whether building a Mirror for the config ``raw`` (in a new interpreter) loads it."""
    done = subprocess.run(
        [sys.executable, "-c", BUILD_A_MIRROR.replace("{RAW}", repr(raw))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/tmp",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_a_filesystem_mirror_never_loads_obstore() -> None:
    assert not obstore_loaded({})


def test_an_s3_config_does_load_it() -> None:
    assert obstore_loaded({"storage": {"s3": {"bucket": "b-1", "region": "r"}}})
