"""fastdrag_core.lora: the identity LoRA's crops, random draws, factors, alpha convention and loss,
against hand-worked cases and float64 transcriptions of the official (diffusers) formulas."""

import pytest
import torch

from fastdrag_core import lora


def sd_alphas_cumprod():
    """diffusers' DDPMScheduler for SD1.5: scaled_linear betas 0.00085 -> 0.012, 1000 steps."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


AC = sd_alphas_cumprod()
SIGMAS = ((1 - AC) / AC).sqrt()  # ComfyUI's model_sampling.sigmas, index = timestep


# -- settings -------------------------------------------------------------------------------------------


def test_official_defaults():
    s = lora.OFFICIAL
    assert (s.steps, s.learning_rate, s.rank, s.batch_size, s.seed) == (80, 5e-4, 16, 4, 0)
    assert lora.ADAMW_BETAS == (0.9, 0.999) and lora.ADAMW_WEIGHT_DECAY == 1e-2 and lora.ADAMW_EPS == 1e-8


@pytest.mark.parametrize("kwargs,needle", [
    ({"steps": -1}, "steps must be an integer >= 0"),
    ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0, got 0.0"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"rank": 0}, "rank must be an integer >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"seed": -3}, "seed must be an integer in [0, 2^64), got -3"),
    ({"seed": 2 ** 64}, "seed"),
])
def test_settings_reject_bad_values_by_name(kwargs, needle):
    with pytest.raises(ValueError) as e:
        lora.LoraTrainSettings(**kwargs)
    assert needle in str(e.value)


def test_zero_steps_is_valid():
    assert lora.LoraTrainSettings(steps=0).steps == 0


# -- crops ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,s", [(64, 64, 64), (96, 64, 64), (64, 96, 64), (48, 64, 48), (1, 7, 1)])
def test_crop_side_is_the_short_side(h, w, s):
    assert lora.crop_side(h, w) == s


def test_crop_side_rejects_empty():
    with pytest.raises(ValueError, match="at least 1x1"):
        lora.crop_side(0, 8)


def test_whole_grid_crop_draws_nothing():
    g = torch.Generator().manual_seed(3)
    before = g.get_state().clone()
    assert lora.random_crop_origin(g, 64, 64, 64) == (0, 0)
    assert torch.equal(g.get_state(), before)


def test_crop_origin_is_two_randint_draws_top_then_left():
    g = torch.Generator().manual_seed(11)
    ref = torch.Generator().manual_seed(11)
    got = [lora.random_crop_origin(g, 96, 80, 64) for _ in range(5)]
    want = []
    for _ in range(5):
        top = int(torch.randint(0, 96 - 64 + 1, (1,), generator=ref))
        left = int(torch.randint(0, 80 - 64 + 1, (1,), generator=ref))
        want.append((top, left))
    assert got == want


def test_crop_origin_covers_every_offset_uniformly():
    g = torch.Generator().manual_seed(0)
    tops = torch.tensor([lora.random_crop_origin(g, 72, 64, 64)[0] for _ in range(4500)])
    counts = torch.bincount(tops, minlength=9)
    assert counts.shape[0] == 9 and (tops >= 0).all() and (tops <= 8).all()
    # 4500 draws over 9 offsets: 500 expected each, binomial sd ~ 21
    assert counts.min() > 400 and counts.max() < 600


def test_crop_origin_matches_torchvision_random_crop():
    """The official LoRA training crops with torchvision's ``RandomCrop``; its ``get_params`` draws
    nothing for a whole-image crop, else ``i = torch.randint(0, h - th + 1, (1,))`` then ``j = torch.randint(0, w - tw + 1, (1,))``
    (torchvision/transforms/transforms.py). Transcribed here (torchvision is not a dependency)."""
    def torchvision_get_params(h, w, th, tw):
        if h == th and w == tw:
            return 0, 0
        i = torch.randint(0, h - th + 1, size=(1,)).item()
        j = torch.randint(0, w - tw + 1, size=(1,)).item()
        return i, j

    for h, w, side in ((90, 70, 70), (72, 96, 64), (64, 64, 64)):
        for seed in range(5):
            torch.manual_seed(seed)  # torchvision draws from the global generator
            expected = torchvision_get_params(h, w, side, side)
            g = torch.Generator().manual_seed(seed)
            assert lora.random_crop_origin(g, h, w, side) == expected, (h, w, seed)


def test_crop_origin_rejects_too_large_crops():
    with pytest.raises(ValueError, match="does not fit"):
        lora.random_crop_origin(torch.Generator(), 8, 8, 9)


def test_crop_batch_takes_the_given_windows():
    lat = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    out = lora.crop_batch(lat, [(0, 0), (0, 2), (0, 1)], 4)
    assert out.shape == (3, 2, 4, 4)
    assert torch.equal(out[0], lat[0, :, :, 0:4])
    assert torch.equal(out[1], lat[0, :, :, 2:6])
    assert torch.equal(out[2], lat[0, :, :, 1:5])
    # hand-worked element: channel 1, row 2, column 3 of the crop at left=2 is lat[0,1,2,5] = 24+12+5
    assert out[1, 1, 2, 3].item() == 41.0


def test_crop_batch_rejects_windows_outside_and_batches():
    lat = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="leaves the 8x8 latent"):
        lora.crop_batch(lat, [(1, 0)], 8)
    with pytest.raises(ValueError, match=r"\[1, C, H, W\]"):
        lora.crop_batch(torch.zeros(2, 4, 8, 8), [(0, 0)], 8)


# -- timesteps and one step's draws ---------------------------------------------------------------------


def test_timesteps_cover_0_to_999():
    g = torch.Generator().manual_seed(1)
    t = lora.sample_timesteps(g, 20000, 1000)
    assert t.dtype == torch.int64 and t.min() == 0 and t.max() == 999
    assert abs(t.double().mean().item() - 499.5) < 6  # sd of the mean ~ 2.0


def test_draw_step_order_is_crops_noise_timesteps():
    g = torch.Generator().manual_seed(7)
    d = lora.draw_step(g, 4, 10, 8, batch_size=3, num_timesteps=1000)
    ref = torch.Generator().manual_seed(7)
    origins = []
    for _ in range(3):
        top = int(torch.randint(0, 3, (1,), generator=ref))
        left = int(torch.randint(0, 1, (1,), generator=ref))
        origins.append((top, left))
    noise = torch.randn((3, 4, 8, 8), generator=ref)
    ts = torch.randint(0, 1000, (3,), generator=ref)
    assert d.size == 8 and d.origins == tuple(origins)
    assert torch.equal(d.noise, noise) and torch.equal(d.timesteps, ts)


def test_draw_step_square_latent_draws_no_crops():
    g = torch.Generator().manual_seed(7)
    d = lora.draw_step(g, 4, 8, 8, batch_size=2)
    ref = torch.Generator().manual_seed(7)
    assert d.origins == ((0, 0), (0, 0))
    assert torch.equal(d.noise, torch.randn((2, 4, 8, 8), generator=ref))


def test_draw_step_is_deterministic_for_a_seed_and_differs_across_seeds():
    a = lora.draw_step(torch.Generator().manual_seed(5), 4, 12, 9, 4)
    b = lora.draw_step(torch.Generator().manual_seed(5), 4, 12, 9, 4)
    c = lora.draw_step(torch.Generator().manual_seed(6), 4, 12, 9, 4)
    assert a.origins == b.origins and torch.equal(a.noise, b.noise) and torch.equal(a.timesteps, b.timesteps)
    assert not torch.equal(a.noise, c.noise)


# -- LoRA factors and the rank / alpha convention -------------------------------------------------------


def test_init_is_diffusers_lora_linear_layer():
    g = torch.Generator().manual_seed(0)
    up, down = lora.init_lora_factors(g, 300, 200, 16)
    assert up.shape == (300, 16) and down.shape == (16, 200)
    assert up.dtype == down.dtype == torch.float32
    assert torch.count_nonzero(up) == 0
    # 3200 samples of N(0, (1/16)^2): sample sd within 5 % of 1/16, mean ~ 0
    assert abs(down.std().item() * 16 - 1.0) < 0.05 and abs(down.mean().item()) < 0.005


def test_init_is_deterministic_for_a_generator_state():
    a = lora.init_lora_factors(torch.Generator().manual_seed(4), 8, 6, 2)
    b = lora.init_lora_factors(torch.Generator().manual_seed(4), 8, 6, 2)
    assert torch.equal(a[1], b[1])


def test_scale_convention():
    assert lora.lora_scale(None, 16) == 1.0
    assert lora.lora_scale(16.0, 16) == 1.0
    assert lora.lora_scale(8.0, 16) == 0.5


def test_lora_delta_hand_worked():
    up = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]])   # [out=3, r=2]
    down = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.0, 1.0, 1.0, 0.0]])  # [r=2, in=4]
    want = torch.tensor([[1.0, 2.0, 4.0, -1.0], [0.0, -1.0, -1.0, 0.0], [3.0, 0.5, 6.5, -3.0]])
    assert torch.equal(lora.lora_delta(up, down), want)
    assert torch.equal(lora.lora_delta(up, down, alpha=1.0), want / 2)


def test_file_entries_give_b_a_under_the_comfyui_rule():
    """ComfyUI (comfy/weight_adapter/lora.py) applies strength · (alpha / rank) · up @ down, with the
    alpha read from ``<prefix>.alpha``; the pack's entries must make that exactly B A."""
    g = torch.Generator().manual_seed(2)
    up, down = torch.randn(5, 3, generator=g), torch.randn(3, 7, generator=g)
    e = lora.lora_file_entries("lora_unet_x", up, down)
    assert set(e) == {"lora_unet_x.lora_up.weight", "lora_unet_x.lora_down.weight", "lora_unet_x.alpha"}
    alpha = e["lora_unet_x.alpha"].item()
    rank = e["lora_unet_x.lora_down.weight"].shape[0]
    comfy_delta = (alpha / rank) * torch.mm(e["lora_unet_x.lora_up.weight"], e["lora_unet_x.lora_down.weight"])
    assert alpha == 3.0 and torch.equal(comfy_delta, up @ down)


