"""Decoder likelihoods p(x|z) for images, chosen by name (`model.likelihood`).

The decoder gives `params` of shape `(B, P, C, H, W)`: P numbers per sub-pixel. Data `x` is the
image in [0, 1]: grey level k of 8-bit data is x = k / 255, binarized data is 0 or 1. `log_prob`
returns the log-probability of every sub-pixel, `(B, C, H, W)`, in nats; the VAE sums it over pixels.

- `logistic`: a discretized logistic over the 256 grey levels, one per sub-pixel (the per-pixel
  likelihood of PixelCNN++, Salimans et al. 2017, https://arxiv.org/abs/1701.05517, without the
  mixture): P(k) is the logistic mass on k's bin of width 1/255, and the edge levels 0 and 255 take
  the tails. The 256 probabilities sum to 1, so bits/dim is a likelihood of the 8-bit data.
- `categorical`: a 256-way softmax per sub-pixel (PixelRNN, https://arxiv.org/abs/1601.06759).
- `bernoulli`: for binarized data; its NLL is not a likelihood of the 8-bit images.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

HALF_BIN = 0.5 / 255  # half the width of one grey level's bin in [0, 1]
LOG_SCALE_MIN = -7.0  # floor of the logistic's log-scale, as in PixelCNN++: keeps 1/s finite
LEVELS = 256


class Likelihood:
    name: ClassVar[str]
    n_params: ClassVar[int]  # P: decoder outputs per sub-pixel
    eight_bit: ClassVar[bool]  # a likelihood of 8-bit data, so bits/dim means something

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError  # each likelihood defines it

    def mean(self, params: Tensor) -> Tensor:
        """The image the decoder stands for, `(B, C, H, W)` in [0, 1]."""
        raise NotImplementedError  # each likelihood defines it


class DiscretizedLogistic(Likelihood):
    name = "logistic"
    n_params = 2  # location mu (in [0, 1] units) and log-scale
    eight_bit = True

    @staticmethod
    def location(params: Tensor) -> Tensor:
        return params[:, 0] + 0.5  # centred on mid-grey, so a fresh decoder's mean is in range

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mu, log_scale = self.location(params), params[:, 1].clamp(min=LOG_SCALE_MIN)
        inv_scale = torch.exp(-log_scale)
        upper = (x - mu + HALF_BIN) * inv_scale  # standardized upper edge of x's bin
        width = 2 * HALF_BIN * inv_scale  # standardized bin width, > 0
        lower = upper - width
        log_cdf_upper = F.logsigmoid(upper)  # level 0: all mass below its upper edge
        log_sf_lower = F.logsigmoid(-lower)  # level 255: all mass above its lower edge
        # sigmoid(u) - sigmoid(l) = sigmoid(u) * sigmoid(-l) * (1 - exp(l - u)): exact, and stable
        # in logs where the plain difference of two CDFs rounds to 0 (PixelCNN++ approximates there)
        log_mid = log_cdf_upper + log_sf_lower + torch.log(-torch.expm1(-width))
        return torch.where(x < HALF_BIN, log_cdf_upper,
                           torch.where(x > 1 - HALF_BIN, log_sf_lower, log_mid))

    def mean(self, params: Tensor) -> Tensor:
        # the location: the median of the logistic and, up to the edge bins, the discretized mode
        return self.location(params).clamp(0.0, 1.0)


class Categorical(Likelihood):
    name = "categorical"
    n_params = LEVELS  # one logit per grey level
    eight_bit = True

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        levels = x.mul(LEVELS - 1).round_().long()  # (B, C, H, W) in 0..255
        return -F.cross_entropy(params, levels, reduction="none")  # softmax over dim 1

    def mean(self, params: Tensor) -> Tensor:
        grey = torch.linspace(0.0, 1.0, LEVELS, device=params.device)
        return torch.einsum("bpchw,p->bchw", params.softmax(1), grey)  # expected grey level


class Bernoulli(Likelihood):
    name = "bernoulli"
    n_params = 1  # logit of P(x = 1)
    eight_bit = False

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(params[:, 0], x, reduction="none")

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params[:, 0])


LIKELIHOODS: dict[str, Likelihood] = {
    cls.name: cls() for cls in (DiscretizedLogistic, Categorical, Bernoulli)
}


def binarize(images: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """uint8 images -> float {0, 1}. `threshold`: 1 where the grey level is above half (k >= 128),
    the same every time. `stochastic`: x ~ Bernoulli(k / 255), drawn anew at each call from
    `generator` (the global RNG when None: seeded by train.seed and saved in checkpoints), i.e.
    dynamic binarization (Salakhutdinov & Murray 2008)."""
    if mode == "threshold":
        return (images >= 128).float()
    return torch.bernoulli(images.float().div_(255.0), generator=generator)
