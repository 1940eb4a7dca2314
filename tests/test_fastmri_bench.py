"""The fastMRI benchmark runner: SQLite rows, resume after a kill, executors agree, report files.

Tiny synthetic fastMRI-layout files (``invsolve.fastmri.synth``), a tiny random prior saved as a
prior folder, few sampler steps.
"""

import dataclasses
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from invsolve.fastmri import executors, runner
from invsolve.fastmri.db import ResultStore
from invsolve.fastmri.masks import acs_band, volume_mask
from invsolve.fastmri.problems import EmbeddedMRI, build_parts
from invsolve.fastmri.report import write_report
from invsolve.fastmri.runner import BenchConfig, run, run_task

TIMING = ("id", "seconds", "created", "result_id")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from safetensors.torch import save_file

    from invsolve.fastmri.reader import list_volumes, read_volume
    from invsolve.fastmri.synth import synthesize
    from invsolve.priors import PriorCard
    from invsolve.priors.unet import UNet

    root = tmp_path_factory.mktemp("fastmri-bench")
    synthesize(root / "data", n_train=0, n_val=2, coils=4, size=32, slices=4, seed=0)
    val = runner.heldout_split(root / "data")
    volume = read_volume(list_volumes(val)[0], slices="middle")
    shape = (1, *np.asarray(volume.target).shape[-2:])
    torch.manual_seed(0)  # test-only: initialise the random network
    net = UNet(in_channels=1, channels=(8, 16), attention=(), emb_dim=16, dims=2)
    torch.nn.init.normal_(net.head.weight, std=0.05)
    prior_dir = root / "tiny-prior"
    prior_dir.mkdir()
    save_file(net.state_dict(), str(prior_dir / "weights.safetensors"))
    card = PriorCard(name="tiny-mri", kind="diffusion", parameterization="edm", shape=shape, scale=2.0, offset=-1.0,
                     physical_range=(0.0, 1.0),
                     metadata={"architecture": "invsolve.priors.unet.UNet", "network": net.config})
    (prior_dir / "card.json").write_text(card.to_json())
    config = BenchConfig(data=str(val), methods=("zero-filled", "sense", "dps", "daps"), accelerations=(4, 8),
                         prior=str(prior_dir), slices="middle+1", samples=2, seed=0, nfe=3,
                         options=(("daps", "mc_steps", 2),), max_volumes=1, device="cpu")
    return {"root": root, "config": config, "val": val}


@pytest.fixture(scope="module")
def full_run(bench, tmp_path_factory):
    """The whole grid of the ``bench`` configuration, run once."""
    db = tmp_path_factory.mktemp("full") / "r.sqlite"
    summary = run(bench["config"], db, progress=False)
    return db, summary


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_rows_written_with_every_field(bench, full_run):
    config = bench["config"]
    db, summary = full_run
    tasks = runner.make_tasks(config)
    assert summary == {"total": len(tasks), "done_before": 0, "ran": len(tasks), "remaining": 0,
                       "claimed_elsewhere": 0, "failed": []}
    assert len(tasks) == 1 * 2 * 4  # volumes x accelerations x methods
    with ResultStore(db) as store:
        rows = store.results()
        slice_rows = store.slice_results()
    assert len(rows) == len(tasks)
    assert {(r["volume"], r["method"], r["acceleration"]) for r in rows} == \
        {(t.volume, t.method, t.acceleration) for t in tasks}
    for r in rows:
        assert r["mask"] == "equispaced_fraction" and r["seed"] == 0 and len(r["slices"]) == 3
        assert np.isfinite([r["nmse"], r["psnr"], r["ssim"], r["seconds"]]).all()
        assert r["versions"]["torch"] == torch.__version__ and len(r["config_hash"]) == 16
        if r["method"] in ("dps", "daps"):
            assert r["nfe"] > 0 and r["samples"] == 2 and r["oracle_psnr"] is not None
            assert r["config"]["prior"]["name"] == "tiny-mri"
        else:
            assert r["nfe"] == 0 and r["oracle_psnr"] is None
    assert len(slice_rows) == 3 * len(rows)
    # zero-filled scored exactly: recompute the per-volume PSNR of one row by hand
    from invsolve.fastmri import metrics
    from invsolve.fastmri.reader import read_volume
    from operators.mri import center_crop, ifftc

    row = next(r for r in rows if r["method"] == "zero-filled" and r["acceleration"] == 4)
    volume = read_volume(bench["val"] / row["volume"], slices="middle+1")
    mask = torch.from_numpy(volume_mask(volume, "equispaced_fraction", 4))
    kspace = torch.as_tensor(np.asarray(volume.kspace)) * mask
    target = np.asarray(volume.target, dtype=np.float64)
    zero_filled = center_crop(ifftc(kspace).abs().square().sum(1).sqrt(), target.shape[-2:]).double().numpy()
    expected = metrics.volume_metrics(target, zero_filled)
    assert row["psnr"] == pytest.approx(float(np.asarray(expected["psnr"]).reshape(-1)[0]), rel=1e-4)


