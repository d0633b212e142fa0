"""GANs: the documents' MLP GAN (`gan`) and DCGAN (`dcgan`), unconditional or class-conditional.

The adversarial update lives here, in `GAN.train_step`: one discriminator step (or `d_steps`), then one
generator step, then the EMA of the generator. Data is scaled to [-1, 1] to match the generator's
tanh; `sample` maps back to [0, 1]. Losses come from `gan_losses.py` by name.

DCGAN: Radford et al. 2015 (https://arxiv.org/abs/1511.06434). Projection discriminator for the
conditional variant: Miyato & Koyama 2018 (https://arxiv.org/abs/1802.05637).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genlab.config import (
    TrainConfig,
    check_at_least,
    check_at_most,
    check_finite_fields,
    check_image_fields,
)
from genlab.errors import UserError
from genlab.limits import MAX_CHANNELS, MAX_CLASSES, MAX_IMAGE_SIDE, MAX_LOSS_WEIGHT, MAX_WIDTH
from genlab.models.base import (
    Discriminator,
    GenerativeModel,
    SampleCall,
    class_labels,
    generator_calls,
    image_config_for_data,
    images_to_unit,
    make_optimizer,
    unit_to_signed,
)
from genlab.models.gan_losses import LOSSES, gradient_penalty
from genlab.models.layers import ema_update


@dataclass
class GANConfig:
    channels: int = 0  # from the data (0 = fill in from the dataset)
    image_size: int = 0  # square side; 0 = the data's native size, else images are resized once
    num_classes: int = 0  # > 0 makes the model class-conditional (`--conditional`)
    nz: int = 100  # latent dimension
    loss: Literal["ns", "hinge", "wgan-gp"] = "ns"
    gp_weight: float = 10.0  # lambda of the WGAN-GP penalty
    d_steps: int = 1  # discriminator steps per generator step (WGAN-GP uses 5)
    d_norm: Literal["auto", "batch", "layer", "none"] = "auto"  # auto: batch, or layer for wgan-gp
    ema_decay: float = 0.999  # EMA of generator weights, used for sampling; 0 = off
    sample_ema: bool = True  # sample from the EMA generator

    widths = ("nz",)  # layer sizes that must be >= 1; subclasses add theirs

    def validate(self, *, partial: bool = False) -> None:
        """Every rule; `partial`: only those that do not need the data (checked before any data
        is read; the data-derived fields are still 0 then)."""
        check_finite_fields(self, "model")
        check_image_fields(self, "model", partial=partial)
        if self.loss == "wgan-gp" and self.d_norm == "batch":
            raise UserError("model.d_norm=batch cannot be used with model.loss=wgan-gp: the gradient "
                            "penalty is per example; use d_norm=layer or none")
        check_at_least(self, "model", ("d_steps",))
        check_at_least(self, "model", ("gp_weight",), 0)
        check_at_least(self, "model", self.widths)
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"model.ema_decay must be in [0, 1), got {self.ema_decay}")
        check_at_most(self, "model", {
            "channels": MAX_CHANNELS, "image_size": MAX_IMAGE_SIDE, "num_classes": MAX_CLASSES,
            "d_steps": 100, "gp_weight": MAX_LOSS_WEIGHT,
            **{name: MAX_WIDTH for name in self.widths}})

    @property
    def discriminator_norm(self) -> str:
        if self.d_norm == "auto":
            return "layer" if self.loss == "wgan-gp" else "batch"
        return self.d_norm


def _norm_2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # layer norm over (C, H, W), per example
    return nn.Identity()


def _generator_class_embedding(num_classes: int, nz: int) -> nn.Embedding:
    """The class vectors a generator concatenates to z, drawn N(0, 0.1^2) instead of
    nn.Embedding's N(0, 1). At full size they matched z's scale, and the class term, the same for
    every sample of a class, took over: within 100 steps on fashion-mnist every sample of a class
    was nearly the same image (within-class pixel std 0.04 against 0.19 for real images) and
    stayed so (issue 21). Small, the class term grows only as fast as the generator needs it."""
    embed = nn.Embedding(num_classes, nz)
    nn.init.normal_(embed.weight, 0.0, 0.1)
    return embed


def check_adversarial_train(train: TrainConfig) -> None:
    """The train settings every GAN family needs (image or waveform)."""
    if train.grad_accum != 1:
        raise UserError("GANs update two networks in turn; train.grad_accum must be 1")
    if train.batch_size < 2:
        raise UserError("the generator's batch norm needs 2 or more examples per batch; use "
                        "--batch-size 2 or more")


def optimizer_pair(generator: nn.Module, discriminator: nn.Module,
                   train: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per network of a GAN, both from the train config."""
    return {"generator": make_optimizer(generator.parameters(), train),
            "discriminator": make_optimizer(discriminator.parameters(), train)}


