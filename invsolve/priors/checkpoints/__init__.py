"""Readers for the field's checkpoint formats, used by ``invsolve.priors.loaders.load_prior``.

``io`` (safe reading: safetensors or ``torch.load(weights_only=True)``, sha256, finite checks),
``adm`` (guided-diffusion), ``score_sde`` (NCSN++ continuous VE), ``songunet`` (the NCSN++/DDPM++
network shared with ``edm``), ``edm`` (EDM state dicts), ``diffusers`` (UNet2DModel, SD3 class).
"""
