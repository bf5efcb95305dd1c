"""FastDragInvert: official DDIM inversion to the edit timestep, capturing decoder attn1 K/V."""

from __future__ import annotations

import logging
import math

import torch
from comfy_api.latest import io, ui

import comfy.model_management
import comfy.sample
import comfy.utils

from ..fastdrag_core import ddim
from ..fastdrag_core.dit_kv import DEFAULT_KEEP as DIT_DEFAULT_KEEP, KEEP_OPTIONS as DIT_KEEP_OPTIONS
from ..fastdrag_core.kv import KV_DEVICE_SHARE, KVSchedule, KVStore, format_bytes, keep_kv_on_device
from . import comfy_adapter
from .model_support import supported_model
from .patches import INVERT_SAMPLER, KVRun, decoder_attn1_sites, patch_model, zero_conditioning
from .types import LATENT_TAG, FastDragKV

DIT_KEEP_TOOLTIP = ("Flux / SD3 only: which joint-attention K/V the inversion keeps. v_last_third (default) = V of the "
                    "image tokens in the last third of the blocks (Flux.1, 1024x1024, 10 steps x 0.7: 3.1 GiB); "
                    "kv_last_third 6.2 GiB; v_all 9.4 GiB; kv_all = K and V of every block (18.7 GiB). SD UNets: "
                    "ignored (decoder K and V, as officially).")

log = logging.getLogger(__name__)
NODE = "FastDragInvert"


def edit_schedule(ms, steps: int, strength: float, latent_shape, node: str = NODE) -> KVSchedule:
    """The official schedule on ComfyUI's ``ddim_uniform`` sigmas: the last k+1 sigmas
    (sigma(t_k), ..., sigma(t_1), 0) with k = round(strength·steps); for 10 steps, 0.7: t = 601 ... 1."""
    try:
        k = ddim.inversion_steps(steps, strength)
    except ValueError as e:
        raise ValueError(f"{node}: {e}") from None
    sig = comfy_adapter.get("calculate_sigmas")(ms, "ddim_uniform", steps).cpu().float()
    sig = sig[-(k + 1):]
    ts = [int(ms.timestep(s.reshape(1)).item()) for s in sig[:-1]]
    return KVSchedule(sigmas=tuple(float(s) for s in sig), timesteps=tuple(ts), steps=int(steps),
                      strength=float(strength), latent_shape=tuple(int(d) for d in latent_shape))


def check_model_schedule(ms, sched: KVSchedule, node: str, what: str = "the latent was inverted") -> None:
    """The model's sigma_t at each of the schedule's timesteps must be the sigma the schedule was made with
    (a latent or K/V from a model with another noise schedule would be denoised at wrong noise levels)."""
    for t, s in zip(sched.timesteps, sched.sigmas):
        if not math.isclose(float(ms.sigmas[t]), s, rel_tol=1e-4):
            raise ValueError(f"{node}: the model's sigma at t={t} is {float(ms.sigmas[t]):.5f} but {what} "
                             f"at {s:.5f}: it comes from a model with another noise schedule")


def check_latent(latent, node: str) -> torch.Tensor:
    """The ``samples`` of an image LATENT ([B, C, H, W]); anything else is refused naming ``node``."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.is_nested or samples.ndim != 4:
        shape = list(samples.shape) if isinstance(samples, torch.Tensor) and not samples.is_nested else None
        raise ValueError(f"{node}: latent must be an image LATENT [B, C, H, W], got {shape}")
    return samples


def _fits_on(device):
    """K/V entries stay on the compute device while it keeps ComfyUI's inference reserve free."""
    def fits(nbytes: int) -> bool:
        return (comfy.model_management.get_free_memory(device)
                > nbytes + comfy.model_management.minimum_inference_memory())
    return fits


def _kv_placement(device):
    """kv_device "auto": the store's home, decided once with the model loaded (fastdrag_core.kv.keep_kv_on_device)."""
    def placement(projected: int) -> tuple[bool, str]:
        free = comfy.model_management.get_free_memory(device)
        reserve = comfy.model_management.minimum_inference_memory()
        headroom = format_bytes(max(0, free - reserve))
        if keep_kv_on_device(projected, free, reserve):
            return True, (f"kv_device auto: kept on {device}, {format_bytes(projected)} is within "
                          f"{KV_DEVICE_SHARE:.0%} of the {headroom} free there")
        return False, (f"kv_device auto: kept in system memory, {format_bytes(projected)} is over "
                       f"{KV_DEVICE_SHARE:.0%} of the {headroom} free on {device}, where the cached store would hold "
                       "memory ComfyUI cannot free")
    return placement


