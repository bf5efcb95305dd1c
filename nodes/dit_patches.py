"""ComfyUI mechanics of FastDrag on flow-matching DiTs (Flux.1, SD3.x): the flow-ODE inversion as a
sampler function, and the K/V capture / injection in joint attention through ComfyUI's own hooks.

Two patches work together on a clone of the model (the input MODEL is never modified):

* a DiT block replace (``patches_replace["dit"][("double_block" | "single_block", i)]``, the hook
  ComfyUI's Flux and MMDiT forwards call for each block) on every block: it marks the block's
  ``transformer_options`` (a copy) with the block id and the number of text and image tokens, then runs
  the block (or another pack's replace that was already there, which it chains);
* an ``optimized_attention_override`` (``transformer_options``; ComfyUI calls it for every attention of
  the model, attention.py ``wrap_attn``): inside a marked block it captures or replaces the image
  tokens' K / V of the joint attention (``fastdrag_core.dit_kv``), then calls the attention function
  (or another pack's override that was already there, with those K / V).

The loops are k-diffusion sampler functions run through ``comfy.samplers.KSAMPLER``, so CFG,
FluxGuidance, LoRA, hooks and wrappers apply, progress is reported and cancel stops within a step.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

import comfy.model_management
import comfy.samplers

from ..fastdrag_core import ddim, dit_kv
from ..fastdrag_core.kv import InjectionStats, KVSchedule, KVStore

log = logging.getLogger(__name__)

BLOCK_KEY = "fastdrag_dit_block"  # transformer_options key of the block marker: (block id, text tokens, image tokens)
OVERRIDE_KEY = "optimized_attention_override"
SELF_ATTN = "x_self"  # SD3.5 (MMDiT-X) blocks' second, image-only attention: layer (block, i, "x_self")


def dit_layers(model_patcher, node: str) -> list[tuple]:
    """Every joint-attention layer of the DiT in call order. Flux.1: ("double_block", i) for the double
    stream blocks, then ("single_block", i); SD3.x: ("double_block", i) for each joint block (ComfyUI's
    replace key), plus ("double_block", i, "x_self") for SD3.5's image-only attention of MMDiT-X blocks."""
    dm = model_patcher.get_model_object("diffusion_model")
    if hasattr(dm, "double_blocks") and hasattr(dm, "single_blocks"):
        return ([("double_block", i) for i in range(len(dm.double_blocks))]
                + [("single_block", i) for i in range(len(dm.single_blocks))])
    if hasattr(dm, "joint_blocks"):
        layers = []
        for i, block in enumerate(dm.joint_blocks):
            layers.append(("double_block", i))
            if getattr(block.x_block, "x_block_self_attn", False):
                layers.append(("double_block", i, SELF_ATTN))
        return layers
    raise ValueError(f"{node}: this model ({type(dm).__name__}) has neither Flux's double/single blocks nor "
                     "MMDiT's joint blocks")


class DiTRun:
    """State of one inversion or sampling run, shared by the block markers and the attention override.

    ``mode``: "capture" or "inject"; ``layers``: the layers whose K/V are kept / injected; ``keep_k``: K
    is captured besides V. ``copy.deepcopy`` returns self (ModelPatcher.clone copies patch objects)."""

    def __init__(self, mode: str, store: KVStore, schedule: KVSchedule, layers, keep_k: bool = False):
        assert mode in ("capture", "inject")
        self.mode, self.store, self.schedule = mode, store, schedule
        self.layers = frozenset(tuple(layer) for layer in layers)
        self.keep_k = keep_k
        self.stats = InjectionStats()
        self.repeats = 0  # capture: writes of a key already stored (first write wins)
        self.unexpected_sigmas: set[float] = set()
        self.unmatched_calls = 0  # attention calls in a marked block whose length fit neither text+image nor image
        self.txt_len: Optional[int] = None  # text tokens of the current forward (set by its double blocks)
        self._last = (None, None)

    def step(self, transformer_options) -> Optional[int]:
        """The schedule's step label of this call, from its sigma (None: not on the schedule)."""
        sig = transformer_options.get("sigmas")
        if sig is None:
            return None
        if self._last[0] is sig:
            return self._last[1]
        s = float(sig.flatten()[0])
        best = min(zip(self.schedule.sigmas, self.schedule.timesteps), key=lambda p: abs(p[0] - s))
        label = best[1] if abs(best[0] - s) <= 1e-5 * max(abs(s), 1e-6) else None
        if label is None:
            self.unexpected_sigmas.add(s)
        self._last = (sig, label)
        return label

    def attention_kv(self, mark, args: tuple, kwargs: dict, transformer_options) -> tuple:
        """``args`` of one attention call (q, k, v, ...) with k / v captured or replaced."""
        block, txt_len, img_len = mark
        q, k, v = args[:3]
        token_dim = 2 if kwargs.get("skip_reshape", False) else 1  # Flux: [B, H, L, d]; SD3: [B, L, H*d]
        length = k.shape[token_dim]
        if length == txt_len + img_len:
            layer, front = tuple(block), txt_len
        elif length == img_len:
            layer, front = tuple(block) + (SELF_ATTN,), 0
        else:
            self.unmatched_calls += 1
            return args
        if layer not in self.layers:
            return args
        step = self.step(transformer_options)
        chunks = list(transformer_options.get("cond_or_uncond") or [0])
        if self.mode == "capture":
            if step is not None:
                self.repeats += dit_kv.capture(self.store, layer, step, chunks, k, v, front, token_dim, self.keep_k)
            return args
        k, v = dit_kv.inject(self.store, layer, step, chunks, k, v, front, token_dim, self.stats)
        return (q, k, v) + tuple(args[3:])

    def __deepcopy__(self, memo):
        return self


