"""WaveGAN (`wavegan`): a 1-D DCGAN that makes raw waveforms, unconditional or class-conditional.

Donahue, McAuley and Puckette 2019, "Adversarial Audio Synthesis" (https://arxiv.org/abs/1802.04208):
latent -> dense -> five transposed 1-D convolutions of kernel 25 and stride 4 -> tanh, and a
discriminator of five strided 1-D convolutions with LeakyReLU and *phase shuffle* between them.
The generator makes `base * 4**5` samples (8,192 for fsdd's 8,001-sample clips) and the middle
`length` of them are kept; the discriminator pads its input back to the internal length.

The adversarial update is that of the image GANs (`genlab.models.gan`), with the losses of
`gan_losses.py` by name (`model.loss=ns|hinge|wgan-gp`) and an EMA of the generator. A batch and
a sample are waveforms `(N, 1, length)` in [-1, 1], fed by the `waveform` modality
(`genlab.modalities.waveform`). See docs/audio.md.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.config import TrainConfig, check_at_least, check_at_most, check_finite_fields
from genlab.errors import UserError
from genlab.limits import MAX_CLASSES, MAX_LOSS_WEIGHT, MAX_WIDTH
from genlab.models.base import (
    GenerativeModel,
    SampleCall,
    class_labels,
    generator_calls,
)
from genlab.models.gan import (
    _generator_class_embedding,
    check_adversarial_train,
    optimizer_pair,
)
from genlab.models.gan_losses import LOSSES, gradient_penalty
from genlab.models.layers import ema_update

N_UP = 5  # transposed convolutions of stride 4 (the paper's five)
KERNEL, STRIDE = 25, 4
MAX_LENGTH = 1 << 20  # samples per clip (131 s at 8 kHz)


@dataclass
class WaveGANConfig:
    length: int = 0  # samples per clip; 0 = the data's clip length (8,001 for fsdd)
    num_classes: int = 0  # > 0 makes the model class-conditional (`--conditional`)
    nz: int = 100  # latent dimension
    d: int = 16  # width: channels of the generator's last hidden layer (x2 per layer inward);
    # the paper's 64 is ~16x the compute of 16 and too slow for a CPU
    phase_shuffle: int = 2  # the discriminator shifts each layer's output by -n..n samples
    g_norm: Literal["batch", "none"] = "batch"  # the generator's norm (the paper used none)
    loss: Literal["ns", "hinge", "wgan-gp"] = "ns"
    gp_weight: float = 10.0  # lambda of the WGAN-GP penalty
    d_steps: int = 1  # discriminator steps per generator step (the paper's WGAN-GP used 5)
    d_norm: Literal["auto", "batch", "layer", "none"] = "auto"  # auto: batch, or none for wgan-gp
    ema_decay: float = 0.999  # EMA of generator weights, used for sampling; 0 = off
    sample_ema: bool = True  # sample from the EMA generator

    def validate(self, *, partial: bool = False) -> None:
        """Every rule; `partial`: only those that need no data (`length` is still 0 then)."""
        check_finite_fields(self, "model")
        if self.length < 0 or (not partial and self.length == 0):
            raise UserError(f"model.length must be > 0 samples (0 = from the data), got "
                            f"{self.length}")
        check_at_least(self, "model", ("nz", "d", "d_steps"))
        check_at_least(self, "model", ("phase_shuffle", "gp_weight"), 0)
        if self.loss == "wgan-gp" and self.d_norm == "batch":
            raise UserError("model.d_norm=batch cannot be used with model.loss=wgan-gp: the "
                            "gradient penalty is per example; use d_norm=layer or none")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"model.ema_decay must be in [0, 1), got {self.ema_decay}")
        # the widest layer has 16 d channels
        check_at_most(self, "model", {"length": MAX_LENGTH, "num_classes": MAX_CLASSES,
                                      "nz": MAX_WIDTH, "d": MAX_WIDTH // 16, "phase_shuffle": 64,
                                      "d_steps": 100, "gp_weight": MAX_LOSS_WEIGHT})

    @property
    def discriminator_norm(self) -> str:
        if self.d_norm == "auto":  # the paper's critic had none; ns trains faster with batch
            return "none" if self.loss == "wgan-gp" else "batch"
        return self.d_norm

    @property
    def base(self) -> int:
        """The dense layer's length: `base * 4**5` is the first length >= `length`."""
        return max(1, math.ceil(self.length / STRIDE ** N_UP))

    @property
    def internal_length(self) -> int:
        return self.base * STRIDE ** N_UP


