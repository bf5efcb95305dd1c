"""FastDragInvert / FastDragSample on flow-matching DiTs (Flux.1, SD3.x): the flow schedule and the
two runs, called by those nodes when ``supported_model`` says ``flow`` (docs/flux-sd3.md).

* Schedule: the model's own sampling object (its shift, e.g. from ModelSamplingFlux / ModelSamplingSD3)
  with ComfyUI's ``simple`` scheduler (the one Flux and SD3 workflows use) for ``steps``; the edit sits at
  the noise level of step round(strength x steps) counted from the clean end, as the DDIM path. Steps are
  labelled k, k-1, ..., 1 (the step's number from the clean end) in the K/V store's keys.
* Latents between the stages are in ComfyUI's sampler convention for CONST models: the inversion returns
  x_t / (1 - sigma_t) (KSAMPLER's ``inverse_noise_scaling``) and FastDragSample's noise scaling multiplies
  it back, so warp and fill work on a latent that is x0 + sigma/(1 - sigma)·eps, linear in both.
"""

from __future__ import annotations

import logging
import math

import torch
import comfy.sample
import comfy.samplers
import comfy.utils

from ..fastdrag_core import ddim, dit_kv
from ..fastdrag_core.kv import KVSchedule, KVStore, format_bytes
from .dit_patches import FLOW_INVERT_SAMPLER, DiTRun, dit_layers, patch_dit
from .patches import DDIM_SAMPLER, zero_conditioning
from .types import LATENT_TAG

log = logging.getLogger(__name__)

SCHEDULER = "simple"


def flow_sigmas(ms, steps: int) -> torch.Tensor:
    """The model's ``simple`` schedule of ``steps`` steps (descending, ending at 0)."""
    return comfy.samplers.calculate_sigmas(ms, SCHEDULER, steps).cpu().float()


def flow_schedule(ms, steps: int, strength: float, latent_shape, node: str) -> KVSchedule:
    """The last k+1 sigmas of the model's schedule (sigma_k, ..., sigma_1, 0), k = round(strength x steps)."""
    try:
        k = ddim.inversion_steps(steps, strength)
    except ValueError as e:
        raise ValueError(f"{node}: {e}") from None
    sig = flow_sigmas(ms, steps)[-(k + 1):]
    if float(sig[0]) >= 1.0:
        raise ValueError(f"{node}: strength {strength} with {steps} steps edits at sigma {float(sig[0]):.3f}, pure "
                         "noise on a flow-matching model (no image left to drag); use a strength below 1")
    return KVSchedule(sigmas=tuple(float(s) for s in sig), timesteps=tuple(range(k, 0, -1)), steps=int(steps),
                      strength=float(strength), latent_shape=tuple(int(d) for d in latent_shape))


def check_flow_schedule(ms, sched: KVSchedule, node: str, what: str) -> None:
    """The model's schedule for ``sched.steps`` must hold the schedule's sigmas (another shift would
    denoise at wrong noise levels)."""
    ours = flow_sigmas(ms, sched.steps)[-len(sched.sigmas):]
    for a, b in zip(ours.tolist(), sched.sigmas):
        if not math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-7):
            raise ValueError(f"{node}: the model's sigma is {a:.5f} where {what} at {b:.5f}: it comes from a model "
                             "with another shift or noise schedule (ModelSamplingFlux / ModelSamplingSD3 settings)")


def _progress(total: int):
    pbar = comfy.utils.ProgressBar(total)

    def callback(step, x0, x, n):
        pbar.update_absolute(step + 1, n)
    return callback


def kv_size_text(store: KVStore, keep: dit_kv.DiTKVKeep, n_layers: int, k: int) -> str:
    """The store's size, per step and in all, and what K and V of every layer would take."""
    per_step = store.nbytes // max(1, k)
    full = store.nbytes * n_layers * 2 // max(1, len(store.layers) * (2 if keep.keeps_k else 1)) if len(store) else 0
    return (f"{keep.option}: {len(store.layers)}/{n_layers} layers, {'K and V' if keep.keeps_k else 'V only'}: "
            f"{format_bytes(per_step)} per step, {format_bytes(store.nbytes)} in all (kv_all: {format_bytes(full)})")


