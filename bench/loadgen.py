"""Request-rate load: wrk for GETs, ``ab -k -i`` for HEADs; output parsed to numbers."""

from __future__ import annotations

import re
import subprocess
from typing import Any

from procs import clean_env

WRK = "/usr/bin/wrk"
AB = "/usr/bin/ab"


def _num(pattern: str, text: str, default: float = 0.0) -> float:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else default


def _latency_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(
    url: str, *, connections: int, seconds: float, threads: int, headers: list[str] = ()
) -> dict[str, Any]:
    cmd = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 60, env=clean_env()
    ).stdout
    result: dict[str, Any] = {
        "tool": "wrk",
        "rps": _num(r"Requests/sec:\s+([\d.]+)", out),
        "requests": int(_num(r"(\d+) requests in", out)),
        "non_2xx": int(_num(r"Non-2xx or 3xx responses:\s+(\d+)", out)),
        "socket_errors": sum(
            int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)
        ),
    }
    m = re.search(r"50%\s+([\d.]+)(us|ms|s|m)\b", out)
    if m:
        result["p50_ms"] = round(_latency_ms(m.group(1), m.group(2)), 3)
    m = re.search(r"99%\s+([\d.]+)(us|ms|s|m)\b", out)
    if m:
        result["p99_ms"] = round(_latency_ms(m.group(1), m.group(2)), 3)
    if not result["requests"]:
        result["raw"] = out[-2000:]
    return result


def ab_head(
    url: str, *, connections: int, seconds: float, headers: list[str] = ()
) -> dict[str, Any]:
    # -t before -n: -t alone caps requests at 50000; -n after it lifts the cap.
    cmd = [
        AB,
        "-q",
        "-k",
        "-i",
        "-c",
        str(connections),
        "-t",
        f"{seconds:g}",
        "-n",
        "100000000",
        "-s",
        "10",
    ]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 60, env=clean_env()
    )
    out = proc.stdout
    result: dict[str, Any] = {
        "tool": "ab",
        "rps": _num(r"Requests per second:\s+([\d.]+)", out),
        "requests": int(_num(r"Complete requests:\s+(\d+)", out)),
        "failed": int(_num(r"Failed requests:\s+(\d+)", out)),
        "non_2xx": int(_num(r"Non-2xx responses:\s+(\d+)", out)),
        "keepalive": int(_num(r"Keep-Alive requests:\s+(\d+)", out)),
    }
    m = re.search(r"\n\s+50%\s+(\d+)", out)
    if m:
        result["p50_ms"] = float(m.group(1))
    if not result["requests"]:
        result["raw"] = (out + proc.stderr)[-2000:]
    return result
