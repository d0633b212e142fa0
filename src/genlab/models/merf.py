"""A mean-embedding generator (`merf`): DP-MERF, Harder, Adamczewski & Park, AISTATS 2021
(https://arxiv.org/abs/2002.11603).

The data is read ONCE, before training: every training image x (pixels in [0, 1], flattened to
d values) is mapped to random Fourier features of a Gaussian kernel of bandwidth `bandwidth`,

    phi(x) = sqrt(2 / D) [cos(W^T x), sin(W^T x)],   W = (omega_1 .. omega_{D/2}),
    omega_j ~ N(0, I / bandwidth^2),

so that phi(x) . phi(x') ~ exp(-||x - x'||^2 / (2 bandwidth^2)) and ||phi(x)|| = 1 exactly (each
frequency contributes cos^2 + sin^2 = 1, times 2 / D, D / 2 times). The class-conditional
embedding of the data is M = sum_i phi(x_i) e_{y_i}^T (D x C; C = 1 without --conditional): one
example adds a matrix of Frobenius norm exactly 1, so M has L2 sensitivity 1 under
add/remove-one adjacency and needs no clipping. Under `--dp`, genlab.privacy_dp.PrivateRelease
adds N(0, s^2) to every entry once (one Gaussian mechanism = one full-batch DP-SGD step with
clip norm 1 for the accountant); without `--dp` the exact M is used (s = 0: a generative
moment-matching network with random features). `fit_data` keeps mu = M / n as a buffer (n, the
training-set size, treated as public as the DP-SGD code does when it divides by the expected
batch).

The generator G(z, y) never sees data: each step draws m codes z and labels y uniformly over the
classes (the class proportions are not released: uniform is right for balanced data such as
Fashion-MNIST and spends nothing) and minimises

    || mu - (1/m) sum_j phi(G(z_j, y_j)) e_{y_j}^T ||_F^2,

a function of the release alone: post-processing, free under DP. With uniform labels the
generated column c holds about (1 / C) times the mean feature of class c, as mu's column c does
for balanced data.

The frequencies W are drawn from the run's seed (torch's RNG when the model is built, before any
data is read; they are public) and saved, with mu, as buffers in the checkpoint.

`model.perceptual` adds the features of a fixed conv network next to the pixel kernel's (after
DP-MEPF, Harder, Jiang, Park, Sutherland & Schoelkopf, TMLR 2023, which matches the features of
a network trained on public data): phi(x) = [sqrt(1 - w) phi_rff(x), sqrt(w) psi(x)], where psi
concatenates the L2-normalised output of each of the net's blocks, divided by sqrt(blocks), so
||psi(x)|| <= 1 and ||phi(x)|| <= 1 still: the release, its sensitivity and its accounting are
unchanged. The net is either `random` (seeded from the run's seed, no data at all) or a shipped
feature net trained on data that is public for this run (`mnist`, trained on the MNIST test
split, for Fashion-MNIST); a net trained on the run's own data is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
    FitsData,
    GenerativeModel,
    class_labels,
    image_config_for_data,
    images_to_unit,
    make_optimizer,
)
from genlab.models.gan import dcgan_layout

MAX_FEATURES = 1 << 17  # random features D: W alone holds d x D / 2 floats


@dataclass
class MERFConfig:
    channels: int = 0  # from the data (0 = fill in from the dataset)
    image_size: int = 0  # square side; 0 = the data's native size
    num_classes: int = 0  # > 0 makes the model class-conditional (`--conditional`)
    nz: int = 5  # code dimension (DP-MERF's default for (Fashion-)MNIST)
    hidden: int = 200  # width of the generator's first fully connected layer
    ngf: int = 8  # conv channels at the last upsampling step, doubled per step towards z
    features: int = 10_000  # random Fourier features D (even: D / 2 frequencies, cos and sin)
    # Gaussian kernel bandwidth on [0, 1] pixels. NOT chosen on the training data (a median
    # heuristic there would leak): sqrt(127) = 11.27, the published default of the DP-MERF code
    # for Fashion-MNIST (its `rff_sigma` 127 is the variance, omega ~ N(0, I / 127))
    bandwidth: float = 11.27
    # a fixed network whose block outputs are matched too: "" (none), "random" (an untrained net
    # seeded by the run: no data) or a shipped feature net trained on PUBLIC data ("mnist")
    perceptual: str = ""
    perceptual_weight: float = 0.5  # w: the network's share of each example's unit norm

    def validate(self, *, partial: bool = False) -> None:
        """Every rule; `partial`: only those that need no data."""
        check_finite_fields(self, "model")
        check_image_fields(self, "model", partial=partial)
        check_at_least(self, "model", ("nz", "hidden", "ngf"))
        if self.features < 2 or self.features % 2:
            raise UserError(f"model.features must be an even number >= 2 (D / 2 frequencies, "
                            f"each a cosine and a sine), got {self.features}")
        if self.bandwidth <= 0:
            raise UserError(f"model.bandwidth must be > 0, got {self.bandwidth}")
        if not 0.0 < self.perceptual_weight < 1.0:
            raise UserError(f"model.perceptual_weight must be in (0, 1): the network's share of "
                            f"each example's unit norm, got {self.perceptual_weight}")
        if self.perceptual:
            from genlab.featurenet import shipped_names

            choices = ["random", *shipped_names()]
            if self.perceptual not in choices:
                raise UserError(f"model.perceptual must be one of {', '.join(choices)} (or empty "
                                f"for none), got {self.perceptual!r}")
        check_at_most(self, "model", {
            "channels": MAX_CHANNELS, "image_size": MAX_IMAGE_SIDE, "num_classes": MAX_CLASSES,
            "nz": MAX_WIDTH, "hidden": MAX_WIDTH, "ngf": MAX_WIDTH, "features": MAX_FEATURES,
            "bandwidth": 1e6})


def random_features(x: Tensor, omega: Tensor) -> Tensor:
    """phi(x) `(N, D)` for flattened inputs `x` `(N, d)` and frequencies `omega` `(d, D / 2)`:
    sqrt(2 / D) [cos(x omega), sin(x omega)], of L2 norm exactly 1 per row."""
    proj = x @ omega
    return torch.cat([proj.cos(), proj.sin()], 1) * math.sqrt(1.0 / omega.shape[1])


class PerceptualFeatures(nn.Module):
    """psi(x) for images in [0, 1]: each block's output of a fixed `FeatureNet` body (the three
    conv blocks, then the dense layer), flattened and L2-normalised, concatenated and divided by
    sqrt(blocks): ||psi(x)|| <= 1 (= 1 unless a block's output is all zero). Always in eval mode
    (its batch norms use their stored statistics, so one example's features never depend on the
    others') and never trained."""

    def __init__(self, net: nn.Module, side: int) -> None:
        super().__init__()
        self.body = net.body
        self.body.requires_grad_(False)
        super().train(False)
        self.dim = 0  # length of psi on `side` x `side` images: the blocks', then the dense layer's
        for layer in self.body:
            if isinstance(layer, nn.Conv2d):
                width = layer.out_channels
            elif isinstance(layer, nn.MaxPool2d):
                side //= 2
                self.dim += width * side * side
            elif isinstance(layer, nn.Linear):
                self.dim += layer.out_features

    def train(self, mode: bool = True) -> PerceptualFeatures:
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        parts, h = [], x.contiguous(memory_format=torch.channels_last)
        for layer in self.body:
            h = layer(h)
            if isinstance(layer, nn.MaxPool2d):
                parts.append(F.normalize(h.flatten(1), dim=1))
        parts.append(F.normalize(h, dim=1))  # the dense layer: the net's features
        return torch.cat(parts, 1) * (1.0 / math.sqrt(len(parts)))


def perceptual_net(config: MERFConfig) -> PerceptualFeatures:
    """The fixed network `config.perceptual` names: a shipped one (its SHA-256 checked), or a
    `random` one drawn from torch's RNG now (the run's seed)."""
    from genlab.classifier import FeatureNet, FeatureNetConfig
    from genlab.featurenet import load_feature_net

    if config.perceptual == "random":
        net = FeatureNet(FeatureNetConfig(channels=config.channels,
                                          image_size=config.image_size))
    else:
        net = load_feature_net(config.perceptual)
        c, s = net.config.channels, net.config.image_size
        if (c, s) != (config.channels, config.image_size):
            raise UserError(f"model.perceptual={config.perceptual}: that net takes {c} x {s} x "
                            f"{s} images, the model makes {config.channels} x "
                            f"{config.image_size} x {config.image_size}; use "
                            "model.perceptual=random")
    return PerceptualFeatures(net.float(), config.image_size)


class MERFGenerator(nn.Module):
    """z and a one-hot label -> two fully connected layers -> (ngf 2^(k-1), base, base) ->
    k x (bilinear 2x upsampling, 5x5 conv) -> sigmoid, pixels in [0, 1]. For 28 x 28: 7 x 7 x 16,
    14 x 14 x 8, 28 x 28 x C (the sizes of DP-MERF's conv generator)."""

    def __init__(self, config: MERFConfig) -> None:
        super().__init__()
        base, n_up = dcgan_layout(config.image_size)
        self.num_classes, self.base = config.num_classes, base
        self.ch = config.ngf * 2 ** (n_up - 1)
        self.fc = nn.Sequential(
            nn.Linear(config.nz + config.num_classes, config.hidden),
            nn.BatchNorm1d(config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, self.ch * base * base),
            nn.BatchNorm1d(self.ch * base * base), nn.ReLU())
        convs, ch = [], self.ch
        for i in range(n_up):
            out = config.channels if i == n_up - 1 else ch // 2
            convs.append(nn.Conv2d(ch, out, 5, 1, 2))
            ch = out
        self.convs = nn.ModuleList(convs)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_classes:
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], 1)
        h = self.fc(z).view(-1, self.ch, self.base, self.base)
        for i, conv in enumerate(self.convs):
            h = conv(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True))
            if i < len(self.convs) - 1:
                h = F.relu(h)
        return torch.sigmoid(h)


