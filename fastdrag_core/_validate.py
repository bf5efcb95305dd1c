"""Argument checks shared by the core functions: clear ``ValueError``s naming the argument and value."""

from __future__ import annotations

import torch

LATENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _shape(value) -> str:
    return "x".join(str(s) for s in value.shape) if value.dim() else "scalar"


def as_latent(latent, where: str) -> torch.Tensor:
    """Check a latent is a floating tensor [B, C, H, W]."""
    if not isinstance(latent, torch.Tensor):
        raise ValueError(f"{where}: latent must be a torch.Tensor [B, C, H, W], got {type(latent).__name__}")
    if latent.dim() != 4:
        raise ValueError(f"{where}: latent must have rank 4 [B, C, H, W], got shape {_shape(latent)}")
    if latent.dtype not in LATENT_DTYPES:
        raise ValueError(f"{where}: latent dtype must be float32, float16, bfloat16 or float64, got {latent.dtype}")
    if latent.numel() == 0:
        raise ValueError(f"{where}: latent is empty (shape {_shape(latent)})")
    return latent


def _coords(value, name: str, where: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, device="cpu")
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{where}: {name} must be an [N, 2] array of (x, y), got {value!r}") from exc
    if t.dim() != 2 or t.shape[1] != 2:
        raise ValueError(f"{where}: {name} must have shape [N, 2] (x, y), got shape {_shape(t)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
        raise ValueError(f"{where}: {name} must be numeric, got dtype {t.dtype}")
    t = t.to(torch.float32)
    bad = ~torch.isfinite(t).all(dim=1)
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        raise ValueError(f"{where}: {name}[{i}] = {t[i].tolist()} is not finite")
    return t


def as_coords(handles, targets, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check handles/targets are matching finite [N, 2] (x, y) sets, N >= 1; float32 on the CPU."""
    h = _coords(handles, "handles", where)
    t = _coords(targets, "targets", where)
    if h.shape[0] == 0:
        raise ValueError(f"{where}: at least one drag is needed (handles has N = 0)")
    if h.shape[0] != t.shape[0]:
        raise ValueError(
            f"{where}: handles and targets must have the same length, got {h.shape[0]} handles "
            f"and {t.shape[0]} targets"
        )
    return h, t


def as_mask(mask, batch: int, height: int, width: int, where: str, *, name: str = "mask",
            allow_empty: bool = False) -> torch.Tensor:
    """Check a mask [H, W] or [B, H, W] (bool or numeric, non-zero = set); bool [B, H, W] on the CPU."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{where}: {name} must be a torch.Tensor [H, W] or [B, H, W], got {type(mask).__name__}")
    if mask.dim() == 2:
        m = mask[None]
    elif mask.dim() == 3:
        m = mask
    else:
        raise ValueError(f"{where}: {name} must have rank 2 [H, W] or 3 [B, H, W], got shape {_shape(mask)}")
    if tuple(m.shape[-2:]) != (height, width):
        raise ValueError(
            f"{where}: {name} is {m.shape[-2]}x{m.shape[-1]} (HxW) but the latent grid is "
            f"{height}x{width}; resize the mask to the latent (image_mask_to_latent)"
        )
    if m.shape[0] not in (1, batch):
        raise ValueError(f"{where}: {name} has batch {m.shape[0]} but the latent has batch {batch}")
    m = (m != 0).to("cpu").expand(batch, height, width).contiguous()
    if not allow_empty:
        empty = ~m.flatten(1).any(dim=1)
        if empty.any():
            b = int(torch.nonzero(empty)[0])
            raise ValueError(f"{where}: {name} is empty (no editable cell) for batch item {b}; "
                             "paint a mask, or pass an all-ones mask to edit everywhere")
    return m
