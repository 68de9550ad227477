"""The ``Range`` request header, for blob GETs: one byte range, or an OCI error."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pullthrough.errors import RangeInvalid

_RANGE = re.compile(r"^\s*bytes\s*=\s*([0-9]{0,19})\s*-\s*([0-9]{0,19})\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    stop: int  # exclusive

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range asked for within a blob of ``size`` bytes; None means the whole blob.

    Raises RangeInvalid (416, with ``Content-Range: bytes */size``) for a range that is
    malformed, asks for several ranges, or starts beyond the end.
    """
    if header is None:
        return None
    match = _RANGE.match(header)
    if not match or match.group(1) == match.group(2) == "":
        raise _invalid(f"unsupported or malformed Range header {header[:100]!r}", size)
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise _invalid("a suffix range of zero bytes cannot be satisfied", size)
        return ByteRange(max(0, size - suffix), size)
    start = int(first)
    stop = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        raise _invalid(f"range end {last} is before its start {start}", size)
    if start >= size:
        raise _invalid(f"range start {start} is beyond the blob's {size} bytes", size)
    return ByteRange(start, stop)


def _invalid(message: str, size: int) -> RangeInvalid:
    return RangeInvalid(message, headers={"Content-Range": f"bytes */{size}"})
