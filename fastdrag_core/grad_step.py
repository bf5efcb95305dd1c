"""The pack's one precision rule for gradient steps, used by both of its optimisation loops
(DragDiffusion's latent optimisation and the identity LoRA).

The rule is the official DragDiffusion run's (fp32 latent and LoRA factors, UNet in fp16 under
autocast, ``GradScaler``):

* the optimised tensors theta (the latent z_t, the LoRA factors A and B) are float32 (float64 stays
  float64); the network computes in its own dtype; the loss L is formed in float32;
* when the network computes in **float16** the gradient is taken of S·L with a dynamic loss scale S
  (``torch.amp.GradScaler``, S_0 = 2^16): small fp16 gradients that would flush to zero are kept;
  g = grad(S·L)/S is unscaled in float32 before the optimiser sees it; a step whose gradient holds
  inf / NaN is skipped (theta unchanged) and S is halved; S doubles after 2000 good steps;
* bfloat16 and float32 compute need no scaling (bf16 has float32's exponent range): S = 1, every
  step is taken.

The gradient is taken with ``torch.autograd.grad`` w.r.t. theta alone: no other leaf of the graph (for
example a model weight that requires grad) gets a gradient computed or a ``.grad`` written.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["needs_loss_scaling", "GradientStep"]


def needs_loss_scaling(compute_dtype: torch.dtype) -> bool:
    """True when a network computing in ``compute_dtype`` needs a dynamic loss scale (float16 only)."""
    return compute_dtype == torch.float16


class GradientStep:
    """One optimiser step of ``params`` on a float32 loss, by the rule above.

    Args:
        optimizer: the optimiser over ``params``.
        params: the optimised tensors theta (leaves that require grad).
        compute_dtype: the dtype the network computes in (decides the loss scaling).
        device_type: "cpu", "cuda", ... (the scaler's device).
        init_scale: S_0 (``GradScaler``'s default 2^16).

    Attributes:
        taken, skipped: steps applied / skipped for inf or NaN gradients.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], compute_dtype: torch.dtype,
                 device_type: str, init_scale: float = 2.0 ** 16):
        self.optimizer = optimizer
        self.params = list(params)
        self.scaler = torch.amp.GradScaler(device_type, init_scale=init_scale,
                                           enabled=needs_loss_scaling(compute_dtype))
        self.taken = 0
        self.skipped = 0

    @property
    def scale(self) -> float:
        """The current loss scale S (1.0 when no scaling)."""
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0

    def __call__(self, loss: torch.Tensor) -> bool:
        """Gradient of ``loss`` w.r.t. the params, then one step unless it was skipped; True if taken."""
        grads = torch.autograd.grad(self.scaler.scale(loss), self.params)
        for p, g in zip(self.params, grads):
            p.grad = g
        if self.scaler.is_enabled():
            before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # unscales, skips the step on inf / NaN
            self.scaler.update()
            took = self.scaler.get_scale() >= before  # the scale backs off exactly when the step was skipped
        else:
            self.optimizer.step()
            took = True
        self.optimizer.zero_grad(set_to_none=True)
        if took:
            self.taken += 1
        else:
            self.skipped += 1
        return took
