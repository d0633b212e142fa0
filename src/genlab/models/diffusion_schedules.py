"""The weightless half of diffusion: noise schedules, training targets and samplers.

Nothing here has weights or knows the network: a sampler gets `predict(x, t) -> prediction` and
returns images, so the same code serves the U-Net of `diffusion.py`, an oracle in the tests, and
classifier-free guidance (a `predict` that mixes two calls). This is diffusers' split (weights /
scheduler / pipeline); docs/diffusion.md has the formulas.

Two families of processes, both on data x0 in [-1, 1] with noise eps ~ N(0, I):

- discrete-time diffusion (objectives `eps`, `v`): T steps with alpha_bar_t (the cumulative product
  of 1 - beta_t), x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps for t in 0..T-1.
  Ho et al. 2020 (https://arxiv.org/abs/2006.11239); cosine schedule: Nichol & Dhariwal 2021
  (https://arxiv.org/abs/2102.09672); v-prediction: Salimans & Ho 2022
  (https://arxiv.org/abs/2202.00512); DDIM: Song et al. 2020 (https://arxiv.org/abs/2010.02502).
- flow matching / rectified flow (objective `flow`): x_t = (1 - t) x0 + t eps for t in [0, 1],
  velocity v = eps - x0. Lipman et al. 2022 (https://arxiv.org/abs/2210.02747), Liu et al. 2022
  (https://arxiv.org/abs/2209.03003); logit-normal times: Esser et al. 2024
  (https://arxiv.org/abs/2403.03206).

The network sees a time in [0, 1]: t / T for the discrete process, t itself for flow.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.errors import UserError

Predict = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, ...), time in [0, 1] (B,)) -> prediction

DIFFUSION_OBJECTIVES = ("eps", "v")
FLOW_OBJECTIVES = ("flow",)
SAMPLERS = {"eps": ("ddim", "ddpm"), "v": ("ddim", "ddpm"), "flow": ("euler", "heun")}


def default_sampler(objective: str) -> str:
    """What `sample` uses without `sampler`: DDIM for a diffusion model, Euler for flow."""
    return SAMPLERS[objective][0]


# --- schedules --------------------------------------------------------------------------------------

def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's betas (Ho et al. 2020), scaled so other T keep the same overall noise
    (the 1e-4..0.02 range is for T = 1000)."""
    scale = 1000.0 / timesteps
    return torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2),
    betas clipped at 0.999 so the last step is not a division by zero."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete schedule: `betas` (T,) float64, and their cumulative alpha_bar."""

    betas: Tensor

    @classmethod
    def named(cls, name: str, timesteps: int) -> NoiseSchedule:
        if name not in SCHEDULES:
            raise UserError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
        return cls(SCHEDULES[name](timesteps))

    @property
    def timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def alpha_bar(self) -> Tensor:
        return torch.cumprod(1 - self.betas, 0)

    def alpha_bar_at(self, t: Tensor, like: Tensor) -> Tensor:
        """alpha_bar_t for integer steps `t` (B,), shaped to broadcast over `like` (B, ...);
        t = -1 means "no noise" (alpha_bar = 1), the end of a sampler."""
        table = torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar])
        a = table[(t + 1).cpu()].to(like.device, like.dtype)
        return a.view(-1, *([1] * (like.dim() - 1)))


# --- the forward process ------------------------------------------------------------------------------

