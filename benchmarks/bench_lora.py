#!/usr/bin/env python3
"""Benchmark DragDiffusionLoRA's training step against one plain UNet forward + backward.

Runs in one process with ComfyUI's own loader (weights loaded under inference mode, as in the
server) and prints, from one run:

* the median time of a LoRA training step (the node's loop: crops, noise, ComfyUI's guider + model
  with the weight adapters, loss, backward, AdamW), the first step left out as warm-up;
* the median time of one forward + backward of the same UNet at the same batch and crop size, with
  ordinary (non-inference) weights on the loaded model's memory and the gradient taken w.r.t. the
  input only (the least any
  gradient step can cost), run after every training step so that both see the same machine load;
  and the ratio of the two;
* the time of the default 80 steps (measured when ``--steps 80``, else first step + 79 x median),
  without the interleaved plain passes;
* peak memory above the loaded model during each phase (CUDA: max_memory_allocated; CPU: peak RSS,
  reset through /proc/self/clear_refs, with glibc's mmap threshold fixed so freed tensors leave the
  RSS), the UNet weight size and the LoRA size.

Run with ComfyUI's python (it imports ComfyUI):

    OMP_NUM_THREADS=1 ~/.cache/comfy-harness/venv/bin/python benchmarks/bench_lora.py --ckpt sd15_layout --size 64
    /path/to/ComfyUI/venv/bin/python benchmarks/bench_lora.py --device gpu --ckpt /path/to/v1-5-pruned-emaonly.safetensors --size 512

``--ckpt`` is a checkpoint path or a tiny test kind (sd15, sd15_layout, sdxl, sd2v: the files the
integration tests build in ~/.cache/comfyui-fastdrag, built here when missing). ``--comfyui``
defaults to $COMFYUI_ROOT, else the ComfyUI this pack sits in, else the comfy-harness's
(``comfy_client.find_comfyui``).
"""

import argparse
import copy
import importlib
import importlib.util
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import comfy_client  # noqa: E402  (stdlib only)


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "gpu", "cuda"], default="cpu",
                    help="cpu, or gpu (= cuda; the same word as bench_dragdiffusion.py and dragbench.py)")
    ap.add_argument("--ckpt", default="sd15_layout", help="checkpoint path or tiny kind (default sd15_layout)")
    ap.add_argument("--size", type=int, default=64, help="square image side in px (latent = size / 8)")
    ap.add_argument("--steps", type=int, default=6, help="LoRA steps to time (80 = the official run)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--comfyui", default=None, help="the ComfyUI checkout (default: COMFYUI_ROOT, else the one "
                                                    "this pack sits in, else the comfy-harness's)")
    args = ap.parse_args()
    args.device = "cuda" if args.device == "gpu" else args.device
    return args