def test_file_entries_reject_mismatched_factors():
    with pytest.raises(ValueError, match="lora_unet_y: up"):
        lora.lora_file_entries("lora_unet_y", torch.zeros(4, 2), torch.zeros(3, 5))


# -- the loss against the official formulas in float64 ---------------------------------------------------


def official_setup(seed=0, batch=4):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 4, 5, 6, generator=g, dtype=torch.float64)
    eps = torch.randn(batch, 4, 5, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 17, 500, 999][:batch])
    a = AC[t].reshape(-1, 1, 1, 1)
    z_t = a.sqrt() * x0 + (1 - a).sqrt() * eps          # DDPMScheduler.add_noise
    sigma = SIGMAS[t]
    x = z_t * (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt()  # ComfyUI's x = x0 + sigma eps
    return g, x0, eps, a, z_t, sigma, x


def test_eps_loss_equals_official_mse_float64():
    g, x0, eps, a, z_t, sigma, x = official_setup()
    assert torch.allclose(x, x0 + sigma.reshape(-1, 1, 1, 1) * eps, rtol=0, atol=1e-12)
    eps_hat = eps + 0.3 * torch.randn(eps.shape, generator=g, dtype=torch.float64)
    want = torch.mean((eps_hat - eps) ** 2)                 # F.mse_loss(model_pred, noise)
    denoised = x - sigma.reshape(-1, 1, 1, 1) * eps_hat     # ComfyUI EPS.calculate_denoised
    got = lora.noise_prediction_loss(denoised, x0, sigma, "eps")
    assert got.dtype == torch.float64
    assert abs(got.item() - want.item()) <= 1e-12 * want.item()


def test_v_loss_equals_official_mse_float64():
    g, x0, eps, a, z_t, sigma, x = official_setup(1)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0                # DDPMScheduler.get_velocity
    v_hat = v + 0.2 * torch.randn(v.shape, generator=g, dtype=torch.float64)
    want = torch.mean((v_hat - v) ** 2)
    s = sigma.reshape(-1, 1, 1, 1)
    denoised = x / (s ** 2 + 1) - v_hat * s / (s ** 2 + 1).sqrt()  # ComfyUI V_PREDICTION, sigma_data = 1
    got = lora.noise_prediction_loss(denoised, x0, sigma, "v")
    assert abs(got.item() - want.item()) <= 1e-12 * want.item()


def test_eps_loss_gradient_equals_official_gradient_float64():
    g, x0, eps, a, z_t, sigma, x = official_setup(2)
    eps_hat = (eps + 0.3 * torch.randn(eps.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    torch.mean((eps_hat - eps) ** 2).backward()
    want = eps_hat.grad.clone()
    eps_hat.grad = None
    lora.noise_prediction_loss(x - sigma.reshape(-1, 1, 1, 1) * eps_hat, x0, sigma, "eps").backward()
    assert torch.allclose(eps_hat.grad, want, rtol=1e-10, atol=0)


def test_float32_loss_is_close_to_float64_over_the_whole_sigma_range():
    g, x0, eps, a, z_t, sigma, x = official_setup(3)
    eps_hat = eps + 0.05 * torch.randn(eps.shape, generator=g, dtype=torch.float64)
    want = torch.mean((eps_hat - eps) ** 2).item()
    s32 = sigma.float()
    x32 = x0.float() + s32.reshape(-1, 1, 1, 1) * eps.float()
    d32 = x32 - s32.reshape(-1, 1, 1, 1) * eps_hat.float()
    got = lora.noise_prediction_loss(d32, x0.float(), s32, "eps")
    assert got.dtype == torch.float32
    # smallest sigma (t = 0) is 0.029: float32 rounding of x ~ 6e-8·|x| becomes ~2e-6/0.029 in eps
    assert abs(got.item() - want) < 1e-3 * want


def test_loss_hand_worked():
    d = torch.tensor([[[1.0, 3.0]], [[0.0, 0.0]]])
    x0 = torch.tensor([[[0.0, 1.0]], [[2.0, 0.0]]])
    sigma = torch.tensor([2.0, 1.0])
    # eps: item 0: (1² + 2²)/4 = 1.25; item 1: 4/1 = 4 -> mean over 4 elements = (0.25+1+4+0)/4
    assert lora.noise_prediction_loss(d, x0, sigma, "eps").item() == pytest.approx(5.25 / 4, abs=1e-7)
    # v (sigma_d = 1): w = (sigma²+1)/sigma²: item 0: 5/4, item 1: 2 -> (5/4·1 + 5/4·4 + 2·4 + 0)/4
    assert lora.noise_prediction_loss(d, x0, sigma, "v").item() == pytest.approx((1.25 + 5.0 + 8.0) / 4, abs=1e-7)


def test_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="prediction must be one of"):
        lora.noise_prediction_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), "x0")
    with pytest.raises(ValueError, match="differ in shape"):
        lora.noise_prediction_loss(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1))
    with pytest.raises(ValueError, match="sigma must be"):
        lora.noise_prediction_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(3))