def new_kv_store(model, kv_device: str, schedule: KVSchedule | None, steps: int) -> KVStore:
    """The empty K/V store of one inversion, placed as ``kv_device`` says: cpu = system memory; device =
    the compute device (spilling only to keep ComfyUI's inference reserve); auto = as device, with the
    store's home decided once from its projected size over ``steps`` timesteps (``_kv_placement``)."""
    on_device = torch.device(model.load_device).type != "cpu"
    placement = _kv_placement(model.load_device) if kv_device == "auto" and on_device else None
    if placement is not None and schedule is None and steps > 1:  # the store projects over 1 step then
        placement = (lambda nbytes, decide=placement: decide(nbytes * steps))
    return KVStore(schedule, dtype=torch.float16, device="cpu" if kv_device == "cpu" else None,
                   fits=_fits_on(model.load_device) if kv_device != "cpu" and on_device else None,
                   placement=placement)


def warn_noise_mask(latent, node: str):
    """A LATENT noise_mask (SetLatentNoiseMask) is not used: inversion must cover the whole latent for
    the K/V and the warp, and KSAMPLER's inpaint blending would pin the unmasked area to a
    noise-free latent. FastDrag's editable region is the FastDragPoints mask."""
    if latent.get("noise_mask") is not None:
        log.warning("[FastDrag] %s: the latent's noise_mask is ignored; use the mask input of "
                    "FastDragPoints for the editable region", node)


class FastDragInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastDragInvert",
            display_name="FastDrag Invert (DDIM + K/V capture)",
            category="FastDrag/inversion",
            description="Official DDIM inversion of a clean latent to the edit timestep, capturing K/V "
                        "of every decoder self-attention layer at every step for FastDragSample.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x, SD2.x or SDXL-family model (eps or v-prediction; "
                                                "LCM sampling runs as plain eps, as officially), or Flux.1 / "
                                                "SD3.x (flow ODE on the model's own shift, joint-attention K/V; "
                                                "docs/flux-sd3.md). LoRAs and other model patches apply."),
                io.Conditioning.Input("positive", tooltip="Prompt conditioning (FastDrag's default is the "
                                                          "image prompt or the empty prompt)."),
                io.Latent.Input("latent", tooltip="The clean latent of the image (VAEEncode)."),
                io.Int.Input("steps", default=10, min=1, max=1000,
                             tooltip="Total DDIM steps n of the ddim_uniform schedule (official: 10)."),
                io.Float.Input("strength", default=0.7, min=0.01, max=1.0, step=0.01,
                               tooltip="Inversion strength: k = round(strength x steps) inversion steps; "
                                       "the edit happens at that timestep (official 0.7 -> t = 601)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance during inversion (official: 1 = no "
                                       "negative pass). Use the same value in FastDragSample."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative conditioning, used only when cfg != 1."),
                io.Combo.Input("kv_device", options=["auto", "cpu", "device"], default="auto", optional=True,
                               tooltip="Where the captured K/V live while ComfyUI caches them (model management "
                                       "cannot free them): auto = on the GPU if the store takes at most a quarter "
                                       "of its free memory, else system memory (SDXL at 1024x1024 on 8-12 GB "
                                       "cards); cpu = always system memory; device = always the GPU (fastest "
                                       "re-drag). The node's text says where they went and why."),
                io.Boolean.Input("capture_kv", default=True, optional=True,
                                 tooltip="Capture decoder K/V for FastDragSample (on by default). Off = invert "
                                         "only, returning an empty kv (DragDiffusion does not use it; saves "
                                         "~1 GB at 512x512, 35 steps)."),
                io.Combo.Input("dit_kv", options=list(DIT_KEEP_OPTIONS), default=DIT_DEFAULT_KEEP, optional=True,
                               tooltip=DIT_KEEP_TOOLTIP),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="latent",
                                 tooltip="The noisy latent at the edit timestep (ComfyUI's sampler scale)."),
                FastDragKV.Output("kv", display_name="kv",
                                  tooltip="Captured decoder attn1 K/V per (layer, timestep, cond/uncond), "
                                          "half precision, read-only."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent, steps, strength, cfg, negative=None,
                kv_device="auto", capture_kv=True, dit_kv=DIT_DEFAULT_KEEP) -> io.NodeOutput:
        sm = supported_model(model, NODE)  # refuses unsupported families before any work
        ms = sm.model_sampling
        samples = check_latent(latent, NODE)
        samples = comfy_adapter.get("fix_empty_latent_channels")(model, samples)
        if sm.support.flow:  # Flux.1 / SD3.x: flow-ODE inversion, joint-attention K/V (nodes/dit.py)
            from .dit import invert_flow
            warn_noise_mask(latent, NODE)
            store = new_kv_store(model, kv_device, None, max(1, round(strength * steps)))
            out_latent, store, msg = invert_flow(model, sm, positive, negative, latent, samples, steps, strength, cfg,
                                                 store, capture_kv, dit_kv, NODE)
            return io.NodeOutput(out_latent, store, ui=ui.PreviewText(msg))
        sched = edit_schedule(ms, steps, strength, samples.shape)
        k = len(sched.timesteps)
        # ascending: sigma(t=0) (the official abar_{-99} := abar_0), sigma(t_1), ..., sigma(t_k)
        inv_sigmas = torch.tensor([float(ms.sigmas[0])] + list(sched.sigmas[:-1])[::-1])

        store = new_kv_store(model, kv_device, sched, k)
        run = KVRun("capture", store, sched)
        sites = decoder_attn1_sites(model, NODE) if capture_kv else []
        m = patch_model(model, run, sites, model_sampling=ms if sm.support.lcm else None)
        if negative is None:
            negative = zero_conditioning(positive)
        if sm.note:
            log.info("[FastDrag] %s: %s", NODE, sm.note)

        pbar = comfy.utils.ProgressBar(k)

        def callback(step, x0, x, total):
            pbar.update_absolute(step + 1, total)

        warn_noise_mask(latent, NODE)
        out = comfy.sample.sample_custom(m, torch.zeros_like(samples), cfg, INVERT_SAMPLER, inv_sigmas,
                                         positive, negative, samples, callback=callback, disable_pbar=True, seed=0)
        store.freeze()
        check_capture(run, store, sites, k)
        kv_text = store.describe() if capture_kv else f"K/V capture off; {sched.describe()}"
        msg = (f"inverted to t={sched.edit_timestep} in {k} steps on {sm.support.describe()}; {kv_text}"
               + run.describe_passes())
        log.info("[FastDrag] %s: %s", NODE, msg)
        if run.same_pass_repeats:
            warning = (f"{run.same_pass_repeats} K/V writes repeated a (layer, timestep, chunk) within one model "
                       "pass (several conditioning entries per cond/uncond: ConditioningCombine, area or "
                       "timestep-range conds); the first entry's K/V are kept and injected for all of them")
            log.warning("[FastDrag] %s: %s", NODE, warning)
            msg += "\nWARNING: " + warning
        if sm.note:
            msg = sm.note + "\n" + msg
        out_latent = dict(latent)
        out_latent["samples"] = out
        out_latent[LATENT_TAG] = {"schedule": sched,
                                  "scale_factor": float(model.get_model_object("latent_format").scale_factor)}
        return io.NodeOutput(out_latent, store, ui=ui.PreviewText(msg))


def check_capture(run: KVRun, store: KVStore, sites, k: int, node: str = NODE):
    """Every decoder layer x timestep x chunk stored exactly once, from calls at the schedule's sigmas."""
    chunks = len(store.chunks)
    expected = len(sites) * k * chunks
    if len(store) == expected and store.writes == expected and not run.unexpected_sigmas:
        return
    hidden = sorted(run.shadowed, key=repr)
    raise RuntimeError(
        f"{node}: captured {len(store)} K/V entries ({store.writes} writes), expected {len(sites)} layers x {k} "
        f"steps x {chunks} chunks = {expected} (model calls at sigmas off the schedule: "
        f"{sorted(run.unexpected_sigmas) or 'none'}"
        + (f"; another attn1 replace patch hid FastDrag's on {len(hidden)} layers, e.g. {hidden[0]}" if hidden else "")
        + "); another sampler or attention patch changed the model calls")
