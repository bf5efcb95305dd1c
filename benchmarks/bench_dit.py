#!/usr/bin/env python3
"""FastDrag on Flux.1 / SD3.x: K/V store sizes at 1024² and CPU timings on tiny random models.

Part 1 (no server, instant): the joint-attention K/V store of the real models at ``--size`` (default
1024² = 4096 image tokens) for ``--steps`` x ``--strength`` (default 10 x 0.7 = 7 steps), per step and in
all, for every ``dit_kv`` setting, from the real block counts and widths (fp16, one cond chunk; cfg != 1
doubles it) with ``fastdrag_core.dit_kv``'s layer rule.

Part 2 (``--time``): in the real ComfyUI server, median server-side wall time of ``FastDragEdit`` (encode,
k inversion steps, warp, fill, k sampling steps, decode) against a plain ``KSampler`` img2img on the same
model and image doing the same number of model calls (euler, simple, cfg 1, 2k steps at denoise =
strength), on the harness's tiny SD3 and a narrow Flux.1 (test pack; ``--tiny-flux`` adds the harness's
535M-parameter tiny_flux). The K/V store line each edit printed gives the measured size, which must equal
Part 1's formula on the tiny model's width.

    python3 benchmarks/bench_dit.py
    COMFYUI_ROOT=~/.cache/comfy-harness/ComfyUI python3 benchmarks/bench_dit.py --time --size 128 --runs 3
"""

import argparse
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

# name: (layer list in call order, width, note)
FLUX1 = [("double_block", i) for i in range(19)] + [("single_block", i) for i in range(38)]
MODELS = {
    "Flux.1 dev/schnell": (FLUX1, 3072),
    "SD3.5 Large": ([("double_block", i) for i in range(38)], 2432),
    "SD3.5 Medium": ([layer for i in range(24) for layer in ([("double_block", i)] + ([("double_block", i, "x_self")]
                                                                                       if i <= 12 else []))], 1536),
    "SD3 Medium": ([("double_block", i) for i in range(24)], 1536),
}


