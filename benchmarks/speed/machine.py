"""The machine-load probe shared by the speed benchmarks (a run records it beside its timings)."""

from __future__ import annotations

from pathlib import Path


def load() -> str:
    """The 1 / 5 / 15-minute load averages (/proc/loadavg), or 'n/a' where there is none."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"
