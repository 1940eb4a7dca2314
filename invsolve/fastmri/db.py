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

- ``claims``: the tasks a running benchmark has taken (its owner: host, process id, a random tag),
  so that two runs on one database split the work instead of redoing it; a claim goes when its
  task is stored or its run ends, and a claim whose process is gone (same host) or that is older
  than ``STALE_CLAIM_SECONDS`` (another host) is taken over.

A task's rows go in with a single ``BEGIN ... COMMIT``, so a run killed at any moment leaves every
task either complete or absent; WAL journaling keeps readers (the report) off the writer's way.
Only the coordinating process writes; workers return plain dicts. Rows with NaN or infinite
metrics are refused (``insert`` raises ``DataError``): the runner reports such tasks as failed.
"""

from __future__ import annotations

import io
import json
import math
import os
import socket
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import DataError

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
CREATE TABLE IF NOT EXISTS claims (
    volume TEXT NOT NULL,
    method TEXT NOT NULL,
    acceleration REAL NOT NULL,
    mask TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    owner TEXT NOT NULL,
    claimed REAL NOT NULL,
    PRIMARY KEY (volume, method, acceleration, mask, seed, config_hash)
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
METRIC_COLUMNS = ("nmse", "psnr", "ssim")
STALE_CLAIM_SECONDS = 6 * 3600  # a claim of another host older than this is taken over


def new_owner() -> str:
    """A claim owner: ``host:pid:tag`` (one per run)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_alive(owner: str, claimed: float) -> bool:
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname():
        return time.time() - claimed < STALE_CLAIM_SECONDS
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def check_database(path: str | Path, flag: str = "--db") -> None:
    """A ``DataError`` naming ``path`` when it exists and is not an SQLite database (nothing is created)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{flag} {path} is a folder; give the benchmark database's file name (e.g. bench.sqlite)")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        conn = sqlite3.connect(f"file:{path.resolve().as_posix()}?mode=ro", uri=True, timeout=60)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise DataError(f"{flag} {path} is not an SQLite database ({err}); give a new file name or an earlier "
                        "benchmark database") from None


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
        check_database(self.path)
        self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        try:
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            self.conn.close()
            raise DataError(f"--db {self.path} cannot be used as a benchmark database ({err}); give a new file "
                            "name or an earlier benchmark database") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # writing ------------------------------------------------------------------------------
    def claim(self, keys: Iterable[tuple], owner: str) -> set[tuple]:
        """Claim the tasks ``keys`` (``task_key`` tuples) for ``owner`` in one transaction; returns
        those claimed: not stored yet and not held by another live run."""
        keys = [tuple(k) for k in keys]
        conn = self.conn
        taken = set()
        conn.execute("BEGIN IMMEDIATE")
        try:
            where = " AND ".join(f"{c} = ?" for c in KEY_COLUMNS)
            for key in keys:
                if conn.execute(f"SELECT 1 FROM results WHERE {where}", key).fetchone():
                    continue
                held = conn.execute(f"SELECT owner, claimed FROM claims WHERE {where}", key).fetchone()
                if held is not None and held[0] != owner and _owner_alive(held[0], held[1]):
                    continue
                conn.execute(f"INSERT OR REPLACE INTO claims ({', '.join(KEY_COLUMNS)}, owner, claimed) VALUES "
                             f"({', '.join('?' * (len(KEY_COLUMNS) + 2))})", (*key, owner, time.time()))
                taken.add(key)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return taken

    def release(self, owner: str, key: tuple | None = None) -> None:
        """Drop ``owner``'s claim on ``key`` (default: all of its claims)."""
        if key is None:
            self.conn.execute("DELETE FROM claims WHERE owner = ?", (owner,))
        else:
            where = " AND ".join(f"{c} = ?" for c in KEY_COLUMNS)
            self.conn.execute(f"DELETE FROM claims WHERE owner = ? AND {where}", (owner, *key))

    def insert(self, result: dict) -> int | None:
        """Store one finished task atomically: its ``results`` row, its ``slice_results`` rows
        (``result["slice_rows"]``) and its figure arrays (``result["images"]``: {(slice, kind): array}).
        Returns the new row id, or ``None`` when the task is already stored (same key, e.g. by a
        concurrent run): the database is then unchanged. NaN or infinite metrics raise ``DataError``."""
        bad = [k for k in METRIC_COLUMNS if result.get(k) is None or not math.isfinite(float(result[k]))]
        bad += [f"slice {r.get('slice')} {k}" for r in result.get("slice_rows", []) for k in METRIC_COLUMNS
                if r.get(k) is None or not math.isfinite(float(r[k]))]
        if bad:
            raise DataError(f"{result.get('method')} on {result.get('volume')}: metrics {', '.join(bad[:6])} are NaN "
                            f"or infinite; not stored in {self.path}")
        row = {k: result[k] for k in RESULT_COLUMNS}
        for key in ("slices", "config", "versions"):
            if not isinstance(row[key], str):
                row[key] = json.dumps(row[key], sort_keys=True)
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(f"INSERT OR IGNORE INTO results ({', '.join(RESULT_COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(RESULT_COLUMNS))})", [row[k] for k in RESULT_COLUMNS])
            if cur.rowcount == 0:  # stored meanwhile by another run
                conn.execute("ROLLBACK")
                return None
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
        """Every stored result (rows of older versions whose metrics were stored as NULL, from NaN, are left out)."""
        rows = self.conn.execute("SELECT * FROM results WHERE nmse IS NOT NULL AND psnr IS NOT NULL AND "
                                 "ssim IS NOT NULL ORDER BY id").fetchall()
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
