"""What the speed benchmarks share: the machine-load probe (a run records it beside its timings) and
the CSV writer of their tables."""

from __future__ import annotations

import csv
from pathlib import Path


def load() -> str:
    """The 1 / 5 / 15-minute load averages (/proc/loadavg), or 'n/a' where there is none."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys, in the first row's order) as a CSV file at ``path``."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
