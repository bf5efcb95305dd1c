"""DDIM (eta = 0) steps and FastDrag's DDIM inversion step, in ComfyUI's sigma parameterisation.

Pure PyTorch; the steps take eps, which ``eps_from_denoised`` derives from ComfyUI's x_hat_0 for eps and
v-prediction models alike. Notation (fastdrag-method.md §1.5-§1.6): abar_t = alphas_cumprod[t] and
sigma_t = sqrt((1 - abar_t) / abar_t). A diffusers latent z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps corresponds to
ComfyUI's "VE" sampler variable x = z_t / sqrt(abar_t) = x0 + sigma_t eps, which is what ComfyUI sampler
functions receive and return; an EPS model called at sigma sees x / sqrt(sigma² + 1) = z_t.

* DDIM step (eta = 0) from sigma to sigma_next:        x <- x + eps(x, sigma) · (sigma_next - sigma)   (= Euler).
* Official inversion step (diffusers ``inv_step``): the model is evaluated on the latent of the
  *lower* timestep while being told the *higher* one. In x-form, from sigma to sigma_next:
      x' = x · sqrt(sigma_next² + 1) / sqrt(sigma² + 1)      # so the UNet sees exactly z_prev
      eps  = model(x', sigma_next)                         # K/V captured here belong to t(sigma_next)
      x <- x + eps · (sigma_next - sigma)
  starting from x = z0 · sqrt(sigma_0² + 1) with sigma_0 = sigma(t = 0) (the official abar_{-99} := abar_0).

The ``official_*`` functions are straightforward z-space transcriptions of the official formulas,
used as float64 references in tests.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

__all__ = [
    "inversion_steps",
    "alphas_from_sigmas",
    "eps_from_denoised",
    "ddim_step",
    "inversion_model_input",
    "inversion_step",
    "to_inversion_start",
    "official_inversion",
    "official_ddim_sampling",
]


def inversion_steps(steps: int, strength: float) -> int:
    """k = round(strength · steps) inversion (and denoising) steps, as the official code
    (Python ``round``, halves to even); at least 1, at most ``steps``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return min(steps, max(1, int(round(strength * steps))))


def alphas_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """abar = 1 / (1 + sigma²)."""
    return 1.0 / (1.0 + sigmas * sigmas)


def _f(s) -> float:
    return float(s)


def eps_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    """eps = (x - x_hat_0)/sigma from ComfyUI's x0 prediction ``denoised`` at sigma.

    ComfyUI's wrapped model returns x_hat_0 whatever the parameterisation, so this holds for eps models
    (x_hat_0 = x - sigma·eps_theta, giving eps_theta back) and v-prediction models alike (x_hat_0 = sqrt(abar)·z - sqrt(1-abar)·v in z-space,
    giving eps = sqrt(abar)·v + sqrt(1-abar)·z, diffusers' DDIM ``pred_epsilon``), with abar the model's abar at sigma."""
    return (x - denoised) / _f(sigma)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from sigma to sigma_next in x-form (an Euler step)."""
    return x + eps * (_f(sigma_next) - _f(sigma))


def inversion_model_input(x: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Rescale x (at sigma) so that a model called at sigma_next sees exactly z_prev = x / sqrt(sigma² + 1)."""
    return x * (math.sqrt(_f(sigma_next) ** 2 + 1.0) / math.sqrt(_f(sigma) ** 2 + 1.0))


def inversion_step(x: torch.Tensor, eps: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """One official inversion step from sigma up to sigma_next, given eps evaluated on
    ``inversion_model_input(x, sigma, sigma_next)`` at sigma_next."""
    return x + eps * (_f(sigma_next) - _f(sigma))


def to_inversion_start(z0: torch.Tensor, sigma0) -> torch.Tensor:
    """x at sigma_0 for a clean latent z0 treated, as officially, as sitting at abar_0: x = z0·sqrt(sigma_0²+1)."""
    return z0 * math.sqrt(_f(sigma0) ** 2 + 1.0)


def official_inversion(z0: torch.Tensor, eps_fn: Callable[[torch.Tensor, int], torch.Tensor],
                       alphas_cumprod: torch.Tensor, timesteps: Sequence[int],
                       final_alpha_cumprod: float | None = None) -> torch.Tensor:
    """The official DDIM inversion (fastdrag-method.md §1.5) in z-space.

    Args:
        z0: clean latent [B, C, H, W] (already multiplied by the VAE scale factor).
        eps_fn: ``eps_fn(z, t) -> eps`` (the UNet called on z with integer timestep t).
        alphas_cumprod: [1000] abar.
        timesteps: ascending inversion timesteps, e.g. [1, 101, ..., 601].
        final_alpha_cumprod: abar before the first step (default abar_0, ``set_alpha_to_one=False``).
    Returns:
        z_T at the last timestep.
    """
    ac = alphas_cumprod
    a_prev = float(ac[0]) if final_alpha_cumprod is None else float(final_alpha_cumprod)
    z = z0
    for t in timesteps:
        a_t = float(ac[int(t)])
        eps = eps_fn(z, int(t))
        x0 = (z - math.sqrt(1.0 - a_prev) * eps) / math.sqrt(a_prev)
        z = math.sqrt(a_t) * x0 + math.sqrt(1.0 - a_t) * eps
        a_prev = a_t
    return z


def official_ddim_sampling(z: torch.Tensor, eps_fn: Callable[[torch.Tensor, int], torch.Tensor],
                           alphas_cumprod: torch.Tensor, timesteps: Sequence[int],
                           final_alpha_cumprod: float | None = None) -> torch.Tensor:
    """Official DDIM sampling (eta = 0) down the descending ``timesteps`` in z-space; each step goes
    to the next timestep, the last one to abar_final (default abar_0)."""
    ac = alphas_cumprod
    a_final = float(ac[0]) if final_alpha_cumprod is None else float(final_alpha_cumprod)
    ts = [int(t) for t in timesteps]
    for i, t in enumerate(ts):
        a_t = float(ac[t])
        a_next = float(ac[ts[i + 1]]) if i + 1 < len(ts) else a_final
        eps = eps_fn(z, t)
        x0 = (z - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        z = math.sqrt(a_next) * x0 + math.sqrt(1.0 - a_next) * eps
    return z