def gib(n):
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def memory_table(size, steps, strength):
    from fastdrag_core.dit_kv import KEEP_OPTIONS, DiTKVKeep, store_bytes

    k = min(steps, max(1, int(round(strength * steps))))
    tokens = (size // 16) ** 2  # VAE /8, patch 2x2
    print(f"K/V store at {size}x{size} ({tokens} image tokens), {steps} steps x {strength} = {k} steps, fp16, "
          "one chunk (cfg 1):")
    for name, (layers, width) in MODELS.items():
        cells = []
        for opt in KEEP_OPTIONS:
            keep = DiTKVKeep(opt)
            n = len(keep.layers(layers))
            per = store_bytes(tokens, width, n, 1, keep.keeps_k)
            cells.append(f"{opt} {n}/{len(layers)} layers: {gib(per)}/step, {gib(per * k)}")
        print(f"  {name:18s} " + "; ".join(cells))


def exec_seconds(entry):
    ts = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (ts["execution_success"] - ts["execution_start"]) / 1000.0


def timings(args):
    from comfy_server import ComfyServer, find_comfyui, pattern_png
    from graphs import points_json, points_node

    root, reason = find_comfyui()
    if root is None:
        sys.exit(reason)
    k = min(args.steps, max(1, int(round(args.strength * args.steps))))
    srv = ComfyServer(root).wait_ready()
    try:
        img = "bench_dit.png"
        srv.write_input(img, pattern_png(args.size, args.size))
        srv.run({"vae": {"class_type": "FastDragTestMakeVAE16", "inputs": {"name": "fastdrag_test_vae16.safetensors"}}})
        models = {"tiny SD3 (MMDiT depth 2, 1.3M)": ({"class_type": "UNETLoader", "inputs": {
            "unet_name": srv.add_diffusion_model("tiny_sd3"), "weight_dtype": "default"}}, False, 128),
                  "narrow Flux.1 (2+2 blocks, width 256)": ({"class_type": "FastDragTestNarrowFlux", "inputs": {
                      "seed": 0, "depth": 2, "depth_single": 2}}, True, 256)}
        models = {key: v for key, v in models.items() if key.split()[0] + " " + key.split()[1] in args.models
                  or key.split()[0] in args.models}
        if args.tiny_flux:
            models["tiny_flux (1+1 blocks, width 3072, 535M)"] = ({"class_type": "UNETLoader", "inputs": {
                "unet_name": srv.add_diffusion_model("tiny_flux"), "weight_dtype": "default"}}, True, 3072)
        drag = points_json([((args.size * 3 // 8, args.size // 2), (args.size // 2, args.size // 2))], args.size,
                           args.size)
        for name, (model, flux, width) in models.items():
            def front(text):
                p = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": srv.ckpt_name}},
                     "text": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}},
                     "img": {"class_type": "LoadImage", "inputs": {"image": img}},
                     "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "fastdrag_test_vae16.safetensors"}},
                     "model": model}
                p["pos"] = ({"class_type": "FluxGuidance", "inputs": {"conditioning": ["text", 0], "guidance": 3.5}}
                            if flux else dict(p["text"]))
                return p

            def edit(i):
                p = front(f"run {i}")
                p["pts"] = points_node(drag)
                p["edit"] = {"class_type": "FastDragEdit", "inputs": {
                    "model": ["model", 0], "vae": ["vae", 0], "positive": ["pos", 0], "image": ["img", 0],
                    "drag": ["pts", 0], "steps": args.steps, "strength": args.strength, "cfg": 1.0}}
                p["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["edit", 0]}}
                return p

            def img2img(i):
                p = front(f"run {i}")
                p["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["vae", 0]}}
                p["ks"] = {"class_type": "KSampler", "inputs": {
                    "model": ["model", 0], "seed": i + 1, "steps": 2 * k, "cfg": 1.0, "sampler_name": "euler",
                    "scheduler": "simple", "positive": ["pos", 0], "negative": ["pos", 0], "latent_image": ["enc", 0],
                    "denoise": args.strength}}
                p["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}}
                p["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}
                return p

            # no-op reconstruction: Invert -> Sample against the clean latent (relative RMS error)
            rec = front("reconstruction")
            rec["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["vae", 0]}}
            rec["inv"] = {"class_type": "FastDragInvert", "inputs": {
                "model": ["model", 0], "positive": ["pos", 0], "latent": ["enc", 0], "steps": args.steps,
                "strength": args.strength, "cfg": 1.0}}
            paths = {}
            for on in (True, False):
                rec[f"s{on}"] = {"class_type": "FastDragSample", "inputs": {
                    "model": ["model", 0], "positive": ["pos", 0], "latent": ["inv", 0], "kv": ["inv", 1],
                    "cfg": 1.0, "consistency": on}}
                paths[on] = os.path.join(srv.base, f"rec_{on}.pt")
                rec[f"save{on}"] = {"class_type": "FastDragTestSave", "inputs": {"path": paths[on],
                                                                                 "latent": [f"s{on}", 0]}}
            paths["enc"] = os.path.join(srv.base, "rec_enc.pt")
            rec["save_enc"] = {"class_type": "FastDragTestSave", "inputs": {"path": paths["enc"], "latent": ["enc", 0]}}
            srv.run(rec)
            import torch
            x0 = torch.load(paths["enc"], weights_only=False)["latent"].double()
            errs = {on: float(((torch.load(paths[on], weights_only=False)["latent"].double() - x0).pow(2).mean()
                               / x0.pow(2).mean()).sqrt()) for on in (True, False)}
            print(f"{name}: no-op reconstruction (Euler inversion, {k} steps) relative RMS error "
                  f"{errs[True]:.2e} with K/V injection, {errs[False]:.2e} without")
            srv.run(edit(-1))
            srv.run(img2img(-1))  # warm-up: model loads
            t_edit, t_i2i, kv_text = [], [], ""
            for i in range(args.runs):
                entry = srv.run(edit(i))
                t_edit.append(exec_seconds(entry))
                kv_text = " ".join(str(t) for out in entry.get("outputs", {}).values() for t in out.get("text", [])) \
                    or kv_text
                t_i2i.append(exec_seconds(srv.run(img2img(i))))
            e, s = statistics.median(t_edit), statistics.median(t_i2i)
            m = re.search(r"(\d[\d.]*) (B|KiB|MiB|GiB) float16", kv_text)
            tokens = (args.size // 16) ** 2
            print(f"{name}: {args.size}px, {k}+{k} model calls: FastDragEdit {e:.2f} s, img2img ({2 * k} euler steps) "
                  f"{s:.2f} s, ratio {e / s:.2f} (median of {args.runs}); K/V store {m.group(0) if m else '?'} "
                  f"(formula: {tokens} tokens x {width} x 2 B per layer and step)")
    finally:
        srv.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=None, help="image size (default 1024 for the table, 128 timed)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--strength", type=float, default=0.7)
    ap.add_argument("--time", action="store_true", help="also time edit vs img2img in the real server")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tiny-flux", action="store_true", help="also time the 535M-parameter tiny_flux (slow)")
    ap.add_argument("--models", default="tiny SD3,narrow Flux.1", help="which small models to time (comma list: "
                    "'tiny SD3', 'narrow Flux.1'; empty = none)")
    args = ap.parse_args()
    memory_table(1024, args.steps, args.strength)
    if args.time:
        args.size = args.size or 128
        timings(args)


if __name__ == "__main__":
    main()
