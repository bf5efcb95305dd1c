#!/usr/bin/env python3
"""Benchmark the DragDiffusion nodes in the real ComfyUI server.

Prints, from one server run (both sides under the same load):

* the median time of one drag iteration (``DragDiffusionDrag``'s own per-iteration median: UNet
  forward + backward through ComfyUI's model, feature interpolation, loss, Adam, tracking) against
  one bare UNet forward + backward (w.r.t. the input, ordinary weight copies) at the same size
  (test-pack node ``FastDragTestUNetFwdBwd``); goal <= 1.15x;
* the same drag iteration on the model with its UNet weights as a GPU load leaves them: ordinary tensors
  that require grad (test-pack node ``FastDragTestTrainableWeights``; a CPU load never gets there); the
  loop must compute no weight gradient in either case (the node says how many weights required grad);
* the weights the loop copied (the node's own report; 0 MiB: the UNet's weights are used in place;
  the loop's memory against a plain KSampler, read from the server process, is
  ``bench_dd_memory.py``'s);
* the whole ``DragDiffusionEdit`` (lora_steps 0; the LoRA is timed by its own benchmark) against
  ``FastDragEdit`` on new images, medians of ``--runs``.

    COMFYUI_ROOT=~/.cache/comfy-harness/ComfyUI python3 benchmarks/bench_dragdiffusion.py       # tiny SD1.5 layout, CPU, 128 px
    COMFYUI_ROOT=... python3 benchmarks/bench_dragdiffusion.py --device gpu --size 512 \\
        --ckpt /path/to/sd15.safetensors --drag-steps 80 --runs 3                               # GPU, official settings

``--ckpt`` takes any SD1.x checkpoint (e.g. ``make_tiny_ckpt.py --full`` writes a full-size random
one); without it the tiny SD1.5-layout test checkpoint is built/used. Environment as for the
integration tests (tests/integration/comfy_server.py).
"""

import argparse
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

from comfy_server import ComfyServer, find_comfyui, pattern_png  # noqa: E402
from graphs import points_json, points_node  # noqa: E402


