#!/usr/bin/env python3
"""Size of FastDrag's K/V store, derived from the real layer shapes of a UNet (no weights, no GPU).

Builds the UNet of an architecture on PyTorch's meta device with ComfyUI's own ``UNetModel`` and the
layouts of the harness's ``make_tiny_ckpt.py`` (``--full`` = the real model: the layout its
``--dry-run`` shows ComfyUI detects as SD15 / SDXL / SD20), runs one meta forward at the image size
with an attn1 replace on every decoder self-attention layer (what FastDragInvert patches) that records
the K shape, and sums

    bytes = sum over decoder attn1 layers of tokens x channels  x 2 (K and V) x 2 (float16)
            x k steps x chunks (1 at cfg 1, 2 at cfg > 1)

Run with ComfyUI's python (it imports ``comfy``):

    ~/.cache/comfy-harness/venv/bin/python benchmarks/kv_size.py --arch sdxl --full --size 1024
    ~/.cache/comfy-harness/venv/bin/python benchmarks/kv_size.py --arch sdxl --size 256 --json   # tiny

Environment: ``COMFYUI_ROOT`` (default: the ComfyUI this pack sits in, else the comfy-harness's:
``comfy_client.find_comfyui``), ``COMFY_HARNESS_DIR`` (default: ``shared/tools/comfy-harness`` next
to the repo or a folder above it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from comfy_client import find_comfyui, harness_dir  # noqa: E402  (stdlib only)


def load_harness():
    harness = harness_dir()
    if not os.path.exists(os.path.join(harness, "make_tiny_ckpt.py")):
        sys.exit("kv_size: set COMFY_HARNESS_DIR to the folder with make_tiny_ckpt.py")
    spec = importlib.util.spec_from_file_location("make_tiny_ckpt", os.path.join(harness, "make_tiny_ckpt.py"))
    mtc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mtc)
    return mtc


def kv_layout(arch: str, full: bool, size: int) -> list[dict]:
    """One entry per decoder attn1 layer: site, tokens, channels (K of one chunk at ``size`` px)."""
    import torch

    mtc = load_harness()
    root, reason = find_comfyui()
    if root is None:
        sys.exit(f"kv_size: {reason}")
    mtc.setup_comfy(root)
    import comfy.ops
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    sizes = mtc.ARCHS[arch]["full" if full else "tiny"]
    unet = UNetModel(**mtc.unet_config(arch, sizes), dtype=torch.float32, device="meta",
                     operations=comfy.ops.disable_weight_init)
    layers: list[dict] = []

    def site_patch(site, record):
        def patch(q, k, v, extra_options):
            if record:
                layers.append({"site": list(site), "tokens": int(k.shape[1]), "channels": int(k.shape[2])})
            return q  # shape of the attention output; no kernel runs on meta
        return patch

    replace = {"attn1": {}, "attn2": {}}
    for name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for i, blk in enumerate(blocks):
            for layer in blk:
                if isinstance(layer, SpatialTransformer):
                    for j in range(len(layer.transformer_blocks)):
                        replace["attn1"][(name, i, j)] = site_patch((name, i, j), name == "output")
                        replace["attn2"][(name, i, j)] = site_patch((name, i, j), False)
    cfg = mtc.unet_config(arch, sizes)
    lat = size // 8
    x = torch.empty(1, 4, lat, lat, device="meta")
    ctx = torch.empty(1, 77, cfg["context_dim"], device="meta")
    extra = {"y": torch.empty(1, cfg["adm_in_channels"], device="meta")} if cfg.get("adm_in_channels") else {}
    with torch.no_grad():
        unet(x, timesteps=torch.empty(1, device="meta"), context=ctx,
             transformer_options={"patches_replace": replace}, **extra)
    return layers


def store_bytes(layers, k: int, chunks: int, bytes_per=2) -> int:
    return sum(layer["tokens"] * layer["channels"] for layer in layers) * 2 * bytes_per * k * chunks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sdxl", choices=["sd15", "sdxl", "sd2v"])
    ap.add_argument("--full", action="store_true", help="the real UNet layout (else the harness's tiny one)")
    ap.add_argument("--size", type=int, default=1024, help="square image size in pixels")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--strength", type=float, default=0.7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    k = max(1, min(args.steps, round(args.strength * args.steps)))
    layers = kv_layout(args.arch, args.full, args.size)
    per_step = store_bytes(layers, 1, 1)
    out = {"arch": args.arch, "full": args.full, "size": args.size, "k": k, "layers": len(layers),
           "entries_cfg1": len(layers) * k, "bytes_per_step_chunk": per_step,
           "bytes_cfg1": store_bytes(layers, k, 1), "bytes_cfg_gt1": store_bytes(layers, k, 2), "per_layer": layers}
    if args.json:
        print(json.dumps(out))
        return
    groups: dict = {}
    for layer in layers:
        key = (layer["tokens"], layer["channels"])
        groups[key] = groups.get(key, 0) + 1
    name = f"{'full' if args.full else 'tiny'} {args.arch}"
    print(f"{name} at {args.size}x{args.size}: {len(layers)} decoder self-attention layers")
    for (tokens, ch), n in sorted(groups.items()):
        print(f"  {n:3d} layers x {tokens:6d} tokens x {ch:5d} channels")
    mib = 1024 ** 2
    print(f"K+V per step and chunk (float16): {per_step / mib:.1f} MiB")
    print(f"store, {args.steps} steps x strength {args.strength} (k = {k}): cfg 1: {out['bytes_cfg1'] / mib:.1f} MiB "
          f"({out['bytes_cfg1'] / 1e9:.2f} GB); cfg > 1 (2 chunks): {out['bytes_cfg_gt1'] / mib:.1f} MiB")


if __name__ == "__main__":
    main()
