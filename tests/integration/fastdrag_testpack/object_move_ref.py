"""Float64 reference of the whole object moving / copy pipeline (test-only, never shipped).

Official DDIM inversion (fastdrag-method.md §1.5) with the K/V of every decoder self-attention
(attn1 of the output blocks) captured by forward hooks on ``to_k`` / ``to_v`` and stored in fp16 as
the official code stores them; the official latent edit of ``official_object_move`` (the
transcription of ``run_drag``'s preprocessing, ``copy_past`` and ``paint_past``); DDIM sampling back
with every decoder attn1 K/V replaced by the captured one of the same timestep. The last step
returns the x0 prediction (ComfyUI's sigma -> 0 convention, as FastDragSample). UNet called
directly in float64; no import from the pack.
"""

import copy
import json
import math
import os

import torch

import comfy.model_management

from .official_object_move import latent_edit, preprocess


def _decoder_attn1(dm):
    return [(f"output_blocks.{i}.{name}", mod) for i, block in enumerate(dm.output_blocks)
            for name, mod in block.named_modules() if name.endswith("attn1")]


class FastDragTestRefObjectMove:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "latent": ("LATENT",),
                             "mask": ("MASK",), "points": ("STRING", {"default": "[]"}),
                             "task": (["object moving", "object copy"],),
                             "steps": ("INT", {"default": 10}), "strength": ("FLOAT", {"default": 0.7}),
                             "path": ("STRING", {"default": ""})},
                "optional": {"fill_region": ("MASK",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    @torch.no_grad()
    def run(self, model, positive, latent, mask, points, task, steps, strength, path, fill_region=None):
        comfy.model_management.load_models_gpu([model])
        ms = model.get_model_object("model_sampling")
        lf = model.get_model_object("latent_format")
        dm = copy.deepcopy(model.get_model_object("diffusion_model")).to("cpu", torch.float64)
        ac = 1.0 / (1.0 + ms.sigmas.double().cpu() ** 2)
        k = int(round(strength * steps))
        ratio = 1000 // steps
        ts = [i * ratio + 1 for i in range(k)]  # 1, 101, ..., 601
        ctx = positive[0][0].to("cpu", torch.float64)
        sites = _decoder_attn1(dm)
        store, state = {}, {"mode": "capture", "t": None, "injected": 0}

        def hook(name, which):
            def fn(mod, inp, out):
                key = (name, which, state["t"])
                if state["mode"] == "capture":
                    store[key] = out.detach().to(torch.float16)
                    return None
                state["injected"] += 1
                return store[key].to(torch.float64)
            return fn

        handles = [getattr(mod, which).register_forward_hook(hook(name, which))
                   for name, mod in sites for which in ("to_k", "to_v")]
        try:
            def eps(z, t):
                state["t"] = t
                return dm(z, timesteps=torch.tensor([float(t)], dtype=torch.float64), context=ctx)

            z = lf.process_in(latent["samples"].to("cpu", torch.float64))
            a_prev = float(ac[0])
            for t in ts:  # inversion, K/V captured
                a_t = float(ac[t])
                e = eps(z, t)
                x0 = (z - math.sqrt(1 - a_prev) * e) / math.sqrt(a_prev)
                z = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * e
                a_prev = a_t
            h, w = z.shape[-2:]
            m, shift_yx, target, mf = preprocess(json.loads(points), mask[0].cpu().double(), 8 * h, 8 * w,
                                                 None if fill_region is None else fill_region[0].cpu().double())
            z = latent_edit(z, m.double(), shift_yx, target, task, None if mf is None else mf.double())
            state["mode"] = "inject"
            for i, t in enumerate(reversed(ts)):  # DDIM back, K/V injected
                a_t = float(ac[t])
                e = eps(z, t)
                x0 = (z - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
                if i == len(ts) - 1:
                    z = x0
                else:
                    a_next = float(ac[t - ratio])
                    z = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * e
        finally:
            for hd in handles:
                hd.remove()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({"latent": lf.process_out(z), "layers": len(sites), "captured": len(store),
                    "injected": state["injected"]}, path)
        return {"ui": {"text": [f"{len(sites)} layers, {len(store)} K/V captured, {state['injected']} injected"]}}


NODES = {"FastDragTestRefObjectMove": FastDragTestRefObjectMove}
