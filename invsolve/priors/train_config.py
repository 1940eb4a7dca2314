"""``TrainConfig``: the recipe of a prior trained by ``invsolve train``.

Its own module so that both ``training`` (which runs a recipe) and ``evaluation`` (which reads
the recipe recorded in a card to rebuild the held-out data) import it, and neither imports the
other's caller: ``training`` imports ``evaluation``, never the reverse.
"""

from __future__ import annotations

import dataclasses
import json
import math

from ..errors import ConfigError

OBJECTIVES = ("edm", "flow", "bridge")


@dataclasses.dataclass
class TrainConfig:
    name: str = "ct-phantom64"
    objective: str = "edm"          # "edm" (diffusion), "flow" (rectified flow) or "bridge" (I2SB)
    data: str = "ellipses"          # data source; see ``datasets.build``
    size: int = 64
    channels: tuple[int, ...] = (32, 64, 96, 96)
    attention: tuple[int, ...] = (3,)
    batch: int = 32
    steps: int = 4000
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    # EDM's EMA ramp-up (Karras et al. 2022, training_loop.py ema_rampup_ratio): the EMA half-life
    # grows as rampup x steps done until it reaches ema_decay's, so short runs are not dominated by
    # the random initialisation (0.999 ** 1000 = 37 % of it left after 1000 steps). 0: plain EMA.
    ema_rampup: float = 0.05
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    seed: int = 0
    checkpoint_every: int = 50
    threads: int | None = None
    # data (keys added after the first release; their defaults reproduce the earlier behaviour)
    data_format: str = "auto"       # "auto" | "images" | "nifti" | "dicom" | "fastmri"
    representation: str = "magnitude"  # "magnitude" (1 channel) | "complex" (2 channels, fastMRI k-space)
    slice_axis: str = "axial"       # NIfTI slicing axis after reorientation to RAS
    window: tuple[float, float] | None = None  # fixed intensity window (e.g. CT HU) -> [0, 1]
    percentiles: tuple[float, float] = (0.5, 99.5)  # per-volume normalisation when no window
    min_foreground: float = 0.0     # drop slices with a smaller fraction of pixels above 0.05
    augment: tuple[str, ...] = ()   # subset of datasets.AUGMENTATIONS
    val_fraction: float = 0.1       # fraction of files (volumes, series) held out for validation
    val_every: int = 200            # steps between validation measurements (0: never)
    val_images: int = 64            # validation slices used (evenly spaced subset)
    val_sigmas: tuple[float, ...] = (0.05, 0.1, 0.2)  # physical noise levels of the validation PSNR
    # latent priors (0 latent channels: a pixel-space prior, the earlier behaviour)
    latent_channels: int = 0        # > 0: train an autoencoder first, then the prior on its latents
    ae_channels: tuple[int, ...] = (16, 32, 64)  # autoencoder widths; the latents are 2 ** (len - 1) times smaller
    ae_steps: int = 2000            # autoencoder training steps (Adam, lr, warmup and batch as above)
    ae_beta: float = 1e-4           # weight of the penalty mean(z^2) on the raw latents
    # bridge priors (objective "bridge"): the degradation the bridge undoes
    bridge_operator: str = "ct-sparse8"  # an operators.make name, built with img_size=size
    bridge_sigma_y: float = 0.1     # noise std of its measurements (physical units)

    @property
    def prior_size(self) -> int:
        """Spatial size the diffusion / flow network sees: ``size``, or the latent size of a latent prior."""
        return self.size // 2 ** (len(self.ae_channels) - 1) if self.latent_channels else self.size

    def validate(self) -> None:
        """Raise ``ConfigError`` (a ``ValueError``) naming the first field whose value cannot be trained with.

        Checks the numbers (counts, rates, noise levels, ranges) and the objective; the data
        options (format, representation, slice axis, augmentations) are checked where the data
        is read (``datasets.build``).
        """
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "bridge":
            if self.latent_channels:
                raise ConfigError("a bridge prior (objective 'bridge') is trained in pixel space: drop --latent-channels")
            if not isinstance(self.bridge_operator, str) or not self.bridge_operator:
                raise ConfigError(f"bridge_operator must name an operator (invsolve list operators), got {self.bridge_operator!r}")
            if not (_is_number(self.bridge_sigma_y) and math.isfinite(self.bridge_sigma_y) and self.bridge_sigma_y >= 0):
                raise ConfigError(f"bridge_sigma_y must be a finite number >= 0, got {self.bridge_sigma_y!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name must be a non-empty string, got {self.name!r}")
        for field in ("size", "batch", "steps", "checkpoint_every"):
            _integer(self, field, minimum=1)
        for field in ("warmup", "val_every", "val_images", "seed"):
            _integer(self, field, minimum=0)
        if self.threads is not None:
            _integer(self, "threads", minimum=1)
        if not self.channels:
            raise ConfigError("channels must list at least one width")
        if any(not _is_int(c) or c < 1 for c in self.channels):
            raise ConfigError(f"channels must be positive integers, got {self.channels}")
        if any(not _is_int(a) or not 0 <= a < len(self.channels) for a in self.attention):
            raise ConfigError(f"attention must list levels in 0..{len(self.channels) - 1} "
                             f"(one per entry of channels), got {self.attention}")
        _integer(self, "latent_channels", minimum=0)
        size = self.size
        if self.latent_channels:
            _integer(self, "ae_steps", minimum=1)
            if not self.ae_channels or any(not _is_int(c) or c < 1 for c in self.ae_channels):
                raise ConfigError(f"ae_channels must list positive integer widths, got {self.ae_channels}")
            ae_factor = 2 ** (len(self.ae_channels) - 1)
            if self.size % ae_factor:
                raise ConfigError(f"size {self.size} must be divisible by {ae_factor} "
                                  f"(the autoencoder's downsampling for the {len(self.ae_channels)} levels of ae_channels)")
            size = self.size // ae_factor
            if not (_is_number(self.ae_beta) and math.isfinite(self.ae_beta) and self.ae_beta >= 0):
                raise ConfigError(f"ae_beta must be a finite number >= 0, got {self.ae_beta!r}")
        factor = 2 ** (len(self.channels) - 1)
        if size % factor:
            where = f"the latent size {size} (size {self.size} / autoencoder factor)" if self.latent_channels \
                else f"size {self.size}"
            raise ConfigError(f"{where} must be divisible by {factor} "
                              f"(2 ** (levels - 1) for the {len(self.channels)} levels of channels)")
        for field in ("lr", "p_std", "sigma_data", "sigma_min", "sigma_max"):
            _positive(self, field)
        _finite(self, "p_mean")
        if not self.sigma_min < self.sigma_max:
            raise ConfigError(f"sigma_min must be below sigma_max, got {self.sigma_min} and {self.sigma_max}")
        if not (_is_number(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not (_is_number(self.ema_rampup) and math.isfinite(self.ema_rampup) and self.ema_rampup >= 0):
            raise ConfigError(f"ema_rampup must be a finite number >= 0, got {self.ema_rampup!r}")
        if not (_is_number(self.val_fraction) and 0 <= self.val_fraction < 1):
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not (_is_number(self.min_foreground) and 0 <= self.min_foreground <= 1):
            raise ConfigError(f"min_foreground must be in [0, 1], got {self.min_foreground!r}")
        if any(not _is_number(s) or not math.isfinite(s) or s <= 0 for s in self.val_sigmas):
            raise ConfigError(f"val_sigmas must be finite positive noise levels, got {self.val_sigmas}")
        lo, hi = _pair(self, "percentiles")
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if self.window is not None:
            lo, hi = _pair(self, "window")
            if not lo < hi:
                raise ConfigError(f"window must be (low, high) with low < high, got {self.window}")


RESUME_FREE_KEYS = ("steps", "checkpoint_every", "threads", "val_every")
"""Config keys that may change between a run and its resumption (they do not change the training)."""

LEGACY_VALUES = {"ema_rampup": 0.0}
"""Keys whose default changed when they were added: a recorded run or recipe without the key ran
with this value (the shipped priors before the EMA ramp-up used a plain EMA)."""


def recorded_config(recorded: dict) -> dict:
    """A run's recorded config.json or a card's recipe, completed as the run actually ran:
    keys it lacks take ``LEGACY_VALUES`` where listed, else today's defaults (which reproduce the
    earlier behaviour)."""
    defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))  # as JSON: tuples become lists
    return {**defaults, **LEGACY_VALUES, **recorded}


