"""ComfyUI mechanics of FastDrag: decoder attn1 replace patches that capture / inject K/V, and the
two sampler functions (official DDIM inversion, DDIM) that run through ``comfy.samplers.KSAMPLER``.

Both loops are ordinary k-diffusion sampler functions: the ``model`` they call is ComfyUI's
wrapped model (KSamplerX0Inpaint -> CFGGuider -> calc_cond_batch -> apply_model), so CFG,
ControlNet, LoRA, hooks, wrappers and other model patches all apply. (A latent ``noise_mask`` is
not passed on: see ``warn_noise_mask`` in ``invert.py``.) The maths of the steps
lives in ``fastdrag_core.ddim``; what is stored and injected in ``fastdrag_core.kv``.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

import comfy.model_management
import comfy.samplers

from ..fastdrag_core import ddim
from ..fastdrag_core.kv import InjectionStats, KVPolicy, KVSchedule, KVStore
from . import comfy_adapter

log = logging.getLogger(__name__)

Site = tuple  # ("output", block_id, transformer_index)


def decoder_attn1_sites(model_patcher, node: str) -> list[Site]:
    """Every self-attention (attn1) site of the UNet decoder (output blocks), found from the model:
    ``(block_name, block_id, transformer_index)`` as ``set_model_attn1_replace`` expects.
    SD1.5: output blocks 3-11 (9 layers); the harness's tiny UNet: output 0-3."""
    dm = model_patcher.get_model_object("diffusion_model")
    blocks = getattr(dm, "output_blocks", None)
    if blocks is None:
        raise ValueError(f"{node}: this model ({type(dm).__name__}) has no UNet output blocks; FastDrag "
                         "needs an SD1.x-style UNet")
    sites = []
    spatial_transformer = comfy_adapter.get("SpatialTransformer")
    for i, blk in enumerate(blocks):
        for layer in blk:
            if isinstance(layer, spatial_transformer):
                sites += [("output", i, j) for j in range(len(layer.transformer_blocks))]
    if not sites:
        raise ValueError(f"{node}: no self-attention layers found in the UNet decoder of {type(dm).__name__}")
    return sites


class Attn1Run:
    """Pass bookkeeping shared by the pack's attn1 replace patches (FastDrag's K/V capture and injection,
    DragDiffusion's reference-latent control), so that they chain other attn1 replaces one way.

    Passes: ComfyUI's sampler evaluates the model once per step (``calc_cond_batch`` with the cond and
    uncond chunks), but guidance patches add passes at the same sigma afterwards: PerturbedAttentionGuidance
    re-runs the cond chunk with a perturbed middle block, SelfAttentionGuidance the uncond chunk on a
    blurred input. A ``CALC_COND_BATCH`` wrapper (:class:`Attn1PassWrapper`) numbers the passes per sigma
    and records, for each of the run's ``sites``, the block-level ``(block, id)`` attn1 replace of that
    pass's model options, which the pack's exact-site patch hides in ComfyUI's lookup: the patch chains
    it (:class:`ChainedAttn1Patch`). ``shadowed`` collects the sites where another exact-site replace
    hid the pack's patch in some pass.

    ``copy.deepcopy`` returns self: ``ModelPatcher.clone`` and ComfyUI's per-run option copies
    duplicate patch objects, and every copy must talk to this run."""

    def __init__(self):
        self.sites: tuple = ()
        self._passes: dict[float, int] = {}  # sigma -> passes begun at it
        self._stack: list[tuple] = []  # (pass index, {site: block-level attn1 replace}, context) per open pass
        self.extra_passes = 0
        self.shadowed: set = set()  # sites whose pack patch another exact-site replace hid in some pass

    def begin_pass(self, sigma: float, conds, model_options: dict) -> int:
        """A ``calc_cond_batch`` pass begins at ``sigma`` with the conditioning lists ``conds``."""
        index = self._passes.get(sigma, 0)
        self._passes[sigma] = index + 1
        if index:
            self.extra_passes += 1
        attn1 = (model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {}))
        block_level = {}
        for site in self.sites:
            exact = attn1.get(tuple(site))
            if getattr(exact, "run", None) is not self:
                self.shadowed.add(site)  # ComfyUI calls that patch instead of ours in this pass
            block_level[site] = attn1.get(tuple(site[:2]))
        self._stack.append((index, block_level, self.pass_context(index, sigma, list(conds))))
        return index

    def pass_context(self, index: int, sigma: float, conds: list):
        """What a subclass keeps per pass (:class:`KVRun`: the chunk map)."""
        return None

    def end_pass(self):
        self._stack.pop()

    @property
    def pass_index(self) -> int:
        """0 = the first pass at this sigma (also when no pass was announced)."""
        return self._stack[-1][0] if self._stack else 0

    def block_replace(self, site, default):
        """The block-level (``(block, id)``) attn1 replace of the current pass, which the pack's
        exact-site patch would hide: it is chained instead."""
        return self._stack[-1][1].get(site, default) if self._stack else default

    def __deepcopy__(self, memo):
        return self


