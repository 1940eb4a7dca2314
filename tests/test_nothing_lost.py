"""Issue 13: "Nothing lost", "Checkpoints are verified" and "Determinism".

Each class of bad input is tried through the CLI (one line ``invsolve: error: ...`` naming the file
or field, exit status 2, nothing written, nothing of the user's lost) and, where it applies,
through the Python API.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import invsolve as iv
from invsolve.cli import main
from invsolve.errors import CheckpointError, ConfigError, DataError
from invsolve.fastmri import runner
from invsolve.fastmri.db import ResultStore
from invsolve.fastmri.reader import read_volume
from invsolve.fastmri.synth import COMPLETE_MARKER, is_complete, synthesize
from invsolve.io import MARKER, prepare_output
from invsolve.priors.training import TrainConfig, train

TINY = dict(size=16, channels=(8, 16), attention=(), batch=4, warmup=2, steps=2, val_every=0)
TRAIN = ["train", "--size", "16", "--channels", "8", "16", "--attention", "--batch", "4", "--steps", "2",
         "--warmup", "2", "--val-every", "0", "--quiet", "--no-evaluate"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("invsolve: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return train(TrainConfig(name="tiny-lost", **TINY), root / "run", root / "prior", progress=False, evaluate=False)


def copy_prior(tiny_prior, tmp_path, name="p") -> Path:
    folder = tmp_path / name
    shutil.copytree(tiny_prior, folder)
    return folder


def rewrite(folder: Path, state=None, card_edit=None, keep_sha=False):
    """Rewrite a prior folder's weights and/or card; the recorded sha256 follows the new weights
    unless ``keep_sha``."""
    card = json.loads((folder / "card.json").read_text())
    if state is not None:
        save_file(state, str(folder / "weights.safetensors"))
    if not keep_sha:
        card["metadata"]["sha256"] = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
    if card_edit:
        card_edit(card)
    (folder / "card.json").write_text(json.dumps(card))


# ---- Nothing lost: output folders ------------------------------------------------------------------


def test_demo_force_never_replaces_user_folders_and_checks_out_before_work(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file")
    one_line_error(*run(capsys, "demo", "--out", mine, "--force", "--quiet")[::2], "refuses", str(mine), MARKER)
    assert (mine / "notes.txt").read_text() == "my own file" and len(list(mine.iterdir())) == 1
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    one_line_error(*run(capsys, "demo", "--out", a_file, "--force", "--quiet")[::2], "is a file", "file.txt")
    assert a_file.read_text() == "keep"
    monkeypatch.chdir(mine)
    one_line_error(*run(capsys, "demo", "--out", ".", "--force", "--quiet")[::2], "current folder")
    assert (mine / "notes.txt").read_text() == "my own file"
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "mine"]  # no temporary folder left
    with pytest.raises(ConfigError, match="refuses"):  # the Python side: the one home in invsolve.io
        prepare_output(mine, force=True)


# ---- Checkpoints are verified when read or inspected ------------------------------------------------


def test_info_and_load_prior_verify_the_weights_and_the_card(tiny_prior, tmp_path, capsys):
    code, out, err = run(capsys, "info", tiny_prior)
    assert code == 0, err
    assert "sha256 verified" in out and "all finite" in out
    state = load_file(str(tiny_prior / "weights.safetensors"))
    first = sorted(k for k, v in state.items() if v.is_floating_point())[0]

    nan = copy_prior(tiny_prior, tmp_path, "nan")
    bad = dict(state)
    bad[first] = torch.full_like(state[first], float("nan"))
    rewrite(nan, bad)
    one_line_error(*run(capsys, "info", nan)[::2], "NaN", first, "weights.safetensors")
    with pytest.raises(CheckpointError, match=first):
        iv.load_prior(nan)

    shapes = copy_prior(tiny_prior, tmp_path, "shapes")
    bad = dict(state)
    bad[first] = torch.zeros(3, 1)
    rewrite(shapes, bad)
    one_line_error(*run(capsys, "info", shapes)[::2], "wrong shapes", first)

    truncated = copy_prior(tiny_prior, tmp_path, "truncated")
    data = (truncated / "weights.safetensors").read_bytes()
    (truncated / "weights.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(*run(capsys, "info", truncated)[::2], "sha256", "weights.safetensors")  # recorded sha256 catches it
    rewrite(truncated, card_edit=lambda c: c["metadata"].pop("sha256"))
    one_line_error(*run(capsys, "info", truncated)[::2], "truncated or corrupted")

    wrong_sha = copy_prior(tiny_prior, tmp_path, "sha")
    rewrite(wrong_sha, card_edit=lambda c: c["metadata"].update(sha256="0" * 64))
    one_line_error(*run(capsys, "info", wrong_sha)[::2], "does not match the sha256", "card.json")
    with pytest.raises(CheckpointError, match="sha256"):
        iv.load_prior(wrong_sha)

    disguised = copy_prior(tiny_prior, tmp_path, "pickle")
    torch.save(state, disguised / "weights.safetensors")  # a pickle under the safetensors name
    rewrite(disguised)
    one_line_error(*run(capsys, "info", disguised)[::2], "not a readable safetensors file")

    unrecorded = copy_prior(tiny_prior, tmp_path, "unrecorded")
    rewrite(unrecorded, card_edit=lambda c: c["metadata"].pop("sha256"))
    code, out, err = run(capsys, "info", unrecorded)
    assert code == 0 and "not verified" in out and "sha256 verified" not in out, out

    for field, value, needle in (("shape", [0, 16, 16], "positive integers"), ("shape", "16x16", "positive"),
                                 ("scale", 0, "is 0"), ("scale", float("nan"), "finite"),
                                 ("sigma_min", 100.0, "below sigma_max"), ("kind", "gan", "not one of"),
                                 ("parameterization", "eps", "not one of"), ("name", 3, "string")):
        card_dir = copy_prior(tiny_prior, tmp_path, f"card-{field}-{value}")
        rewrite(card_dir, card_edit=lambda c: c.update({field: value}))
        one_line_error(*run(capsys, "info", card_dir)[::2], f"'{field}'", "card.json", needle)
        with pytest.raises(CheckpointError, match=field):
            iv.load_prior(card_dir)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


# ---- Training never loses a good prior, a run folder or a user's files --------------------------------


def test_train_never_replaces_a_good_prior_or_a_users_files(tiny_prior, tmp_path, capsys, monkeypatch):
    good = copy_prior(tiny_prior, tmp_path, "good")
    before = snapshot(good)
    args = [*TRAIN, "--name", "tiny-lost", "--out", good]

    nifti = tmp_path / "nan-data"
    nifti.mkdir()
    for i in range(2):
        volume = np.random.default_rng(i).random((16, 16, 4)).astype(np.float32)
        volume[3, 3, 1] = np.nan
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(nifti / f"scan{i}.nii.gz"))
    one_line_error(*run(capsys, *args, "--data", nifti, "--run-dir", tmp_path / "r1")[::2], "scan0.nii.gz", "NaN")

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    (pngs / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (pngs / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    one_line_error(*run(capsys, *args, "--data", pngs, "--run-dir", tmp_path / "r2")[::2], "a.png", "cannot be read")

    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    one_line_error(*run(capsys, *args, "--data", broken, "--run-dir", tmp_path / "r3", "--val-fraction", "0")[::2],
                   "broken.nii.gz")

    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}')
    one_line_error(*run(capsys, *args, "--run-dir", user)[::2], "--run-dir", str(user), "not an invsolve training run")
    assert (user / "config.json").read_text() == '{"mine": true}'

    other = copy_prior(tiny_prior, tmp_path, "other")  # a prior of another name
    other_before = snapshot(other)
    one_line_error(*run(capsys, *TRAIN, "--name", "another", "--out", other, "--run-dir", tmp_path / "r4")[::2],
                   "--out", "never replaced")
    assert snapshot(other) == other_before

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "checkpoint.pt").write_bytes(b"PK\x03\x04 this zip is cut short")
    one_line_error(*run(capsys, *args, "--run-dir", damaged)[::2], "checkpoint.pt", "delete", "--run-dir")

    # a run that diverges (NaN loss) exports nothing; the Python API says so with a ConfigError
    from invsolve.priors import training

    monkeypatch.setattr(training, "denoising_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(ConfigError, match="diverged"):
        train(TrainConfig(name="tiny-lost", **TINY), tmp_path / "r5", good, progress=False, evaluate=False)
    assert snapshot(good) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".good")]  # no staging folder left
    monkeypatch.undo()
    # a good run over its own earlier export of the same name replaces it, after verification
    code, _, err = run(capsys, *args, "--run-dir", tmp_path / "r6", "--seed", "1")
    assert code == 0, err
    assert snapshot(good) != before and iv.load_prior(good).card.name == "tiny-lost"


# ---- HDF5: external storage, links and virtual datasets are refused ----------------------------------


def test_hdf5_external_storage_links_and_virtual_datasets_are_refused(tmp_path, capsys):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4 * 8 * 8 * 2, dtype=np.float32).tobytes())
    data = tmp_path / "data"
    data.mkdir()
    with h5py.File(data / "file_ext.h5", "w") as f:
        f.create_dataset("kspace", (4, 8, 8), dtype=np.complex64, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
        f.create_dataset("reconstruction_esc", data=np.zeros((4, 8, 8), np.float32))
    with pytest.raises(DataError, match="file_ext.h5.*'kspace'.*external files"):
        read_volume(data / "file_ext.h5")
    code, _, err = run(capsys, "bench", "fastmri", "--data", data, "--methods", "zero-filled", "--db",
                       tmp_path / "b.sqlite", "--quiet")
    one_line_error(code, err, "file_ext.h5", "kspace", "external")

    with h5py.File(tmp_path / "src.h5", "w") as f:
        f.create_dataset("k", data=np.zeros((4, 8, 8), np.complex64))
    layout = h5py.VirtualLayout((4, 8, 8), np.complex64)
    layout[:] = h5py.VirtualSource(str(tmp_path / "src.h5"), "k", (4, 8, 8))
    with h5py.File(tmp_path / "virtual.h5", "w") as f:
        f.create_virtual_dataset("kspace", layout)
    with h5py.File(tmp_path / "link.h5", "w") as f:
        f["kspace"] = h5py.ExternalLink(str(tmp_path / "src.h5"), "/k")
    with h5py.File(tmp_path / "soft.h5", "w") as f:
        f.create_dataset("k", data=np.zeros((4, 8, 8), np.complex64))
        f["kspace"] = h5py.SoftLink("/k")
    for name, needle in (("virtual.h5", "virtual dataset"), ("link.h5", "external link"), ("soft.h5", "soft link")):
        with pytest.raises(DataError, match=needle):
            read_volume(tmp_path / name)


# ---- Benchmark database: concurrent runs, foreign files, NaN metrics ----------------------------------


@pytest.fixture(scope="module")
def bench_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    synthesize(root / "data", n_train=0, n_val=2, coils=2, size=16, slices=2, seed=0)
    return runner.BenchConfig(data=str(runner.heldout_split(root / "data")), methods=("zero-filled",),
                              accelerations=(4, 8), slices="middle", seed=0, max_volumes=2)


def test_bench_db_concurrent_runs_foreign_files_and_nan_metrics(bench_config, tmp_path, capsys):
    not_sqlite = tmp_path / "results.db"
    not_sqlite.write_text("my spreadsheet, not a database\n" * 10)
    code, _, err = run(capsys, "bench", "fastmri", "--data", bench_config.data, "--methods", "zero-filled",
                       "--db", not_sqlite, "--quiet")
    one_line_error(code, err, "results.db", "not an SQLite database")
    assert not_sqlite.read_text() == "my spreadsheet, not a database\n" * 10

    db = tmp_path / "shared.sqlite"
    seen, inner = [], {}

    def work(config, task):  # while the first run works, a second run starts on the same database
        seen.append(task.volume)
        if not inner:
            inner.update(runner.run(config, db, progress=False))
        return runner.run_task(config, task)

    first = runner.run(bench_config, db, progress=False, work=work)
    tasks = len(runner.make_tasks(bench_config))
    assert inner["ran"] == 0 and inner["claimed_elsewhere"] == tasks  # it skipped what the first had claimed
    assert first["ran"] == tasks and first["remaining"] == 0 and len(seen) == tasks
    again = runner.run(bench_config, db, progress=False)
    assert again["ran"] == 0 and again["done_before"] == tasks
    with ResultStore(db) as store:
        result = runner.run_task(bench_config, runner.make_tasks(bench_config)[0])
        assert store.insert(result) is None  # stored meanwhile by another run: skipped, not a crash
        with pytest.raises(DataError, match="NaN"):
            store.insert(dict(result, psnr=float("nan"), config_hash="f" * 16))
        assert len(store.results()) == tasks

    nan_db = tmp_path / "nan.sqlite"

    def nan_work(config, task):
        out = runner.run_task(config, task)
        return dict(out, psnr=float("nan")) if task.acceleration == 8 else out

    summary = runner.run(bench_config, nan_db, progress=False, work=nan_work)
    assert len(summary["failed"]) == tasks // 2 and "psnr" in summary["failed"][0]["reason"]
    code, out, err = run(capsys, "bench", "report", nan_db, "--out", tmp_path / "report")
    assert code == 0, err
    assert "nan" not in (tmp_path / "report" / "results.csv").read_text().lower()


# ---- An interrupted default data-set creation is detected and redone ---------------------------------


def test_interrupted_default_dataset_is_redone(tmp_path, monkeypatch):
    monkeypatch.setenv("INVSOLVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runner, "DEFAULT_SYNTH", dict(n_train=0, n_val=1, coils=2, size=16, slices=2))
    partial = tmp_path / "cache" / "fastmri-synth" / "multicoil_val"
    partial.mkdir(parents=True)
    (partial / "file_brain_AXT1_synthval_0000.h5").write_bytes(b"\x89HDF\r\n\x1a\n cut short")  # killed mid-write
    val = Path(runner.default_data(progress=False))
    root = val.parent
    assert is_complete(root) and (root / COMPLETE_MARKER).is_file()
    assert read_volume(next(val.glob("*.h5"))).kspace.shape[0] == 2
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]
    first = snapshot(root)
    assert runner.default_data(progress=False) == str(val) and snapshot(root) == first  # complete: kept as is


# ---- Determinism: two processes, same seed, bit-identical outputs -------------------------------------


def test_demo_is_bit_identical_across_processes(tiny_prior, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    outs = []
    for name in ("one", "two"):
        out = tmp_path / name
        subprocess.run([sys.executable, "-m", "invsolve.cli", "demo", "--prior", str(tiny_prior), "--out", str(out),
                        "--phantoms", "1", "--steps", "3", "--samples", "1", "--seed", "3", "--quiet"],
                       check=True, env=env, capture_output=True, timeout=300)
        outs.append(out)
    volumes = sorted(p.name for p in outs[0].glob("*.nii.gz"))
    assert {"tv.nii.gz", "fbp.nii.gz", "dps_mean.nii.gz", "dps_samples.nii.gz"} <= set(volumes)
    for name in volumes:
        a, b = (np.asarray(nib.load(str(o / name)).dataobj) for o in outs)
        assert a.tobytes() == b.tobytes(), name
    rows = [[(r["method"], r["image"], r["psnr"], r["ssim"]) for r in json.loads((o / "metrics.json").read_text())["rows"]]
            for o in outs]
    assert rows[0] == rows[1]
