"""FastDragSample: DDIM from the edit timestep to 0, replacing decoder attn1 K/V with the captured ones."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

import comfy.sample
import comfy.utils

from ..fastdrag_core.kv import KVPolicy, KVStore
from .invert import check_latent, check_model_schedule, warn_noise_mask
from .model_support import supported_model
from .patches import DDIM_SAMPLER, KVRun, decoder_attn1_sites, patch_model, zero_conditioning
from .types import LATENT_TAG, FastDragKV

log = logging.getLogger(__name__)
NODE = "FastDragSample"


def check_kv_matches(kv, latent, model, node: str = NODE):
    """The K/V must come from an inversion of this latent's resolution, schedule and model schedule.
    Returns (samples, SupportedModel)."""
    sm = supported_model(model, node)
    if not isinstance(kv, KVStore) or not kv.frozen or kv.schedule is None:
        raise ValueError(f"{node}: kv is not a FASTDRAG_KV from FastDragInvert (got {type(kv).__name__})")
    sched = kv.schedule
    samples = check_latent(latent, node)
    if tuple(samples.shape) != sched.latent_shape:
        raise ValueError(f"{node}: latent is {list(samples.shape)} but kv was captured on a "
                         f"{list(sched.latent_shape)} latent (another resolution/batch); connect the kv "
                         "and latent of the same FastDragInvert")
    tag = latent.get(LATENT_TAG)
    if isinstance(tag, dict) and tag.get("schedule") is not None and not tag["schedule"].same_as(sched):
        raise ValueError(f"{node}: latent was inverted with {tag['schedule'].describe()} but kv was "
                         f"captured with {sched.describe()} (another schedule); connect the kv and latent "
                         "of the same FastDragInvert")
    if sm.support.flow:
        from .dit import check_flow_schedule
        check_flow_schedule(sm.model_sampling, sched, node, what="kv was captured")
    else:
        check_model_schedule(sm.model_sampling, sched, node, what="kv was captured")
    return samples, sm


def check_kv_layers(kv: KVStore, sites, node: str = NODE):
    """With consistency on, the K/V must hold this UNet's decoder self-attention layers: an empty store
    (FastDragInvert with capture_kv off) or one from another UNet would silently sample plain DDIM."""
    if len(kv) == 0:
        raise ValueError(f"{node}: kv is empty (FastDragInvert ran with capture_kv off), so consistency has "
                         "nothing to inject; turn capture_kv on in FastDragInvert, or consistency off here")
    stored, wanted = set(kv.layers), set(sites)
    if stored != wanted:
        raise ValueError(f"{node}: kv holds {len(stored)} decoder self-attention layers but this model has "
                         f"{len(wanted)} ({len(stored - wanted)} stored layers are not in it, e.g. "
                         f"{sorted(stored - wanted, key=repr)[:2]}): kv from a model with another UNet; connect "
                         "the same model to FastDragInvert and FastDragSample")


class FastDragSample(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastDragSample",
            display_name="FastDrag Sample (DDIM + K/V injection)",
            category="FastDrag/sampling",
            description="DDIM from the edit timestep down to a clean latent on the K/V's schedule, "
                        "replacing decoder self-attention K/V with the captured ones (consistency).",
            inputs=[
                io.Model.Input("model", tooltip="The model used for FastDragInvert (patches apply)."),
                io.Conditioning.Input("positive", tooltip="Prompt conditioning (as in FastDragInvert)."),
                io.Latent.Input("latent", tooltip="The edited noisy latent (FastDragBNNI / FastDragWarp)."),
                FastDragKV.Input("kv", tooltip="K/V from FastDragInvert; also fixes the schedule."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance (official: 1). With cfg != 1 and K/V "
                                       "captured at cfg 1, the negative pass reuses the positive K/V."),
                io.Boolean.Input("consistency", default=True,
                                 tooltip="Consistency-preserving strategy: replace decoder self-attention "
                                         "K/V with the inversion's at the same timestep. Off = plain DDIM."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative conditioning, used only when cfg != 1."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent", tooltip="The edited clean latent.")],
        )

    @classmethod
    def execute(cls, model, positive, latent, kv, cfg, consistency, negative=None) -> io.NodeOutput:
        samples, sm = check_kv_matches(kv, latent, model)
        if sm.support.flow:  # Flux.1 / SD3.x (nodes/dit.py)
            from .dit import sample_flow
            warn_noise_mask(latent, NODE)
            out_latent, msg = sample_flow(model, sm, positive, negative, latent, samples, kv, cfg, consistency, NODE)
            return io.NodeOutput(out_latent, ui=ui.PreviewText(msg))
        sched = kv.schedule
        sigmas = torch.tensor(sched.sigmas)
        run = KVRun("inject", kv, sched, KVPolicy(enabled=bool(consistency)))
        lcm_sampling = sm.model_sampling if sm.support.lcm else None
        if consistency:
            sites = decoder_attn1_sites(model, NODE)
            check_kv_layers(kv, sites)
            m = patch_model(model, run, sites, model_sampling=lcm_sampling)
        else:
            m = sm.apply(model)
        if negative is None:
            negative = zero_conditioning(positive)
        if sm.note:
            log.info("[FastDrag] %s: %s", NODE, sm.note)
        pbar = comfy.utils.ProgressBar(len(sched.timesteps))

        def callback(step, x0, x, total):
            pbar.update_absolute(step + 1, total)

        warn_noise_mask(latent, NODE)
        out = comfy.sample.sample_custom(m, torch.zeros_like(samples), cfg, DDIM_SAMPLER, sigmas, positive,
                                         negative, samples, callback=callback, disable_pbar=True, seed=0)
        msg = (f"sampled t={sched.edit_timestep} -> 0 in {len(sched.timesteps)} steps on {sm.support.describe()}; "
               + (run.stats.describe() + run.describe_passes() if consistency else "consistency off"))
        missed = run.stats.misses + run.extra_stats.misses
        if consistency and (missed or run.unexpected_sigmas or run.shadowed):
            log.warning("[FastDrag] %s: %s; missing entries e.g. %s, unexpected sigmas %s, layers whose K/V patch "
                        "another attn1 replace hid: %s", NODE, msg,
                        (run.stats.missed_keys + run.extra_stats.missed_keys)[:3], sorted(run.unexpected_sigmas),
                        sorted(run.shadowed, key=repr)[:3])
        else:
            log.info("[FastDrag] %s: %s", NODE, msg)
        if sm.note:
            msg = sm.note + "\n" + msg
        out_latent = {k: v for k, v in latent.items() if k != LATENT_TAG}
        out_latent["samples"] = out
        return io.NodeOutput(out_latent, ui=ui.PreviewText(msg))