class MERF(GenerativeModel, FitsData):
    name = "merf"
    description = ("DP-MERF: a generator fitted to one (optionally DP-noised) release of the "
                   "data's random-feature kernel mean embedding")
    config_class = MERFConfig
    default_preset = "merf"
    supports_conditional = True
    tiny_config = {"nz": 4, "hidden": 16, "ngf": 4, "features": 64}
    progress_keys = ("loss",)
    data_sensitivity = 1.0  # ||phi(x) e_y^T||_F = 1 for every example

    def __init__(self, config: MERFConfig) -> None:
        super().__init__(config)
        config.validate()
        self.generator = MERFGenerator(config)
        d = config.channels * config.image_size ** 2
        # the frequencies: from the run's seed (torch's RNG as the model is built), no data
        self.register_buffer("omega", torch.randn(d, config.features // 2) / config.bandwidth)
        # drawn after omega, so a run without it keeps the same frequencies
        self.perceptual = perceptual_net(config) if config.perceptual else None
        # mu = M / n, the released embedding; zeros until `fit_data`
        self.register_buffer("embedding", torch.zeros(self.feature_dim, self.columns))
        self.register_buffer("fitted_n", torch.zeros((), dtype=torch.long))

    @property
    def columns(self) -> int:
        return self.config.num_classes or 1

    @property
    def feature_dim(self) -> int:
        """Rows of the embedding: D random features, plus the network's block outputs."""
        return self.config.features + (self.perceptual.dim if self.perceptual is not None else 0)

    @classmethod
    def config_for_data(cls, config: Any, data: Any, *, conditional: bool) -> Any:
        if config.perceptual and config.perceptual != "random":
            from genlab.featurenet import load_feature_net, overlaps

            seen = load_feature_net(config.perceptual).meta["train_data"]
            # any part of the split (a --set train.per_class subset spans all of it)
            run_data = {"dataset": data.name, "split": data.split, "start": 0, "stop": math.inf}
            if overlaps(run_data, seen):
                raise UserError(f"model.perceptual={config.perceptual}: that net was trained on "
                                f"{data.name}'s training split, the data this run keeps private; "
                                "its features would carry those images outside the guarantee. "
                                "Use a net trained on public data, or model.perceptual=random")
        return image_config_for_data(cls.name, config, data, conditional=conditional)

    @classmethod
    def validate_train_config(cls, config: Any, train: TrainConfig) -> None:
        if train.grad_accum != 1:
            raise UserError("merf draws its own generated batch each step; train.grad_accum "
                            "must be 1")
        if train.batch_size < 2:
            raise UserError("the generator's batch norm needs 2 or more samples per step; use "
                            "--batch-size 2 or more")

    # generated samples per step: train.batch_size, set by `configure_optimizers`
    gen_batch: int = 64

    def configure_optimizers(self, train: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        self.gen_batch = train.batch_size
        return {"generator": make_optimizer(self.generator.parameters(), train)}

    # --- the one pass over the data ---------------------------------------------------------------

    def features(self, x: Tensor) -> Tensor:
        """phi of images in [0, 1] `(N, C, H, W)` -> `(N, feature_dim)`, of norm at most 1."""
        phi = random_features(x.flatten(1).float(), self.omega)
        if self.perceptual is None:
            return phi
        w = self.config.perceptual_weight
        return torch.cat([phi * math.sqrt(1.0 - w),
                          self.perceptual(x.float()) * math.sqrt(w)], 1)

    @torch.no_grad()
    def data_statistic(self, images: Tensor, labels: Tensor | None = None,
                       chunk: int = 2000) -> Tensor:
        """M = sum_i phi(x_i) e_{y_i}^T `(feature_dim, C)`, float64 sums over chunks;
        sensitivity 1."""
        if self.config.num_classes and labels is None:
            raise UserError("a conditional merf needs the data's labels")
        out = torch.zeros(self.feature_dim, self.columns, dtype=torch.float64,
                          device=self.omega.device)
        for start in range(0, images.shape[0], chunk):
            x = images_to_unit(images[start:start + chunk].to(self.omega.device))
            phi = self.features(x).double()
            if self.config.num_classes:
                y = labels[start:start + chunk].to(self.omega.device).long()
                out.index_add_(1, y, phi.t())  # column y_i += phi(x_i)
            else:
                out[:, 0] += phi.sum(0)
        return out

    @torch.no_grad()
    def fit_data(self, statistic: Tensor, n: int) -> None:
        if tuple(statistic.shape) != tuple(self.embedding.shape):
            raise UserError(f"merf: a statistic of shape {tuple(statistic.shape)}, expected "
                            f"{tuple(self.embedding.shape)}")
        self.embedding.copy_((statistic / n).to(self.embedding.dtype))
        self.fitted_n.fill_(n)

    # --- training: the generator against the release only -----------------------------------------

    def _draw(self, m: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        z = torch.randn(m, self.config.nz, device=self.device, generator=generator)
        y = (torch.randint(0, self.config.num_classes, (m,), device=self.device,
                           generator=generator) if self.config.num_classes else None)
        return z, y

    def generated_embedding(self, images: Tensor, labels: Tensor | None) -> Tensor:
        """(1/m) sum_j phi(x_j) e_{y_j}^T `(D, C)` of generated images in [0, 1]."""
        phi = self.features(images)
        if labels is None:
            return phi.mean(0, keepdim=True).t()
        onehot = F.one_hot(labels, self.config.num_classes).to(phi.dtype)
        return phi.t() @ onehot / phi.shape[0]

    def mmd_loss(self, m: int) -> Tensor:
        """|| mu - generated embedding ||_F^2 for m fresh codes and uniform labels."""
        z, y = self._draw(m)
        return (self.embedding - self.generated_embedding(self.generator(z, y), y)).pow(2).sum()

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch is not read: the data entered once, through `fit_data`."""
        return {"loss": self.mmd_loss(self.gen_batch)}

    def train_step(self, batch: dict[str, Tensor], optimizers: dict[str, torch.optim.Optimizer],
                   *, grad_accum: int = 1, grad_clip: float = 0.0) -> dict[str, Tensor]:
        (optimizer,) = optimizers.values()
        with self.autocast():
            out = self.loss(batch)
        out["loss"].backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(self.generator.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {k: v.detach().float() for k, v in out.items()}

    # --- sampling -----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               labels: Tensor | int | None = None, batch_size: int = 500) -> Tensor:
        """`n` images `(N, C, H, W)` in [0, 1]; `labels` as for the GANs (random classes when
        omitted, for a conditional model)."""
        device = self.device
        labels = class_labels(n, labels, self.config.num_classes, generator, device)
        net = self.generator
        was_training = net.training
        net.eval()
        chunks = []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            z = torch.randn(m, self.config.nz, device=device, generator=generator)
            chunks.append(net(z, labels[start:start + m] if labels is not None else None).float())
        net.train(was_training)
        return torch.cat(chunks).clamp_(0.0, 1.0).contiguous()
