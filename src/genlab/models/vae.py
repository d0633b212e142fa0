"""VAEs: the documents' MLP VAE (`vae`) and a convolutional VAE (`convvae`), optionally conditional.

Kingma & Welling 2013 (https://arxiv.org/abs/1312.6114). The encoder gives q(z|x) =
N(mu, diag(exp(log_var))); training samples z = mu + exp(0.5 log_var) * eps, eps ~ N(0, I); the
decoder gives p(x|z), a likelihood from likelihoods.py (`model.likelihood`). Per example

    loss = -log p(x|z) summed over pixels + beta * KL(q(z|x) || N(0, I)),
    KL = -0.5 * sum_j (1 + log_var_j - mu_j^2 - exp(log_var_j)),

averaged over the batch. beta = 1 is the negative ELBO; beta > 1 is a beta-VAE (Higgins et al.
2017, https://openreview.net/forum?id=Sy2fzU9gl). With `kl_warmup_steps = N` the KL weight ramps
linearly from 0 to beta over the first N steps (Bowman et al. 2015, https://arxiv.org/abs/1511.06349),
counted by the `kl_step` buffer, which is saved with the weights so a resumed run continues exactly.
The logged `neg_elbo` and `bpd` are always the beta = 1 bound.

`sample` draws z from the prior N(0, I) and returns the decoder's mean image (see
`Likelihood.mean`: the expected grey level for `categorical`, P(x = 1) for `bernoulli`, the clamped
location for the discretized `logistic`); `decode` does the same for given latents.
`likelihood_report` gives the ELBO and the IWAE bound (Burda et al. 2015,
https://arxiv.org/abs/1509.00519) on held-out images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.config import check_at_least, check_at_most, check_finite_fields, check_image_fields
from genlab.errors import UserError
from genlab.limits import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_IMAGE_SIDE,
    MAX_LOSS_WEIGHT,
    MAX_STEPS,
    MAX_WIDTH,
)
from genlab.models.base import (
    Encoder,
    GenerativeModel,
    Likelihood,
    SampleCall,
    class_labels,
    forward_in_passes,
    image_config_for_data,
    images_to_unit,
)
from genlab.models.likelihoods import LIKELIHOODS, binarize


@dataclass
class VAEConfig:
    channels: int = 0  # from the data (0 = fill in from the dataset)
    image_size: int = 0  # square side; 0 = the data's native size, else images are resized once
    num_classes: int = 0  # > 0 makes the model class-conditional (`--conditional`)
    nz: int = 32  # latent dimension
    likelihood: Literal["logistic", "categorical", "bernoulli"] = "logistic"  # p(x|z)
    binarize: Literal["threshold", "stochastic"] = "threshold"  # bernoulli only: see binarize()
    beta: float = 1.0  # weight of the KL term; 1 = the ELBO
    kl_warmup_steps: int = 0  # ramp the KL weight linearly from 0 to beta over this many steps
    label_dim: int = 16  # width of the label embedding fed to encoder and decoder (conditional)
    pixel_features: int = 8  # decoder features per pixel, mapped to the likelihood's parameters

    widths = ("nz", "label_dim", "pixel_features")  # layer sizes that must be >= 1

    def validate(self, *, partial: bool = False) -> None:
        """Every rule; `partial`: only those that do not need the data (checked before any data
        is read; the data-derived fields are still 0 then)."""
        check_finite_fields(self, "model")
        check_image_fields(self, "model", partial=partial)
        check_at_least(self, "model", self.widths)
        if self.beta < 0:
            raise UserError(f"model.beta must be >= 0, got {self.beta}")
        if self.kl_warmup_steps < 0:
            raise UserError(f"model.kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}")
        check_at_most(self, "model", {
            "channels": MAX_CHANNELS, "image_size": MAX_IMAGE_SIDE, "num_classes": MAX_CLASSES,
            "beta": MAX_LOSS_WEIGHT, "kl_warmup_steps": MAX_STEPS,
            **{name: MAX_WIDTH for name in self.widths}})


class VAE(GenerativeModel, Likelihood, Encoder):
    """Shared VAE maths; subclasses build `encoder` (x, cond) -> (mu, log_var) and `decoder`
    (z, cond) -> per-pixel features (B, pixel_features, H, W)."""

    config_class = VAEConfig
    supports_conditional = True
    progress_keys = ("loss", "nll", "kl")

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config)
        config.validate()
        self.likelihood = LIKELIHOODS[config.likelihood]
        k = config.num_classes
        self.label_embed = nn.Embedding(k, config.label_dim) if k else None
        self.encoder, self.decoder = self.build_networks(config)
        # a small per-pixel head, shared by all pixels, so a 256-way categorical stays affordable
        self.head = nn.Sequential(
            nn.SiLU(), nn.Conv2d(config.pixel_features,
                                 self.likelihood.n_params * config.channels, 1))
        self.register_buffer("kl_step", torch.zeros((), dtype=torch.long))

    def build_networks(self, config: Any) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError  # subclasses build their own networks

    @classmethod
    def config_for_data(cls, config: Any, data: Any, *, conditional: bool) -> Any:
        return image_config_for_data(cls.name, config, data, conditional=conditional)

    # --- the networks ------------------------------------------------------------------------------

    def _condition(self, labels: Tensor | None) -> Tensor | None:
        if self.label_embed is None:
            return None
        if labels is None:
            raise UserError("this VAE is conditional: pass the class labels")
        return self.label_embed(labels)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Images `(B, C, H, W)` in [0, 1] -> the posterior's `(mu, log_var)`, each `(B, nz)`."""
        mu, log_var = self.encoder(x, self._condition(labels))
        return mu.float(), log_var.float()

    def decoder_params(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Latents `(B, nz)` -> likelihood parameters `(B, P, C, H, W)` (fp32)."""
        params = self.head(self.decoder(z, self._condition(labels)))  # (B, P*C, H, W)
        c, s = self.config.channels, self.config.image_size
        return params.float().view(-1, self.likelihood.n_params, c, s, s)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Latents `(B, nz)` -> the decoder's mean images `(B, C, H, W)` in [0, 1]."""
        return self.likelihood.mean(self.decoder_params(z, labels))

    def inputs(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 images -> the data x the model explains, in [0, 1] (binarized for bernoulli)."""
        if self.likelihood.name == "bernoulli":
            return binarize(images, self.config.binarize, generator)
        return images_to_unit(images)

    def log_px(self, x: Tensor, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(x|z) in nats, summed over pixels: `(B,)`."""
        return self.likelihood.log_prob(self.decoder_params(z, labels), x).flatten(1).sum(1)

    # --- training ----------------------------------------------------------------------------------

    def kl_weight(self) -> Tensor:
        warmup = self.config.kl_warmup_steps
        done = self.kl_step.float()  # completed steps
        ramp = (done / warmup).clamp(max=1.0) if warmup else torch.ones_like(done)
        return self.config.beta * ramp

    def bits_per_dim(self, nats: Tensor) -> Tensor:
        return nats / (self.config.channels * self.config.image_size ** 2 * math.log(2))

    def _labels(self, batch: dict[str, Tensor]) -> Tensor | None:
        return batch.get("labels") if self.config.num_classes else None

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = self.inputs(batch["images"])
        labels = self._labels(batch)
        mu, log_var = self.encode(x, labels)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)  # reparameterization
        nll = -self.log_px(x, z, labels)  # (B,)
        kl = gaussian_kl(mu, log_var)  # (B,)
        weight = self.kl_weight()
        out = {"loss": (nll + weight * kl).mean(), "nll": nll.mean(), "kl": kl.mean(),
               "neg_elbo": (nll + kl).mean(), "kl_weight": weight}
        if self.likelihood.eight_bit:
            out["bpd"] = self.bits_per_dim(out["neg_elbo"])
        return out

    def train_step(self, batch: dict[str, Tensor], optimizers: dict[str, torch.optim.Optimizer],
                   *, grad_accum: int = 1, grad_clip: float = 0.0) -> dict[str, Tensor]:
        out = super().train_step(batch, optimizers, grad_accum=grad_accum, grad_clip=grad_clip)
        self.kl_step += 1  # after the step: step t used the weight for t completed steps
        return out

    # --- generation --------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               labels: Tensor | int | None = None, batch_size: int = 500) -> Tensor:
        """`n` decoder mean images `(N, C, H, W)` in [0, 1] from z ~ N(0, I). `labels`: a class
        index or `n` indices (conditional models; random classes when omitted)."""
        device = self.device
        labels = class_labels(n, labels, self.config.num_classes, generator, device)
        chunks = []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            z = torch.randn(m, self.config.nz, device=device, generator=generator)
            y = labels[start:start + m] if labels is not None else None
            chunks.append(self.decode(z, y))
        return torch.cat(chunks)

    @torch.no_grad()
    def sample_many(self, calls: Sequence[SampleCall]) -> list[Tensor]:
        """`sample` for several calls at once (the server's micro-batches): each call's labels and
        latents come from its own generator, drawn exactly as `sample` draws them, and the
        decoder runs over all calls' rows together in passes of `sample_pass_rows`."""
        device, k = self.device, self.config.num_classes
        latents, labels = [], []
        for call in calls:
            options = dict(call.options)
            chunk = options.pop("batch_size", 500)
            y = class_labels(call.n, options.pop("labels", None), k, call.generator, device)
            if options:
                raise TypeError(f"sample() got unexpected keyword arguments {sorted(options)}")
            latents.append(torch.cat([
                torch.randn(min(chunk, call.n - start), self.config.nz, device=device,
                            generator=call.generator) for start in range(0, call.n, chunk)]))
            labels.append(y)
        z = torch.cat(latents)
        y = torch.cat(labels) if k else None
        images = forward_in_passes(self.decode, self.sample_pass_rows, z, y)
        return list(images.split([call.n for call in calls]))

    @torch.no_grad()
    def reconstruct(self, images: Tensor, labels: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """uint8 images -> decoder mean images at the posterior mean z = mu, in [0, 1]."""
        mu, _ = self.encode(self.inputs(images.to(self.device), generator), labels)
        return self.decode(mu, labels)

    # --- likelihood --------------------------------------------------------------------------------

    def log_weights(self, x: Tensor, labels: Tensor | None, k: int,
                    generator: torch.Generator | None = None) -> Tensor:
        """Importance weights log p(x, z_k) - log q(z_k|x) for k draws z_k ~ q(z|x): `(k, B)`.
        Their mean is an ELBO estimate, their log-mean-exp the IWAE bound."""
        mu, log_var = self.encode(x, labels)
        eps = torch.randn((k, *mu.shape), device=mu.device, generator=generator)  # (k, B, nz)
        z = mu + torch.exp(0.5 * log_var) * eps
        # log p(z) - log q(z|x) per latent dim: the log(2 pi) terms cancel
        log_prior_ratio = 0.5 * (eps.square() - z.square() + log_var).sum(-1)  # (k, B)
        b = x.shape[0]
        x_k = x.expand(k, *x.shape).flatten(0, 1)  # (k*B, C, H, W)
        y_k = labels.repeat(k) if labels is not None else None
        log_px = self.log_px(x_k, z.flatten(0, 1), y_k).view(k, b)
        return log_px + log_prior_ratio

    @torch.no_grad()
    def likelihood_report(self, images: Tensor, *, labels: Tensor | None = None,
                          iwae_k: int = 100, generator: torch.Generator | None = None,
                          batch_size: int = 500) -> dict[str, Any]:
        """Negative ELBO and IWAE NLL (nats per image, and bits/dim for 8-bit likelihoods) of
        uint8 images `(N, C, H, W)`, averaged over the images; labels for a conditional model.

        Both come from the same `iwae_k` draws per image: the ELBO is the mean of the log-weights,
        the IWAE bound their log-mean-exp, so iwae_nll <= neg_elbo always. `batch_size` latents
        are decoded per forward pass. Runs in fp32."""
        self._check_images(images)
        if iwae_k < 1 or batch_size < 1:
            raise UserError(f"iwae_k and batch_size must be >= 1, got {iwae_k} and {batch_size}")
        if self.config.num_classes and labels is None:
            raise UserError("a conditional VAE's likelihood is p(x|label): pass the labels")
        was_training = self.training
        self.eval()
        per_pass = max(1, batch_size // iwae_k)  # images per pass
        k_per_pass = min(iwae_k, batch_size)
        elbo, iwae = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for start in range(0, images.shape[0], per_pass):
            x = self.inputs(images[start:start + per_pass].to(self.device), generator)
            y = labels[start:start + per_pass].to(self.device) if labels is not None else None
            log_w = torch.cat([self.log_weights(x, y, min(k_per_pass, iwae_k - done), generator)
                               for done in range(0, iwae_k, k_per_pass)]).double()  # (K, b)
            elbo += log_w.mean(0).sum().cpu()
            iwae += (torch.logsumexp(log_w, 0) - math.log(iwae_k)).sum().cpu()
        self.train(was_training)
        n = images.shape[0]
        neg_elbo, iwae_nll = -elbo.item() / n, -iwae.item() / n
        bpd = self.likelihood.eight_bit
        return {"neg_elbo_nats": neg_elbo,
                "neg_elbo_bpd": self.bits_per_dim(torch.tensor(neg_elbo)).item() if bpd else None,
                "iwae_nll_nats": iwae_nll,
                "iwae_nll_bpd": self.bits_per_dim(torch.tensor(iwae_nll)).item() if bpd else None,
                "iwae_k": iwae_k, "n_test": n, "likelihood": self.likelihood.name}

    @torch.no_grad()
    def example_nll(self, images: Tensor, *, labels: Tensor | None = None,
                    generator: torch.Generator | None = None, batch_size: int = 500) -> Tensor:
        """The negative ELBO of each uint8 image in nats, `(N,)`, from one posterior draw each
        (the single-sample estimate the training loss uses). Runs in fp32, in eval mode."""
        self._check_images(images)
        if self.config.num_classes and labels is None:
            raise UserError("a conditional VAE's likelihood is p(x|label): pass the labels")
        was_training = self.training
        self.eval()
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = self.inputs(images[start:start + batch_size].to(self.device), generator)
            y = labels[start:start + batch_size].to(self.device) if labels is not None else None
            out.append(-self.log_weights(x, y, 1, generator)[0].double().cpu())
        self.train(was_training)
        return torch.cat(out)



def gaussian_kl(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(log_var))) || N(0, I)) per example, summed over latent dims: `(B,)`."""
    return -0.5 * (1 + log_var - mu.square() - log_var.exp()).sum(1)


def interpolate_latents(z0: Tensor, z1: Tensor, steps: int, mode: str = "slerp") -> Tensor:
    """Paths from each row of `z0` `(B, nz)` to the same row of `z1`: `(B, steps, nz)`, endpoints
    included. `slerp` follows the great circle, keeping the norm typical of N(0, I) draws,
    where the straight `lerp` path passes through the low-norm middle (White 2016,
    https://arxiv.org/abs/1609.04468)."""
    if mode not in ("slerp", "lerp"):
        raise UserError(f"unknown interpolation mode {mode!r}; allowed: slerp, lerp")
    t = torch.linspace(0.0, 1.0, steps, device=z0.device)[None, :, None]  # (1, steps, 1)
    a, b = z0[:, None], z1[:, None]  # (B, 1, nz)
    lerp = a + t * (b - a)
    if mode == "lerp":
        return lerp
    cos = F.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)[..., None]
    omega = torch.acos(cos)  # angle between the endpoints, (B, 1, 1)
    sin = torch.sin(omega)
    slerp = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin.clamp(min=1e-6)
    return torch.where(sin > 1e-4, slerp, lerp)  # (nearly) parallel endpoints: the line


# --- the MLP VAE -----------------------------------------------------------------------------------

@dataclass
class MLPVAEConfig(VAEConfig):
    hidden: int = 512  # width of the two hidden layers of encoder and decoder

    widths = ("nz", "label_dim", "pixel_features", "hidden")


class MLPEncoder(nn.Module):
    def __init__(self, config: MLPVAEConfig) -> None:
        super().__init__()
        h, k = config.hidden, config.num_classes
        in_dim = config.channels * config.image_size ** 2 + (config.label_dim if k else 0)
        self.net = nn.Sequential(nn.Linear(in_dim, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(),
                                 nn.Linear(h, 2 * config.nz))

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x.flatten(1)  # (B, C*H*W)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        mu, log_var = self.net(h).chunk(2, dim=1)
        return mu, log_var


class MLPDecoder(nn.Module):
    def __init__(self, config: MLPVAEConfig) -> None:
        super().__init__()
        h, k = config.hidden, config.num_classes
        self.shape = (config.pixel_features, config.image_size, config.image_size)
        self.net = nn.Sequential(
            nn.Linear(config.nz + (config.label_dim if k else 0), h), nn.SiLU(),
            nn.Linear(h, h), nn.SiLU(), nn.Linear(h, math.prod(self.shape)))

    def forward(self, z: Tensor, cond: Tensor | None) -> Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        return self.net(z).view(-1, *self.shape)  # (B, pixel_features, H, W)


class MLPVAE(VAE):
    name = "vae"
    description = "the documents' MLP VAE, fixed: reparameterized, summed 8-bit likelihood, IWAE"
    config_class = MLPVAEConfig
    default_preset = "vae"
    tiny_config = {"nz": 4, "hidden": 16, "pixel_features": 2}

    def build_networks(self, config: MLPVAEConfig) -> tuple[nn.Module, nn.Module]:
        return MLPEncoder(config), MLPDecoder(config)


# --- the convolutional VAE -------------------------------------------------------------------------

CONV_SIZES = (28, 32)


@dataclass
class ConvVAEConfig(VAEConfig):
    width: int = 32  # feature maps at full and half resolution; doubled at quarter resolution
    hidden: int = 256  # width of the dense layer between the feature maps and the latent
    pixel_features: int = 32

    widths = ("nz", "label_dim", "pixel_features", "width", "hidden")

    def validate(self, *, partial: bool = False) -> None:
        super().validate(partial=partial)
        if not (partial and not self.image_size) and self.image_size not in CONV_SIZES:
            raise UserError(f"convvae needs 28x28 or 32x32 images, got {self.image_size}x"
                            f"{self.image_size}; add --set model.image_size=32 to resize at load")
        if not (partial and not self.channels) and self.channels not in (1, 3):
            raise UserError(f"convvae needs grayscale or RGB images, got {self.channels} channels")


class ConvEncoder(nn.Module):
    def __init__(self, config: ConvVAEConfig) -> None:
        super().__init__()
        w, quarter = config.width, config.image_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(config.channels, w, 3, 1, 1), nn.SiLU(),
            nn.Conv2d(w, w, 4, 2, 1), nn.SiLU(),  # H/2
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.SiLU(),  # H/4
            nn.Flatten())
        in_dim = 2 * w * quarter ** 2 + (config.label_dim if config.num_classes else 0)
        self.to_latent = nn.Sequential(nn.Linear(in_dim, config.hidden), nn.SiLU(),
                                       nn.Linear(config.hidden, 2 * config.nz))

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.features(x)  # (B, 2w * (H/4)^2)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        mu, log_var = self.to_latent(h).chunk(2, dim=1)
        return mu, log_var


class ConvDecoder(nn.Module):
    def __init__(self, config: ConvVAEConfig) -> None:
        super().__init__()
        w = config.width
        self.shape = (2 * w, config.image_size // 4, config.image_size // 4)
        self.from_latent = nn.Sequential(
            nn.Linear(config.nz + (config.label_dim if config.num_classes else 0), config.hidden),
            nn.SiLU(), nn.Linear(config.hidden, math.prod(self.shape)), nn.SiLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.SiLU(),  # H/2
            nn.ConvTranspose2d(w, config.pixel_features, 4, 2, 1))  # H

    def forward(self, z: Tensor, cond: Tensor | None) -> Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        return self.up(self.from_latent(z).view(-1, *self.shape))  # (B, pixel_features, H, W)


class ConvVAE(VAE):
    name = "convvae"
    description = "convolutional VAE for 28x28 / 32x32 grey or RGB images"
    config_class = ConvVAEConfig
    default_preset = "convvae"
    tiny_config = {"nz": 4, "width": 4, "hidden": 8, "pixel_features": 4}

    def build_networks(self, config: ConvVAEConfig) -> tuple[nn.Module, nn.Module]:
        return ConvEncoder(config), ConvDecoder(config)
