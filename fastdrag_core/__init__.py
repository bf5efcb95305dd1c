"""FastDrag's maths in pure PyTorch (no ComfyUI import): LWF warp, latent relocation, BNNI, object
moving / copy, points."""

from .bnni import bnni_fill
from .object_move import move_object
from .points import image_mask_to_latent, image_points_to_latent
from .warp import lwf_warp

__all__ = ["lwf_warp", "bnni_fill", "move_object", "image_points_to_latent", "image_mask_to_latent"]
