"""The pack's one precision rule for gradients (fastdrag_core.grad_step), exercised in float16 on the
CPU with small differentiable models: the loss scale, gradients that underflow float16 without it, the
step skipped on inf / NaN, and both loops (DragDiffusion's latent optimisation, a LoRA-style factor
update) run end to end with float16 compute. Expected values are worked by hand from the rule."""

import math

import torch
import torch.nn.functional as F

from fastdrag_core import dragdiffusion as dd
from fastdrag_core.grad_step import GradientStep, needs_loss_scaling

TINY = 1e-8  # below float16's smallest subnormal (2^-24 = 5.96e-8): flushes to zero in float16


def half_product(p, w):
    """A float16 network: h = p * w computed in float16 (p is the float32 master copy)."""
    return p.half() * w


def test_only_float16_compute_scales_the_loss():
    assert needs_loss_scaling(torch.float16)
    assert not needs_loss_scaling(torch.bfloat16) and not needs_loss_scaling(torch.float32)
    p = torch.zeros(3, requires_grad=True)
    assert GradientStep(torch.optim.SGD([p], lr=1.0), [p], torch.float16, "cpu").scale == 2.0 ** 16
    assert GradientStep(torch.optim.SGD([p], lr=1.0), [p], torch.bfloat16, "cpu").scale == 1.0


def test_scaling_keeps_a_gradient_that_underflows_float16():
    """dL/dh = 1e-8 flushes to zero when the backward pass casts it to float16; scaled by 2^16 it is
    6.55e-4, and the unscaled float32 gradient is 1e-8 * w. SGD(lr=1) from p = 0: p <- -1e-8 * w."""
    w = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float16)
    for dtype, expect_moved in ((torch.float32, False), (torch.float16, True)):
        p = torch.zeros(3, requires_grad=True)
        step = GradientStep(torch.optim.SGD([p], lr=1.0), [p], dtype, "cpu")
        assert step((half_product(p, w).float() * TINY).sum())
        delta = p.detach().double()
        if expect_moved:
            torch.testing.assert_close(delta, -TINY * w.double(), rtol=2e-3, atol=0)
        else:
            assert torch.equal(delta, torch.zeros(3, dtype=torch.float64))  # the unscaled rule loses it
        assert p.grad is None  # zeroed after the step


def test_overflowing_steps_are_skipped_until_the_scale_fits():
    """dL/dh = 1e4: S * 1e4 overflows float16 (max 65504) for S = 2^16 ... 2^3, so 14 steps are skipped
    (p unchanged, S halved each time); at S = 4 the step is taken: p <- p - lr * 1e4 * w."""
    w = torch.tensor([1.0, -1.0], dtype=torch.float16)
    p = torch.zeros(2, requires_grad=True)
    step = GradientStep(torch.optim.SGD([p], lr=1e-4), [p], torch.float16, "cpu")
    outcomes = [step((half_product(p, w).float() * 1e4).sum()) for _ in range(15)]
    assert outcomes == [False] * 14 + [True]
    assert step.skipped == 14 and step.taken == 1 and step.scale == 4.0
    torch.testing.assert_close(p.detach(), torch.tensor([-1.0, 1.0]))


def test_a_nan_gradient_is_skipped():
    p = torch.ones(2, requires_grad=True)
    step = GradientStep(torch.optim.Adam([p], lr=0.1), [p], torch.float16, "cpu")
    assert not step((half_product(p, torch.ones(2, dtype=torch.float16)).float() * float("nan")).sum())
    assert torch.equal(p.detach(), torch.ones(2)) and step.scale == 2.0 ** 15 and step.skipped == 1


