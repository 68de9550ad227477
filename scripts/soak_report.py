"""The soak's readings, its table and its verdict (pure: no processes, no network).

``scripts/soak.py`` takes a ``Sample`` of the mirror once per interval and hands the list
to ``verdict``; keeping the rules here lets a unit test show they catch what they claim to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

MiB = 1024 * 1024

# How much the mirror may grow between the baseline sample and the end. Caches warm up in the
# first minutes (tokens, pools, the index's page cache, malloc arenas), so the baseline is the
# minute-2 sample; after that a mirror that does not leak stays within a few MiB and fds.
RSS_GROWTH_BOUND = 64 * MiB
FD_GROWTH_BOUND = 64
# Runs shorter than this compare the first sample with the last instead (and say so).
BASELINE_AT_SECONDS = 120.0


@dataclass(frozen=True)
class Sample:
    """The mirror and its clients at one moment, with what happened since the last one."""

    at: float  # seconds since the load started
    statuses: Mapping[str, int]  # client-side answers by status ("err" = no answer)
    wrong: int  # answers whose bytes or digest were not the known content
    wrong_bytes: int
    aborted: int  # transfers cut short (a failed download, never a wrong one)
    rss: int  # bytes
    rss_peak: int
    fds: int
    upstream_conns: int  # established connections from the mirror to the upstream
    upstream_conns_peak: int
    store_bytes: int  # files under the store's blobs/ directory
    store_peak: int
    maxsize: int
    phases: Sequence[str] = field(default_factory=tuple)  # faults switched on meanwhile

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["statuses"] = dict(self.statuses)
        out["phases"] = list(self.phases)
        return out


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...]
    baseline_at: float | None  # the sample growth was measured from


def verdict(
    samples: Sequence[Sample],
    *,
    rss_bound: int = RSS_GROWTH_BOUND,
    fd_bound: int = FD_GROWTH_BOUND,
    baseline_at: float = BASELINE_AT_SECONDS,
    server_500: int = 0,
    wrong_heads: int = 0,
) -> Verdict:
    """Fail on any wrong byte or answer, any 500 (seen by a client, or ``server_500`` counted
    by the mirror for clients that had gone; ``wrong_heads``: a HEAD announcing another size
    than the blob's), or RSS/fds growing by more than the bounds
    between the baseline sample (the first at or after ``baseline_at`` seconds that is not
    the last one, else the first sample) and the last sample."""
    reasons: list[str] = []
    wrong = sum(s.wrong for s in samples)
    wrong_bytes = sum(s.wrong_bytes for s in samples)
    if wrong:
        reasons.append(f"{wrong} wrong answers ({wrong_bytes} wrong bytes) served")
    errors = sum(s.statuses.get("500", 0) for s in samples)
    if errors:
        reasons.append(f"{errors} answers with status 500")
    if server_500:
        reasons.append(f"the mirror counted {server_500} answers with status 500")
    if wrong_heads:
        reasons.append(f"{wrong_heads} HEADs answered with another size than the blob's")
    base = _baseline(samples, baseline_at)
    if base is not None:
        last = samples[-1]
        if last.rss - base.rss > rss_bound:
            reasons.append(
                f"RSS grew {(last.rss - base.rss) / MiB:.1f} MiB from t={base.at:.0f}s to "
                f"t={last.at:.0f}s (bound {rss_bound / MiB:.0f} MiB)"
            )
        if last.fds - base.fds > fd_bound:
            reasons.append(
                f"open fds grew by {last.fds - base.fds} from t={base.at:.0f}s to "
                f"t={last.at:.0f}s (bound {fd_bound})"
            )
    return Verdict(not reasons, tuple(reasons), None if base is None else base.at)


def sum_samples(samples: Sequence[Sample]) -> Sample:
    """The whole run as one sample: counts summed, gauges of the last sample."""
    if not samples:
        raise ValueError("no samples")
    statuses: Counter[str] = Counter()
    for s in samples:
        statuses.update(s.statuses)
    return replace(
        samples[-1],
        statuses=dict(statuses),
        wrong=sum(s.wrong for s in samples),
        wrong_bytes=sum(s.wrong_bytes for s in samples),
        aborted=sum(s.aborted for s in samples),
        rss_peak=max(s.rss_peak for s in samples),
        upstream_conns_peak=max(s.upstream_conns_peak for s in samples),
        store_peak=max(s.store_peak for s in samples),
        phases=(),
    )


def _baseline(samples: Sequence[Sample], baseline_at: float) -> Sample | None:
    if len(samples) < 2:
        return None
    for s in samples[:-1]:
        if s.at >= baseline_at:
            return s
    return samples[0]


# ---------------------------------------------------------------------------- the table

_COLUMNS = (
    ("t", 6),
    ("reqs", 7),
    ("2xx", 7),
    ("4xx", 6),
    ("5xx", 5),
    ("500", 4),
    ("err", 5),
    ("aborted", 7),
    ("wrong B", 7),
    ("RSS MiB", 8),
    ("fds", 5),
    ("up conns", 9),
    ("store/max MiB", 14),
)


def header() -> str:
    return " ".join(name.rjust(width) for name, width in _COLUMNS) + "  faults since last row"


def row(s: Sample) -> str:
    """One line of the table: counts are since the previous row, gauges are now (peak)."""
    by_class = {k: 0 for k in ("2", "4", "5")}
    for status, n in s.statuses.items():
        if status[:1] in by_class:
            by_class[status[:1]] += n
    cells = (
        f"{s.at / 60:.1f}m",
        str(s.requests),
        str(by_class["2"]),
        str(by_class["4"]),
        str(by_class["5"] - s.statuses.get("500", 0)),
        str(s.statuses.get("500", 0)),
        str(s.statuses.get("err", 0)),
        str(s.aborted),
        str(s.wrong_bytes),
        f"{s.rss / MiB:.1f}",
        str(s.fds),
        f"{s.upstream_conns}({s.upstream_conns_peak})",
        f"{s.store_bytes / MiB:.1f}({s.store_peak / MiB:.1f})/{s.maxsize / MiB:.0f}",
    )
    line = " ".join(c.rjust(width) for c, (_, width) in zip(cells, _COLUMNS, strict=True))
    return f"{line}  {','.join(s.phases)}"


def status_line(s: Sample) -> str:
    """Every status seen since the last row, e.g. ``200:812 206:40 404:97 503:12``."""
    return " ".join(f"{k}:{v}" for k, v in sorted(s.statuses.items()))
