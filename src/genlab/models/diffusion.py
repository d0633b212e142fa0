"""Diffusion and flow matching (`diffusion`): a small U-Net denoiser, optionally class-conditional
with classifier-free guidance, trained for one of three objectives (`model.objective`):

- `eps`: noise prediction (DDPM), `v`: v-prediction, both on a linear or cosine schedule;
- `flow`: flow matching / rectified flow, the velocity of the straight path noise -> data,
  with uniform or logit-normal training times.

This file holds the weights (the U-Net) and the family; the weightless schedules, targets and
samplers are in `diffusion_schedules.py`, and the loop is the shared Trainer. Sampling uses the
EMA of the weights. See docs/diffusion.md for the formulas and the presets. An eps or v model is
a `DiscreteDiffusion`, which declares `Likelihood`: the variational bound in bits/dim (Ho et al.
eq. 5); a flow model declares none.

U-Net after Ho et al. 2020 (https://arxiv.org/abs/2006.11239) and Nichol & Dhariwal 2021: residual
blocks with group norm and a time embedding, self-attention at the lowest resolution.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.config import (
    TrainConfig,
    check_at_least,
    check_at_most,
    check_finite_fields,
    check_image_fields,
)
from genlab.errors import UserError
from genlab.limits import MAX_CHANNELS, MAX_CLASSES, MAX_IMAGE_SIDE, MAX_WIDTH
from genlab.models.base import (
    GenerativeModel,
    Likelihood,
    class_labels,
    image_config_for_data,
    images_to_unit,
    unit_to_signed,
)
from genlab.models.diffusion_schedules import (
    DIFFUSION_OBJECTIVES,
    SAMPLERS,
    NoiseSchedule,
    decoder_nll,
    default_sampler,
    diffusion_kl,
    flow_sample,
    flow_times,
    guide,
    prior_kl,
    q_sample,
    run_sampler,
    to_x0_eps,
    training_target,
)
from genlab.models.layers import ema_update

MAX_TIMESTEPS = 100_000
# Images per network call when sampling. On a CPU, chunks of 250 spend a third of their time in
# the kernel: each step's activations (25 MB and more) are fresh mmap'd pages, faulted in and
# zeroed again. Chunks of 32 stay in reused heap memory and cache: 8.8 and 7.5 against 11.3 ms
# of CPU per image per call in two runs (docs/diffusion.md, "Chunks of 32 images on a CPU").
SAMPLE_CHUNK = {"cpu": 32}
SAMPLE_CHUNK_DEFAULT = 250


@dataclass
class DiffusionConfig:
    channels: int = 0  # from the data (0 = fill in from the dataset)
    image_size: int = 0  # square side; 0 = the data's native size
    num_classes: int = 0  # > 0: class-conditional (`--conditional`), with a "no label" class
    objective: Literal["eps", "v", "flow"] = "v"
    schedule: Literal["linear", "cosine"] = "cosine"  # eps / v only
    timesteps: int = 1000  # T of the discrete process (eps / v)
    time_sampling: Literal["uniform", "logit-normal"] = "uniform"  # flow only
    width: int = 64  # channels at full resolution
    channel_mults: str = "1,2,2"  # one multiplier of `width` per resolution (28 -> 14 -> 7)
    res_blocks: int = 2  # residual blocks per resolution
    attention: bool = True  # self-attention at the lowest resolution
    heads: int = 4
    dropout: float = 0.1
    label_dropout: float = 0.1  # share of training labels replaced by "no label" (guidance)
    ema_decay: float = 0.9995  # EMA of the weights, used for sampling; 0 = off
    sample_ema: bool = True

    @property
    def mults(self) -> list[int]:
        try:
            mults = [int(m) for m in self.channel_mults.split(",")]
        except ValueError:
            mults = []
        if not mults or min(mults) < 1:
            raise UserError(f"model.channel_mults must be integers >= 1 separated by commas "
                            f"(e.g. 1,2,2), got {self.channel_mults!r}")
        return mults

    def validate(self, *, partial: bool = False) -> None:
        check_finite_fields(self, "model")
        check_image_fields(self, "model", partial=partial)
        check_at_least(self, "model", ("num_classes",), 0)
        check_at_least(self, "model", ("timesteps", "width", "heads", "res_blocks"))
        mults = self.mults
        if len(mults) > 8:
            raise UserError("model.channel_mults may name at most 8 resolutions")
        if self.image_size and self.image_size % 2 ** (len(mults) - 1):
            raise UserError(f"model.image_size {self.image_size} must be divisible by "
                            f"2^{len(mults) - 1} for {len(mults)} resolutions "
                            f"(model.channel_mults={self.channel_mults})")
        low = self.width * mults[-1]
        if self.attention and low % self.heads:
            raise UserError(f"model.heads ({self.heads}) must divide the lowest resolution's "
                            f"channels ({low})")
        for name in ("dropout", "label_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"model.ema_decay must be in [0, 1), got {self.ema_decay}")
        check_at_most(self, "model", {
            "channels": MAX_CHANNELS, "image_size": MAX_IMAGE_SIDE, "num_classes": MAX_CLASSES,
            "timesteps": MAX_TIMESTEPS, "width": MAX_WIDTH // max(mults), "heads": 1024,
            "res_blocks": 64})


# --- the network ----------------------------------------------------------------------------------

def _groups(channels: int) -> int:
    return math.gcd(32, channels)  # group norm with up to 32 groups that divide the channels


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features (Vaswani et al. 2017) of times in [0, 1], scaled by 1000 so the
    frequencies cover the range they were designed for (integer steps of T = 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return F.pad(emb, (0, dim % 2))  # (B, dim)


class ResBlock(nn.Module):
    """GN-SiLU-conv, GN with a scale and shift from the time (and class) embedding, SiLU-dropout-
    conv, with a skip. The embedding acts after the norm (ADM's scale-shift norm, Dhariwal &
    Nichol 2021, https://arxiv.org/abs/2105.05233): a per-channel bias added before a group norm
    with one channel per group (small widths) is normalised away, and the net would not see t."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # (B, heads, HW, c/heads) each
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                             v.transpose(-1, -2))
        return x + self.out(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """`forward(x (B, C, H, W), t (B,) in [0, 1], labels (B,) or None) -> (B, C, H, W)`.
    Labels index `num_classes + 1` embeddings; the last is "no label" (classifier-free guidance)."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        width, mults, emb_dim = config.width, config.mults, 4 * config.width
        self.num_classes = config.num_classes
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.class_embed = (nn.Embedding(config.num_classes + 1, emb_dim)
                            if config.num_classes else None)
        self.stem = nn.Conv2d(config.channels, width, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [width], width
        for level, mult in enumerate(mults):
            for _ in range(config.res_blocks):
                self.down.append(ResBlock(ch, width * mult, emb_dim, config.dropout))
                ch = width * mult
                skips.append(ch)
            if level < len(mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, emb_dim, config.dropout)
        self.mid_attn = SelfAttention(ch, config.heads) if config.attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim, config.dropout)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for _ in range(config.res_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), width * mult, emb_dim, config.dropout))
                ch = width * mult
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.head = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(),
                                  nn.Conv2d(ch, config.channels, 3, padding=1))
        self.width = width

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.time_mlp(time_embedding(t, self.width))  # (B, 4 * width)
        if self.class_embed is not None:
            if labels is None:  # unconditional call of a conditional net: the "no label" class
                labels = torch.full((x.shape[0],), self.num_classes, device=x.device)
            emb = emb + self.class_embed(labels)
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.head(h)


# --- the family ---------------------------------------------------------------------------------

class Diffusion(GenerativeModel):
    name = "diffusion"
    description = ("U-Net diffusion / flow matching (eps, v or flow objective), DDIM/DDPM/Euler/"
                   "Heun samplers, classifier-free guidance")
    config_class = DiffusionConfig
    default_preset = "diffusion"
    supports_conditional = True
    # 8x8 (the data is resized once at load): 50 sampling steps stay cheap in the battery
    tiny_config = {"width": 8, "channel_mults": "1,2", "res_blocks": 1, "heads": 2,
                   "timesteps": 50, "image_size": 8}
    # sampler None: DDIM for eps / v, Euler for flow; guidance None: no guidance (one pass);
    # eta: DDIM's noise (0 deterministic, 1 ancestral)
    sample_options = {"sampler": None, "sample_steps": 50, "guidance": None, "eta": 0.0}

    def __new__(cls, config: DiffusionConfig | None = None, *args: Any, **kwargs: Any
                ) -> Diffusion:
        """`Diffusion(config)` of a discrete-time objective (eps, v) is a `DiscreteDiffusion`,
        which declares the `Likelihood` capability (its variational bound); a flow model stays a
        plain `Diffusion` and declares none. (Without a config, as copy and pickle call it: the
        class asked for.)"""
        if cls is Diffusion and config is not None \
                and getattr(config, "objective", None) in DIFFUSION_OBJECTIVES:
            cls = DiscreteDiffusion
        return super().__new__(cls)

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__(config)
        config.validate()
        self.net = UNet(config)
        self.net_ema: nn.Module | None = None
        if config.ema_decay > 0:
            self.net_ema = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        self.schedule = (None if config.objective == "flow"
                         else NoiseSchedule.named(config.schedule, config.timesteps))

    @classmethod
    def config_for_data(cls, config: Any, data: Any, *, conditional: bool) -> Any:
        return image_config_for_data(cls.name, config, data, conditional=conditional)

    @classmethod
    def validate_train_config(cls, config: Any, train: TrainConfig) -> None:
        config.validate(partial=True)

    # --- training ------------------------------------------------------------------------------

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Mean squared error of the network's prediction against the objective's target, at a
        random time per image; conditional: each label dropped with `label_dropout`."""
        x0 = unit_to_signed(images_to_unit(batch["images"]))
        b, device = x0.shape[0], x0.device
        noise = torch.randn_like(x0)
        labels = None
        if self.config.num_classes:
            labels = batch["labels"].to(device)
            drop = torch.rand(b, device=device) < self.config.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.config.num_classes), labels)
        if self.schedule is None:
            t = flow_times(b, self.config.time_sampling, device=device)
            x_t, net_t = flow_sample(x0, t, noise), t
            target = training_target("flow", x0, noise)
        else:
            t = torch.randint(0, self.schedule.timesteps, (b,), device=device)
            alpha_bar = self.schedule.alpha_bar_at(t, x0)
            x_t = q_sample(self.schedule, x0, t, noise)
            target = training_target(self.config.objective, x0, noise, alpha_bar)
            net_t = t.float() / self.schedule.timesteps
        prediction = self.net(x_t, net_t, labels)
        return {"loss": F.mse_loss(prediction.float(), target)}

    def train_step(self, batch: dict[str, Tensor], optimizers: dict[str, torch.optim.Optimizer],
                   *, grad_accum: int = 1, grad_clip: float = 0.0) -> dict[str, Tensor]:
        out = super().train_step(batch, optimizers, grad_accum=grad_accum, grad_clip=grad_clip)
        if self.net_ema is not None:
            ema_update(self.net_ema, self.net, self.ema_steps, self.config.ema_decay)
        return out

    # --- sampling ------------------------------------------------------------------------------

    def sampling_net(self, use_ema: bool | None = None) -> nn.Module:
        """The network `sample` uses: the EMA copy when `use_ema` (default `config.sample_ema`)
        and there is one, else the trained weights."""
        ema = self.config.sample_ema if use_ema is None else use_ema
        return self.net_ema if ema and self.net_ema is not None else self.net

    def _predictor(self, net: nn.Module, labels: Tensor | None,
                   guidance: float | None) -> Any:
        def predict(x: Tensor, t: Tensor) -> Tensor:
            with self.autocast():
                cond = net(x, t, labels).float()
                if guidance is None:
                    return cond
                # a separate pass of the same size, so the conditional output is the same bits
                # as without guidance (w = 0 then returns it exactly)
                uncond = net(x, t, None).float()
            return guide(cond, uncond, guidance)
        return predict

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               labels: Tensor | int | None = None, sampler: str | None = None,
               sample_steps: int = 50, guidance: float | None = None, eta: float = 0.0,
               use_ema: bool | None = None, batch_size: int | None = None) -> Tensor:
        """`n` images `(N, C, H, W)` in [0, 1]. `sampler`: ddim (default) or ddpm for eps / v,
        euler (default) or heun for flow; `guidance` w: classifier-free guidance
        (1 + w) cond - w uncond of a conditional model (None or 0: none)."""
        objective = self.config.objective
        sampler = default_sampler(objective) if sampler is None else sampler
        if sampler not in SAMPLERS[objective]:
            raise UserError(f"sampler {sampler!r} does not fit a model trained with objective "
                            f"{objective!r}; allowed: {', '.join(SAMPLERS[objective])}")
        if guidance is not None:
            if not self.config.num_classes:
                raise UserError("guidance needs a conditional model (train with --conditional)")
            if isinstance(guidance, bool) or not isinstance(guidance, int | float) \
                    or not 0 <= guidance <= 100:
                raise UserError(f"guidance must be a number in 0..100, got {guidance!r}")
            guidance = float(guidance)
        net = self.sampling_net(use_ema)
        device = self.device
        batch_size = batch_size or SAMPLE_CHUNK.get(device.type, SAMPLE_CHUNK_DEFAULT)
        labels = class_labels(n, labels, self.config.num_classes, generator, device)
        shape = (self.config.channels, self.config.image_size, self.config.image_size)
        was_training = net.training
        net.eval()
        chunks = []
        try:
            for start in range(0, n, batch_size):
                m = min(batch_size, n - start)
                y = labels[start:start + m] if labels is not None else None
                noise = torch.randn((m, *shape), device=device, generator=generator)
                chunks.append(run_sampler(sampler, self._predictor(net, y, guidance), objective,
                                          self.schedule, noise, sample_steps, eta=eta,
                                          generator=generator))
        finally:
            net.train(was_training)
        return torch.cat(chunks).add_(1.0).mul_(0.5).clamp_(0.0, 1.0).contiguous()