class KVRun(Attn1Run):
    """State of one inversion or sampling run, shared by the patches of all layers.

    Capture stores the first write of each (layer, timestep, chunk), i.e. the sampler's own pass, and
    counts the writes of later passes (``extra_pass_repeats``, expected) apart from repeats inside one pass
    (``same_pass_repeats``: several conditioning entries per chunk, reported as a warning). Injection
    serves every pass (``stats`` for the first pass at a sigma, ``extra_stats`` for the others)."""

    def __init__(self, mode: str, store: KVStore, schedule: KVSchedule, policy: Optional[KVPolicy] = None):
        assert mode in ("capture", "inject")
        super().__init__()
        self.mode, self.store, self.schedule = mode, store, schedule
        self.policy = policy or KVPolicy()
        self.stats = InjectionStats()        # the first pass at each sigma (the sampler's own)
        self.extra_stats = InjectionStats()  # later passes at the same sigma (PAG, SAG, ...)
        self._last = (None, None)  # (sigma tensor, timestep): one host sync per model call, not per layer
        self.unexpected_sigmas: set[float] = set()
        self._first_conds: dict[float, list] = {}  # sigma -> conds of the first pass
        self.extra_pass_repeats = 0
        self.same_pass_repeats = 0

    def timestep(self, extra_options) -> Optional[int]:
        sig = extra_options["sigmas"]
        if self._last[0] is sig:
            return self._last[1]
        s = float(sig[0])
        t = self.schedule.timestep_for(s)
        if t is None:
            self.unexpected_sigmas.add(s)
        self._last = (sig, t)
        return t

    def pass_context(self, index: int, sigma: float, conds: list):
        """The chunk map of a pass. ComfyUI numbers the chunks of a pass by position in ``conds``
        (``cond_or_uncond``): the sampler's pass has [cond, uncond], but SAG's extra pass is [uncond] and
        so calls it chunk 0. Chunks of a later pass are mapped back to the first pass's numbering by the
        identity of the conditioning list, so that SAG's uncond pass is served the uncond K/V."""
        if index == 0:
            self._first_conds[sigma] = conds
            return None
        first = self._first_conds.get(sigma, [])
        return {i: next((j for j, f in enumerate(first) if f is not None and f is c), i) for i, c in enumerate(conds)}

    def chunks(self, cond_or_uncond) -> list:
        """The chunk ids of an attention call, in the numbering of the first pass at this sigma."""
        chunk_map = self._stack[-1][2] if self._stack else None
        return list(cond_or_uncond) if not chunk_map else [chunk_map.get(c, c) for c in cond_or_uncond]

    def describe_passes(self) -> str:
        if not self.extra_passes:
            return ""
        if self.mode == "capture":
            return (f"; {self.extra_passes} extra passes at the same sigmas (e.g. PerturbedAttentionGuidance, "
                    f"SelfAttentionGuidance): their {self.extra_pass_repeats} K/V writes ignored, the sampler's "
                    "own pass stored")
        return (f"; {self.extra_passes} extra passes at the same sigmas (e.g. PAG, SAG) injected too: "
                + self.extra_stats.describe().replace("K/V injection: ", ""))


class Attn1PassWrapper:
    """``CALC_COND_BATCH`` wrapper: numbers the model passes at each sigma for an :class:`Attn1Run`."""

    def __init__(self, run: Attn1Run):
        self.run = run

    def __call__(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        self.run.begin_pass(float(timestep.flatten()[0]), conds, model_options)
        try:
            return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)
        finally:
            self.run.end_pass()

    def __deepcopy__(self, memo):
        return self




class ChainedAttn1Patch:
    """Base of the pack's attn1 replace patches (``(q, k, v, extra_options) -> attention output``; q/k/v
    are already projected, [B, tokens, heads*dim_head]; the result goes through to_out).

    Another attn1 replace on the same layer is chained, never dropped: ``prev`` (one that was installed
    on this exact site before) or the block-level ``(block, id)`` replace that this exact-site patch
    hides in ComfyUI's lookup (the current pass's, else ``block_prev``) is called with the K/V the pack
    chose, instead of plain attention."""

    def __init__(self, layer: Site, run: Attn1Run, prev=None, block_prev=None):
        self.layer, self.run, self.prev, self.block_prev = layer, run, prev, block_prev

    def attend(self, q, k, v, extra_options):
        chained = self.prev if self.prev is not None else self.run.block_replace(self.layer, self.block_prev)
        if chained is not None:
            return chained(q, k, v, extra_options)
        return comfy_adapter.get("optimized_attention")(q, k, v, extra_options["n_heads"],
                                                   attn_precision=extra_options.get("attn_precision"),
                                                   transformer_options=extra_options)

    def __deepcopy__(self, memo):
        return self