class GAN(GenerativeModel, Discriminator):
    """Shared adversarial training; subclasses build `generator` and `discriminator`."""

    config_class = GANConfig
    supports_conditional = True
    progress_keys = ("loss", "d_loss", "g_loss")
    # under --dp, the run's genlab.privacy_dp.PrivateTraining (set by privacy_dp.attach)
    privacy: Any = None

    def __init__(self, config: GANConfig) -> None:
        super().__init__(config)
        config.validate()
        self.generator, self.discriminator = self.build_networks(config)
        self.generator_ema: nn.Module | None = None
        if config.ema_decay > 0:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    def build_networks(self, config: Any) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError  # subclasses build their own networks

    @classmethod
    def config_for_data(cls, config: Any, data: Any, *, conditional: bool) -> Any:
        return image_config_for_data(cls.name, config, data, conditional=conditional)

    @classmethod
    def validate_train_config(cls, config: Any, train: TrainConfig) -> None:
        check_adversarial_train(train)

    def configure_optimizers(self, train: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        return optimizer_pair(self.generator, self.discriminator, train)

    # --- losses ------------------------------------------------------------------------------------

    def _real(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        real = unit_to_signed(images_to_unit(batch["images"]))
        labels = batch.get("labels") if self.config.num_classes else None
        return real, labels

    def _noise(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | None = None) -> Tensor:
        return torch.randn(n, self.config.nz, device=device or self.device, generator=generator)

    def _penalty(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> Tensor:
        # in fp32: the double backward of a bf16 critic is noisy
        with torch.autocast(real.device.type, enabled=False):
            return gradient_penalty(lambda x: self.discriminator(x.float(), labels), real.float(),
                                    fake.float())

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Both losses on one batch, without updating anything (the contract's view of a GAN)."""
        d_fn, g_fn = LOSSES[self.config.loss]
        real, labels = self._real(batch)
        fake = self.generator(self._noise(real.shape[0]), labels)
        d_loss = d_fn(self.discriminator(real, labels), self.discriminator(fake.detach(), labels))
        if self.config.loss == "wgan-gp":
            d_loss = d_loss + self.config.gp_weight * self._penalty(real, fake, labels)
        g_loss = g_fn(self.discriminator(fake, labels))
        return {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}

    def train_step(
        self, batch: dict[str, Tensor], optimizers: dict[str, torch.optim.Optimizer],
        *, grad_accum: int = 1, grad_clip: float = 0.0,
    ) -> dict[str, Tensor]:
        d_fn, g_fn = LOSSES[self.config.loss]
        opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
        real, labels = self._real(batch)
        n, fake_labels = real.shape[0], labels
        private = self.privacy
        if private is not None:  # fakes of a fixed size and random classes: nothing real
            n = private.expected_batch
            fake_labels = private.fake_labels(n, self.config.num_classes, real.device)
        out: dict[str, Tensor] = {}
        # Discriminator. With one D step the fakes are reused by the G step, as in the DCGAN paper.
        for _ in range(self.config.d_steps):
            if private is not None:  # clipped, noised real terms; see genlab.privacy_dp
                fake = self.generator(self._noise(n), fake_labels)
                d_loss, real_logits, fake_logits = private.discriminator_backward(
                    self.discriminator, real, labels, fake.detach(), fake_labels,
                    self.config.loss)
                opt_d.step()
                opt_d.zero_grad(set_to_none=True)
                continue
            with self.autocast():
                fake = self.generator(self._noise(n), labels)
                real_logits = self.discriminator(real, labels)
                fake_logits = self.discriminator(fake.detach(), labels)
                d_loss = d_fn(real_logits, fake_logits)
            if self.config.loss == "wgan-gp":
                gp = self._penalty(real, fake, labels)
                out["gp"] = gp.detach()
                d_loss = d_loss + self.config.gp_weight * gp
            d_loss.backward()
            self._clip(self.discriminator, grad_clip)
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
        # Generator: gradients flow through D; D's own weight gradients are not needed.
        self.discriminator.requires_grad_(False)
        with self.autocast():
            g_loss = g_fn(self.discriminator(fake, fake_labels))
        g_loss.backward()
        self.discriminator.requires_grad_(True)
        self._clip(self.generator, grad_clip)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        self.update_ema()
        out.update(loss=(d_loss + g_loss).detach().float(), d_loss=d_loss.detach().float(),
                   g_loss=g_loss.detach().float(),
                   d_real=real_logits.detach().float().mean(),
                   d_fake=fake_logits.detach().float().mean())
        return out

    @staticmethod
    def _clip(module: nn.Module, max_norm: float) -> None:
        if max_norm > 0:
            nn.utils.clip_grad_norm_(module.parameters(), max_norm)

    # --- EMA ---------------------------------------------------------------------------------------

    def update_ema(self) -> None:
        """EMA of generator weights with a warm-up, so short runs are not dominated by the init
        (`layers.ema_update`)."""
        if self.generator_ema is not None:
            ema_update(self.generator_ema, self.generator, self.ema_steps, self.config.ema_decay)

    # --- sampling ----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               labels: Tensor | int | None = None, use_ema: bool | None = None,
               batch_size: int = 500) -> Tensor:
        """`n` images `(N, C, H, W)` in [0, 1]. `labels`: a class index or a tensor of `n` indices
        (conditional models; random classes when omitted)."""
        net = self.generator
        if (self.config.sample_ema if use_ema is None else use_ema) and self.generator_ema:
            net = self.generator_ema
        device = self.device
        labels = self._sample_labels(n, labels, generator, device)
        was_training = net.training
        net.eval()
        chunks = []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            z = self._noise(m, generator, device)
            y = labels[start:start + m] if labels is not None else None
            chunks.append(net(z, y).float())
        net.train(was_training)
        # contiguous: channels_last networks give NHWC-strided images, which `.view` rejects
        return torch.cat(chunks).add_(1.0).mul_(0.5).clamp_(0.0, 1.0).contiguous()

    @torch.no_grad()
    def sample_many(self, calls: Sequence[SampleCall]) -> list[Tensor]:
        """`sample` for several calls at once (the server's micro-batches): each call's labels and
        noise come from its own generator, drawn exactly as `sample` draws them, and the
        generator runs over all calls' rows together in passes of `sample_pass_rows`."""
        device = self.device

        def draw(call: SampleCall) -> tuple[nn.Module, Tensor, Tensor | None]:
            options = dict(call.options)
            use_ema, chunk = options.pop("use_ema", None), options.pop("batch_size", 500)
            y = self._sample_labels(call.n, options.pop("labels", None), call.generator, device)
            if options:
                raise TypeError(f"sample() got unexpected keyword arguments {sorted(options)}")
            ema = self.config.sample_ema if use_ema is None else use_ema
            net = self.generator_ema if ema and self.generator_ema else self.generator
            z = torch.cat([self._noise(min(chunk, call.n - start), call.generator, device)
                           for start in range(0, call.n, chunk)])
            return net, z, y

        # contiguous: channels_last networks give NHWC-strided images, which `.view` rejects
        return [x.add_(1.0).mul_(0.5).clamp_(0.0, 1.0).contiguous()
                for x in generator_calls(calls, draw, self.sample_pass_rows)]

    @torch.no_grad()
    def discriminator_score(self, images: Tensor, labels: Tensor | None = None,
                            batch_size: int = 500) -> Tensor:
        """The discriminator's logit for each uint8 image `(N,)`, higher = judged more real; in
        eval mode (batch norm uses its running statistics), fp32."""
        if self.config.num_classes and labels is None:
            raise UserError("a conditional discriminator scores (image, label) pairs: pass labels")
        net = self.discriminator
        was_training = net.training
        net.eval()
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = unit_to_signed(images_to_unit(images[start:start + batch_size].to(self.device)))
            y = labels[start:start + batch_size].to(self.device) if labels is not None else None
            out.append(net(x, y).float().cpu())
        net.train(was_training)
        return torch.cat(out)

    def _sample_labels(self, n: int, labels: Tensor | int | None,
                       generator: torch.Generator | None, device: torch.device) -> Tensor | None:
        return class_labels(n, labels, self.config.num_classes, generator, device)


# --- the MLP GAN -----------------------------------------------------------------------------------

@dataclass
class MLPGANConfig(GANConfig):
    nz: int = 64
    hidden: int = 256  # width of the first generator layer (doubled per layer) and last D layer

    widths = ("nz", "hidden")


class MLPGenerator(nn.Module):
    def __init__(self, config: MLPGANConfig) -> None:
        super().__init__()
        h, k = config.hidden, config.num_classes
        self.shape = (config.channels, config.image_size, config.image_size)
        self.embed = _generator_class_embedding(k, config.nz) if k else None
        in_dim = config.nz * (2 if k else 1)
        self.net = nn.Sequential(
            nn.Linear(in_dim, h), nn.LeakyReLU(0.2),
            nn.Linear(h, 2 * h), nn.BatchNorm1d(2 * h), nn.LeakyReLU(0.2),
            nn.Linear(2 * h, 4 * h), nn.BatchNorm1d(4 * h), nn.LeakyReLU(0.2),
            nn.Linear(4 * h, math.prod(self.shape)), nn.Tanh(),
        )

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)  # embedding conditioning
        return self.net(z).view(-1, *self.shape)  # (B, C, H, W)


class MLPDiscriminator(nn.Module):
    def __init__(self, config: MLPGANConfig) -> None:
        super().__init__()
        h = config.hidden
        in_dim = config.channels * config.image_size ** 2
        layer_norm = config.discriminator_norm == "layer"
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_dim, 2 * h), nn.LeakyReLU(0.2),
            nn.Linear(2 * h, h), nn.LayerNorm(h) if layer_norm else nn.Identity(),
            nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(h, 1)
        self.embed = None
        if config.num_classes:
            # Projection (Miyato & Koyama 2018): logit = head(h) + <embed(y), h>. The embedding is
            # drawn like the head's weight (nn.Linear's U(-1/sqrt(h), 1/sqrt(h))), so both terms
            # start at the same scale; nn.Embedding's N(0, 1) made the first logits ~45x larger
            self.embed = nn.Embedding(config.num_classes, h)
            nn.init.uniform_(self.embed.weight, -1.0 / math.sqrt(h), 1.0 / math.sqrt(h))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.body(x)  # (B, h)
        logits = self.head(h).squeeze(1)
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h).sum(1)  # projection
        return logits