def invert_flow(model, sm, positive, negative, latent, samples, steps, strength, cfg, store: KVStore,
                capture_kv: bool, keep_option: str, node: str):
    """FastDragInvert on a Flux.1 / SD3.x model: Euler inversion of the flow ODE on the model's schedule,
    capturing the image tokens' K/V of the kept joint-attention layers. Returns (latent dict, store, text)."""
    try:
        keep = dit_kv.DiTKVKeep(keep_option)
    except ValueError as e:
        raise ValueError(f"{node}: {e}") from None
    ms = sm.model_sampling
    sched = flow_schedule(ms, steps, strength, samples.shape, node)
    store.schedule = sched
    k = len(sched.timesteps)
    inv_sigmas = torch.tensor([0.0] + list(sched.sigmas[:-1])[::-1])  # ascending 0, sigma_1, ..., sigma_k
    layers_all = dit_layers(model, node)
    kept = keep.layers(layers_all) if capture_kv else []
    run = DiTRun("capture", store, sched, kept, keep_k=keep.keeps_k)
    m = patch_dit(model, run, layers_all)
    if negative is None:
        negative = zero_conditioning(positive)
    out = comfy.sample.sample_custom(m, torch.zeros_like(samples), cfg, FLOW_INVERT_SAMPLER, inv_sigmas, positive,
                                     negative, samples, callback=_progress(k), disable_pbar=True, seed=0)
    store.freeze()
    chunks = len(store.chunks)
    expected = len(kept) * k * chunks
    if capture_kv and (len(store) != expected or store.writes != expected or run.unexpected_sigmas
                       or run.unmatched_calls):
        raise RuntimeError(
            f"{node}: captured {len(store)} K/V entries ({store.writes} writes), expected {len(kept)} layers x {k} "
            f"steps x {chunks} chunks = {expected} (model calls at sigmas off the schedule: "
            f"{sorted(run.unexpected_sigmas) or 'none'}; attention calls of unknown length: {run.unmatched_calls}); "
            "another sampler or attention patch changed the model calls")
    kv_text = (f"{store.describe()}; {kv_size_text(store, keep, len(layers_all), k)}" if capture_kv
               else f"K/V capture off; {sched.describe()}")
    msg = (f"inverted the flow ODE (Euler) to sigma {sched.sigmas[0]:.4f} (step {k} of {steps}) on "
           f"{sm.support.describe()}; {kv_text}")
    if run.repeats:
        msg += (f"\nWARNING: {run.repeats} K/V writes repeated a (layer, step, chunk) (several conditioning "
                "entries per cond/uncond, or extra passes at the same sigma); the first one is kept")
    log.info("[FastDrag] %s: %s", node, msg)
    out_latent = dict(latent)
    out_latent["samples"] = out
    out_latent[LATENT_TAG] = {"schedule": sched,
                              "scale_factor": float(model.get_model_object("latent_format").scale_factor)}
    return out_latent, store, msg


def sample_flow(model, sm, positive, negative, latent, samples, kv: KVStore, cfg, consistency: bool, node: str):
    """FastDragSample on a Flux.1 / SD3.x model: Euler down the K/V's schedule (= DDIM for flows), the
    stored image-token K/V injected at the same noise levels. Returns (latent dict, text)."""
    sched = kv.schedule
    sigmas = torch.tensor(sched.sigmas)
    layers_all = dit_layers(model, node)
    if consistency:
        if len(kv) == 0:
            raise ValueError(f"{node}: kv is empty (FastDragInvert ran with capture_kv off), so consistency has "
                             "nothing to inject; turn capture_kv on in FastDragInvert, or consistency off here")
        foreign = [layer for layer in kv.layers if tuple(layer) not in set(layers_all)]
        if foreign:
            raise ValueError(f"{node}: kv holds layers this model does not have (e.g. {foreign[:2]}): K/V from "
                             "another model; connect the same model to FastDragInvert and FastDragSample")
        keep_k = any(kv.get(*key)[0].numel() for key in list(kv.keys())[:1])
        run = DiTRun("inject", kv, sched, kv.layers, keep_k=keep_k)
        m = patch_dit(model, run, layers_all)
    else:
        run, m = None, model
    if negative is None:
        negative = zero_conditioning(positive)
    out = comfy.sample.sample_custom(m, torch.zeros_like(samples), cfg, DDIM_SAMPLER, sigmas, positive, negative,
                                     samples, callback=_progress(len(sched.timesteps)), disable_pbar=True, seed=0)
    msg = f"sampled the flow ODE (Euler) from sigma {sched.sigmas[0]:.4f} in {len(sched.timesteps)} steps on " \
          f"{sm.support.describe()}; "
    if run is None:
        msg += "consistency off"
        log.info("[FastDrag] %s: %s", node, msg)
    else:
        msg += f"{run.stats.describe()} ({len(kv.layers)} layers x {len(sched.timesteps)} steps)"
        if run.stats.misses or run.unexpected_sigmas or run.unmatched_calls:
            log.warning("[FastDrag] %s: %s; missing e.g. %s, unexpected sigmas %s, attention calls of unknown "
                        "length %d", node, msg, run.stats.missed_keys[:3], sorted(run.unexpected_sigmas),
                        run.unmatched_calls)
        else:
            log.info("[FastDrag] %s: %s", node, msg)
    out_latent = {key: v for key, v in latent.items() if key != LATENT_TAG}
    out_latent["samples"] = out
    return out_latent, msg