def ema_decay_at(decay: float, rampup: float, step: int) -> float:
    """The EMA decay of the update after ``step`` optimizer steps: EDM's ramp-up, in steps
    (``beta = 0.5 ** (batch / min(halflife_nimg, nimg * rampup))``; the batch cancels). Equals
    ``decay`` once ``rampup * step`` passes its half-life, and always when ``rampup`` is 0."""
    if rampup <= 0 or decay <= 0:
        return decay
    ramped = rampup * step
    return 0.0 if ramped <= 0 else min(decay, 0.5 ** (1.0 / ramped))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(config: TrainConfig, field: str, minimum: int) -> None:
    value = getattr(config, field)
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{field} must be an integer >= {minimum}, got {value!r}")


def _finite(config: TrainConfig, field: str) -> None:
    value = getattr(config, field)
    if not _is_number(value) or not math.isfinite(value):
        raise ConfigError(f"{field} must be a finite number, got {value!r}")


def _positive(config: TrainConfig, field: str) -> None:
    value = getattr(config, field)
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{field} must be a finite positive number, got {value!r}")


def _pair(config: TrainConfig, field: str) -> tuple[float, float]:
    value = getattr(config, field)
    if len(value) != 2 or not all(_is_number(v) and math.isfinite(v) for v in value):
        raise ConfigError(f"{field} must be two finite numbers, got {value!r}")
    return value[0], value[1]