def _centre(x: Tensor, length: int) -> Tensor:
    """The middle `length` samples of `(B, C, L)`, or zero-padded around it to `length`; the
    odd sample goes to the end, as `genlab.audio.fix_length` cuts real clips."""
    extra = x.shape[-1] - length
    if extra >= 0:
        return x[..., extra // 2:extra // 2 + length]
    return F.pad(x, (-extra // 2, -extra - (-extra // 2)))


def _norm_1d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # over (C, L), per example
    return nn.Identity()


def _init(module: nn.Module) -> None:
    """N(0, 0.02) weights, as DCGAN (the paper's TF code used Glorot; this trained faster here)."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class PhaseShuffle(nn.Module):
    """Shift each example's feature map by a random `k` in [-n, n] samples, filling the edge by
    reflection (WaveGAN, section 3.3): the discriminator cannot tell real from fake by the
    phase of the generator's periodic upsampling artifacts. Only in training mode; the shifts
    come from `generator`, or the global torch RNG, which the trainer seeds and the checkpoint
    saves, so a resumed run draws the same shifts."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.training or self.n == 0:
            return x
        b, c, length = x.shape
        k = torch.randint(-self.n, self.n + 1, (b,), device=x.device, generator=generator)
        padded = F.pad(x, (self.n, self.n), mode="reflect")
        # output sample t of example i is padded sample t + n - k_i: shifted right by k_i
        index = torch.arange(length, device=x.device)[None] + (self.n - k)[:, None]  # (B, L)
        return padded.gather(2, index[:, None].expand(b, c, length))


class WaveGenerator(nn.Module):
    def __init__(self, config: WaveGANConfig) -> None:
        super().__init__()
        k, ch = config.num_classes, 16 * config.d
        self.length, self.base, self.ch = config.length, config.base, ch
        self.embed = _generator_class_embedding(k, config.nz) if k else None
        self.dense = nn.Linear(config.nz * (2 if k else 1), ch * config.base)
        self.first = nn.Sequential(_norm_1d(config.g_norm, ch), nn.ReLU(True))
        layers: list[nn.Module] = []
        widths = [ch // 2 ** i for i in range(N_UP)] + [1]  # 16d, 8d, 4d, 2d, d, 1
        for i, (cin, cout) in enumerate(itertools.pairwise(widths)):
            # kernel 25, stride 4: padding 11 and output_padding 1 make the length exactly 4x
            layers.append(nn.ConvTranspose1d(cin, cout, KERNEL, STRIDE, padding=11,
                                             output_padding=1))
            if i < N_UP - 1:
                layers += [_norm_1d(config.g_norm, cout), nn.ReLU(True)]
        self.net = nn.Sequential(*layers, nn.Tanh())
        self.apply(_init)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = self.first(self.dense(z).view(-1, self.ch, self.base))
        return _centre(self.net(h), self.length)  # (B, 1, length)


class WaveDiscriminator(nn.Module):
    def __init__(self, config: WaveGANConfig) -> None:
        super().__init__()
        d, norm = config.d, config.discriminator_norm
        self.internal = config.internal_length
        widths = [1] + [d * 2 ** i for i in range(N_UP)]  # 1, d, 2d, 4d, 8d, 16d
        self.convs = nn.ModuleList(nn.Conv1d(cin, cout, KERNEL, STRIDE, padding=11)
                                   for cin, cout in itertools.pairwise(widths))
        # no norm after the first layer, as DCGAN
        self.norms = nn.ModuleList([nn.Identity()] + [_norm_1d(norm, c) for c in widths[2:]])
        self.shuffle = PhaseShuffle(config.phase_shuffle)
        ch = widths[-1]
        self.head = nn.Linear(ch * config.base, 1)
        self.embed = nn.Embedding(config.num_classes, ch) if config.num_classes else None
        self.apply(_init)
        if self.embed is not None:
            # projection on sum-pooled features (Miyato & Koyama 2018) at the head's scale, as
            # the DCGAN discriminator does (gan.py): 0.02 / sqrt(positions)
            nn.init.normal_(self.embed.weight, 0.0, 0.02 / math.sqrt(config.base))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = _centre(x, self.internal)  # zero-padded around the clip, as the generator's is cut
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = F.leaky_relu(norm(conv(h)), 0.2)
            if i < N_UP - 1:  # the paper shuffles after every layer but the last
                h = self.shuffle(h)
        logits = self.head(h.flatten(1)).squeeze(1)
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h.sum(2)).sum(1)  # projection
        return logits


class WaveGAN(GenerativeModel):
    """The adversarial update of the image GANs (`genlab.models.gan.GAN.train_step`: d_steps
    discriminator steps, one generator step, the EMA) on waveforms. Not a `gan.GAN` subclass:
    that class declares the `Discriminator` capability, whose contract (and the audit's
    membership attack, and tests/test_gan.py) is about images."""

    name = "wavegan"
    description = "WaveGAN: a 1-D DCGAN of raw waveforms (fsdd, wav:DIR), no spectrogram"
    config_class = WaveGANConfig
    modality = "waveform"
    default_preset = "wavegan"
    supports_conditional = True
    tiny_config = {"d": 2, "nz": 8}
    progress_keys = ("loss", "d_loss", "g_loss")

    def __init__(self, config: WaveGANConfig) -> None:
        super().__init__(config)
        config.validate()
        self.generator = WaveGenerator(config)
        self.discriminator = WaveDiscriminator(config)
        self.generator_ema: nn.Module | None = None
        if config.ema_decay > 0:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    @classmethod
    def config_for_data(cls, config: Any, data: Any, *, conditional: bool) -> Any:
        """`length` from the data's clips (`(N, 1, L)` waveforms) unless set, and `num_classes`
        from its labels for `--conditional`."""
        waves = data.waves
        if waves.dim() != 3 or waves.shape[1] != 1:
            raise UserError(f"wavegan trains on mono waveforms (N, 1, L), got "
                            f"{tuple(waves.shape)}")
        changes: dict[str, Any] = {"length": config.length or waves.shape[-1]}
        if conditional:
            if not data.num_classes:
                raise UserError(f"--conditional needs labels, and {data.name} has none")
            changes["num_classes"] = data.num_classes
        elif config.num_classes:
            raise UserError(f"model.num_classes comes from the data's labels; pass --conditional "
                            f"instead of --set model.num_classes={config.num_classes}")
        return type(config)(**{**config.__dict__, **changes})

    @classmethod
    def validate_train_config(cls, config: Any, train: TrainConfig) -> None:
        check_adversarial_train(train)
        if train.dp:
            raise UserError("--dp is for the image GANs (genlab.privacy_dp); wavegan does not "
                            "train privately")

    def configure_optimizers(self, train: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        return optimizer_pair(self.generator, self.discriminator, train)

    # --- training ----------------------------------------------------------------------------------

    def _real(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        waves = batch["waves"]
        if tuple(waves.shape[1:]) != (1, self.config.length):
            raise UserError(f"wavegan was built for clips of {self.config.length} samples, got "
                            f"waveforms {tuple(waves.shape)}")
        labels = batch.get("labels") if self.config.num_classes else None
        return waves.float(), labels

    def _noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.config.nz, device=self.device, generator=generator)

    def _d_loss(self, real: Tensor, fake: Tensor, labels: Tensor | None,
                out: dict[str, Tensor]) -> Tensor:
        d_fn, _ = LOSSES[self.config.loss]
        with self.autocast():
            real_logits = self.discriminator(real, labels)
            fake_logits = self.discriminator(fake.detach(), labels)
            d_loss = d_fn(real_logits, fake_logits)
        if self.config.loss == "wgan-gp":
            # in fp32: the double backward of a bf16 critic is noisy
            with torch.autocast(real.device.type, enabled=False):
                gp = gradient_penalty(lambda x: self.discriminator(x, labels), real,
                                      fake.detach().float())
            out["gp"] = gp.detach()
            d_loss = d_loss + self.config.gp_weight * gp
        out["d_real"] = real_logits.detach().float().mean()
        out["d_fake"] = fake_logits.detach().float().mean()
        return d_loss

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Both losses on one batch, without updating anything (the contract's view of a GAN)."""
        _, g_fn = LOSSES[self.config.loss]
        real, labels = self._real(batch)
        fake = self.generator(self._noise(real.shape[0]), labels)
        d_loss = self._d_loss(real, fake, labels, {})
        g_loss = g_fn(self.discriminator(fake, labels))
        return {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}

    def train_step(
        self, batch: dict[str, Tensor], optimizers: dict[str, torch.optim.Optimizer],
        *, grad_accum: int = 1, grad_clip: float = 0.0,
    ) -> dict[str, Tensor]:
        """As `GAN.train_step`: `d_steps` discriminator steps (with one, the G step reuses its
        fakes, as in DCGAN), one generator step, the EMA."""
        _, g_fn = LOSSES[self.config.loss]
        opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
        real, labels = self._real(batch)
        out: dict[str, Tensor] = {}
        for _ in range(self.config.d_steps):
            with self.autocast():
                fake = self.generator(self._noise(real.shape[0]), labels)
            d_loss = self._d_loss(real, fake, labels, out)
            d_loss.backward()
            _clip(self.discriminator, grad_clip)
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
        self.discriminator.requires_grad_(False)  # G's step needs no D weight gradients
        with self.autocast():
            g_loss = g_fn(self.discriminator(fake, labels))
        g_loss.backward()
        self.discriminator.requires_grad_(True)
        _clip(self.generator, grad_clip)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        if self.generator_ema is not None:
            ema_update(self.generator_ema, self.generator, self.ema_steps, self.config.ema_decay)
        out.update(loss=(d_loss + g_loss).detach().float(), d_loss=d_loss.detach().float(),
                   g_loss=g_loss.detach().float())
        return out

    # --- sampling ----------------------------------------------------------------------------------

    def _sampler(self, use_ema: bool | None) -> nn.Module:
        ema = self.config.sample_ema if use_ema is None else use_ema
        return self.generator_ema if ema and self.generator_ema is not None else self.generator

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               labels: Tensor | int | None = None, use_ema: bool | None = None,
               batch_size: int = 500) -> Tensor:
        """`n` waveforms `(N, 1, length)` in [-1, 1]. `labels`: a class index or `n` of them
        (conditional models; random classes when omitted)."""
        (out,) = self.sample_many([SampleCall(n, generator, {
            "labels": labels, "use_ema": use_ema, "batch_size": batch_size})])
        return out

    @torch.no_grad()
    def sample_many(self, calls: Sequence[SampleCall]) -> list[Tensor]:
        """`sample` for several calls at once: each call's labels and noise come from its own
        generator (labels first, then the noise in chunks of `batch_size`, as the image GANs
        draw them), and the network runs over all rows in passes of `sample_pass_rows`, so a
        call's clips do not depend on the calls beside it."""
        def draw(call: SampleCall) -> tuple[nn.Module, Tensor, Tensor | None]:
            options = dict(call.options)
            use_ema, chunk = options.pop("use_ema", None), options.pop("batch_size", 500)
            y = class_labels(call.n, options.pop("labels", None), self.config.num_classes,
                             call.generator, self.device)
            if options:
                raise TypeError(f"sample() got unexpected keyword arguments {sorted(options)}")
            z = torch.cat([self._noise(min(chunk, call.n - start), call.generator)
                           for start in range(0, call.n, chunk)])
            return self._sampler(use_ema), z, y

        return [x.clamp_(-1.0, 1.0) for x in generator_calls(calls, draw, self.sample_pass_rows)]


def _clip(module: nn.Module, max_norm: float) -> None:
    if max_norm > 0:
        nn.utils.clip_grad_norm_(module.parameters(), max_norm)
