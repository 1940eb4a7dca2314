"""Exact SVDs of structured linear operators too large for a dense SVD, found by probing ``M``.

``toolkit.LinearPart`` gives DDRM, DDNM+ and MCGdiff the SVD ``M = U diag(s) V^T`` of the
model-space linear part of the physics. deepinv's ``DecomposablePhysics`` carry theirs and small
operators are factored densely; this module adds the two structures that cover blur and
super-resolution at any image size, each detected from ``M``'s own forward calls (no knowledge of
the physics class is needed) and checked on a random input before use:

- :class:`KroneckerSVD`: ``M = A_1 (x) A_2 (x) ... (x) A_k`` over the sample axes (channels, then
  the spatial axes), i.e. ``M`` acts on each axis separately. This is every blur with a
  separable kernel (Gaussian, box) under any per-axis boundary rule (reflect, circular,
  replicate, zero, valid), separable downsampling (deepinv ``Downsampling`` with a bicubic,
  bilinear or Gaussian filter), in 2D and 3D. Each factor ``A_a`` (``m_a x n_a``) is read off
  ``n_a`` forward calls on rank-one inputs and factored by a float64 SVD; ``V^T x`` is one small
  matrix product per axis. This is the official DDRM/DDNM separable-blur SVD (``H_funcs``
  ``Deblurring``: one 1D convolution matrix per axis) built from the operator itself, so its
  boundary rule and kernel are exactly the physics' own.
- :class:`CirculantSVD`: ``M x = ifft(H * fft(x))`` over the spatial axes, channel by channel:
  every blur with a circular boundary, any kernel (motion blur; deepinv ``BlurFFT``, whose own
  ``V`` keeps half of a real FFT and is not orthonormal). ``V^T x`` is the orthonormal FFT,
  ``s = |H|`` and ``U = V diag(H / |H|)``; the spectral coordinates are complex. They are the
  real cos/sin coordinates in disguise: for real ``x`` the coefficients at ``k`` and ``-k`` are
  conjugate, a real per-coordinate rule that depends on ``|H|`` only (every rule of DDRM, DDNM+
  and MCGdiff) keeps that symmetry, and ``from_spectral`` takes the real part. A model-space
  ``z ~ N(0, I)`` maps to coefficients with ``E|c_k|^2 = 1``, and ``sum_k |c_k|^2 = ||z||^2``.

Singular values below ``s_max * n * eps`` (``n`` the largest factor dimension, ``eps`` that of the
probing dtype) are set to 0, as the dense backend does: they are below the accuracy of the
probed factors.
"""

from __future__ import annotations

import math

import torch

RTOL = 1e-4  # relative mismatch on a random input above which a candidate structure is rejected
MAX_FACTOR = 8192  # largest per-axis factor dimension probed
CHUNK = 1 << 22  # elements per batch of probing inputs


def _mode_products(x: torch.Tensor, mats) -> torch.Tensor:
    """``x`` (N, n_1, ..., n_k) with axis ``a`` multiplied by ``mats[a]`` (n_a x r_a): (N, r_1, ..., r_k)."""
    for mat in mats:  # each contraction takes the next original axis (now axis 1) to the end
        x = torch.tensordot(x, mat, dims=([1], [0]))
    return x


def _rank_one(x_vecs) -> torch.Tensor:
    out = x_vecs[0]
    for v in x_vecs[1:]:
        out = out[..., None] * v
    return out


def _apply(forward, x: torch.Tensor, dtype, device) -> torch.Tensor:
    """``forward`` on a batch, without autograd."""
    with torch.no_grad():
        return forward(x.to(dtype=dtype, device=device))


def _cut(s: torch.Tensor, n: int, dtype) -> torch.Tensor:
    if not s.numel():
        return s
    return torch.where(s > s.max() * n * torch.finfo(dtype).eps, s, torch.zeros_like(s))


