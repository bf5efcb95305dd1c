#!/usr/bin/env python3
"""Benchmark the FastDrag nodes in the real ComfyUI server.

Prints, in one run, the median wall time (server-side, execution_start -> execution_success) of

* a full ``FastDragEdit`` (a new image each time: encode, invert, warp, fill, sample, decode),
* a re-drag (same image, only the points changed: ComfyUI's cache keeps encode + inversion),
* a plain ``KSampler`` img2img on the same image doing the same number of UNet evaluations
  (euler, cfg 1, denoise = strength, steps chosen so that it runs 2k model calls),

and their ratios, plus the K/V memory from the server log. ``--ckpt`` picks the tiny test checkpoint
of another family (``sdxl``, ``sd2v``, ``sd15_layout``; built once like the integration tests' ones);
``--kv-report`` also prints the K/V store size of full-size SDXL at 1024² and SD1.5 at 512², derived
from the real layer shapes (``benchmarks/kv_size.py``, meta device), and cross-checks that derivation
against the store's own accounting on the benchmarked checkpoint.

    COMFYUI_ROOT=~/.cache/comfy-harness/ComfyUI python3 benchmarks/bench_nodes.py            # tiny SD1.5, CPU
    COMFYUI_ROOT=~/.cache/comfy-harness/ComfyUI python3 benchmarks/bench_nodes.py --ckpt sdxl --size 256 --kv-report
    COMFYUI_ROOT=... FASTDRAG_TEST_DEVICE=gpu FASTDRAG_TEST_CKPT=/path/sd15_full.safetensors \\
        python3 benchmarks/bench_nodes.py --size 512 --runs 7                               # GPU

Environment as for the integration tests (tests/integration/comfy_server.py).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

from comfy_server import ComfyServer, comfy_python, find_comfyui, pattern_png  # noqa: E402
from graphs import base, edit_node, invert_node, points_json, points_node, save_node  # noqa: E402

KV_SIZE = os.path.join(HERE, "kv_size.py")
ARCH_OF = {"sd15": "sd15", "sd15_layout": None, "sdxl": "sdxl", "sd2v": "sd2v"}


def kv_size(root, arch, size, steps, strength, full=False) -> dict:
    """benchmarks/kv_size.py --json in ComfyUI's python."""
    cmd = [comfy_python(root), KV_SIZE, "--arch", arch, "--size", str(size), "--steps", str(steps),
           "--strength", str(strength), "--json"] + (["--full"] if full else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, COMFYUI_ROOT=root))
    return json.loads(out.stdout.strip().splitlines()[-1])