class DiscreteDiffusion(Diffusion, Likelihood):
    """A diffusion model of a discrete-time objective (eps, v): the family of `Diffusion`, plus
    the variational bound on the log-likelihood of 8-bit images (the `Likelihood` capability).
    `Diffusion(config)` returns one for those objectives; never build it directly.

    The bound is Ho et al. 2020's eq. 5 for the model that `sample(sampler="ddpm",
    sample_steps=T)` draws from: p(x_{t-1} | x_t) the Gaussian posterior at the network's x0
    (clipped to [-1, 1]) with the fixed variance beta_tilde_t (the posterior variance, Ho et al.'s
    sigma_t^2 = beta_tilde_t), and the discretized Gaussian decoder for the last step (its
    variance beta_tilde at step 1, as in their code). On data x0 = 2 k / 255 - 1 of 8-bit pixels
    k, in nats per image:

        L = L_T + sum_{t=2..T} L_{t-1} + L_0,

    L_T in closed form, L_0 from one noisy x_1 per image, and the sum over t estimated without
    bias: `t_draws` steps t ~ U{2..T} per image (each with its own noise), (T - 1) L_{t-1} averaged.
    Bits/dim divides by D ln 2 and adds nothing: the decoder gives the probability of the 8-bit
    pixels. The network used is the one sampling uses (`sampling_net`, the EMA by default).
    Every draw comes from `generator`. Cost: t_draws + 1 network passes per image, in fp32."""

    likelihood_name = "ddpm-vlb"

    @torch.no_grad()
    def bound_terms(self, images: Tensor, *, labels: Tensor | None = None, t_draws: int = 4,
                    generator: torch.Generator | None = None,
                    use_ema: bool | None = None) -> dict[str, Tensor]:
        """The terms of the bound of uint8 images `(B, C, H, W)`, float64 nats on the CPU:
        `prior` (B,) = L_T, `decoder` (B,) = L_0, `steps` (B, t_draws) the sampled steps (1..T-1
        in diffusion_schedules' indexing: the paper's t = 2..T) and `kl` (B, t_draws) = L_{t-1}
        at those steps, before the weight T - 1. One network pass of (t_draws + 1) B rows;
        a conditional model without labels is scored unconditionally (its "no label" class)."""
        self._check_images(images)
        if isinstance(t_draws, bool) or not isinstance(t_draws, int) or t_draws < 1:
            raise UserError(f"t_draws must be an integer >= 1, got {t_draws!r}")
        schedule, device = self.schedule, self.device
        steps_total = schedule.timesteps
        x0 = unit_to_signed(images_to_unit(images.to(device)))
        b = x0.shape[0]
        # t ~ U{1..T-1} (the paper's 2..T); with T = 1 there is no such step: a dummy 0, weight 0
        low = 1 if steps_total > 1 else 0
        steps = torch.randint(low, max(steps_total, 1 + low), (b, t_draws), device=device,
                              generator=generator)
        t = torch.cat([steps.t().reshape(-1), torch.zeros(b, dtype=torch.long, device=device)])
        x0_rep = x0.repeat(t_draws + 1, *([1] * (x0.dim() - 1)))  # draw-major, then step 0
        noise = torch.randn(x0_rep.shape, device=device, generator=generator)
        x_t = q_sample(schedule, x0_rep, t, noise)
        y = labels.to(device).repeat(t_draws + 1) if labels is not None else None
        net = self.sampling_net(use_ema)
        was_training = net.training
        net.eval()
        try:
            prediction = net(x_t, t.float() / steps_total, y).float()
        finally:
            net.train(was_training)
        x0_hat, _ = to_x0_eps(self.config.objective, prediction, x_t,
                              schedule.alpha_bar_at(t, x_t))
        x0_hat = x0_hat.clamp(-1, 1)
        decoder = decoder_nll(schedule, x0, x0_hat[t_draws * b:])
        if steps_total > 1:
            kl = diffusion_kl(schedule, x0_rep[:t_draws * b], x0_hat[:t_draws * b],
                              t[:t_draws * b])
        else:
            kl = torch.zeros(t_draws * b, dtype=torch.float64, device=device)
        return {"prior": prior_kl(schedule, x0).cpu(), "decoder": decoder.cpu(),
                "steps": steps.cpu(), "kl": kl.view(t_draws, b).t().cpu()}

    def _bound(self, terms: dict[str, Tensor]) -> Tensor:
        """The per-image estimate of L (nats) from `bound_terms`."""
        return terms["prior"] + terms["decoder"] \
            + (self.schedule.timesteps - 1) * terms["kl"].mean(1)

    @torch.no_grad()
    def example_nll(self, images: Tensor, *, labels: Tensor | None = None,
                    generator: torch.Generator | None = None, t_draws: int = 4,
                    batch_size: int = 500) -> Tensor:
        """The bound's estimate for each uint8 image in nats, `(N,)` float64 (see the class);
        `batch_size` rows per network pass."""
        self._check_images(images)
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        per_pass = max(1, batch_size // (t_draws + 1))
        out = []
        for start in range(0, images.shape[0], per_pass):
            y = labels[start:start + per_pass] if labels is not None else None
            out.append(self._bound(self.bound_terms(images[start:start + per_pass], labels=y,
                                                    t_draws=t_draws, generator=generator)))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    @torch.no_grad()
    def likelihood_report(self, images: Tensor, *, labels: Tensor | None = None,
                          iwae_k: int = 100, generator: torch.Generator | None = None,
                          batch_size: int = 500, t_draws: int = 4) -> dict[str, Any]:
        """The negative variational bound of uint8 images `(N, C, H, W)` averaged over them, in
        nats per image (`neg_elbo_nats`) and bits/dim (`neg_elbo_bpd`), each with its standard
        error (`*_stderr`: the spread of the per-image estimates over sqrt(N), which covers the
        random t and noise as well as the choice of images; None for one image). There is no
        importance-weighted bound here: `iwae_k` is ignored and the `iwae_*` keys are None."""
        n = images.shape[0]
        if n == 0:
            raise UserError("likelihood_report needs at least one image")
        per_image = self.example_nll(images, labels=labels, generator=generator,
                                     t_draws=t_draws, batch_size=batch_size)
        dims = math.prod(images.shape[1:]) * math.log(2)
        mean = per_image.mean().item()
        stderr = (per_image.std().item() / math.sqrt(n)) if n > 1 else None
        return {"neg_elbo_nats": mean, "neg_elbo_bpd": mean / dims,
                "neg_elbo_nats_stderr": stderr,
                "neg_elbo_bpd_stderr": stderr / dims if stderr is not None else None,
                "iwae_nll_nats": None, "iwae_nll_bpd": None, "iwae_k": None,
                "t_draws": t_draws, "n_test": n, "likelihood": self.likelihood_name}
