"""Does my data fit this prior? A check before sampling.

A diffusion prior helps only on data like what it was trained on. ``prior_fit(prior, images)``
asks the prior to denoise the user's images (the clean input of a simulation, or a quick
classical reconstruction of measured data) at a few noise levels and compares its one-step
denoising PSNR with a TV denoiser's on the same noisy images (``priors.evaluation.denoise_vs_tv``,
TV weight from the prior's card, scaled with the noise level). On its own distribution a
trained prior beats TV (the card records the gain on held-out data: +1.65 dB for ``ct-phantom64``
at sigma 0.1); on data it has never seen it loses to TV, and a posterior sampler driven by it
would then invent structure from its training set.

The check warns when the mean gain over ``SIGMAS`` falls below ``WARN_DB``. Validation under
``ct-phantom64`` (docs/reconstruct.md has the table and the command; ``tests/test_fit.py`` keeps it):
4 held-out and 4 training-seed phantoms give +1.8 / +1.1 dB on the clean images and -0.4 / -0.3 dB
(8 views) or +0.9 / +0.6 dB (32 views) on FBP reconstructions at sigma_y 0.1; the real CT slice
(pydicom ``CT_small.dcm``), the real MR slice (``MR_small.dcm``) and a real brain slice (nibabel
``anatomical.nii``) give -1.5 to -4.1 dB on clean images and -1.1 to -3.3 dB on FBP reconstructions.
"""

from __future__ import annotations

import math

import torch

from operators.errors import DataError

from .priors.evaluation import denoise_vs_tv
from .priors.latent import LatentPrior

SIGMAS = (0.05, 0.1, 0.2)  # physical noise levels (data range 1)
WARN_DB = -0.75  # mean gain over TV below which the data looks out of the prior's distribution
DEFAULT_TV_WEIGHT = 0.08  # TV weight at sigma 0.1 when the card records none (ct-phantom64's tuned 0.079)


def prior_fit(prior, images: torch.Tensor, sigmas=SIGMAS, seed: int = 0) -> dict:
    """The prior's denoising gain over TV on ``images`` (physical units, shaped like the prior's
    samples, batch first), per noise level and on average, with the verdict.

    Returns ``{"gain_db": mean, "per_sigma": {sigma: gain}, "reference_gain_db": the card's held-out
    gain (or None), "fits": bool, "message": str}``.
    """
    if tuple(images.shape[1:]) != tuple(prior.image_shape):
        raise DataError(f"images of shape {tuple(images.shape[1:])} do not match the prior's shape {tuple(prior.image_shape)}")
    if not torch.isfinite(images).all():
        raise DataError("the images given to the prior-fit check contain NaN or Inf values")
    evaluation = prior.card.metadata.get("evaluation", {}) if isinstance(prior.card.metadata, dict) else {}
    reference = evaluation.get("gain_db")
    tv_at = float(evaluation.get("tv_weight", DEFAULT_TV_WEIGHT)) / float(evaluation.get("sigma", 0.1))
    per_sigma = {}
    for sigma in sigmas:
        # a latent prior's noise level in latent space is the encoder's response to this sigma, measured on
        # these images with its own noise draw (a property of the encoder, not a fit to the truth)
        tune = images.float() if isinstance(prior, LatentPrior) else None
        result = denoise_vs_tv(prior, images.float(), sigma=sigma, seed=seed, tv_weight=tv_at * sigma, tune_images=tune)
        per_sigma[sigma] = result["gain_db"]
    gain = sum(per_sigma.values()) / len(per_sigma)
    fits = bool(gain >= WARN_DB) and math.isfinite(gain)
    ref = f"{reference:+.2f} dB on its held-out data" if reference is not None else "no held-out figure in its card"
    if fits:
        message = (f"prior {prior.card.name!r} fits the data: it denoises it {gain:+.2f} dB better than TV "
                   f"(mean over sigma {', '.join(f'{s:g}' for s in sigmas)}; {ref})")
    else:
        message = (f"warning: the data looks out of the distribution of prior {prior.card.name!r}: the prior denoises "
                   f"it {gain:+.2f} dB worse than TV ({ref}); expect invented structure and errors larger than "
                   f"a classical reconstruction. Train a prior on scans like these with `invsolve train` "
                   f"(docs/priors.md) or compare with the TV baseline")
    return {"gain_db": round(gain, 3), "per_sigma": {str(k): v for k, v in per_sigma.items()},
            "reference_gain_db": reference, "threshold_db": WARN_DB, "fits": fits, "message": message}
