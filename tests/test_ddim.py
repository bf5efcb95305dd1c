"""fastdrag_core.ddim: the sigma-form steps reproduce the official z-space DDIM formulas."""

import math

import pytest
import torch

from fastdrag_core import ddim


def sd_alphas_cumprod():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


AC = sd_alphas_cumprod()
SIGMAS = ((1 - AC) / AC).sqrt()  # ComfyUI's model_sampling.sigmas, index = timestep


def eps_fn(z, t):
    """A smooth nonlinear stand-in for the UNet: depends on z and t."""
    return torch.tanh(0.7 * z + 0.001 * t) + 0.1 * torch.roll(z, 1, dims=-1)


def comfy_model(x, sigma, t):
    """What ComfyUI's EPS model wrapper returns: denoised = x - sigma eps(x / sqrt(sigma²+1), t)."""
    z = x / math.sqrt(sigma ** 2 + 1)
    return x - sigma * eps_fn(z, t)


@pytest.mark.parametrize("steps,strength,k", [(10, 0.7, 7), (10, 1.0, 10), (50, 0.7, 35), (10, 0.25, 2), (4, 0.01, 1)])
def test_inversion_steps(steps, strength, k):
    assert ddim.inversion_steps(steps, strength) == k


def test_inversion_steps_rejects_bad_values():
    with pytest.raises(ValueError):
        ddim.inversion_steps(0, 0.7)
    with pytest.raises(ValueError):
        ddim.inversion_steps(10, 0.0)


def test_sigma_form_inversion_equals_official():
    torch.manual_seed(0)
    z0 = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    ts = [1, 101, 201, 301, 401, 501, 601]
    ref = ddim.official_inversion(z0, eps_fn, AC, ts)

    sig = [float(SIGMAS[0])] + [float(SIGMAS[t]) for t in ts]
    x = ddim.to_inversion_start(z0, sig[0])
    for i, t in enumerate(ts):
        s, sn = sig[i], sig[i + 1]
        xin = ddim.inversion_model_input(x, s, sn)
        eps = ddim.eps_from_denoised(xin, comfy_model(xin, sn, t), sn)
        x = ddim.inversion_step(x, eps, s, sn)
    z = x / math.sqrt(sig[-1] ** 2 + 1)
    assert torch.allclose(z, ref, rtol=1e-12, atol=1e-12)


def test_without_rescale_is_not_official():
    """Skipping the input rescale (Euler on flipped sigmas from sigma0) is measurably different."""
    torch.manual_seed(0)
    z0 = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    ts = [1, 101, 201]
    ref = ddim.official_inversion(z0, eps_fn, AC, ts)
    sig = [float(SIGMAS[0])] + [float(SIGMAS[t]) for t in ts]
    x = ddim.to_inversion_start(z0, sig[0])
    for i, t in enumerate(ts):
        s, sn = sig[i], sig[i + 1]
        eps = ddim.eps_from_denoised(x, comfy_model(x, sn, t), sn)
        x = ddim.inversion_step(x, eps, s, sn)
    z = x / math.sqrt(sig[-1] ** 2 + 1)
    assert (z - ref).abs().max() > 1e-4


def test_sigma_form_ddim_equals_official():
    torch.manual_seed(1)
    zt = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    ts = [601, 501, 401, 301, 201, 101, 1]
    ref = ddim.official_ddim_sampling(zt, eps_fn, AC, ts)  # ends at abar_0 like the official code
    sig = [float(SIGMAS[t]) for t in ts] + [float(SIGMAS[0])]
    x = zt * math.sqrt(sig[0] ** 2 + 1)
    for i, t in enumerate(ts):
        eps = ddim.eps_from_denoised(x, comfy_model(x, sig[i], t), sig[i])
        x = ddim.ddim_step(x, eps, sig[i], sig[i + 1])
    z = x / math.sqrt(sig[-1] ** 2 + 1)
    assert torch.allclose(z, ref, rtol=1e-12, atol=1e-12)


def test_ddim_step_to_zero_returns_denoised():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    den = torch.randn_like(x)
    eps = ddim.eps_from_denoised(x, den, 2.5)
    assert torch.allclose(ddim.ddim_step(x, eps, 2.5, 0.0), den)


def test_inversion_then_ddim_round_trip_with_exact_eps():
    """With an eps that does not depend on z (a fixed noise), inversion followed by DDIM back down the
    same sigmas recovers z0 exactly: the two step formulas are inverses."""
    torch.manual_seed(2)
    z0 = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    noise = torch.randn_like(z0)
    const = lambda z, t: noise  # noqa: E731
    ts = [1, 101, 201, 301]
    zT = ddim.official_inversion(z0, const, AC, ts)
    back = ddim.official_ddim_sampling(zT, const, AC, ts[::-1])
    assert torch.allclose(back, z0, atol=1e-10)


def test_alphas_from_sigmas():
    assert torch.allclose(ddim.alphas_from_sigmas(SIGMAS), AC, rtol=1e-12)


@pytest.mark.parametrize("alpha_bar", [0.999, 0.5, 0.16, 0.01])
def test_eps_from_denoised_of_a_v_prediction_model(alpha_bar):
    """A v model: z = sqrt(abar) x0 + sqrt(1-abar) eps, v = sqrt(abar) eps - sqrt(1-abar) x0. ComfyUI's V_PREDICTION.calculate_denoised
    (comfy/model_sampling.py, sigma_data = 1) on x = z/sqrt(abar) gives x_hat_0 = x/(sigma²+1) - v·sigma/sqrt(sigma²+1); eps must come back."""
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=g)
    a = torch.tensor(alpha_bar, dtype=torch.float64)
    z = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    sigma = float(((1 - a) / a).sqrt())
    x = z / a.sqrt()
    denoised = x / (sigma ** 2 + 1) - v * sigma / math.sqrt(sigma ** 2 + 1)
    assert torch.allclose(denoised, x0, atol=1e-12)
    assert torch.allclose(ddim.eps_from_denoised(x, denoised, sigma), eps, atol=1e-10)