class MLPGAN(GAN):
    name = "gan"
    description = "the documents' MLP GAN, fixed: logits, non-saturating loss, [-1, 1] data"
    config_class = MLPGANConfig
    default_preset = "gan"
    tiny_config = {"nz": 8, "hidden": 16}

    def build_networks(self, config: MLPGANConfig) -> tuple[nn.Module, nn.Module]:
        return MLPGenerator(config), MLPDiscriminator(config)


# --- DCGAN -----------------------------------------------------------------------------------------

@dataclass
class DCGANConfig(GANConfig):
    ngf: int = 64  # generator feature maps at the last layer (doubled per layer towards z)
    ndf: int = 64  # discriminator feature maps at the first layer

    widths = ("nz", "ngf", "ndf")


def dcgan_layout(size: int) -> tuple[int, int]:
    """`(base, n_up)` with `size = base * 2**n_up`, base in 3..7: 28 -> (7, 2), 64 -> (4, 4)."""
    n_up = 0
    while size % 2 == 0 and size // 2 >= 3 and size > 7:
        size //= 2
        n_up += 1
    if not 3 <= size <= 7 or n_up < 1:
        raise UserError(f"dcgan needs an image side of base * 2^k with base 3..7 (e.g. 28, 32, 64), "
                        f"got {size * 2 ** n_up}")
    return size, n_up