def exec_seconds(entry) -> float:
    ts = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (ts["execution_success"] - ts["execution_start"]) / 1000.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=128, help="image size (square)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--strength", type=float, default=0.7)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--ckpt", default="sd15", choices=sorted(ARCH_OF),
                    help="tiny test checkpoint family (sd15 = FASTDRAG_TEST_CKPT if set)")
    ap.add_argument("--kv-report", action="store_true",
                    help="also print the K/V store size of full SDXL at 1024² and SD1.5 at 512² (derived from "
                         "the layer shapes) and cross-check the derivation on the benchmarked checkpoint")
    args = ap.parse_args()
    root, reason = find_comfyui()
    if root is None:
        sys.exit(f"bench_nodes: {reason}")
    k = max(1, min(args.steps, round(args.strength * args.steps)))
    n_evals = 2 * k
    s = args.size
    drag_a = [((s * 0.375, s * 0.375), (s * 0.5, s * 0.47))]
    drag_b = [((s * 0.7, s * 0.7), (s * 0.62, s * 0.6))]

    srv = ComfyServer(root, port=args.port, test_pack=args.kv_report).wait_ready()
    kv_check = None
    try:
        ckpt = srv.add_checkpoint(args.ckpt) if args.ckpt != "sd15" else srv.ckpt_name

        def edit_graph(img, drags):
            p = base(ckpt)
            del p["enc"]
            p["img"]["inputs"]["image"] = img
            p["pts"] = points_node(points_json(drags, s, s))
            p["edit"] = edit_node(steps=args.steps, strength=args.strength)
            p["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["edit", 0]}}
            return p

        def ksampler_graph(img, seed):
            p = base(ckpt)
            p["img"]["inputs"]["image"] = img
            # denoise d with S steps runs the last round(S) of int(S/d) sigmas: S model calls (euler)
            p["ks"] = {"class_type": "KSampler", "inputs": {
                "model": ["ckpt", 0], "seed": seed, "steps": n_evals, "cfg": 1.0, "sampler_name": "euler",
                "scheduler": "ddim_uniform", "positive": ["pos", 0], "negative": ["neg", 0],
                "latent_image": ["enc", 0], "denoise": args.strength}}
            p["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}}
            p["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}
            return p

        full, redrag, plain = [], [], []
        for i in range(args.runs + 1):  # run 0 = warm-up (model load), not counted
            img = f"bench_{i}.png"
            srv.write_input(img, pattern_png(s, s, variant=i))
            t_full = exec_seconds(srv.run(edit_graph(img, drag_a)))
            t_re = exec_seconds(srv.run(edit_graph(img, drag_b)))
            t_ks = exec_seconds(srv.run(ksampler_graph(img, seed=i)))
            if i:
                full.append(t_full)
                redrag.append(t_re)
                plain.append(t_ks)
        log = srv.log_text()
        kv = re.findall(r"FastDragInvert: (inverted .*?); (\d+ K/V entries .*?);", log)
        inversions = log.count("FastDragInvert: inverted")
        if args.kv_report and ARCH_OF[args.ckpt]:
            # the store's own accounting (FastDragTestSave reads KVStore.nbytes) at the benchmarked size
            path = os.path.join(tempfile.mkdtemp(prefix="fastdrag_kv_"), "kv.pt")
            p = base(ckpt)
            p["img"]["inputs"]["image"] = "bench_0.png"
            p["inv"] = invert_node(steps=args.steps, strength=args.strength)
            p["save"] = save_node(path, kv=("inv", 1))
            srv.run(p)
            import torch
            kv_check = torch.load(path, weights_only=False)
    finally:
        srv.cleanup()

    m_full, m_re, m_ks = (statistics.median(x) for x in (full, redrag, plain))
    print(f"\nFastDrag benchmark: {args.ckpt} tiny checkpoint ({ckpt}), {s}x{s}, steps={args.steps} strength={args.strength} (k={k}, "
          f"{n_evals} UNet evaluations), cfg 1, {args.runs} runs, device={os.environ.get('FASTDRAG_TEST_DEVICE', 'cpu')}")
    print(f"{'what':<46}{'median s':>10}{'ratio':>10}")
    print(f"{'plain KSampler img2img (' + str(n_evals) + ' UNet evals)':<46}{m_ks:>10.3f}{1.0:>10.2f}")
    print(f"{'FastDragEdit, full (new image)':<46}{m_full:>10.3f}{m_full / m_ks:>10.2f}")
    print(f"{'FastDragEdit, re-drag (points changed)':<46}{m_re:>10.3f}{m_re / m_ks:>10.2f}")
    print(f"re-drag / full edit = {m_re / m_full:.2f}; inversions run: {inversions} for {2 * (args.runs + 1)} edits")
    if kv:
        print(f"K/V store: {kv[-1][1]}")
    print("all runs (s): full", [round(x, 3) for x in full], "re-drag", [round(x, 3) for x in redrag],
          "ksampler", [round(x, 3) for x in plain])
    if args.kv_report:
        report_kv(root, args, s, k, kv_check)


def report_kv(root, args, size, k, kv_check):
    mib = 1024 ** 2
    if kv_check is not None:
        derived = kv_size(root, ARCH_OF[args.ckpt], size, args.steps, args.strength)
        same = derived["bytes_cfg1"] == kv_check["kv_nbytes"] and derived["entries_cfg1"] == len(kv_check["kv_keys"])
        print(f"cross-check on the benchmarked model: derived from layer shapes {derived['entries_cfg1']} entries, "
              f"{derived['bytes_cfg1']} bytes; the store after FastDragInvert {len(kv_check['kv_keys'])} entries, "
              f"{kv_check['kv_nbytes']} bytes: {'equal' if same else 'DIFFERENT'}")
    print("K/V store (float16, derived from the real layer shapes on the meta device, "
          f"{args.steps} steps x strength {args.strength}, k = {k}):")
    print(f"{'model':<22}{'image':>10}{'layers':>8}{'per step':>12}{'cfg 1':>12}{'cfg > 1':>12}")
    for arch, px in (("sd15", 512), ("sdxl", 1024)):
        d = kv_size(root, arch, px, args.steps, args.strength, full=True)
        print(f"{'full ' + arch:<22}{str(px) + chr(178):>10}{d['layers']:>8}{d['bytes_per_step_chunk'] / mib:>9.1f} MiB"
              f"{d['bytes_cfg1'] / mib:>8.0f} MiB{d['bytes_cfg_gt1'] / mib:>8.0f} MiB")


if __name__ == "__main__":
    main()