class DiTBlockMarker:
    """DiT block replace: marks the block's transformer_options with (block id, text tokens, image tokens),
    then runs another pack's replace of this block (``prev``, chained) or the block itself."""

    def __init__(self, block: tuple, run: DiTRun, prev=None):
        self.block, self.run, self.prev = block, run, prev

    def __call__(self, args, extra):
        img, txt = args["img"], args.get("txt")
        if txt is not None:  # Flux double stream / SD3 joint block: separate streams
            txt_len, img_len = txt.shape[1], img.shape[1]
            self.run.txt_len = txt_len
        else:  # Flux single stream: img = [text tokens, image tokens]
            txt_len = self.run.txt_len or 0
            img_len = img.shape[1] - txt_len
        to = dict(args.get("transformer_options") or {})
        to[BLOCK_KEY] = (self.block, txt_len, img_len)
        args = dict(args, transformer_options=to)
        if self.prev is not None:
            return self.prev(args, extra)
        return extra["original_block"](args)

    def __deepcopy__(self, memo):
        return self


class DiTAttentionOverride:
    """``optimized_attention_override``: in a marked block, FastDrag's K/V capture / injection, then
    another pack's override (``prev``, chained, given the K/V FastDrag chose) or the attention itself."""

    def __init__(self, run: DiTRun, prev=None):
        self.run, self.prev = run, prev

    def __call__(self, func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        mark = to.get(BLOCK_KEY)
        if mark is not None and len(args) >= 3:
            args = self.run.attention_kv(mark, args, kwargs, to)
        if self.prev is not None:
            return self.prev(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __deepcopy__(self, memo):
        return self


def patch_dit(model_patcher, run: DiTRun, all_layers):
    """A clone of ``model_patcher`` with a block marker on every block of ``all_layers`` and the attention
    override of ``run``; DiT block replaces and an attention override already there are chained."""
    m = model_patcher.clone()
    to = m.model_options.setdefault("transformer_options", {})
    existing = to.get("patches_replace", {}).get("dit", {})
    blocks = list(dict.fromkeys(tuple(layer[:2]) for layer in all_layers))
    chained = [b for b in blocks if b in existing]
    for block in blocks:
        m.set_model_patch_replace(DiTBlockMarker(block, run, existing.get(block)), "dit", block[0], block[1])
    prev = to.get(OVERRIDE_KEY)
    m.model_options["transformer_options"][OVERRIDE_KEY] = DiTAttentionOverride(run, prev)
    if chained or prev is not None:
        log.info("[FastDrag] chaining %d DiT block replaces and %s attention override already on the model",
                 len(chained), "an" if prev is not None else "no")
    return m


@torch.no_grad()
def sample_flow_invert(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler inversion of the flow ODE dx/dsigma = v(x, sigma) up the ascending ``sigmas`` [0, sigma_1, ..., sigma_k]
    as a k-diffusion sampler function; ``x`` is the clean latent (KSAMPLER's noise scaling at sigma = 0).

    Step i evaluates the velocity on the current (lower) latent x_i told the *higher* level sigma_{i+1}, as
    the official DDIM inversion does, so that the model calls (and the K/V captured in them) sit at exactly
    the noise levels FastDragSample's Euler steps visit on the way down:
        v = (x_i - x_hat_0(x_i, sigma_{i+1})) / sigma_{i+1};   x_{i+1} = x_i + v · (sigma_{i+1} - sigma_i).
    (For ComfyUI's CONST models x_hat_0 = x - sigma·v_theta, so v is the model's velocity; DDIM = Euler for flows.)"""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sig = [float(s) for s in sigmas]
    for i in range(len(sig) - 1):
        comfy.model_management.throw_exception_if_processing_interrupted()
        denoised = model(x, sigmas[i + 1] * s_in, **extra_args)  # K/V of sigma_{i+1} captured here
        v = ddim.eps_from_denoised(x, denoised, sig[i + 1])
        x = ddim.inversion_step(x, v, sig[i], sig[i + 1])
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i + 1], "sigma_hat": sigmas[i + 1], "denoised": denoised})
    return x


FLOW_INVERT_SAMPLER = comfy.samplers.KSAMPLER(sample_flow_invert)
