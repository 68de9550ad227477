"""The S3 client (obstore, a Rust extension with its own runtime threads) is loaded only when
storage.s3 is configured: a filesystem store neither pays for it nor carries its threads
into interpreter exit."""

from __future__ import annotations

import subprocess
import sys


def test_a_filesystem_mirror_never_loads_obstore() -> None:
    code = (
        "import sys, asyncio\n"
        "import pullthrough.cli, pullthrough.server.app, pullthrough.mirror.service\n"
        "import pullthrough.commands.gc, pullthrough.commands.offline, pullthrough.commands.ls\n"
        "from pullthrough.config import load\n"
        "from pullthrough.mirror.service import Mirror\n"
        "async def main():\n"
        "    Mirror(load(None, environ={}))\n"
        "asyncio.run(main())\n"
        "print('obstore' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/tmp"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_an_s3_config_does_load_it() -> None:
    code = (
        "import sys, asyncio\n"
        "from pullthrough.config.load import _validate\n"
        "from pullthrough.mirror.service import Mirror\n"
        "config = _validate({'storage': {'s3': {'bucket': 'b-1', 'region': 'r'}}}, [])\n"
        "async def main():\n"
        "    Mirror(config)\n"
        "asyncio.run(main())\n"
        "print('obstore' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/tmp"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