class KVAttn1Patch(ChainedAttn1Patch):
    """attn1 replace patch of one decoder layer for FastDrag: captures the layer's K/V (inversion) or
    replaces them with the stored ones (sampling), then attends (chaining other packs' patches)."""

    def __call__(self, q, k, v, extra_options):
        run = self.run
        t = run.timestep(extra_options)
        chunks = run.chunks(extra_options["cond_or_uncond"])
        extra = run.pass_index > 0
        if run.mode == "capture":
            if t is not None:
                repeated = run.store.capture(self.layer, t, chunks, k, v)
                if extra:
                    run.extra_pass_repeats += repeated
                else:
                    run.same_pass_repeats += repeated
        else:
            k, v = run.policy.select(run.store, self.layer, t, chunks, k, v,
                                     run.extra_stats if extra else run.stats)
        return self.attend(q, k, v, extra_options)


WRAPPER_KEY = "fastdrag_kv_passes"


def install_attn1_patches(model_patcher, run: Attn1Run, sites: list[Site], make_patch, model_sampling=None):
    """A clone of ``model_patcher`` with ``make_patch(site, prev, block_prev)`` as the attn1 replace of every
    site and the pass wrapper of ``run`` (the input is never modified).

    Attn1 replace patches already on those layers (another pack's, per site or per block) are handed to
    the new patches as ``prev`` / ``block_prev`` to chain. ``model_sampling``: an object patch for the
    clone (the plain eps sampling that replaces LCM's, see ``model_support``)."""
    m = model_patcher.clone()
    if model_sampling is not None:
        m.add_object_patch("model_sampling", model_sampling)
    existing = (m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {}))
    run.sites = tuple(tuple(s) for s in sites)
    chained = []
    for site in run.sites:
        prev, block_prev = existing.get(site), existing.get(site[:2])
        if prev is not None or block_prev is not None:
            chained.append(site)
        m.set_model_attn1_replace(make_patch(site, prev, block_prev), *site)
    m.add_wrapper_with_key(comfy_adapter.get("CALC_COND_BATCH"), WRAPPER_KEY, Attn1PassWrapper(run))
    if chained:
        log.info("[FastDrag] chaining the attn1 replace patches already on %d layers (e.g. %s): they run "
                 "with the K/V the pack chose", len(chained), chained[0])
    return m


def patch_model(model_patcher, run: KVRun, sites: list[Site], model_sampling=None):
    """A clone of ``model_patcher`` with a K/V patch (:class:`KVAttn1Patch`) on every site."""
    return install_attn1_patches(model_patcher, run, sites,
                                 lambda site, prev, block_prev: KVAttn1Patch(site, run, prev, block_prev),
                                 model_sampling=model_sampling)


@torch.no_grad()
def sample_fastdrag_invert(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Official DDIM inversion as a k-diffusion sampler function (see fastdrag_core.ddim).

    ``sigmas`` ascend: [sigma(t=0), sigma(t_1), ..., sigma(t_k)]; ``x`` is the clean latent in model space
    (KSAMPLER adds sigma·0 noise). Returns x at sigma(t_k) (x = z_k / sqrt(abar_k), ComfyUI's convention)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sig = [float(s) for s in sigmas]
    x = ddim.to_inversion_start(x, sig[0])
    for i in range(len(sig) - 1):
        comfy.model_management.throw_exception_if_processing_interrupted()
        s, sn = sig[i], sig[i + 1]
        x_in = ddim.inversion_model_input(x, s, sn)
        denoised = model(x_in, sigmas[i + 1] * s_in, **extra_args)  # K/V of t(sigma_next) captured here
        eps = ddim.eps_from_denoised(x_in, denoised, sn)
        x = ddim.inversion_step(x, eps, s, sn)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i + 1], "sigma_hat": sigmas[i + 1], "denoised": denoised})
    return x


