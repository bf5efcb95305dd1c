"""Socket types shared by the FastDrag nodes, and the small value objects that travel on them.

* ``FASTDRAG_DRAG``: a :class:`DragSpec` (points in pixels of the image they belong to, that image's
  size, and the editable-region mask or ``None`` for "whole image").
* ``FASTDRAG_KV``: a frozen :class:`fastdrag_core.kv.KVStore` (decoder attn1 K/V captured during
  inversion, plus the schedule it was captured on).

Both are immutable once a node returns them, so ComfyUI may cache and share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from comfy_api.latest import io

DRAG_TYPE = "FASTDRAG_DRAG"
KV_TYPE = "FASTDRAG_KV"

FastDragDrag = io.Custom(DRAG_TYPE)
FastDragKV = io.Custom(KV_TYPE)

# Key under which FastDragInvert tags the LATENT dict it returns with the schedule it belongs to.
# Later stages copy the dict (like every ComfyUI latent node), so the tag travels to FastDragSample,
# which uses it to reject K/V captured on another schedule.
LATENT_TAG = "fastdrag"


@dataclass(frozen=True)
class DragSpec:
    """The value of a FASTDRAG_DRAG socket.

    Attributes:
        handles: ((x, y), ...) handle points in pixels of the image described below.
        targets: ((x, y), ...) target points, same length as ``handles``.
        width, height: size of the image the points refer to (the IMAGE given to FastDragPoints).
        mask: bool tensor [height, width] on the CPU, True = editable; ``None`` = whole image.
    """

    handles: tuple[tuple[float, float], ...]
    targets: tuple[tuple[float, float], ...]
    width: int
    height: int
    mask: Optional[torch.Tensor] = None

    def __post_init__(self):
        if len(self.handles) != len(self.targets):
            raise ValueError(f"{len(self.handles)} handles but {len(self.targets)} targets")
        if self.mask is not None:
            if self.mask.dtype != torch.bool or tuple(self.mask.shape) != (self.height, self.width):
                raise ValueError(f"mask must be bool [{self.height}, {self.width}], got "
                                 f"{self.mask.dtype} {list(self.mask.shape)}")

    def __repr__(self):  # shown in ComfyUI's PreviewAny and in logs
        mask = "whole image" if self.mask is None else f"{int(self.mask.sum())} px"
        return (f"DragSpec({len(self.handles)} drags on {self.width}x{self.height}, mask: {mask}, "
                f"handles={list(self.handles)}, targets={list(self.targets)})")