def _mismatch(forward, apply_svd, sample_shape, dtype, device) -> float:
    """Relative difference of ``forward`` and the candidate on one random input (fixed generator)."""
    x = torch.randn((1, *sample_shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        want = forward(x.to(dtype=dtype, device=device)).to(torch.float64)
    got = apply_svd(x.to(device))
    if got.shape != want.shape:
        return math.inf
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


class KroneckerSVD:
    """``M = A_1 (x) ... (x) A_k`` with ``A_a = U_a diag(s_a) V_a^T`` (thin, float64); the spectral
    coordinates of a batch are (N, r_1, ..., r_k), ``r_a = min(m_a, n_a)``."""

    kind = "separable per axis"

    def __init__(self, factors, dtype):
        self.U, self.s, self.V = [], [], []
        for a in factors:
            u, s, vh = torch.linalg.svd(a, full_matrices=False)
            self.U.append(u)
            self.s.append(s)
            self.V.append(vh.T)
        n = max(max(a.shape) for a in factors)
        self.S = _cut(_rank_one(self.s), n, dtype)[None]
        self.full = all(v.shape[0] == v.shape[1] for v in self.V)  # V spans the whole model space

    @classmethod
    def find(cls, forward, sample_shape, dtype, device):
        """The factorization of ``forward`` (model batch in, measurement batch out), or the reason
        it has none: ``(svd, None)`` or ``(None, reason)``."""
        k = len(sample_shape)
        if sum(n > 1 for n in sample_shape) < 2:
            return None, "it has fewer than two axes longer than 1"
        if max(sample_shape) > MAX_FACTOR:
            return None, f"an axis is longer than {MAX_FACTOR}"
        g = torch.Generator().manual_seed(0)
        vecs = [torch.randn(n, generator=g, dtype=torch.float64) + 0.5 for n in sample_shape]
        y = _apply(forward, _rank_one(vecs)[None], dtype, device)[0].to(torch.float64)
        if y.is_complex() or y.dim() != k or max(y.shape) > MAX_FACTOR:
            return None, "its output does not have one axis per input axis"
        rows = []  # for each axis, the other axes' output of the rank-one input (a rank-one M x is needed)
        for a in range(k):
            Y = y.movedim(a, 0).reshape(y.shape[a], -1)
            row = Y[Y.norm(dim=1).argmax()]
            if float(row.norm()) == 0.0:
                return None, "it maps a random rank-one input to zero"
            coef = Y @ row / (row @ row)
            if float((Y - coef[:, None] * row).norm()) > RTOL * float(Y.norm()):
                return None, "its output of a rank-one input is not rank one"
            rows.append(row)
        factors = []
        for a, n in enumerate(sample_shape):
            # inputs e_i (x) (the other axes' vectors), i < n_a, in chunks of at most CHUNK elements:
            # M maps them to (A_a e_i) (x) h with the same h, so column i of A_a is their output
            # unfolded along axis a times h (up to one scale per axis)
            others = _rank_one([torch.ones(1, dtype=torch.float64) if b == a else v for b, v in enumerate(vecs)])
            per = max(1, CHUNK // others.numel())
            columns = []
            for start in range(0, n, per):
                eye = torch.eye(n, dtype=torch.float64)[start:start + per]
                probes = eye.reshape(eye.shape[0], *[n if b == a else 1 for b in range(k)]) * others[None]
                out = _apply(forward, probes, dtype, device).to(torch.float64).cpu()
                out = out.movedim(a + 1, 1).reshape(out.shape[0], y.shape[a], -1)  # (chunk, m_a, rest)
                columns.append(out @ rows[a].cpu() / (rows[a].cpu() @ rows[a].cpu()))
            factors.append(torch.cat(columns).T)  # (m_a, n_a), up to scale
        ref = _mode_products(_rank_one(vecs)[None], [f.T for f in factors])[0]  # fix the product of the scales
        factors[0] = factors[0] * float((y.cpu() * ref).sum() / (ref * ref).sum().clamp_min(1e-300))
        svd = cls(factors, dtype)
        err = _mismatch(forward, lambda x: svd.forward(x.cpu()).to(x.device), sample_shape, dtype, device)
        if not err <= RTOL:
            return None, f"its per-axis factors reproduce it only to a relative {err:.1e}"
        return svd.to(device), None

    def to(self, device):
        for name in ("U", "s", "V"):
            setattr(self, name, [t.to(device) for t in getattr(self, name)])
        self.S = self.S.to(device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``M x`` through the factors (float64), for checks."""
        c = _mode_products(x.to(torch.float64), self.V) * self.S
        return _mode_products(c, [u.T for u in self.U])

    def to_spectral(self, x: torch.Tensor) -> torch.Tensor:
        return _mode_products(x.to(torch.float64), self.V)

    def from_spectral(self, c: torch.Tensor) -> torch.Tensor:
        return _mode_products(c.to(torch.float64), [v.T for v in self.V])

    def measurement_spectral(self, r: torch.Tensor) -> torch.Tensor:
        """``U^T r`` per row of the measurement batch ``r``."""
        return _mode_products(r.to(torch.float64), self.U)

    def null_part(self, x: torch.Tensor) -> torch.Tensor:
        if self.full:
            return torch.zeros_like(x)
        return x - self.from_spectral(self.to_spectral(x)).to(x.dtype)


class CirculantSVD:
    """``M x = ifft(H * fft(x))`` over the spatial axes (all sample axes but the first, the
    channels), each channel with its own transfer function ``H_c``; spectral coordinates are the
    orthonormal FFT (complex128), ``s = |H|``."""

    kind = "a circular convolution"

    def __init__(self, H: torch.Tensor, dtype):
        self.H = H[None]  # (1, C, *spatial) complex128
        n = max(H.shape[1:])
        self.S = _cut(H.abs()[None], n, dtype)
        self.dims = tuple(range(2, H.dim() + 1))
        self.full = True

    @classmethod
    def find(cls, forward, sample_shape, dtype, device):
        if len(sample_shape) < 2 or math.prod(sample_shape[1:]) < 2:
            return None, "it has no spatial axes"
        c = sample_shape[0]
        delta = torch.zeros((c, *sample_shape), dtype=torch.float64)
        for i in range(c):
            delta[(i, i) + (0,) * (len(sample_shape) - 1)] = 1.0
        out = _apply(forward, delta, dtype, device)
        if out.is_complex() or tuple(out.shape[1:]) != tuple(sample_shape):
            return None, "its output is not shaped like its input"
        out = out.to(torch.float64).cpu()
        mixed = out.clone()
        mixed[torch.arange(c), torch.arange(c)] = 0  # responses in the other channels
        if float(mixed.norm()) > RTOL * float(out.norm()):
            return None, "it mixes channels"
        dims = tuple(range(1, len(sample_shape)))
        H = torch.fft.fftn(out[torch.arange(c), torch.arange(c)], dim=dims)  # (C, *spatial)
        svd = cls(H, dtype)
        err = _mismatch(forward, lambda x: svd.forward(x.cpu()).to(x.device), sample_shape, dtype, device)
        if not err <= RTOL:
            return None, f"relative mismatch {err:.1e} on a random input"
        svd.H, svd.S = svd.H.to(device), svd.S.to(device)
        return svd, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifftn(self.H * torch.fft.fftn(x.to(torch.float64), dim=self.dims), dim=self.dims).real

    def to_spectral(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fftn(x.to(torch.float64), dim=self.dims, norm="ortho")

    def from_spectral(self, c: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifftn(c, dim=self.dims, norm="ortho").real

    def measurement_spectral(self, r: torch.Tensor) -> torch.Tensor:
        """``U^* r = conj(H / |H|) F r`` (0 where ``H = 0``)."""
        phase = torch.where(self.S > 0, self.H.conj() / torch.where(self.S > 0, self.H.abs(), torch.ones_like(self.S)),
                            torch.zeros_like(self.H))
        return phase * torch.fft.fftn(r.to(torch.float64), dim=self.dims, norm="ortho")

    def null_part(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def structured_svd(forward, sample_shape, dtype, device):
    """The first of :class:`KroneckerSVD` and :class:`CirculantSVD` that reproduces ``forward``:
    ``(svd, None)``, or ``(None, reason)`` naming why neither applies."""
    reasons = []
    for cls in (KroneckerSVD, CirculantSVD):
        svd, why = cls.find(forward, tuple(sample_shape), dtype, device)
        if svd is not None:
            return svd, None
        reasons.append(f"{cls.kind} ({why})")
    return None, f"neither {' nor '.join(reasons)}"
