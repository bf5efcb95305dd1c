"""Writes a tiny random test checkpoint with the harness's ``make_tiny_ckpt.py`` (run by ComfyUI's python).

``python make_test_ckpt.py HARNESS_DIR COMFYUI_ROOT KIND OUT``; KIND is one of :data:`KINDS`. All use the TAESD
VAE (the KL VAE dominates CPU time at test sizes). ``sd15_layout`` is the SD1.5 UNet *layout*
(4 levels x 2 res blocks, attention on levels 0-2: 16 attn1 layers, 12 output blocks, so diffusers'
``up_blocks[1]`` / ``up_blocks[2]`` exist as in SD1.5) at 320 channels on every level, for the
DragDiffusion and DIFT tests; ComfyUI detects it as SD15 / EPS like the real one.

``sd15_dift`` is ``sd15_layout`` (the same UNet, same seed) with an *informative* VAE encoder instead
of a random one: a random TAESD encoder turns an image into a latent of spatial std ~0.005 that hardly
depends on the image, so DIFT (at t = 261 the added noise has std ~0.59) sees only noise and a shifted
image cannot be tracked. This encoder is set by hand, not drawn: ``latent = DIFT_VAE_GAIN * P @
avgpool8(rgb)`` (rgb in [0, 1], ``P`` the colour projection :data:`DIFT_VAE_PROJECTION`), i.e. a
low-resolution colour image like a trained VAE's latent, with a gain large enough that a smooth texture
gives a UNet input (x 0.18215) of spatial std ~4, above the noise. The decoder stays random.
"""

import importlib.util
import os
import sys

SD15_LAYOUT_UNET = {
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 1, 1, 1],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
}
KINDS = {"sd15": "sd15", "sd15_layout": "sd15", "sd15_dift": "sd15", "sdxl": "sdxl", "sd2v": "sd2v"}
DIFT_VAE_GAIN = 240.0
DIFT_VAE_PROJECTION = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, -0.5, 0.5))
TAESD_ENCODER = "first_stage_model.taesd_encoder."


def pooled_colour_encoder(state_dict: dict) -> dict:
    """The TAESD encoder tensors of ``state_dict`` set to an 8x8 average pool and a colour projection.

    TAESD's encoder (comfy/taesd/taesd.py) is conv(3, 64), Block, then 3 x (stride-2 conv, 3 Blocks),
    conv(64, 4); a Block is relu(conv_path(x) + x). Conv 0 copies R, G, B into channels 0-2; every
    Block's conv path is zero (a Block is then relu, the identity on non-negative input); each stride-2
    conv averages 2 x 2 pixels per channel; the last conv applies ``gain * P``. No bias anywhere."""
    import torch

    out = {}
    proj = torch.tensor(DIFT_VAE_PROJECTION) * DIFT_VAE_GAIN
    for key, value in state_dict.items():
        if not key.startswith(TAESD_ENCODER):
            continue
        w = torch.zeros(value.shape, dtype=torch.float32)
        layer, kind = key[len(TAESD_ENCODER):].split(".")[:2]
        if (layer, kind) == ("0", "weight"):
            for c in range(3):
                w[c, c, 1, 1] = 1.0
        elif layer in ("2", "6", "10") and kind == "weight":  # padding 1: taps 1, 2 = pixels 2i, 2i + 1
            for c in range(3):
                w[c, c, 1:, 1:] = 0.25
        elif (layer, kind) == ("14", "weight"):
            w[:, :3, 1, 1] = proj
        out[key] = w.to(value.dtype)
    return out


def main(harness_dir: str, comfy_dir: str, kind: str, out: str):
    spec = importlib.util.spec_from_file_location("make_tiny_ckpt", os.path.join(harness_dir, "make_tiny_ckpt.py"))
    mtc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mtc)
    arch = KINDS[kind]
    if kind in ("sd15_layout", "sd15_dift"):
        mtc.ARCHS["sd15_layout"] = dict(mtc.ARCHS["sd15"], tiny=SD15_LAYOUT_UNET, title="SD1.5 layout")
        arch = "sd15_layout"
    sys.argv = [sys.argv[0], "--arch", arch, "--comfy-dir", comfy_dir, "--out", out, "--vae", "taesd"]
    mtc.main()
    if kind == "sd15_dift":
        from safetensors.torch import load_file, save_file

        state_dict = load_file(out)
        state_dict.update(pooled_colour_encoder(state_dict))
        save_file(state_dict, out)


if __name__ == "__main__":
    main(*sys.argv[1:5])