def fp16_drag_model(feature_scale=1.0, seed=0):
    """A small differentiable float16 stand-in for the UNet (float32 in and out, float16 inside, as
    ComfyUI's model with a float16 compute dtype): features tanh(conv(z)) resized 2x, times
    ``feature_scale`` after the float16 part; x_prev a linear map of z."""
    g = torch.Generator().manual_seed(seed)
    w1 = (torch.randn(6, 4, 3, 3, generator=g) * 0.4).half()
    w2 = (torch.randn(4, 4, 3, 3, generator=g) * 0.1).half()

    def forward(z):
        zh = z.half()
        feat = F.interpolate(torch.tanh(F.conv2d(zh, w1, padding=1)), size=(2 * z.shape[-2], 2 * z.shape[-1]),
                             mode="bilinear")
        x_prev = 0.9 * zh + F.conv2d(zh, w2, padding=1)
        return x_prev.float(), feat.float() * feature_scale

    return forward


def drag_case():
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1:7, 1:7] = True
    return z, torch.tensor([[6.0, 6.0]]), torch.tensor([[6.0, 12.0]]), mask


def test_drag_loop_in_float16_is_finite_and_follows_the_float32_loop():
    """The same float16 network, optimised with the float16 rule (scaled) and with the float32 rule: the
    scale is a power of two, so both take the same steps up to float16 rounding of the gradients."""
    z, handles, targets, mask = drag_case()
    settings = dd.DragSettings(steps=4, lr=0.01, lam=0.5)
    forward = fp16_drag_model()
    scaled = dd.optimise_latent(forward, z, handles, targets, mask, settings, compute_dtype=torch.float16)
    plain = dd.optimise_latent(forward, z, handles, targets, mask, settings, compute_dtype=torch.float32)
    assert scaled.z.dtype == torch.float32 and torch.isfinite(scaled.z).all()
    assert scaled.steps_taken == 4 and scaled.skipped_steps == 0 and all(math.isfinite(v) for v in scaled.losses)
    assert not torch.equal(scaled.z, z)
    torch.testing.assert_close(scaled.z, plain.z, rtol=0, atol=2e-3)


def test_drag_loop_keeps_float16_gradients_that_would_underflow():
    """Features scaled by 1e-8 after the float16 part: dL/dF is then ~1e-8 / C per element, which
    flushes to zero in the float16 backward. Unscaled, Adam sees a zero gradient and z stays put;
    with the float16 rule z moves, in the direction of the unscaled loop of a float32 copy."""
    z, handles, targets, _ = drag_case()
    settings = dd.DragSettings(steps=2, lr=0.01)
    forward = fp16_drag_model(feature_scale=TINY)
    unscaled = dd.optimise_latent(forward, z, handles, targets, None, settings, compute_dtype=torch.float32)
    scaled = dd.optimise_latent(forward, z, handles, targets, None, settings, compute_dtype=torch.float16)
    assert unscaled.steps_taken == 2 and torch.equal(unscaled.z, z)
    assert scaled.steps_taken == 2 and (scaled.z - z).abs().max() > 1e-3


def test_lora_style_factors_train_in_float16():
    """A frozen float16 weight W with float32 LoRA factors (W' = W + B A cast to float16, as ComfyUI's
    LoraDiff on a float16 model) fitted to a target by AdamW under the float16 rule: every step is
    finite, the loss falls, W and the input get no gradient."""
    g = torch.Generator().manual_seed(2)
    W = torch.randn(8, 16, generator=g).half()
    x = torch.randn(32, 16, generator=g).half()
    target = (x.float() @ (W.float() + 0.05 * torch.randn(8, 16, generator=g)).T)
    down = (torch.randn(4, 16, generator=g) / 4).requires_grad_(True)
    up = torch.zeros(8, 4, requires_grad=True)
    step = GradientStep(torch.optim.AdamW([up, down], lr=1e-2), [up, down], torch.float16, "cpu")
    losses = []
    for _ in range(30):
        y = F.linear(x, (W + (up @ down)).half())
        loss = F.mse_loss(y.float(), target)
        assert step(loss)
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]
    assert step.skipped == 0 and not W.requires_grad and not x.requires_grad