class Memory:
    """Peak memory of a phase above what was held when it started."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (peak RSS) to the current RSS
                f.write("5")
            self.start = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        import torch
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.peak = self._status("VmHWM") - self.start

    @staticmethod
    def _status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)


def mib(n):
    return f"{n / 2 ** 20:.0f} MiB"


def main():
    args = parse()
    if args.device == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc keeps freed heap memory; with a fixed mmap threshold every tensor-sized block is mmap'd
        # and returned on free, so the peak RSS of a phase measures what that phase held
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    root, reason = comfy_client.find_comfyui(args.comfyui)
    if root is None:
        sys.exit(f"bench_lora: {reason}")
    sys.path.insert(0, root)
    os.chdir(root)
    sys.argv = [sys.argv[0]] + (["--cpu"] if args.device == "cpu" else [])
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    import comfy.model_management
    import comfy.sd

    spec = importlib.util.spec_from_file_location("fastdrag_pack", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["fastdrag_pack"] = pack
    spec.loader.exec_module(pack)
    dd_lora = importlib.import_module("fastdrag_pack.nodes.dd_lora")
    core = importlib.import_module("fastdrag_pack.fastdrag_core.lora")

    ckpt = args.ckpt if os.path.exists(args.ckpt) else comfy_client.tiny_checkpoint(root, sys.executable, args.ckpt)
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)
        positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat on a sofa"))
        g = torch.Generator().manual_seed(0)
        image = torch.rand((1, args.size, args.size, 3), generator=g)
        latent = vae.encode(image)
    comfy.model_management.load_models_gpu([model], force_full_load=True)
    dev = model.load_device
    dm = model.model.diffusion_model
    weights = sum(p.numel() * p.element_size() for p in dm.parameters())
    dtype = dd_lora.compute_dtype(model)

    s = latent.shape[-1]
    frozen = importlib.import_module("fastdrag_pack.fastdrag_core.frozen_weights")
    with torch.inference_mode(False):
        # a second module object on the same weight memory (ordinary, frozen tensors: autograd may save
        # them), without the LoRA's weight wrappers, so the plain pass costs no weight copy either
        shared = {id(p): torch.nn.Parameter(frozen.ordinary_alias(p), requires_grad=False) for p in dm.parameters()}
        plain = copy.deepcopy(dm, shared)
        ctx = positive[0][0].to(dev, dtype).clone().repeat(args.batch, 1, 1)
    extra = {}
    if getattr(plain, "num_classes", None) is not None:  # SDXL-style adm input
        extra["y"] = torch.zeros((args.batch, plain.adm_in_channels), device=dev, dtype=dtype)

    def plain_fwd_bwd():
        """One forward + backward of the UNet copy (gradient w.r.t. the input only); its seconds."""
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.randn((args.batch, latent.shape[1], s, s), generator=g).to(dev, dtype).requires_grad_(True)
            t = torch.randint(0, 1000, (args.batch,), generator=g).to(dev).float()
            if args.device == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            plain(x, t, context=ctx, **extra).float().square().mean().backward()
            if args.device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t1

    # -- memory: two training steps, then two plain forward+backward, each phase on its own ----------------
    with Memory(args.device) as mem_train, torch.inference_mode():
        dd_lora.train_identity_lora(model, positive, latent, core.LoraTrainSettings(
            steps=2, rank=args.rank, batch_size=args.batch, seed=0))
    comfy.model_management.load_models_gpu([model], force_full_load=True)
    with Memory(args.device) as mem_plain:
        plain_fwd_bwd()
        plain_fwd_bwd()

    # -- time: the node's loop, one plain forward+backward after every step (same load for both) ----------
    plain_times = []
    settings = core.LoraTrainSettings(steps=args.steps, rank=args.rank, batch_size=args.batch, seed=0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        trained = dd_lora.train_identity_lora(model, positive, latent, settings,
                                              on_step=lambda i, loss: plain_times.append(plain_fwd_bwd()))
    total = time.perf_counter() - t0 - sum(plain_times)
    steps = trained.log.step_seconds
    step_med = statistics.median(steps[1:] if len(steps) > 1 else steps)
    plain_med = statistics.median(plain_times[1:] if len(plain_times) > 1 else plain_times)
    lora_bytes = sum(t.numel() * t.element_size() for k, t in trained.state_dict.items() if k.endswith(".weight"))
    est80 = total if args.steps == 80 else steps[0] + step_med * 79

    load = os.getloadavg()
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {load[0]:.2f} {load[1]:.2f}")
    print(f"checkpoint {os.path.basename(ckpt)}: UNet {mib(weights)} ({dtype}), image {args.size}^2 -> latent "
          f"{list(latent.shape)}; batch {args.batch}, rank {args.rank}: {trained.layers} projections, LoRA {mib(lora_bytes)}")
    print(f"LoRA step (median of {max(1, len(steps) - 1)}): {step_med:.3f} s; first step {steps[0]:.3f} s")
    print(f"plain UNet forward+backward, same batch, one after each step (median of "
          f"{max(1, len(plain_times) - 1)}): {plain_med:.3f} s")
    pair = statistics.median(a / b for a, b in list(zip(steps, plain_times))[1:]) if len(steps) > 1 else steps[0] / plain_times[0]
    print(f"ratio LoRA step / forward+backward: {step_med / plain_med:.2f} (medians); {pair:.2f} (median of "
          "the per-step ratios, each step against the pass right after it)")
    print(f"{'measured' if args.steps == 80 else 'estimated'} 80 steps (official default): {est80:.1f} s "
          f"(this run: {args.steps} steps in {total:.1f} s incl. set-up)")
    print(f"peak memory above the loaded model: training {mib(mem_train.peak)}, plain forward+backward "
          f"{mib(mem_plain.peak)} (UNet weights {mib(weights)})")
    print(f"loss: first step {trained.log.losses[0]:.4f}, last step {trained.log.losses[-1]:.4f}; UNet weights "
          f"holding a .grad after training: {sum(p.grad is not None for p in dm.parameters())}")


if __name__ == "__main__":
    main()
