"""DragDiffusion's identity-preserving LoRA: the pieces that need no ComfyUI.

What the official code does (Yujun-Shi/DragDiffusion ``utils/lora_utils.py::train_lora``, called by
``run_lora_training.py`` and the UI with ``lora_step=80, lora_lr=5e-4, lora_batch_size=4,
lora_rank=16``):

* a rank-r LoRA on ``to_q``, ``to_k``, ``to_v`` and ``to_out[0]`` of every attention module of the
  UNet (self- and cross-attention), diffusers' ``LoRALinearLayer``: down factor A  in  R^{r×in} drawn
  from N(0, (1/r)²), up factor B  in  R^{out×r} = 0, applied as W x + B A x with no alpha scaling
  (``network_alpha=None``), so the trained layer is W' = W + B A;
* AdamW(lr, betas (0.9, 0.999), weight decay 1e-2, eps 1e-8) on the factors only, constant learning
  rate, ``lora_step`` steps of batch ``lora_batch_size``;
* each step, for every batch item: ``Resize(512, bilinear)`` (short side to 512) then
  ``RandomCrop(512)`` of the image (no flip: the code has no flip transform), VAE-encode, then
  eps ~ N(0, I), t ~ U{0, ..., 999}, z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps and the loss
  mean((eps_hat(z_t, t, c) - eps)²) (the velocity as target for v-prediction models); text encoder frozen.

Here the crops are taken on the latent grid (see :func:`random_crop_origin`): squares of side
S = min(h, w) latent cells at the latent's own scale. For an image whose short side is 512 px
(every DragBench image taller than wide, every square 512² image) this is the official crop
distribution up to the 8-px grid of the offsets; for 512² images both are the identity.

Notation as in ``ddim.py``: ComfyUI's sampler variable is x = x_0 + sigma eps (sigma_t = sqrt((1 - abar_t)/abar_t)),
the model returns its x_0 prediction D ("denoised"), and x_0 is the latent in model space
(``latent_format.process_in``, ×0.18215 for SD1.x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ADAMW_BETAS",
    "ADAMW_EPS",
    "ADAMW_WEIGHT_DECAY",
    "OFFICIAL",
    "LoraTrainSettings",
    "StepDraw",
    "init_seed",
    "crop_side",
    "random_crop_origin",
    "sample_timesteps",
    "draw_step",
    "crop_batch",
    "init_lora_factors",
    "lora_scale",
    "lora_delta",
    "lora_branch",
    "lora_file_entries",
    "loss_weights",
    "noise_prediction_loss",
]

# The official optimiser (utils/lora_utils.py: torch.optim.AdamW(..., betas=(0.9, 0.999),
# weight_decay=1e-2, eps=1e-08)) with a "constant" diffusers scheduler, i.e. a fixed learning rate.
ADAMW_BETAS = (0.9, 0.999)
ADAMW_WEIGHT_DECAY = 1e-2
ADAMW_EPS = 1e-8

PREDICTIONS = ("eps", "v")


@dataclass(frozen=True)
class LoraTrainSettings:
    """The user-facing knobs of one identity-LoRA run (defaults = the official code).

    ``steps == 0`` means "no training" (the caller passes the model through)."""

    steps: int = 80
    learning_rate: float = 5e-4
    rank: int = 16
    batch_size: int = 4
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0 (0 = no LoRA), got {self.steps!r}")
        if not (isinstance(self.learning_rate, (int, float)) and 0.0 < float(self.learning_rate) < float("inf")):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 64:
            raise ValueError(f"seed must be an integer in [0, 2^64), got {self.seed!r}")


OFFICIAL = LoraTrainSettings()


def init_seed(seed: int) -> int:
    """Seed of the factor-initialisation stream for a user ``seed``; the data stream (crops, noise,
    timesteps) uses ``seed`` itself. Two streams keep the data draws independent of the model's layer
    shapes and of the rank (same seed, same crops/noise/timesteps for any model), which the official
    single global stream (``set_seed(0)``, CUDA draws) could not be matched on anyway."""
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    return seed ^ 0x9E3779B97F4A7C15


# -- training data: crops, noise, timesteps --------------------------------------------------------------


def crop_side(height: int, width: int) -> int:
    """Side S of the square training crops: the short side of the latent.

    The official ``Resize(512)`` + ``RandomCrop(512)`` takes a square of the short side after scaling
    the short side to 512 px; on a latent that is used at its own scale, that is a square of the short
    side without scaling."""
    if height < 1 or width < 1:
        raise ValueError(f"latent must be at least 1x1, got {height}x{width}")
    return min(int(height), int(width))


def random_crop_origin(generator: torch.Generator, height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of one random ``size``² crop of a ``height``×``width`` grid.

    torchvision's ``RandomCrop.get_params``: no draw and (0, 0) when the crop is the whole grid, else
    top ~ U{0, ..., height - size} then left ~ U{0, ..., width - size} (two ``torch.randint`` draws,
    in that order)."""
    if not 1 <= size <= min(height, width):
        raise ValueError(f"crop size {size} does not fit a {height}x{width} grid")
    if height == size and width == size:
        return 0, 0
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return top, left


