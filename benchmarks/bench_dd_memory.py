#!/usr/bin/env python3
"""Server memory of the DragDiffusion nodes against a plain KSampler, read from the ComfyUI process.

Starts one ComfyUI server with this pack and an SD1.x checkpoint (``--ckpt``; e.g. the full-size random
SD1.5 that ``make_tiny_ckpt.py --full`` writes), warms everything up once, then for each phase resets the
server's peak RSS (``/proc/PID/clear_refs``) and prints the peak above the idle RSS before it
(``VmHWM - VmRSS``, the memory the phase needed on top of the loaded model) and the idle RSS after it
(what the phase kept):

* KSampler, 1 step, cfg 1, batch 1, at ``--size`` (the plain inference reference);
* DragDiffusionDrag with ``--drag-steps`` iterations (a new drag each run, nothing from the cache);
* DragDiffusionLoRA with ``--lora-steps`` steps of batch 1 (rank 16).

Each node runs ``--runs`` times; the server memory after every run shows whether a run keeps anything.
The differences "node peak - KSampler peak" are the memory the gradient costs; with no weight-sized term
they are activations only.

    COMFYUI_ROOT=~/.cache/comfy-harness/ComfyUI python3 benchmarks/bench_dd_memory.py \\
        --ckpt /path/to/full_sd15.safetensors --size 256

CPU only (the figures are the process's RSS); the server runs with glibc's mmap threshold fixed so that
freed tensors leave the RSS. ``--extra`` passes ComfyUI flags (e.g. ``--extra=--fp16-unet``).
"""

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

from comfy_server import ComfyServer, find_comfyui, pattern_png  # noqa: E402
from graphs import points_json, points_node  # noqa: E402

import server_memory  # noqa: E402  (benchmarks/, beside this script)
from server_memory import reset_peak  # noqa: E402


def status_bytes(pid: int, key: str) -> int:
    """``VmRSS`` or ``VmHWM`` of ``pid`` in bytes (server_memory.read, the one /proc reader)."""
    return int(server_memory.read(pid)[key] * 2 ** 20)


def mib(n) -> str:
    return f"{n / 2 ** 20:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="SD1.x checkpoint file")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--drag-steps", type=int, default=3)
    ap.add_argument("--lora-steps", type=int, default=2)
    ap.add_argument("--nodes", default="lora,drag", help="what to measure besides KSampler: lora, drag (comma-separated)")
    ap.add_argument("--extra", action="append", default=[], help="extra ComfyUI argument (repeatable)")
    args = ap.parse_args()
    root, reason = find_comfyui()
    if root is None:
        sys.exit(f"bench_dd_memory: {reason}")
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    s = args.size
    srv = ComfyServer(root, extra_args=args.extra).wait_ready()
    pid = srv.proc.pid
    try:
        ckpt = srv.link_checkpoint(args.ckpt)

        def base(img):
            return {
                "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
                "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["ckpt", 1]}},
                "img": {"class_type": "LoadImage", "inputs": {"image": img}},
                "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
                "inv": {"class_type": "FastDragInvert", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                                                                   "latent": ["enc", 0], "steps": 10, "strength": 0.7,
                                                                   "cfg": 1.0, "capture_kv": False}},
            }

        def ksampler(i):
            p = base("mem.png")
            p["ks"] = {"class_type": "KSampler", "inputs": {
                "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["pos", 0], "latent_image": ["enc", 0],
                "seed": 1000 + i, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
                "denoise": 1.0}}
            p["out"] = {"class_type": "FastDragTestSave", "inputs": {"path": os.path.join(srv.base, f"ks{i}.pt"),
                                                                     "latent": ["ks", 0]}}
            return p

        def drag(i):
            p = base("mem.png")
            d = s // 8
            p["pts"] = points_node(points_json([((3 * d, 3 * d), (3 * d + 4 + 2 * i, 4 * d))], s, s))
            p["drag"] = {"class_type": "DragDiffusionDrag", "inputs": {
                "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["inv", 0], "drag": ["pts", 0],
                "steps": args.drag_steps, "learning_rate": 0.01, "lam": 0.1, "r_m": 1, "r_p": 3}}
            p["out"] = {"class_type": "FastDragTestSave", "inputs": {"path": os.path.join(srv.base, f"d{i}.pt"),
                                                                     "latent": ["drag", 0]}}
            return p

        def lora(i):
            p = base("mem.png")
            p["lora"] = {"class_type": "DragDiffusionLoRA", "inputs": {
                "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["enc", 0], "steps": args.lora_steps,
                "learning_rate": 5e-4, "rank": 16, "batch_size": 1, "seed": i + 1}}
            return p

        srv.write_input("mem.png", pattern_png(s, s))
        rows = {}
        phases = [("KSampler (1 step)", ksampler)]
        if "lora" in args.nodes:
            phases.append((f"DragDiffusionLoRA ({args.lora_steps} steps, batch 1)", lora))
        if "drag" in args.nodes:
            phases.append((f"DragDiffusionDrag ({args.drag_steps} it)", drag))
        for name, graph in phases:
            srv.run(graph(-1), timeout=7200)  # warm-up: loads, the inversion (cached afterwards)
            peaks, after = [], []
            for i in range(args.runs):
                rss0 = status_bytes(pid, "VmRSS")
                reset_peak(pid)
                srv.run(graph(i), timeout=7200)
                peaks.append(status_bytes(pid, "VmHWM") - rss0)
                after.append(status_bytes(pid, "VmRSS"))
                print(f"{name} run {i + 1}: idle before {mib(rss0)} MiB, peak above it {mib(peaks[-1])} MiB, "
                      f"idle after {mib(after[-1])} MiB", flush=True)
            rows[name] = (peaks, after)
    finally:
        srv.cleanup()
    ks = statistics.median(next(iter(rows.values()))[0])
    print(f"\nserver memory, {os.path.basename(args.ckpt)} at {s}x{s}, flags {args.extra or 'none'} (MiB)")
    print(f"{'phase':<44}{'peak above idle (median)':>26}{'minus KSampler':>16}   idle RSS after each run")
    for name, (peaks, after) in rows.items():
        med = statistics.median(peaks)
        print(f"{name:<44}{mib(med):>26}{mib(med - ks):>16}   {' '.join(mib(a) for a in after)}")


if __name__ == "__main__":
    main()
