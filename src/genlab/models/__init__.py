"""The model registry: a dict from name to class. A new model registers here and nowhere else."""

from __future__ import annotations

from genlab.models.base import GenerativeModel
from genlab.models.diffusion import Diffusion
from genlab.models.gan import DCGAN, MLPGAN
from genlab.models.gpt import GPT
from genlab.models.merf import MERF
from genlab.models.vae import MLPVAE, ConvVAE
from genlab.models.wavegan import WaveGAN

MODELS: dict[str, type[GenerativeModel]] = {
    MLPGAN.name: MLPGAN,
    DCGAN.name: DCGAN,
    MLPVAE.name: MLPVAE,
    ConvVAE.name: ConvVAE,
    GPT.name: GPT,
    Diffusion.name: Diffusion,
    MERF.name: MERF,
    WaveGAN.name: WaveGAN,
}

__all__ = ["MODELS", "GenerativeModel", "get_model_class"]


def get_model_class(name: str) -> type[GenerativeModel]:
    from genlab.errors import UserError

    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; available: {', '.join(MODELS)} (see genlab models)")
    return MODELS[name]