def sample_timesteps(generator: torch.Generator, batch_size: int, num_timesteps: int = 1000) -> torch.Tensor:
    """t ~ U{0, ..., num_timesteps - 1} per batch item (int64), as ``torch.randint(0, 1000, (bsz,))``."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    return torch.randint(0, num_timesteps, (batch_size,), generator=generator, dtype=torch.int64)


@dataclass(frozen=True)
class StepDraw:
    """The random numbers of one training step.

    Attributes:
        origins: (top, left) of each item's crop on the latent grid.
        size: side S of the square crops.
        noise: eps, float32 [B, C, S, S] on the CPU.
        timesteps: t per item, int64 [B].
    """

    origins: tuple[tuple[int, int], ...]
    size: int
    noise: torch.Tensor
    timesteps: torch.Tensor


def draw_step(generator: torch.Generator, channels: int, height: int, width: int, batch_size: int,
              num_timesteps: int = 1000) -> StepDraw:
    """All random numbers of one step, from one CPU generator, in the official order: the crops of
    the items, then the noise, then the timesteps. Deterministic for a generator state, on any
    device the tensors are moved to afterwards."""
    size = crop_side(height, width)
    origins = tuple(random_crop_origin(generator, height, width, size) for _ in range(batch_size))
    noise = torch.randn((batch_size, channels, size, size), generator=generator, dtype=torch.float32)
    timesteps = sample_timesteps(generator, batch_size, num_timesteps)
    return StepDraw(origins=origins, size=size, noise=noise, timesteps=timesteps)


def crop_batch(latent: torch.Tensor, origins: Sequence[tuple[int, int]], size: int) -> torch.Tensor:
    """Stack the crops ``latent[0, :, top:top+S, left:left+S]`` of a [1, C, H, W] latent: [B, C, S, S]."""
    if latent.dim() != 4 or latent.shape[0] != 1:
        raise ValueError(f"latent must be [1, C, H, W], got shape {list(latent.shape)}")
    h, w = latent.shape[-2:]
    crops = []
    for top, left in origins:
        if not (0 <= top <= h - size and 0 <= left <= w - size):
            raise ValueError(f"crop at ({top}, {left}) of size {size} leaves the {h}x{w} latent")
        crops.append(latent[0, :, top:top + size, left:left + size])
    return torch.stack(crops)


# -- the LoRA factors and the rank / alpha convention ---------------------------------------------------


def init_lora_factors(generator: torch.Generator, out_features: int, in_features: int, rank: int,
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(up B [out, r], down A [r, in]) as diffusers' ``LoRALinearLayer``: A ~ N(0, (1/r)²), B = 0,
    so the LoRA starts as the identity edit (B A = 0) with a non-zero gradient for B."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    down = torch.empty((rank, in_features), dtype=torch.float32).normal_(0.0, 1.0 / rank, generator=generator)
    up = torch.zeros((out_features, rank), dtype=torch.float32)
    return up.to(dtype), down.to(dtype)


def lora_scale(alpha: Optional[float], rank: int) -> float:
    """The kohya / ComfyUI rule: DeltaW = (alpha / rank) · B A, and scale 1 when the file has no alpha.

    The official (diffusers, ``network_alpha=None``) LoRA is W + B A, so the pack writes
    alpha = rank: any loader then applies exactly B A."""
    return 1.0 if alpha is None else float(alpha) / float(rank)


def lora_delta(up: torch.Tensor, down: torch.Tensor, alpha: Optional[float] = None) -> torch.Tensor:
    """DeltaW = lora_scale(alpha, r) · B A for B [out, r], A [r, in]."""
    if up.dim() != 2 or down.dim() != 2 or up.shape[1] != down.shape[0]:
        raise ValueError(f"up [out, r] and down [r, in] do not match: {list(up.shape)} and {list(down.shape)}")
    return lora_scale(alpha, down.shape[0]) * (up @ down)


def lora_branch(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor, alpha: Optional[float] = None) -> torch.Tensor:
    """DeltaW x = lora_scale(alpha, r) · B (A x) for inputs x [..., in]: what the LoRA adds to a projection's
    output, W' x = W x + DeltaW x, computed on the activations (two rank-r products) instead of forming the
    weight-sized W' = W + B A. Computed in the dtype of the arguments."""
    if up.dim() != 2 or down.dim() != 2 or up.shape[1] != down.shape[0] or x.shape[-1] != down.shape[1]:
        raise ValueError(f"x [..., {x.shape[-1]}], up {list(up.shape)} and down {list(down.shape)} do not match")
    return lora_scale(alpha, down.shape[0]) * F.linear(F.linear(x, down), up)