def test_resume_after_kill_recomputes_nothing(bench, tmp_path):
    config = dataclasses.replace(bench["config"], methods=("zero-filled", "sense", "dps"))
    db = tmp_path / "r.sqlite"
    calls = []

    def dying(cfg, task, limit=5):
        if len(calls) == limit:
            raise KeyboardInterrupt("simulated kill")
        calls.append(task)
        return run_task(cfg, task)

    with pytest.raises(KeyboardInterrupt):
        run(config, db, progress=False, work=dying)
    with ResultStore(db) as store:
        before = store.results()
    assert len(before) == 5 and len(calls) == 5

    calls.clear()
    summary = run(config, db, progress=False, work=lambda c, t: dying(c, t, limit=10 ** 6))
    total = len(runner.make_tasks(config))
    assert summary["done_before"] == 5 and summary["ran"] == total - 5
    assert len(calls) == total - 5  # nothing completed was recomputed
    done = {(t.volume, t.method, t.acceleration) for t in calls}
    assert not done & {(r["volume"], r["method"], r["acceleration"]) for r in before}
    with ResultStore(db) as store:
        after = store.results()
    assert len(after) == total
    assert [(r["id"], r["created"]) for r in after[:5]] == [(r["id"], r["created"]) for r in before]
    assert run(config, db, progress=False)["ran"] == 0

    # --limit stops early, and the next run continues
    baselines = dataclasses.replace(config, methods=("zero-filled", "sense"))
    db2 = tmp_path / "limited.sqlite"
    assert run(baselines, db2, limit=3, progress=False)["remaining"] == 1
    assert run(baselines, db2, progress=False)["done_before"] == 3


def test_insert_is_atomic(bench, tmp_path):
    db = tmp_path / "r.sqlite"
    task = runner.make_tasks(bench["config"])[0]
    result = run_task(bench["config"], task)
    with ResultStore(db) as store:
        store.insert(result)
        broken = dict(result, slice_rows=result["slice_rows"] + [dict(result["slice_rows"][0])])  # duplicate slice
        broken["config_hash"] = "0" * 16
        for srow in broken["slice_rows"]:
            srow["config_hash"] = broken["config_hash"]
        with pytest.raises(sqlite3.IntegrityError):
            store.insert(broken)
        assert len(store.results()) == 1 and len(store.slice_results()) == len(result["slice_rows"])
        assert store.insert(result) is None  # the same task twice (e.g. by a concurrent run): skipped, unchanged
        assert len(store.results()) == 1 and len(store.slice_results()) == len(result["slice_rows"])


def test_local_workers_give_identical_rows(bench, tmp_path):
    config = dataclasses.replace(bench["config"], methods=("zero-filled", "dps"))
    run(config, tmp_path / "one.sqlite", executor=executors.LocalExecutor(1, threads=1), progress=False)
    run(config, tmp_path / "two.sqlite", executor=executors.LocalExecutor(2, threads=1), progress=False)
    with ResultStore(tmp_path / "one.sqlite") as a, ResultStore(tmp_path / "two.sqlite") as b:
        key = lambda r: (r["volume"], r["method"], r["acceleration"])  # noqa: E731 (completion order differs)
        rows_a, rows_b = sorted(a.results(), key=key), sorted(b.results(), key=key)
        assert comparable(rows_a) == comparable(rows_b)
        slices = lambda s: sorted(comparable(s.slice_results()), key=lambda r: (r["volume"], r["method"],  # noqa: E731
                                                                                 r["acceleration"], r["slice"]))
        assert slices(a) == slices(b)


def test_ray_executor_gives_identical_rows(bench, tmp_path):
    ray = pytest.importorskip("ray")
    config = dataclasses.replace(bench["config"], methods=("zero-filled", "dps"))
    run(config, tmp_path / "local.sqlite", executor=executors.LocalExecutor(1, threads=1), progress=False)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        run(config, tmp_path / "ray.sqlite", executor=executors.RayExecutor(threads=1), progress=False)
    finally:
        ray.shutdown()
    with ResultStore(tmp_path / "local.sqlite") as a, ResultStore(tmp_path / "ray.sqlite") as b:
        key = lambda r: (r["volume"], r["method"], r["acceleration"])  # noqa: E731
        assert comparable(sorted(a.results(), key=key)) == comparable(sorted(b.results(), key=key))


