#!/usr/bin/env python3
"""One command for the GPU figures: FastDrag and DragDiffusion in the real ComfyUI server, on full-size
random weights, printed as a table and written as JSON.

    COMFYUI_ROOT=/path/to/ComfyUI python3 benchmarks/device_check.py            # CUDA machine, < 8 min
    COMFYUI_ROOT=~/.cache/comfy-harness/ComfyUI python3 benchmarks/device_check.py --smoke   # CPU, seconds

What it measures (server-side times, ``execution_start -> execution_success``; medians of ``runs``):

* FastDragEdit on SD1.5 at 512^2 and SDXL at 1024^2 (10 steps x 0.7, cfg 1): seconds per edit of a new
  image with the model resident (a warm-up edit loads it first), a re-drag (only the points change:
  ComfyUI's cache keeps the encode and the inversion), peak device memory over both, and where the
  K/V store went (``kv_device`` auto);
* DragDiffusion on SD1.5 at 512^2 (50 steps x 0.7): one LoRA step ((T(L2) - T(L1)) / (L2 - L1) of two
  DragDiffusionLoRA runs), one drag iteration (DragDiffusionDrag's own median), a whole
  DragDiffusionEdit with few steps, that edit extrapolated to the official 80 LoRA steps and 80 drag
  iterations (T + (80 - L) x LoRA step + (80 - D) x iteration), and its peak device memory;
* fp16 vs fp32 agreement of FastDragEdit (ModelComputeDtype fp16 / fp32 on the same weights): max and
  mean absolute difference of the images (0-1) and the latents.

Full-size random checkpoints are written once with the harness's ``make_tiny_ckpt.py --full`` (arch
sd15 and sdxl, cached in ``~/.cache/comfyui-fastdrag``). ``--smoke`` runs the same code on the tiny test
checkpoints at 64 px with a few steps, on the CPU (a unit test runs it, so this script cannot rot).
Peak memory comes from the test pack's FastDragTestDevicePeak (CUDA only; ``null`` on the CPU).
Environment as for the integration tests (tests/integration/comfy_server.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from comfy_client import CACHE, ComfyClient, harness_dir  # noqa: E402
from comfy_server import ComfyServer, find_comfyui, pattern_png  # noqa: E402
from graphs import edit_node, points_json, points_node, save_node  # noqa: E402

OFFICIAL_DD_STEPS = 80  # LoRA steps and drag iterations of the official DragDiffusion


@dataclass(frozen=True)
class Plan:
    fastdrag: tuple  # ((checkpoint kind, image px), ...)
    fd_steps: int
    fd_strength: float
    runs: int
    dd_ckpt: str
    dd_size: int
    dd_steps: int
    dd_strength: float
    lora_steps: tuple  # (L1, L2), L2 > L1 >= 1
    lora_batch: int
    drag_steps: int
    precision: tuple  # (checkpoint kind, image px, low-precision dtype)
    full_weights: bool


PLANS = {
    "gpu": Plan(fastdrag=(("sd15", 512), ("sdxl", 1024)), fd_steps=10, fd_strength=0.7, runs=3, dd_ckpt="sd15",
                dd_size=512, dd_steps=50, dd_strength=0.7, lora_steps=(2, 6), lora_batch=4, drag_steps=6,
                precision=("sd15", 512, "fp16"), full_weights=True),
    # the same code on the tiny test checkpoints the integration tests load anyway (seconds on a CPU)
    "smoke": Plan(fastdrag=(("sd15", 64),), fd_steps=4, fd_strength=0.5, runs=1, dd_ckpt="sd15_layout",
                  dd_size=64, dd_steps=4, dd_strength=0.5, lora_steps=(1, 2), lora_batch=1, drag_steps=1,
                  precision=("sd15", 64, "fp16"), full_weights=False),
}


def full_checkpoint(root: str, py: str, arch: str) -> str:
    """A full-size random ``arch`` checkpoint (make_tiny_ckpt.py --full, fp16), written once."""
    path = os.path.join(CACHE, f"full_{arch}_random.safetensors")
    if os.path.exists(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.safetensors"
    subprocess.run([py, os.path.join(harness_dir(), "make_tiny_ckpt.py"), "--arch", arch, "--full", "--comfy-dir", root,
                    "--out", tmp], check=True, cwd=root, stdout=subprocess.DEVNULL)
    os.replace(tmp, path)
    return path


class Check:
    """The measurements of one plan on one running server (``srv``: a ComfyServer, the test pack loaded)."""

    def __init__(self, srv, plan: Plan, root: str | None = None):
        self.srv, self.plan, self.root = srv, plan, root
        self.nonce = int(time.time() * 1000)

    # -- plumbing ----------------------------------------------------------------------------------------
    def ckpt(self, kind: str) -> str:
        if self.plan.full_weights:
            return self.srv.link_checkpoint(full_checkpoint(self.root, self.srv.py, "sd15" if kind.startswith("sd15") else kind))
        return self.srv.add_checkpoint(kind) if kind != "sd15" else self.srv.ckpt_name

    def peak(self, reset: bool):
        """Peak device bytes since the last reset (None on the CPU); ``reset`` starts a new measurement."""
        self.nonce += 1
        e = self.srv.run({"pk": {"class_type": "FastDragTestDevicePeak", "inputs": {"reset": reset, "nonce": self.nonce}}})
        return json.loads(ComfyClient.texts(e, "pk")[0])

    def image(self, tag: str, size: int, variant: int) -> str:
        name = f"device_check_{tag}_{variant}.png"
        self.srv.write_input(name, pattern_png(size, size, variant=variant))
        return name

    @staticmethod
    def base(ckpt: str, img: str, size: int, drags, model=("ckpt", 0)) -> dict:
        return {
            "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["ckpt", 1]}},
            "img": {"class_type": "LoadImage", "inputs": {"image": img}},
            "pts": points_node(points_json(drags, size, size)),
        }

    @staticmethod
    def drags(size: int, which: int):
        s = size
        return [((s * 0.375, s * 0.375), (s * 0.5, s * 0.47))] if which == 0 else [((s * 0.7, s * 0.7), (s * 0.62, s * 0.6))]

    # -- FastDrag ----------------------------------------------------------------------------------------
    def fastdrag(self, kind: str, size: int) -> dict:
        p = self.plan
        ckpt = self.ckpt(kind)

        def graph(img, which):
            g = self.base(ckpt, img, size, self.drags(size, which))
            g["edit"] = edit_node(steps=p.fd_steps, strength=p.fd_strength)
            g["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["edit", 0]}}
            return g

        self.srv.run(graph(self.image(kind, size, 0), 0), timeout=1800)  # warm-up: loads the model
        full, redrag = [], []
        self.peak(reset=True)
        for i in range(1, p.runs + 1):
            img = self.image(kind, size, i)
            full.append(ComfyClient.exec_seconds(self.srv.run(graph(img, 0), timeout=1800)))
            redrag.append(ComfyClient.exec_seconds(self.srv.run(graph(img, 1), timeout=1800)))
        peak = self.peak(reset=True)
        kv = re.findall(r"FastDragInvert: inverted .*?; (\d+ K/V entries [^;]*)", self.srv.log_text())
        return {"model": kind, "size": size, "steps": p.fd_steps, "strength": p.fd_strength,
                "edit_s": statistics.median(full), "redrag_s": statistics.median(redrag),
                "peak_bytes": peak["peak_bytes"], "device": peak["device"], "kv_store": kv[-1] if kv else None,
                "runs": {"edit_s": full, "redrag_s": redrag}}

    # -- DragDiffusion -----------------------------------------------------------------------------------
    def dragdiffusion(self) -> dict:
        p, size = self.plan, self.plan.dd_size
        ckpt = self.ckpt(p.dd_ckpt)
        drags = [((size * 0.3, size * 0.3), (size * 0.7, size * 0.65))]  # far: every iteration runs

        def lora_graph(img, steps):
            g = self.base(ckpt, img, size, drags)
            g["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}}
            g["lora"] = {"class_type": "DragDiffusionLoRA", "inputs": {
                "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["enc", 0], "steps": steps,
                "learning_rate": 5e-4, "rank": 16, "batch_size": p.lora_batch, "seed": 0}}
            g["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["lora", 0]}}
            return g

        def drag_graph(img):
            g = self.base(ckpt, img, size, drags)
            g["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}}
            g["inv"] = {"class_type": "FastDragInvert", "inputs": {
                "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["enc", 0], "steps": p.dd_steps,
                "strength": p.dd_strength, "cfg": 1.0, "capture_kv": False}}
            g["drag"] = {"class_type": "DragDiffusionDrag", "inputs": {
                "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["inv", 0], "drag": ["pts", 0],
                "steps": p.drag_steps, "learning_rate": 0.01, "lam": 0.1, "r_m": 1, "r_p": 3}}
            g["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["drag", 1]}}
            return g

        def edit_graph(img):
            g = self.base(ckpt, img, size, drags)
            g["edit"] = {"class_type": "DragDiffusionEdit", "inputs": {
                "model": ["ckpt", 0], "vae": ["ckpt", 2], "positive": ["pos", 0], "image": ["img", 0],
                "drag": ["pts", 0], "steps": p.dd_steps, "strength": p.dd_strength, "drag_steps": p.drag_steps,
                "lora_steps": p.lora_steps[0], "cfg": 1.0, "lora_batch_size": p.lora_batch}}
            g["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["edit", 0]}}
            return g

        img = self.image("dd", size, 0)
        self.srv.run(lora_graph(img, 1), timeout=1800)  # warm-up: loads the model, encodes the image
        l1, l2 = p.lora_steps
        t1 = ComfyClient.exec_seconds(self.srv.run(lora_graph(img, l1), timeout=1800))
        t2 = ComfyClient.exec_seconds(self.srv.run(lora_graph(img, l2), timeout=1800))
        lora_step = (t2 - t1) / (l2 - l1)
        e = self.srv.run(drag_graph(img), timeout=1800)
        drag_text = " ".join(ComfyClient.texts(e, "out")) + " " + self.srv.log_text()[-20000:]
        iteration = float(re.findall(r"([\d.]+) s/iteration", drag_text)[-1])
        self.peak(reset=True)
        edit = ComfyClient.exec_seconds(self.srv.run(edit_graph(self.image("dd", size, 1)), timeout=3600))
        peak = self.peak(reset=True)
        n = OFFICIAL_DD_STEPS
        return {"model": p.dd_ckpt, "size": size, "steps": p.dd_steps, "strength": p.dd_strength,
                "lora_batch": p.lora_batch, "lora_step_s": lora_step, "drag_iteration_s": iteration,
                "edit_s": edit, "edit_lora_steps": l1, "edit_drag_steps": p.drag_steps,
                "edit_80_80_s": edit + (n - l1) * lora_step + (n - p.drag_steps) * iteration,
                "peak_bytes": peak["peak_bytes"], "device": peak["device"]}

    # -- fp16 vs fp32 ------------------------------------------------------------------------------------
    def precision(self) -> dict:
        kind, size, low = self.plan.precision
        ckpt = self.ckpt(kind)
        img = self.image("prec", size, 0)
        out = {}
        with tempfile.TemporaryDirectory(prefix="device_check_") as d:
            for dtype in ("fp32", low):
                g = self.base(ckpt, img, size, self.drags(size, 0))
                g["dt"] = {"class_type": "ModelComputeDtype", "inputs": {"model": ["ckpt", 0], "dtype": dtype}}
                g["edit"] = edit_node(model=("dt", 0), steps=self.plan.fd_steps, strength=self.plan.fd_strength)
                path = os.path.join(d, f"{dtype}.pt")
                g["save"] = save_node(path, image=("edit", 0), latent=("edit", 1))
                self.srv.run(g, timeout=1800)
                import torch
                out[dtype] = torch.load(path, weights_only=False)
        a, b = out["fp32"], out[low]
        di, dl = (a["image"] - b["image"]).abs(), (a["latent"] - b["latent"]).abs()
        return {"model": kind, "size": size, "dtype": low,
                "finite": bool(b["image"].isfinite().all() and b["latent"].isfinite().all()),
                "image_max_abs": float(di.max()), "image_mean_abs": float(di.mean()),
                "latent_max_abs": float(dl.max()), "latent_mean_abs": float(dl.mean()),
                "latent_range": float(a["latent"].abs().max())}

    def run_all(self) -> dict:
        t0 = time.perf_counter()
        res = {"plan": asdict(self.plan), "fastdrag": [self.fastdrag(k, s) for k, s in self.plan.fastdrag],
               "dragdiffusion": self.dragdiffusion(), "precision": self.precision()}
        res["wall_s"] = time.perf_counter() - t0
        return res


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2 ** 20:.0f} MiB"


def table(res: dict) -> str:
    rows = [("what", "value")]
    for f in res["fastdrag"]:
        tag = f"FastDragEdit {f['model']} {f['size']}^2 ({f['steps']} x {f['strength']})"
        rows += [(f"{tag}: edit, model resident", f"{f['edit_s']:.3f} s"),
                 (f"{tag}: re-drag", f"{f['redrag_s']:.3f} s"),
                 (f"{tag}: peak device memory", _mib(f["peak_bytes"])),
                 (f"{tag}: K/V store", f["kv_store"] or "-")]
    d = res["dragdiffusion"]
    tag = f"DragDiffusion {d['model']} {d['size']}^2"
    rows += [(f"{tag}: LoRA step (batch {d['lora_batch']})", f"{d['lora_step_s']:.3f} s"),
             (f"{tag}: drag iteration", f"{d['drag_iteration_s']:.3f} s"),
             (f"{tag}: edit ({d['edit_lora_steps']} LoRA steps, {d['edit_drag_steps']} iterations)", f"{d['edit_s']:.3f} s"),
             (f"{tag}: edit with 80/80 (extrapolated)", f"{d['edit_80_80_s']:.1f} s"),
             (f"{tag}: peak device memory", _mib(d["peak_bytes"]))]
    q = res["precision"]
    tag = f"FastDragEdit {q['model']} {q['size']}^2 {q['dtype']} vs fp32"
    rows += [(f"{tag}: finite", str(q["finite"])),
             (f"{tag}: image max / mean abs diff (0-1)", f"{q['image_max_abs']:.4f} / {q['image_mean_abs']:.5f}"),
             (f"{tag}: latent max / mean abs diff", f"{q['latent_max_abs']:.4f} / {q['latent_mean_abs']:.5f} "
                                                      f"(latent range {q['latent_range']:.2f})")]
    w = max(len(r[0]) for r in rows)
    lines = [f"{a:<{w}}  {b}" for a, b in rows]
    lines.insert(1, "-" * (w + 20))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny checkpoints, 64 px, a few steps, on the CPU")
    ap.add_argument("--json", default=None, help="where to write the JSON (default: device_check_<mode>.json here)")
    args = ap.parse_args(argv)
    mode = "smoke" if args.smoke else "gpu"
    root, reason = find_comfyui()
    if root is None:
        sys.exit(f"device_check: {reason}")
    os.environ["FASTDRAG_TEST_DEVICE"] = "cpu" if args.smoke else "gpu"
    srv = ComfyServer(root).wait_ready()
    try:
        res = Check(srv, PLANS[mode], root).run_all()
    finally:
        srv.cleanup()
    res["mode"] = mode
    print(f"\ndevice_check ({mode}): {res['fastdrag'][0]['device']}, wall {res['wall_s']:.0f} s")
    print(table(res))
    path = args.json or f"device_check_{mode}.json"
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"JSON: {path}")
    return res


if __name__ == "__main__":
    main()