def _init_dcgan(module: nn.Module) -> None:
    """N(0, 0.02) conv weights and N(1, 0.02) batch-norm scales, as in the DCGAN paper."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class LatentConvTranspose2d(nn.ConvTranspose2d):
    """The generator's first layer. On its 1x1 input a transposed conv is one matrix product, which
    oneDNN runs 3-10x faster than its deconvolution kernel (benchmarks/README.md). Same weights."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (1, 1) or self.bias is not None or self.padding != (0, 0):
            return super().forward(x)
        w = self.weight.permute(0, 2, 3, 1)  # (in, kH, kW, out): a view of channels_last weights
        out = x.flatten(1) @ w.reshape(w.shape[0], -1)  # (B, kH*kW*out)
        return out.view(-1, *w.shape[1:]).permute(0, 3, 1, 2)  # (B, out, kH, kW), NHWC in memory


class FullKernelConv2d(nn.Conv2d):
    """The discriminator's head: a conv whose kernel covers its whole input, i.e. one matrix product
    (faster on CPU than the conv kernel, as above). Same weights."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != self.kernel_size or self.bias is not None or self.padding != (0, 0):
            return super().forward(x)
        w = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)  # (out, kH*kW*in)
        out = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) @ w.t()  # (B, out)
        return out[:, :, None, None]  # (B, out, 1, 1)


class DCGenerator(nn.Module):
    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        base, n_up = dcgan_layout(config.image_size)
        k = config.num_classes
        self.embed = _generator_class_embedding(k, config.nz) if k else None
        ch = config.ngf * 2 ** (n_up - 1)
        layers: list[nn.Module] = [
            LatentConvTranspose2d(config.nz * (2 if k else 1), ch, base, 1, 0, bias=False),
            nn.BatchNorm2d(ch), nn.ReLU(True),
        ]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, config.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(_init_dcgan)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z[:, :, None, None])  # (B, nz, 1, 1) -> (B, C, H, W)


class DCDiscriminator(nn.Module):
    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        base, n_up = dcgan_layout(config.image_size)
        norm = config.discriminator_norm
        ch = config.ndf
        layers: list[nn.Module] = [nn.Conv2d(config.channels, ch, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, True)]
        for _ in range(n_up - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), _norm_2d(norm, ch * 2),
                       nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.body = nn.Sequential(*layers)
        self.head = FullKernelConv2d(ch, 1, base, 1, 0, bias=False)
        self.embed = nn.Embedding(config.num_classes, ch) if config.num_classes else None
        self.apply(_init_dcgan)
        if self.embed is not None:
            # Projection on globally sum-pooled features (Miyato & Koyama 2018; StudioGAN and
            # BigGAN pool the same way). <e_y, sum_p h_p> is a head whose weight is e_y at every
            # one of the P = base^2 positions: with std 0.02 / sqrt(P) against the head's 0.02 per
            # position it is at most the head's scale (Cauchy-Schwarz), so the first logits are of
            # the same order with and without labels. nn.Embedding's N(0, 1) made them ~150x
            # larger, and Adam at lr 2e-4 needs thousands of steps to undo that (issue 21).
            nn.init.normal_(self.embed.weight, 0.0, 0.02 / base)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.body(x)  # (B, ch, base, base)
        logits = self.head(h).flatten()
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h.sum((2, 3))).sum(1)  # projection
        return logits


class DCGAN(GAN):
    name = "dcgan"
    description = "DCGAN at the data's native size (28, 32, ...); preset dcgan64 is the classic 64x64"
    config_class = DCGANConfig
    default_preset = "dcgan"
    tiny_config = {"ngf": 8, "ndf": 8, "nz": 16}

    def build_networks(self, config: DCGANConfig) -> tuple[nn.Module, nn.Module]:
        # channels_last (NHWC) weights make the convolutions run NHWC, oneDNN's and cuDNN's native
        # layout for bf16: on an AVX-512 CPU a bf16 train step ran 1.13x faster at 64x64 and 1.27x
        # at 28x28 than with NCHW, fp32 1.06x at 64x64 (benchmarks/README.md)
        return (DCGenerator(config).to(memory_format=torch.channels_last),
                DCDiscriminator(config).to(memory_format=torch.channels_last))
