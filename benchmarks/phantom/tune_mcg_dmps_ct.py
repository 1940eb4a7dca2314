"""Short ct-sparse8 tune for MCG / DMPS on training-distribution phantoms (seed 123), as benchmarks/phantom/tune_dps.py."""
import sys, time, torch
import invsolve as iv, operators as ops
from invsolve.metrics import psnr
from invsolve.phantoms import random_ellipses
prior = iv.load_prior("ct-phantom64")
n_ph = 2
truth = random_ellipses(n_ph, 64, torch.Generator().manual_seed(123))
physics = ops.make("ct-sparse8")
clean = physics.A(truth)
y = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
problem = iv.Problem(physics, y, sigma_y=0.1, prior=prior)
fbp = physics.fbp(y)
print("FBP", sum(psnr(truth[i], fbp[i], 1.0) for i in range(n_ph)) / n_ph, flush=True)
name = sys.argv[1]
for spec in sys.argv[2:]:
    kw = eval("dict(" + spec + ")")
    post = iv.sample(name, prior, problem, n_samples=1, generator=torch.Generator().manual_seed(0), **kw)
    mean = post.mean.clamp(0, 1)
    vals = [psnr(truth[i], mean[i], 1.0) for i in range(n_ph)]
    print(f"{name} [{spec}] PSNR {sum(vals)/n_ph:.2f} ({', '.join(f'{v:.2f}' for v in vals)}) nfe {post.nfe} {post.seconds:.0f}s", flush=True)
