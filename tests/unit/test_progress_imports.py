"""The image leaves Pygments and markdown-it-py out of its venv (10.7 MB): rich needs them for
syntax highlighting, Markdown and tracebacks, never for the progress bars pullthrough draws."""

from __future__ import annotations

import subprocess
import sys

DRAW_BARS = """
import io, sys
from pullthrough.progress import Reporter
out = io.StringIO()
with Reporter(tty=True, out=out) as reporter:
    task = reporter.add("sha256:abc", 4)
    reporter.advance(task, 2)
    reporter.line("[not markup] done")
    reporter.remove(task)
assert "[not markup] done" in out.getvalue(), out.getvalue()
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_progress_bars_import_neither_pygments_nor_markdown_it() -> None:
    # A fresh interpreter: this one may have imported either for another test.
    done = subprocess.run(
        [sys.executable, "-c", DRAW_BARS], capture_output=True, text=True, check=True
    )
    imported = set(done.stdout.split())
    assert "rich" in imported
    assert not imported & {"pygments", "markdown_it", "mdurl"}