def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """x_t ~ q(x_t | x0) in closed form: sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""
    a = schedule.alpha_bar_at(t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def q_step(schedule: NoiseSchedule, x_prev: Tensor, t: int, noise: Tensor) -> Tensor:
    """One forward step q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (x_{-1} = x0):
    what `q_sample` composes, kept for the test that checks the composition."""
    beta = float(schedule.betas[t])
    return math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * noise


def flow_sample(x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """The straight path of flow matching: x_t = (1 - t) x0 + t eps, t (B,) in [0, 1]."""
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise


# --- what the network learns ------------------------------------------------------------------------

def training_target(objective: str, x0: Tensor, noise: Tensor,
                    alpha_bar: Tensor | None = None) -> Tensor:
    """The regression target: eps; v = sqrt(a) eps - sqrt(1 - a) x0 (a = alpha_bar_t, shaped
    like x0); or the flow velocity eps - x0."""
    if objective == "eps":
        return noise
    if objective == "v":
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    if objective == "flow":
        return noise - x0
    raise UserError(f"unknown objective {objective!r}; allowed: eps, v, flow")


def to_x0_eps(objective: str, prediction: Tensor, x_t: Tensor,
              alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
    """(x0, eps) implied by a network prediction at x_t of the discrete process."""
    a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if objective == "eps":
        eps = prediction
        return (x_t - b * eps) / a, eps
    if objective == "v":  # x0 = a x_t - b v, eps = b x_t + a v (a^2 + b^2 = 1)
        return a * x_t - b * prediction, b * x_t + a * prediction
    raise UserError(f"objective {objective!r} is not a discrete-time diffusion objective")


def flow_times(n: int, kind: str, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> Tensor:
    """Training times of flow matching: `uniform` on [0, 1], or `logit-normal`
    (t = sigmoid(u), u ~ N(0, 1)), which puts more training on the middle of the path."""
    if kind == "uniform":
        return torch.rand(n, device=device, generator=generator)
    if kind == "logit-normal":
        return torch.sigmoid(torch.randn(n, device=device, generator=generator))
    raise UserError(f"unknown time sampling {kind!r}; allowed: uniform, logit-normal")


# --- the variational bound (Ho et al. 2020, eq. 5) -------------------------------------------------
#
# In this file's indexing step t (0..T-1) is the paper's t + 1 and the data x0 is the paper's x_0:
# the paper's L_T is `prior_kl`, its L_{t-1} for t = 2..T is `diffusion_kl` at steps 1..T-1, and
# its L_0 = -log p(x_0 | x_1) is `decoder_nll` at step 0. All are in nats, summed over dimensions.

def _sum_dims(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


def prior_kl(schedule: NoiseSchedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x0) || N(0, I)) per image `(B,)`: q(x_T | x0) = N(sqrt(a) x0, (1 - a) I)
    with a = alpha_bar at the last step. No network: a constant of the schedule and the data."""
    a = schedule.alpha_bar_at(torch.full((x0.shape[0],), schedule.timesteps - 1), x0.double())
    mean_sq, var = a * x0.double().square(), 1 - a
    return _sum_dims(0.5 * (var + mean_sq - 1 - var.log()))


