"""The benchmark's result store: one SQLite file, one committed transaction per finished task.

Tables (``invsolve bench fastmri`` writes them, ``invsolve bench report`` reads them):

- ``results``: one row per (volume, method, acceleration, mask, seed, config hash): the per-volume
  metrics exactly as fastMRI's ``evaluate.py`` defines them (NMSE, PSNR, SSIM over the volume's
  selected slices, data range = the volume's maximum), wall seconds, NFE per sample, number of
  posterior draws, the oracle best-of-N PSNR for samplers (NULL otherwise), the resolved
  configuration (JSON) and its hash, the software versions (JSON), the device and a UTC timestamp.
  ``UNIQUE(volume, method, acceleration, mask, seed, config_hash)`` is the resume key.
- ``slice_results``: one row per reconstructed slice of a ``results`` row (``result_id``), with the
  slice index and that slice's NMSE, PSNR and SSIM (data range = the volume's maximum).
- ``images``: float32 arrays for the report's figures (the target, the reconstruction and, for
  samplers, the pixelwise posterior std) of one slice per result (the middle selected slice).

A task's rows go in with a single ``BEGIN ... COMMIT``, so a run killed at any moment leaves every
task either complete or absent; WAL journaling keeps readers (the report) off the writer's way.
Only the coordinating process writes; workers return plain dicts.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    volume TEXT NOT NULL,
    slices TEXT NOT NULL,
    method TEXT NOT NULL,
    acceleration REAL NOT NULL,
    mask TEXT NOT NULL,
    seed INTEGER NOT NULL,
    nmse REAL, psnr REAL, ssim REAL,
    oracle_psnr REAL,
    seconds REAL NOT NULL,
    nfe INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    config TEXT NOT NULL,
    versions TEXT NOT NULL,
    device TEXT NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (volume, method, acceleration, mask, seed, config_hash)
);
CREATE TABLE IF NOT EXISTS slice_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    volume TEXT NOT NULL,
    slice INTEGER NOT NULL,
    method TEXT NOT NULL,
    acceleration REAL NOT NULL,
    mask TEXT NOT NULL,
    seed INTEGER NOT NULL,
    nmse REAL, psnr REAL, ssim REAL,
    config_hash TEXT NOT NULL,
    UNIQUE (result_id, slice)
);
CREATE TABLE IF NOT EXISTS images (
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    slice INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (result_id, slice, kind)
);
"""

RESULT_COLUMNS = ("volume", "slices", "method", "acceleration", "mask", "seed", "nmse", "psnr", "ssim",
                  "oracle_psnr", "seconds", "nfe", "samples", "config_hash", "config", "versions", "device", "created")
SLICE_COLUMNS = ("volume", "slice", "method", "acceleration", "mask", "seed", "nmse", "psnr", "ssim", "config_hash")
KEY_COLUMNS = ("volume", "method", "acceleration", "mask", "seed", "config_hash")


def task_key(volume: str, method: str, acceleration: float, mask: str, seed: int, config_hash: str) -> tuple:
    """The resume key of a task (the ``UNIQUE`` columns of ``results``)."""
    return (str(volume), str(method), float(acceleration), str(mask), int(seed), str(config_hash))


def _array_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


class ResultStore:
    """A benchmark database (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.parent != Path(""):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # writing ------------------------------------------------------------------------------
    def insert(self, result: dict) -> int:
        """Store one finished task atomically: its ``results`` row, its ``slice_results`` rows
        (``result["slice_rows"]``) and its figure arrays (``result["images"]``: {(slice, kind): array}).
        Returns the new row id; a task already stored (same key) raises ``sqlite3.IntegrityError``
        and leaves the database unchanged."""
        row = {k: result[k] for k in RESULT_COLUMNS}
        for key in ("slices", "config", "versions"):
            if not isinstance(row[key], str):
                row[key] = json.dumps(row[key], sort_keys=True)
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(f"INSERT INTO results ({', '.join(RESULT_COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(RESULT_COLUMNS))})", [row[k] for k in RESULT_COLUMNS])
            result_id = cur.lastrowid
            for srow in result.get("slice_rows", []):
                conn.execute(f"INSERT INTO slice_results (result_id, {', '.join(SLICE_COLUMNS)}) VALUES "
                             f"(?, {', '.join('?' * len(SLICE_COLUMNS))})", [result_id] + [srow[k] for k in SLICE_COLUMNS])
            for (index, kind), array in result.get("images", {}).items():
                conn.execute("INSERT INTO images (result_id, slice, kind, data) VALUES (?, ?, ?, ?)",
                             (result_id, int(index), kind, _array_bytes(array)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result_id

    # reading ------------------------------------------------------------------------------
    def completed(self) -> set[tuple]:
        """Resume keys of every stored task."""
        rows = self.conn.execute(f"SELECT {', '.join(KEY_COLUMNS)} FROM results").fetchall()
        return {task_key(*row) for row in rows}

    def results(self) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM results ORDER BY id").fetchall()
        out = []
        for row in rows:
            d = dict(row)
            for key in ("slices", "config", "versions"):
                d[key] = json.loads(d[key])
            out.append(d)
        return out

    def slice_results(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM slice_results ORDER BY id").fetchall()]

    def images(self, result_ids: Iterable[int] | None = None) -> dict[tuple[int, int, str], np.ndarray]:
        """{(result_id, slice, kind): array} for the given results (default: all)."""
        if result_ids is None:
            rows = self.conn.execute("SELECT result_id, slice, kind, data FROM images").fetchall()
        else:
            ids = list(result_ids)
            if not ids:
                return {}
            rows = self.conn.execute(f"SELECT result_id, slice, kind, data FROM images WHERE result_id IN "
                                     f"({', '.join('?' * len(ids))})", ids).fetchall()
        return {(r[0], r[1], r[2]): _array(r[3]) for r in rows}