def lora_file_entries(prefix: str, up: torch.Tensor, down: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three tensors of one layer in the kohya LoRA format that ComfyUI, A1111 and diffusers
    load: ``<prefix>.lora_up.weight`` (B), ``<prefix>.lora_down.weight`` (A) and
    ``<prefix>.alpha`` = rank (so that DeltaW = B A, see :func:`lora_scale`)."""
    if up.dim() != 2 or down.dim() != 2 or up.shape[1] != down.shape[0]:
        raise ValueError(f"{prefix}: up [out, r] and down [r, in] do not match: {list(up.shape)} and "
                         f"{list(down.shape)}")
    rank = down.shape[0]
    return {
        f"{prefix}.lora_up.weight": up.detach().contiguous(),
        f"{prefix}.lora_down.weight": down.detach().contiguous(),
        f"{prefix}.alpha": torch.tensor(float(rank)),
    }


# -- the loss ----------------------------------------------------------------------------------------------


def loss_weights(sigma: torch.Tensor, prediction: str, sigma_data: float = 1.0) -> torch.Tensor:
    """w(sigma) such that w(sigma) · (D - x_0)² is the squared error of the model's raw output.

    * eps: D = x - sigma eps_hat and x = x_0 + sigma eps, so eps_hat - eps = (x_0 - D) / sigma:                w = 1 / sigma².
    * v (sigma_data = 1: v = sqrt(abar) eps - sqrt(1 - abar) x_0): ComfyUI's
      D = x sigma_d² / (sigma² + sigma_d²) - v_hat sigma sigma_d / sqrt(sigma² + sigma_d²), so
      v_hat - v = (x_0 - D) sqrt(sigma² + sigma_d²) / (sigma sigma_d):                               w = (sigma² + sigma_d²) / (sigma sigma_d)².
    """
    if prediction == "eps":
        return 1.0 / (sigma * sigma)
    if prediction == "v":
        sd2 = float(sigma_data) ** 2
        return (sigma * sigma + sd2) / (sigma * sigma * sd2)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def noise_prediction_loss(denoised: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, prediction: str = "eps",
                          sigma_data: float = 1.0) -> torch.Tensor:
    """The official loss ``F.mse_loss(model_pred.float(), target.float(), reduction="mean")`` written
    with ComfyUI's x_0 prediction: mean over all elements of w(sigma_b) (D_b - x_0,b)², computed in float32
    (float64 stays float64). ``denoised`` and ``x0`` are [B, ...], ``sigma`` is [B]."""
    if denoised.shape != x0.shape:
        raise ValueError(f"denoised {list(denoised.shape)} and x0 {list(x0.shape)} differ in shape")
    if sigma.dim() != 1 or sigma.shape[0] != x0.shape[0]:
        raise ValueError(f"sigma must be [B] with B = {x0.shape[0]}, got shape {list(sigma.shape)}")
    dtype = torch.float64 if denoised.dtype == torch.float64 else torch.float32
    diff = denoised.to(dtype) - x0.to(dtype)
    w = loss_weights(sigma.to(device=diff.device, dtype=dtype), prediction, sigma_data)
    w = w.reshape((-1,) + (1,) * (diff.dim() - 1))
    return (w * diff * diff).mean()