def exec_seconds(entry) -> float:
    ts = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (ts["execution_success"] - ts["execution_start"]) / 1000.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "gpu"], default=os.environ.get("FASTDRAG_TEST_DEVICE", "cpu"))
    ap.add_argument("--ckpt", default=None, help="SD1.x checkpoint file (default: tiny SD1.5-layout test one)")
    ap.add_argument("--size", type=int, default=128, help="image size (square)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--drag-steps", type=int, default=10, help="drag iterations (official 80)")
    ap.add_argument("--dd-steps", type=int, default=50, help="DragDiffusion DDIM steps (official 50)")
    ap.add_argument("--dd-strength", type=float, default=0.7)
    ap.add_argument("--fd-steps", type=int, default=10, help="FastDrag DDIM steps (official 10)")
    ap.add_argument("--fd-strength", type=float, default=0.7)
    ap.add_argument("--loop-only", action="store_true", help="skip the DragDiffusionEdit / FastDragEdit comparison")
    args = ap.parse_args()
    root, reason = find_comfyui()
    if root is None:
        sys.exit(f"bench_dragdiffusion: {reason}")
    os.environ["FASTDRAG_TEST_DEVICE"] = args.device
    s = args.size
    # a drag that cannot reach its target in --drag-steps, so every iteration runs (random weights
    # track arbitrarily; the stop rule would otherwise end runs at different counts)
    drags = [((s * 0.3, s * 0.3), (s * 0.7, s * 0.65))]

    srv = ComfyServer(root).wait_ready()
    try:
        if args.ckpt:
            name = os.path.basename(args.ckpt)
            link = os.path.join(srv.base, "models", "checkpoints", name)
            if not os.path.exists(link):
                os.symlink(os.path.abspath(args.ckpt), link)
        else:
            name = srv.add_checkpoint("sd15_layout")

        def base(img):
            return {
                "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
                "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["ckpt", 1]}},
                "img": {"class_type": "LoadImage", "inputs": {"image": img}},
                "pts": points_node(points_json(drags, s, s)),
            }

        def loop_graph(img):
            p = base(img)
            p["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}}
            p["inv"] = {"class_type": "FastDragInvert", "inputs": {
                "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["enc", 0], "steps": args.dd_steps,
                "strength": args.dd_strength, "cfg": 1.0, "capture_kv": False}}
            p["drag"] = {"class_type": "DragDiffusionDrag", "inputs": {
                "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["inv", 0], "drag": ["pts", 0],
                "steps": args.drag_steps, "learning_rate": 0.01, "lam": 0.1, "r_m": 1, "r_p": 3}}
            p["trainable"] = {"class_type": "FastDragTestTrainableWeights", "inputs": {"model": ["ckpt", 0]}}
            p["drag_t"] = dict(p["drag"], inputs=dict(p["drag"]["inputs"], model=["trainable", 0]))
            p["out_t"] = {"class_type": "PreviewAny", "inputs": {"source": ["drag_t", 1]}}
            p["fb"] = {"class_type": "FastDragTestUNetFwdBwd", "inputs": {
                "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["inv", 0], "runs": max(5, args.drag_steps)}}
            p["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["drag", 1]}}
            return p

        def edit_graph(img, which):
            p = base(img)
            common = {"model": ["ckpt", 0], "vae": ["ckpt", 2], "positive": ["pos", 0], "image": ["img", 0],
                      "drag": ["pts", 0], "cfg": 1.0}
            if which == "dd":
                p["edit"] = {"class_type": "DragDiffusionEdit", "inputs": dict(
                    common, steps=args.dd_steps, strength=args.dd_strength, drag_steps=args.drag_steps, lora_steps=0)}
            else:
                p["edit"] = {"class_type": "FastDragEdit", "inputs": dict(
                    common, steps=args.fd_steps, strength=args.fd_strength)}
            p["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["edit", 0]}}
            return p

        iter_s, iter_t, fwdbwd_s, copied, dd_edit, fd_edit = [], [], [], [], [], []

        for i in range(args.runs + 1):  # run 0 = warm-up (model load), not counted
            img = f"bench_dd_{i}.png"
            srv.write_input(img, pattern_png(s, s, variant=i))
            e = srv.run(loop_graph(img), timeout=7200)
            text = " ".join(srv.texts(e, "drag"))
            text_t = " ".join(srv.texts(e, "drag_t"))
            fb = " ".join(srv.texts(e, "fb"))
            if not args.loop_only:
                t_dd = exec_seconds(srv.run(edit_graph(f"bench_dd_{i}.png", "dd"), timeout=7200))
                srv.write_input(f"bench_fd_{i}.png", pattern_png(s, s, variant=i))
                t_fd = exec_seconds(srv.run(edit_graph(f"bench_fd_{i}.png", "fd"), timeout=7200))
            if i:
                iter_s.append(float(re.search(r"([\d.]+) s/iteration", text).group(1)))
                iter_t.append(float(re.search(r"([\d.]+) s/iteration", text_t).group(1)))
                fwdbwd_s.append(float(re.search(r"median ([\d.]+) s", fb).group(1)))
                copied.append(re.search(r"weights copied for the loop (\S+ MiB)", text).group(1))
                if not args.loop_only:
                    dd_edit.append(t_dd)
                    fd_edit.append(t_fd)
        last, last_t = text, text_t
    finally:
        srv.cleanup()

    it, it_t, fb = statistics.median(iter_s), statistics.median(iter_t), statistics.median(fwdbwd_s)
    print(f"\nDragDiffusion benchmark: {s}x{s}, device={args.device}, checkpoint={args.ckpt or 'tiny SD1.5 layout'}, "
          f"{args.runs} runs, load {os.getloadavg()[0]:.1f}")
    print(f"{'what':<62}{'median s':>10}{'ratio':>8}")
    print(f"{'UNet forward + backward (bare, same size)':<62}{fb:>10.3f}{1.0:>8.2f}")
    print(f"{'DragDiffusionDrag, one iteration':<62}{it:>10.3f}{it / fb:>8.2f}")
    print(f"{'DragDiffusionDrag, one iteration, weights requiring grad':<62}{it_t:>10.3f}{it_t / fb:>8.2f}")
    if not args.loop_only:
        ddm, fdm = statistics.median(dd_edit), statistics.median(fd_edit)
        print(f"{'FastDragEdit (' + str(args.fd_steps) + ' steps x ' + str(args.fd_strength) + ')':<62}{fdm:>10.3f}{1.0:>8.2f}")
        print(f"{'DragDiffusionEdit (' + str(args.dd_steps) + ' x ' + str(args.dd_strength) + ', ' + str(args.drag_steps) + ' drag steps, no LoRA)':<62}"
              f"{ddm:>10.3f}{ddm / fdm:>8.2f}")
    print(f"weights copied for the drag loop: {copied[-1]}")
    print("last drag status:", last)
    print("last drag status, weights requiring grad:", last_t)
    print("all runs (s): iteration", iter_s, "weights requiring grad", iter_t, "fwd+bwd", fwdbwd_s,
          "DragDiffusionEdit", dd_edit, "FastDragEdit", fd_edit)


if __name__ == "__main__":
    main()