def test_init_and_data_streams_differ_and_are_fixed():
    assert lora.init_seed(0) != 0 and lora.init_seed(5) != lora.init_seed(6)
    assert lora.init_seed(2 ** 64 - 1) < 2 ** 64
    a = torch.randn(8, generator=torch.Generator().manual_seed(lora.init_seed(3)))
    b = torch.randn(8, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(a, b)


def test_branch_on_the_activations_is_the_merged_layer():
    """core.lora_branch: W x + B (A x) scaled by alpha / r equals x through W' = W + lora_delta (float64),
    for inputs with leading token dimensions; mismatched shapes are refused."""
    g = torch.Generator().manual_seed(4)
    W = torch.randn(5, 7, generator=g, dtype=torch.float64)
    up = torch.randn(5, 3, generator=g, dtype=torch.float64)
    down = torch.randn(3, 7, generator=g, dtype=torch.float64)
    x = torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
    for alpha in (None, 3.0, 1.5):
        merged = x @ (W + lora.lora_delta(up, down, alpha)).T
        torch.testing.assert_close(x @ W.T + lora.lora_branch(x, up, down, alpha), merged, rtol=1e-12, atol=1e-12)
    # by hand: r = 1, alpha = 2 (scale 2): B A x = 3 * (1*1 + 2*1) = 9, times 2
    one = lora.lora_branch(torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0]]), torch.tensor([[1.0, 2.0]]), alpha=2.0)
    assert one.tolist() == [[18.0]]
    with pytest.raises(ValueError, match="do not match"):
        lora.lora_branch(torch.zeros(2, 6), up, down)