@torch.no_grad()
def sample_fastdrag_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Deterministic DDIM (eta = 0) down descending ``sigmas`` as a k-diffusion sampler function."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sig = [float(s) for s in sigmas]
    for i in range(len(sig) - 1):
        comfy.model_management.throw_exception_if_processing_interrupted()
        denoised = model(x, sigmas[i] * s_in, **extra_args)  # K/V of t(sigma_i) injected here
        if sig[i + 1] == 0.0:
            x = denoised
        else:
            x = ddim.ddim_step(x, ddim.eps_from_denoised(x, denoised, sig[i]), sig[i], sig[i + 1])
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
    return x


INVERT_SAMPLER = comfy.samplers.KSAMPLER(sample_fastdrag_invert)
DDIM_SAMPLER = comfy.samplers.KSAMPLER(sample_fastdrag_ddim)


def zero_conditioning(positive):
    """A negative for cfg = 1 runs without one (never evaluated then; like ConditioningZeroOut)."""
    out = []
    for emb, opts in positive:
        o = dict(opts)
        if o.get("pooled_output") is not None:
            o["pooled_output"] = torch.zeros_like(o["pooled_output"])
        out.append([torch.zeros_like(emb), o])
    return out


# -- DragDiffusion's reference-latent control (additive; the policy lives in fastdrag_core) ----------

def attn1_sites_in_call_order(model_patcher, node: str) -> list[Site]:
    """Every self-attention (attn1) site of the UNet in the order one forward pass calls them: input
    blocks, middle block, output blocks, each transformer stack's blocks in order. The position in
    this list is MasaCtrl's / DragDiffusion's "layer" (SD1.5: 16 sites, input 1, 2, 4, 5, 7, 8,
    middle 0, output 3-11; SDXL's depth-10 stacks count every block)."""
    dm = model_patcher.get_model_object("diffusion_model")
    groups = [("input", getattr(dm, "input_blocks", None)), ("middle", [getattr(dm, "middle_block", None)]),
              ("output", getattr(dm, "output_blocks", None))]
    if groups[0][1] is None or groups[2][1] is None:
        raise ValueError(f"{node}: this model ({type(dm).__name__}) is not a UNet with input/output blocks")
    sites = []
    for name, blocks in groups:
        for i, blk in enumerate(blocks):
            if blk is None:
                continue
            for layer in blk:
                if isinstance(layer, comfy_adapter.get("SpatialTransformer")):
                    sites += [(name, i, j) for j in range(len(layer.transformer_blocks))]
    return sites


class ReferenceRun(Attn1Run):
    """One DragDiffusionSample run: the schedule (sigma -> step index) and the
    :class:`fastdrag_core.dragdiffusion_attn.ReferenceAttention` policy, shared by all patched layers;
    passes and chaining as :class:`Attn1Run`."""

    def __init__(self, schedule: KVSchedule, policy):
        super().__init__()
        self.schedule, self.policy = schedule, policy
        self.controlled_calls = 0
        self.unexpected_sigmas: set[float] = set()
        self._last = (None, None)

    def step(self, extra_options) -> Optional[int]:
        sig = extra_options["sigmas"]
        if self._last[0] is sig:
            return self._last[1]
        s = float(sig[0])
        t = self.schedule.timestep_for(s)
        step = None if t is None else self.schedule.timesteps.index(t)
        if step is None:
            self.unexpected_sigmas.add(s)
        self._last = (sig, step)
        return step


class ReferenceAttn1Patch(ChainedAttn1Patch):
    """attn1 replace of one UNet layer for DragDiffusion's reference-latent control: the policy picks
    the K/V (the reference branch's for the edited branch), then it attends as :class:`KVAttn1Patch`
    (another pack's attn1 replace on the layer is chained and receives those K/V)."""

    def __init__(self, layer: Site, layer_index: int, run: ReferenceRun, prev=None, block_prev=None):
        super().__init__(layer, run, prev, block_prev)
        self.layer_index = layer_index

    def __call__(self, q, k, v, extra_options):
        run = self.run
        step = run.step(extra_options)
        k2, v2 = run.policy.select(k, v, len(extra_options["cond_or_uncond"]), self.layer_index, step)
        if k2 is not k:
            run.controlled_calls += 1
        return self.attend(q, k2, v2, extra_options)


def patch_model_reference(model_patcher, run: ReferenceRun, sites: list[Site], model_sampling=None):
    """A clone of ``model_patcher`` with a :class:`ReferenceAttn1Patch` on every site the policy can
    control (``sites`` in call order; the input is never modified); attn1 replaces already there are
    chained (:func:`install_attn1_patches`)."""
    index = {tuple(sites[i]): i for i in run.policy.controlled_layers(len(sites))}
    return install_attn1_patches(
        model_patcher, run, list(index),
        lambda site, prev, block_prev: ReferenceAttn1Patch(site, index[site], run, prev, block_prev),
        model_sampling=model_sampling)