def posterior_variance(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t), float64 `(B,)`, the
    variance of q(x_{t-1} | x_t, x0) (0 at step 0, where x_{t-1} is the data)."""
    a = schedule.alpha_bar
    a_prev = torch.cat([a.new_ones(1), a[:-1]])
    return (schedule.betas * (1 - a_prev) / (1 - a))[t.cpu()]


def diffusion_kl(schedule: NoiseSchedule, x0: Tensor, x0_hat: Tensor, t: Tensor) -> Tensor:
    """L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) per image `(B,)` at steps t >= 1,
    where p is the Gaussian with the posterior's mean at the predicted x0_hat and the posterior's
    variance beta_tilde_t (Ho et al.'s sigma_t^2 = beta_tilde_t). The posterior mean is
    c0 x0 + c1 x_t with c0 = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t); with equal
    variances the KL is |c0 (x0 - x0_hat)|^2 / (2 beta_tilde_t), and the x_t parts cancel."""
    if bool((t < 1).any()):
        raise ValueError("diffusion_kl is for steps t >= 1; step 0 is the decoder's")
    a_t = schedule.alpha_bar_at(t, x0.double())
    a_prev = schedule.alpha_bar_at(t - 1, x0.double())
    beta = 1 - a_t / a_prev
    c0 = a_prev.sqrt() * beta / (1 - a_t)
    var = posterior_variance(schedule, t).to(x0.device).view_as(a_t)
    diff = x0.double() - x0_hat.double()
    return _sum_dims(c0.square() * diff.square() / (2 * var))


def decoder_variance(schedule: NoiseSchedule) -> float:
    """The variance of the decoder p(x0 | x at step 0). beta_tilde is 0 there, so, as in Ho et
    al.'s code (`fixedsmall`, the log-variance clipped at its first non-zero value), it is
    beta_tilde at step 1 (beta at step 0 when T = 1)."""
    if schedule.timesteps == 1:
        return float(schedule.betas[0])
    return float(posterior_variance(schedule, torch.tensor([1]))[0])


def log_normal_mass(lower: Tensor, upper: Tensor) -> Tensor:
    """log(Phi(upper) - Phi(lower)) for lower < upper, elementwise, accurate in the tails (a bin
    many standard deviations from the mean keeps its tiny, non-zero mass: no floor)."""
    flip = lower > 0  # mirror an interval above 0 below it: the same mass, a smaller Phi
    lo, hi = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi))


def discretized_gaussian_log_likelihood(x0: Tensor, mean: Tensor, std: float) -> Tensor:
    """log P(x0) per element for 8-bit data x0 = 2 k / 255 - 1 under N(mean, std^2) integrated
    over x0's bin [x0 - 1/255, x0 + 1/255], the edge bins open to -inf at -1 and +inf at +1
    (Ho et al. 2020, section 3.3). A log-probability of the discrete pixels, so <= 0."""
    x, mean = x0.double(), mean.double()
    upper, lower = (x - mean + 1 / 255) / std, (x - mean - 1 / 255) / std
    inner = log_normal_mass(lower, upper)
    return torch.where(x < -0.999, torch.special.log_ndtr(upper),
                       torch.where(x > 0.999, torch.special.log_ndtr(-lower), inner))


def decoder_nll(schedule: NoiseSchedule, x0: Tensor, x0_hat: Tensor) -> Tensor:
    """L_0 = -log p(x0 | x at step 0) per image `(B,)`: the discretized Gaussian centred on the
    predicted x0_hat (the posterior mean at step 0 is x0_hat itself), variance `decoder_variance`."""
    std = math.sqrt(decoder_variance(schedule))
    return -_sum_dims(discretized_gaussian_log_likelihood(x0, x0_hat, std))


# --- classifier-free guidance -----------------------------------------------------------------------

def guide(conditional: Tensor, unconditional: Tensor, w: float) -> Tensor:
    """Classifier-free guidance in Ho & Salimans' parametrisation
    (https://arxiv.org/abs/2207.12598): (1 + w) cond - w uncond, written as
    cond + w (cond - uncond) so that w = 0 returns the conditional prediction exactly (bit for
    bit). w = -1 is the unconditional model; diffusers' `guidance_scale` is 1 + w."""
    return conditional + w * (conditional - unconditional)


# --- samplers ----------------------------------------------------------------------------------------

def _check_steps(steps: int, most: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
        raise UserError(f"sample_steps must be an integer in 1..{most}, got {steps!r}")


def sampling_timesteps(timesteps: int, steps: int) -> Tensor:
    """`steps` integer times from T-1 down to 0, evenly spread (DDIM's "trailing" spacing ends
    on 0 and starts on T-1, so the first step starts from pure noise)."""
    _check_steps(steps, timesteps)
    return torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long()


def _strided_steps(schedule: NoiseSchedule, steps: int, like: Tensor
                   ) -> Iterator[tuple[Tensor, int, Tensor, Tensor]]:
    """The walk of the strided samplers: (t as a batch, the next time s or -1 at the end,
    alpha_bar_t, alpha_bar_s), from the noisiest time down."""
    times = sampling_timesteps(schedule.timesteps, steps).tolist()
    for i, t in enumerate(times):
        s = int(times[i + 1]) if i + 1 < len(times) else -1
        tt = torch.full((like.shape[0],), t, dtype=torch.long)
        yield tt, s, schedule.alpha_bar_at(tt, like), schedule.alpha_bar_at(
            torch.full_like(tt, s), like)


@torch.no_grad()
def ddim_sample(predict: Predict, objective: str, schedule: NoiseSchedule, x_T: Tensor,
                steps: int, *, eta: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
    """DDIM (Song et al. 2020) from x_T over `steps` strided times. Each step goes from t to the
    next time s: x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z, with
    sigma = eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s). eta = 0 is deterministic;
    eta = 1 is DDPM's ancestral step between the strided times."""
    if not 0.0 <= eta <= 1.0:
        raise UserError(f"eta must be in [0, 1], got {eta}")
    x = x_T
    for tt, s, a_t, a_s in _strided_steps(schedule, steps, x_T):
        x0, eps = to_x0_eps(objective, predict(x, (tt.float() / schedule.timesteps).to(x.device)),
                            x, a_t)
        x0 = x0.clamp(-1, 1) if s >= 0 else x0
        if s >= 0:  # recompute eps from the clipped x0 so the step stays on the same path
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).clamp(min=0).sqrt()
        x = a_s.sqrt() * x0 + (1 - a_s - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and s >= 0:
            x = x + sigma * torch.randn(x.shape, device=x.device, dtype=x.dtype,
                                        generator=generator)
    return x


@torch.no_grad()
def ddpm_sample(predict: Predict, objective: str, schedule: NoiseSchedule, x_T: Tensor,
                steps: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Ancestral sampling (Ho et al. 2020): x_s ~ q(x_s | x_t, x0_hat), the Gaussian posterior
    with mean (sqrt(a_s) beta x0 + sqrt(alpha) (1 - a_s) x_t) / (1 - a_t) and variance
    beta (1 - a_s) / (1 - a_t), where alpha = a_t / a_s and beta = 1 - alpha are the step's
    (with steps < T, the strided step's). All T steps give the paper's sampler."""
    x = x_T
    for tt, s, a_t, a_s in _strided_steps(schedule, steps, x_T):
        x0, _ = to_x0_eps(objective, predict(x, (tt.float() / schedule.timesteps).to(x.device)),
                          x, a_t)
        if s < 0:
            return x0
        x0 = x0.clamp(-1, 1)
        alpha = a_t / a_s
        beta = 1 - alpha
        mean = (a_s.sqrt() * beta * x0 + alpha.sqrt() * (1 - a_s) * x) / (1 - a_t)
        var = beta * (1 - a_s) / (1 - a_t)
        x = mean + var.sqrt() * torch.randn(x.shape, device=x.device, dtype=x.dtype,
                                            generator=generator)
    return x


@torch.no_grad()
def flow_euler_sample(predict: Predict, x_1: Tensor, steps: int) -> Tensor:
    """Euler steps of dx/dt = v from t = 1 (noise) to t = 0 (data) on an even grid."""
    _check_steps(steps, 100_000)
    x = x_1
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    for t, t_next in itertools.pairwise(times):
        v = predict(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype))
        x = x + (t_next - t) * v
    return x


@torch.no_grad()
def flow_heun_sample(predict: Predict, x_1: Tensor, steps: int) -> Tensor:
    """Heun's method (second order, two network calls per step) from t = 1 to 0; the last step,
    which ends on t = 0, is an Euler step (as in Karras et al. 2022,
    https://arxiv.org/abs/2206.00364): the velocity at t = 0 is not needed."""
    _check_steps(steps, 100_000)
    x = x_1
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    for t, t_next in itertools.pairwise(times):
        v = predict(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype))
        x_euler = x + (t_next - t) * v
        if t_next > 0:
            v_next = predict(x_euler, torch.full((x.shape[0],), t_next, device=x.device, dtype=x.dtype))
            x = x + (t_next - t) * 0.5 * (v + v_next)
        else:
            x = x_euler
    return x


def run_sampler(sampler: str, predict: Predict, objective: str, schedule: NoiseSchedule | None,
                noise: Tensor, steps: int, *, eta: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
    """The sampler by name, checked against the objective the network was trained for."""
    allowed = SAMPLERS[objective]
    if sampler not in allowed:
        raise UserError(f"sampler {sampler!r} does not fit a model trained with objective "
                        f"{objective!r}; allowed: {', '.join(allowed)}")
    if sampler == "ddim":
        return ddim_sample(predict, objective, schedule, noise, steps, eta=eta,
                           generator=generator)
    if sampler == "ddpm":
        return ddpm_sample(predict, objective, schedule, noise, steps, generator=generator)
    if sampler == "euler":
        return flow_euler_sample(predict, noise, steps)
    return flow_heun_sample(predict, noise, steps)
