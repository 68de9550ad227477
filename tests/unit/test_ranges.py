from __future__ import annotations

import pytest

from pullthrough.errors import RangeInvalid
from pullthrough.server.ranges import ByteRange, parse_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", ByteRange(0, 10)),
        ("bytes=10-", ByteRange(10, 100)),
        ("bytes=-5", ByteRange(95, 100)),
        ("bytes=-500", ByteRange(0, 100)),
        ("bytes=90-99999999999999", ByteRange(90, 100)),
        ("bytes=99-99", ByteRange(99, 100)),
    ],
)
def test_satisfiable_ranges(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=100-",
        "bytes=5-2",
        "bytes=-0",
        "bytes=-",
        "bytes=abc",
        "items=0-1",
        "bytes=0-1,5-6",
        "bytes=-5-10",
        "bytes=" + "9" * 30 + "-",
    ],
)
def test_unsatisfiable_ranges_are_416_with_the_size(header: str) -> None:
    with pytest.raises(RangeInvalid) as info:
        parse_range(header, 100)
    assert info.value.status == 416
    assert info.value.headers["Content-Range"] == "bytes */100"


def test_content_range_header() -> None:
    assert ByteRange(10, 20).content_range(100) == "bytes 10-19/100"


def test_non_ascii_digits_are_not_numbers() -> None:
    """Found by the fuzzer: '➑' and '٣' are "digits" to str.isdigit() and regex \\d."""
    from pullthrough.upstream.ratelimit import parse_retry_after

    assert parse_retry_after("➑") is None
    with pytest.raises(RangeInvalid):
        parse_range("bytes=٣-", 100)
