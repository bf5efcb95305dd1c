"""Writes a tiny random test checkpoint with the harness's ``make_tiny_ckpt.py`` (run by ComfyUI's python).

``python make_test_ckpt.py HARNESS_DIR COMFYUI_ROOT KIND OUT``; KIND is one of :data:`KINDS`. All use the TAESD
VAE (the KL VAE dominates CPU time at test sizes). ``sd15_layout`` is the SD1.5 UNet *layout*
(4 levels x 2 res blocks, attention on levels 0-2: 16 attn1 layers, 12 output blocks, so diffusers'
``up_blocks[1]`` / ``up_blocks[2]`` exist as in SD1.5) at 320 channels on every level, for the
DragDiffusion and DIFT tests; ComfyUI detects it as SD15 / EPS like the real one.
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
KINDS = {"sd15": "sd15", "sd15_layout": "sd15", "sdxl": "sdxl", "sd2v": "sd2v"}


def main(harness_dir: str, comfy_dir: str, kind: str, out: str):
    spec = importlib.util.spec_from_file_location("make_tiny_ckpt", os.path.join(harness_dir, "make_tiny_ckpt.py"))
    mtc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mtc)
    arch = KINDS[kind]
    if kind == "sd15_layout":
        mtc.ARCHS["sd15_layout"] = dict(mtc.ARCHS["sd15"], tiny=SD15_LAYOUT_UNET, title="SD1.5 layout")
        arch = "sd15_layout"
    sys.argv = [sys.argv[0], "--arch", arch, "--comfy-dir", comfy_dir, "--out", out, "--vae", "taesd"]
    mtc.main()


if __name__ == "__main__":
    main(*sys.argv[1:5])
