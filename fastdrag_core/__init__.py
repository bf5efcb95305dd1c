"""FastDrag's maths in pure PyTorch (no ComfyUI import): LWF warp, latent relocation, BNNI, points."""

from .bnni import bnni_fill
from .points import image_mask_to_latent, image_points_to_latent
from .warp import lwf_warp

__all__ = ["lwf_warp", "bnni_fill", "image_points_to_latent", "image_mask_to_latent"]
