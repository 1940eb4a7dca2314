"""Each shipped prior's denoiser beats a tuned TV denoiser at sigma = 0.1 on its held-out data by >= 1 dB.

The fast test reads the figure recorded in the prior's card (``metadata.evaluation``, written by
``invsolve train`` or ``invsolve evaluate PRIOR --write-card``); the ``slow`` test re-measures it
with the recorded settings and checks it against the card.
"""

import json
from pathlib import Path

import pytest

PRIORS = Path(__file__).resolve().parents[1] / "data" / "priors"
SHIPPED = sorted(p.parent.name for p in PRIORS.glob("*/card.json") if (p.parent / "weights.safetensors").is_file())
MIN_GAIN_DB = 1.0
TOLERANCE_DB = 0.05


def _evaluation(name):
    evaluation = json.loads((PRIORS / name / "card.json").read_text())["metadata"].get("evaluation")
    if not evaluation or "skipped" in evaluation:
        pytest.fail(f"{name}'s card records no held-out evaluation: run "
                    f"`invsolve evaluate {name} --threads 1 --write-card`")
    return evaluation


def test_some_prior_is_shipped():
    assert "ct-phantom64" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_card_records_heldout_gain_over_tv(name):
    evaluation = _evaluation(name)
    assert evaluation["sigma"] == 0.1
    assert evaluation["data"]["source"] and evaluation["data"]["tv_tuning"]  # what was held out, what tuned TV
    assert evaluation["images"] >= 8
    assert evaluation["gain_db"] == pytest.approx(evaluation["prior_psnr_db"] - evaluation["tv_psnr_db"], abs=2e-3)
    assert evaluation["gain_db"] >= MIN_GAIN_DB, (
        f"{name}: prior {evaluation['prior_psnr_db']} dB vs TV {evaluation['tv_psnr_db']} dB at sigma 0.1")
    for part, figures in evaluation.get("sets", {}).items():  # every held-out set, not just their mean
        assert figures["gain_db"] > 0, f"{name} loses to TV on {part}: {figures}"


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_remeasured_heldout_gain_matches_card(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NILEARN_DATA", str(tmp_path / "nilearn"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    from invsolve.priors.evaluation import evaluate_prior

    recorded = _evaluation(name)
    result = evaluate_prior(name, n=recorded["n_requested"], sigma=recorded["sigma"], seed=recorded["seed"],
                            tune=recorded["tune_requested"])
    assert result["images"] == recorded["images"]
    assert result["tv_weight"] == pytest.approx(recorded["tv_weight"], rel=1e-3)
    for key in ("prior_psnr_db", "tv_psnr_db", "gain_db"):
        assert result[key] == pytest.approx(recorded[key], abs=TOLERANCE_DB), key
    assert result["gain_db"] >= MIN_GAIN_DB