def test_ray_missing_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"invsolve\[distributed\]"):
        executors.make_executor("ray")


def test_report_files(bench, full_run, tmp_path):
    config = bench["config"]
    db, _ = full_run
    out = write_report(db, tmp_path / "report")
    md = (tmp_path / "report" / "results.md").read_text()
    assert "| method | volumes | NMSE | PSNR (dB) | SSIM |" in md and "best-of-N PSNR (oracle)" in md
    for method in config.methods:
        assert f"| {method} |" in md
    lines = (tmp_path / "report" / "results.csv").read_text().strip().splitlines()
    assert lines[0].startswith("method,acceleration") and len(lines) == 1 + 2 * len(config.methods)
    assert len(out["figures"]) == 2  # one volume x two accelerations
    for path in out["figures"]:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "report").rglob("*.tmp"))


def test_cli_bench_and_report(bench, tmp_path, capsys):
    from invsolve.cli import main

    db = tmp_path / "cli.sqlite"
    args = ["bench", "fastmri", "--data", str(bench["val"]), "--methods", "zero-filled,sense", "--accelerations", "4",
            "--slices", "middle", "--max-volumes", "1", "--db", str(db), "--quiet"]
    assert main(args + ["--limit", "1"]) == 0
    assert "run the same command again" in capsys.readouterr().out
    assert main(args) == 0
    assert "1 tasks run, 1 already in" in capsys.readouterr().out
    assert main(["bench", "report", str(db), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "results.md").is_file()
    assert main(args + ["--methods", "nope"]) == 2  # unknown method: a clear error, no traceback
    assert "unknown methods" in capsys.readouterr().err


def test_changed_hyperparameters_are_new_rows(bench, tmp_path):
    config = dataclasses.replace(bench["config"], methods=("dps",), accelerations=(4,), max_volumes=1)
    db = tmp_path / "r.sqlite"
    run(config, db, progress=False)
    changed = dataclasses.replace(config, options=(("dps", "zeta", 0.5),))
    assert run(changed, db, progress=False)["ran"] == 1
    with ResultStore(db) as store:
        rows = store.results()
    assert len({r["config_hash"] for r in rows}) == 2
    assert rows[1]["config"]["hyperparameters"]["zeta"] == 0.5


def test_problem_operator_is_adjoint_and_mask_is_fastmris(bench):
    from invsolve.fastmri.reader import list_volumes, read_volume
    from operators.masks import fastmri_seed
    from operators.mri import cartesian_mask

    path = list_volumes(bench["val"])[0]
    volume = read_volume(path, slices="middle+1")
    mask = torch.from_numpy(volume_mask(volume, "equispaced_fraction", 8))
    h, w = np.asarray(volume.kspace).shape[-2:]
    expected = cartesian_mask((h, w), "equispaced_fraction", 8, 0.04, seed=fastmri_seed(path.name))[0]
    assert torch.equal(mask, expected)
    left, right = acs_band(mask.numpy())
    assert right - left >= round(0.04 * w)
    card_shape = json.loads((Path(bench["config"].prior) / "card.json").read_text())["shape"]
    parts = build_parts(volume, mask, tuple(card_shape))
    physics = parts.physics
    assert isinstance(physics, EmbeddedMRI)
    g = torch.Generator().manual_seed(0)
    for draws in (1, 3):
        x = torch.randn((draws * parts.y.shape[0], *card_shape), generator=g)
        y = torch.randn((draws * parts.y.shape[0], *parts.y.shape[1:]), generator=g)
        lhs = (physics.A(x) * y).sum()
        rhs = (x * physics.A_adjoint(y)).sum()
        assert float(lhs) == pytest.approx(float(rhs), rel=1e-4)
    # the scaled measurement is the masked k-space: zero where the mask is
    assert float(parts.y[..., mask == 0].abs().max()) == 0.0


def test_config_hash_covers_baseline_defaults(monkeypatch):
    """A changed baseline default is a different configuration: a database written before the
    change must not be resumed as if its rows were current."""
    from invsolve.fastmri import baselines

    config = BenchConfig(data="unused", methods=("tv",))
    before = runner.config_hash(runner.resolved_config(config, "tv"))
    assert runner.resolved_config(config, "tv")["options"] == baselines.resolve_options("tv")
    monkeypatch.setitem(baselines.DEFAULTS, "tv", {**baselines.DEFAULTS["tv"], "iterations": 7})
    assert runner.config_hash(runner.resolved_config(config, "tv")) != before
    explicit = BenchConfig(data="unused", methods=("tv",), options=(("tv", "iterations", 7),))
    assert runner.config_hash(runner.resolved_config(explicit, "tv")) == runner.config_hash(
        runner.resolved_config(config, "tv"))
